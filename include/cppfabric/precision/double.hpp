// DoublePrecision (`64-true`): the module in float64, inputs cast to float64, outputs cast back
// to the default dtype, and float64 as the default dtype inside init and forward contexts.
//
//   Fabric fabric({.precision = "64-true"});
#pragma once

#include "cppfabric/precision/precision.hpp"

namespace cppfabric::precision {

class DoublePrecision : public Precision {
 public:
  std::string name() const override { return "64-true"; }
  void convert_module(torch::nn::Module& module) override;
  Guard forward_context() override;
  Guard tensor_init_context() override;
  Guard module_init_context() override;
  at::Tensor convert_input(const at::Tensor& tensor) override;
  at::Tensor convert_output(const at::Tensor& tensor) override;
};

}  // namespace cppfabric::precision
