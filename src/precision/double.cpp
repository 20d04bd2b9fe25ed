#include "cppfabric/precision/double.hpp"

#include <torch/torch.h>

namespace cppfabric::precision {

void DoublePrecision::convert_module(torch::nn::Module& module) { module.to(torch::kFloat64); }
Guard DoublePrecision::forward_context() { return default_dtype_guard(torch::kFloat64); }
Guard DoublePrecision::tensor_init_context() { return default_dtype_guard(torch::kFloat64); }
Guard DoublePrecision::module_init_context() { return default_dtype_guard(torch::kFloat64); }

at::Tensor DoublePrecision::convert_input(const at::Tensor& tensor) {
  return tensor.is_floating_point() ? tensor.to(torch::kFloat64) : tensor;
}

at::Tensor DoublePrecision::convert_output(const at::Tensor& tensor) {
  return tensor.is_floating_point() ? tensor.to(c10::get_default_dtype_as_scalartype()) : tensor;
}

}  // namespace cppfabric::precision
