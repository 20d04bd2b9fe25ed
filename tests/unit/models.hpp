// Small models and helpers shared by the unit tests.
#pragma once

#include <torch/torch.h>

#include <cppfabric/cppfabric.hpp>
#include <memory>
#include <tuple>

namespace cppfabric::testing {

struct NetImpl : torch::nn::Module {
  NetImpl() {
    fc1 = register_module("fc1", torch::nn::Linear(4, 8));
    fc2 = register_module("fc2", torch::nn::Linear(8, 1));
    register_buffer("scale", torch::ones({1}));
  }
  torch::Tensor forward(const torch::Tensor& x) { return fc2(torch::relu(fc1(x))); }
  torch::nn::Linear fc1{nullptr}, fc2{nullptr};
};
TORCH_MODULE(Net);

// A module whose forward takes a tensor and an int and returns a tuple.
struct TwoHeadsImpl : torch::nn::Module {
  TwoHeadsImpl() { fc = register_module("fc", torch::nn::Linear(4, 2)); }
  std::tuple<torch::Tensor, torch::Tensor> forward(const torch::Tensor& x, int64_t k) {
    auto y = fc(x);
    return {y * k, y.to(torch::kLong)};
  }
  torch::nn::Linear fc{nullptr};
};
TORCH_MODULE(TwoHeads);

inline Fabric cpu_fabric(const char* precision = "32-true") {
  return Fabric({.accelerator = "cpu", .devices = 1, .precision = precision});
}

inline std::shared_ptr<torch::optim::SGD> sgd(torch::nn::Module& m, double lr = 0.1) {
  return std::make_shared<torch::optim::SGD>(m.parameters(), torch::optim::SGDOptions(lr));
}

}  // namespace cppfabric::testing
