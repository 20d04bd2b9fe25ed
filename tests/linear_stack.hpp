#pragma once
// A stack of square layers and a Linear head: the models of bench_ddp and bench_sharded and the
// large model of the sharding program's --memory runs.
#include <torch/torch.h>

#include <cstdint>
#include <string>
#include <vector>

namespace cppfabric::testing {

// `layers` x Layer(width, width), registered as prefix + "0", prefix + "1", ..., each followed by
// `activation`, then a Linear(width, outputs) registered as "head". Layer: torch::nn::Linear, or
// FSDPUnit<torch::nn::LinearImpl> for one FSDP unit per layer.
template <typename Layer>
struct LinearStackImpl : torch::nn::Module {
  using Activation = torch::Tensor (*)(const torch::Tensor&);
  LinearStackImpl(int layers, int64_t width, int64_t outputs, Activation activation,
                  const std::string& prefix)
      : activation(activation) {
    for (int l = 0; l < layers; ++l) {
      body.push_back(register_module(prefix + std::to_string(l), Layer(width, width)));
    }
    head = register_module("head", torch::nn::Linear(width, outputs));
  }
  torch::Tensor forward(torch::Tensor x) {
    for (auto& layer : body) x = activation(layer(x));
    return head(x);
  }
  Activation activation;
  std::vector<Layer> body;
  torch::nn::Linear head{nullptr};
};
template <typename Layer>
using LinearStack = torch::nn::ModuleHolder<LinearStackImpl<Layer>>;

inline torch::Tensor relu(const torch::Tensor& x) { return torch::relu(x); }
inline torch::Tensor tanh(const torch::Tensor& x) { return torch::tanh(x); }

}  // namespace cppfabric::testing
