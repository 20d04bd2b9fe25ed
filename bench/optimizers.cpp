// Optimizer step time: cppfabric::optim (fused ATen kernels, and foreach: `_foreach_*` operations)
// against LibTorch's torch::optim.
//
//   bench_optimizers [--rounds 15] [--steps 20] [--layers 60] [--width 256] [--threads 1]
//                    [--device cpu|cuda]
//
// The model is a stack of `layers` Linear(width, width) layers (2 tensors each: 120 parameter
// tensors by default, 3.9M values at width 256). Gradients are filled once; each round times
// `steps` optimizer steps of every pair (LibTorch, ours), alternating which runs first, so drift
// in a shared machine hits both. Prints, per optimizer, the ratio ours/LibTorch of each round's
// time per step as min / median / max over the rounds, and the absolute medians.
#include <torch/torch.h>

#include <algorithm>
#include <chrono>
#include <cppfabric/optim/fused.hpp>
#include <cstdio>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "../tests/flags.hpp"

namespace {

struct Stats {
  double min, median, max;
};

Stats stats(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return {v.front(), v[v.size() / 2], v.back()};
}

std::vector<torch::Tensor> make_params(int layers, int64_t width, const torch::Device& device) {
  torch::manual_seed(0);
  std::vector<torch::Tensor> params;
  for (int l = 0; l < layers; ++l) {
    params.push_back(torch::randn({width, width}, device).mul_(0.05).requires_grad_());
    params.push_back(torch::randn({width}, device).mul_(0.05).requires_grad_());
  }
  for (auto& p : params) p.mutable_grad() = torch::randn_like(p).mul_(0.01);
  return params;
}

void sync(const torch::Device& device) {
  if (device.is_cuda()) torch::cuda::synchronize();
}

struct Pair {
  std::string name;
  std::unique_ptr<torch::optim::Optimizer> reference, ours;
};

}  // namespace

int main(int argc, char** argv) {
  int rounds = 15, steps = 20, layers = 60, threads = 1;
  int64_t width = 256;
  std::string device_name = "cpu";
  if (!cppfabric::testing::Flags()
           .add("--rounds", &rounds)
           .add("--steps", &steps)
           .add("--layers", &layers)
           .add("--width", &width)
           .add("--threads", &threads)
           .add("--device", &device_name)
           .parse(argc, argv)) {
    return 2;
  }
  if (rounds < 1 || steps < 1 || layers < 1 || width < 1 || threads < 1) {
    std::fprintf(stderr, "--rounds, --steps, --layers, --width and --threads must be >= 1\n");
    return 2;
  }
  torch::set_num_threads(threads);
  const torch::Device device(device_name);
  namespace o = torch::optim;
  namespace co = cppfabric::optim;

  // Each optimizer owns its own parameters (same values, same gradients).
  std::vector<std::vector<torch::Tensor>> keep;
  auto params = [&]() -> std::vector<torch::Tensor> {
    keep.push_back(make_params(layers, width, device));
    return keep.back();
  };
  std::vector<Pair> pairs;
  pairs.push_back({"AdamW", std::make_unique<o::AdamW>(params(), o::AdamWOptions(1e-3)),
                   std::make_unique<co::AdamW>(params(), o::AdamWOptions(1e-3))});
  pairs.push_back({"Adam", std::make_unique<o::Adam>(params(), o::AdamOptions(1e-3)),
                   std::make_unique<co::Adam>(params(), o::AdamOptions(1e-3))});
  pairs.push_back({"SGD(momentum)",
                   std::make_unique<o::SGD>(params(), o::SGDOptions(1e-3).momentum(0.9)),
                   std::make_unique<co::SGD>(params(), o::SGDOptions(1e-3).momentum(0.9))});
  const co::StepOptions foreach{.fused = false, .foreach = true};
  pairs.push_back({"AdamW(foreach)", std::make_unique<o::AdamW>(params(), o::AdamWOptions(1e-3)),
                   std::make_unique<co::AdamW>(params(), o::AdamWOptions(1e-3), foreach)});
  pairs.push_back({"Adam(foreach)", std::make_unique<o::Adam>(params(), o::AdamOptions(1e-3)),
                   std::make_unique<co::Adam>(params(), o::AdamOptions(1e-3), foreach)});
  pairs.push_back(
      {"SGD(foreach)", std::make_unique<o::SGD>(params(), o::SGDOptions(1e-3).momentum(0.9)),
       std::make_unique<co::SGD>(params(), o::SGDOptions(1e-3).momentum(0.9), foreach)});

  std::printf(
      "optimizer step: %d parameter tensors (%d x Linear(%ld, %ld)), %s, %d thread(s), "
      "%d rounds x %d steps\n",
      2 * layers, layers, static_cast<long>(width), static_cast<long>(width), device_name.c_str(),
      threads, rounds, steps);
  auto time_steps = [&](torch::optim::Optimizer& opt) {
    sync(device);
    const auto start = std::chrono::steady_clock::now();
    for (int s = 0; s < steps; ++s) opt.step();
    sync(device);
    return std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - start)
               .count() /
           steps;
  };
  for (auto& pair : pairs) {  // warm up: state allocation happens on the first step
    pair.reference->step();
    pair.ours->step();
  }
  for (auto& pair : pairs) {
    std::vector<double> ratios, ref_us, our_us;
    for (int r = 0; r < rounds; ++r) {
      double a, b;
      if (r % 2 == 0) {
        a = time_steps(*pair.reference);
        b = time_steps(*pair.ours);
      } else {
        b = time_steps(*pair.ours);
        a = time_steps(*pair.reference);
      }
      ref_us.push_back(a);
      our_us.push_back(b);
      ratios.push_back(b / a);
    }
    const auto ratio = stats(ratios);
    std::printf(
        "%-15s torch::optim %9.1f us/step  cppfabric::optim %9.1f us/step  "
        "ratio ours/torch min %.3f median %.3f max %.3f\n",
        pair.name.c_str(), stats(ref_us).median, stats(our_us).median, ratio.min, ratio.median,
        ratio.max);
  }
  return 0;
}
