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

at::Tensor cast_floating(const at::Tensor& tensor, c10::ScalarType dtype) {
  return tensor.defined() && tensor.is_floating_point() && tensor.scalar_type() != dtype
             ? tensor.to(dtype)
             : tensor;
}

DtypePrecision::DtypePrecision(c10::ScalarType dtype, std::string name)
    : dtype_(dtype), name_(std::move(name)) {}

void DtypePrecision::convert_module(torch::nn::Module& module) { module.to(dtype_); }
Guard DtypePrecision::forward_context() { return default_dtype_guard(dtype_); }
Guard DtypePrecision::tensor_init_context() { return default_dtype_guard(dtype_); }
Guard DtypePrecision::module_init_context() { return default_dtype_guard(dtype_); }
at::Tensor DtypePrecision::convert_input(const at::Tensor& tensor) {
  return cast_floating(tensor, dtype_);
}
at::Tensor DtypePrecision::convert_output(const at::Tensor& tensor) {
  return cast_floating(tensor, c10::get_default_dtype_as_scalartype());
}

}  // namespace cppfabric::precision
