#pragma once
// What the training programs the distributed tests start (ddp_program, shard_program) share: the
// backward that throws midway (--throw-step), each step's data, and the file of each rank's final
// parameters the tests compare (OUT/params_rank<R>.bin).
#include <torch/torch.h>

#include <cppfabric/cppfabric.hpp>
#include <cstdio>
#include <exception>
#include <fstream>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

namespace cppfabric::testing {

// Identity forward; its backward throws (an exception in the middle of a backward pass).
struct ThrowInBackward : torch::autograd::Function<ThrowInBackward> {
  static torch::Tensor forward(torch::autograd::AutogradContext*, const torch::Tensor& x) {
    return x.clone();
  }
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext*,
                                                 torch::autograd::variable_list) {
    throw std::runtime_error("injected failure in backward");
  }
};

// The extra forward/backward of --throw-step S (before step S): `rows` x `features` random inputs
// (seeded by the step), with `throw_in_backward` set during the forward so that the model puts a
// ThrowInBackward in its graph. True when fabric.backward() passed the injected failure on; any
// other exception propagates.
template <typename Net>
bool backward_throws(Fabric& fabric, Net& net, bool& throw_in_backward, int step, int rows,
                     int features) {
  torch::manual_seed(500 + step);
  auto x = fabric.to_device(torch::randn({rows, features}));
  throw_in_backward = true;
  auto loss = net(x).pow(2).mean();
  throw_in_backward = false;
  try {
    fabric.backward(loss);
  } catch (const std::exception& e) {
    if (std::string(e.what()).find("injected failure") != std::string::npos) return true;
    throw;
  }
  return false;
}

// Micro-batch `micro` of step `step`: the same `global_rows` random rows (inputs and targets) on
// every rank, of which this rank takes `rows` from row `first`, on the fabric's device.
inline std::pair<torch::Tensor, torch::Tensor> micro_batch(Fabric& fabric, int step, int micro,
                                                           int global_rows, int first, int rows,
                                                           int in_features, int out_features) {
  torch::manual_seed(1000 + step * 10 + micro);
  auto x = torch::randn({global_rows, in_features});
  auto y = torch::randn({global_rows, out_features});
  return {fabric.to_device(x.narrow(0, first, rows)), fabric.to_device(y.narrow(0, first, rows))};
}

// Writes `params`, flattened and concatenated, as float64 to OUT/params_rank<rank>.bin (what the
// tests read back with read_params).
inline void write_params(const std::vector<torch::Tensor>& params, const std::string& out_dir,
                         int rank) {
  std::vector<torch::Tensor> parts;
  for (const auto& p : params) parts.push_back(p.detach().reshape({-1}));
  auto flat = torch::cat(parts).to(torch::kCPU, torch::kFloat64).contiguous();
  std::ofstream out(out_dir + "/params_rank" + std::to_string(rank) + ".bin", std::ios::binary);
  out.write(reinterpret_cast<const char*>(flat.data_ptr<double>()),
            static_cast<std::streamsize>(flat.numel() * sizeof(double)));
}

// Runs `body` (the program's main); prints "<program> error: ..." and returns 1 when it throws.
template <typename Body>
int main_or_error(const char* program, Body&& body) {
  try {
    return body();
  } catch (const std::exception& e) {
    std::fprintf(stderr, "%s error: %s\n", program, e.what());
    return 1;
  }
}

}  // namespace cppfabric::testing
