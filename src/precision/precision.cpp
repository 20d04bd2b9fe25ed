#include "cppfabric/precision/precision.hpp"

#include <torch/torch.h>

#include "cppfabric/detail/fmt.hpp"

namespace cppfabric::precision {

std::string Precision::describe() const {
  return fmt::format("{}('{}')", Plugin::describe(), name());
}

void Precision::convert_module(torch::nn::Module& module) {}
Guard Precision::forward_context() { return {}; }
Guard Precision::tensor_init_context() { return {}; }
Guard Precision::module_init_context() { return {}; }
at::Tensor Precision::convert_input(const at::Tensor& tensor) { return tensor; }
at::Tensor Precision::convert_output(const at::Tensor& tensor) { return tensor; }

void Precision::backward(const at::Tensor& tensor, const at::Tensor& gradient,
                         std::optional<bool> retain_graph, bool create_graph) {
  tensor.backward(gradient, retain_graph, create_graph);
}

void Precision::optimizer_step(torch::optim::Optimizer& optimizer) { optimizer.step(); }

Guard default_dtype_guard(c10::ScalarType dtype) {
  const caffe2::TypeMeta previous = c10::get_default_dtype();
  c10::set_default_dtype(c10::scalarTypeToTypeMeta(dtype));
  return Guard([previous] { c10::set_default_dtype(previous); });
}

}  // namespace cppfabric::precision
