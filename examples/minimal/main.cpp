// A multilayer perceptron on a synthetic regression task, with the five Fabric lines.
//
//   minimal [--steps N] [--accelerator cpu|cuda|auto] [--precision 32-true|64-true] [--seed S]
//           [--require-ratio R]
//
// Prints the loss every 50 steps and "final loss ... (start ..., ratio ...x)" at the end; exits
// non-zero unless the loss fell by at least R times (default 1: it fell at all).
#include <torch/torch.h>

#include <cppfabric/cppfabric.hpp>
#include <cstdlib>
#include <string>

using cppfabric::Fabric;

struct MLPImpl : torch::nn::Module {
  explicit MLPImpl(int64_t in, int64_t hidden) {
    fc1 = register_module("fc1", torch::nn::Linear(in, hidden));
    fc2 = register_module("fc2", torch::nn::Linear(hidden, hidden));
    out = register_module("out", torch::nn::Linear(hidden, 1));
  }
  torch::Tensor forward(const torch::Tensor& x) {
    return out(torch::relu(fc2(torch::relu(fc1(x)))));
  }
  torch::nn::Linear fc1{nullptr}, fc2{nullptr}, out{nullptr};
};
TORCH_MODULE(MLP);

int main(int argc, char** argv) {
  int steps = 500;
  int64_t seed = 42;
  double require_ratio = 1.0;
  std::string accelerator = "auto", precision = "32-true";
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string flag = argv[i], value = argv[i + 1];
    if (flag == "--steps") {
      steps = std::stoi(value);
    } else if (flag == "--accelerator") {
      accelerator = value;
    } else if (flag == "--precision") {
      precision = value;
    } else if (flag == "--require-ratio") {
      require_ratio = std::stod(value);
    } else if (flag == "--seed") {
      seed = std::stoll(value);
    } else {
      std::fprintf(
          stderr,
          "unknown flag %s (valid: --steps --accelerator --precision --seed --require-ratio)\n",
          flag.c_str());
      return 2;
    }
  }

  Fabric fabric({.accelerator = accelerator, .devices = 1, .precision = precision});  // 1
  fabric.launch();                                                                    // 2
  Fabric::seed_everything(seed);

  // Synthetic regression: y = sin(x·w) + 0.5·(x·v)^2, 8 features.
  auto x = torch::randn({2048, 8});
  auto w = torch::randn({8, 1}), v = torch::randn({8, 1}) * 0.3;
  auto y = torch::sin(x.mm(w)) + 0.5 * x.mm(v).pow(2);

  MLP model(8, 64);
  auto optimizer =
      std::make_shared<torch::optim::Adam>(model->parameters(), torch::optim::AdamOptions(3e-3));
  auto [net, opt] = fabric.setup(model, optimizer);  // 3
  x = fabric.to_device(x);  // 4 (a loader would do this in setup_dataloaders)
  y = fabric.to_device(y);

  double first = 0.0, last = 0.0;
  for (int step = 0; step < steps; ++step) {
    auto idx = torch::randint(0, x.size(0), {128}, torch::TensorOptions().dtype(torch::kLong))
                   .to(x.device());
    opt.zero_grad();
    auto loss = torch::mse_loss(net(x.index_select(0, idx)), y.index_select(0, idx));
    fabric.backward(loss);  // 5
    opt.step();
    if (step == 0) first = loss.item<double>();
    if (step % 50 == 0 || step == steps - 1) {
      last = torch::mse_loss(net(x), y).item<double>();
      fabric.print("step {:4d} | loss {:.5f}", step, last);
    }
  }
  fabric.print("final loss {:.5f} (start {:.5f}, ratio {:.1f}x) on {} with {}", last, first,
               first / last, fabric.device().str(), precision);
  const bool ok = last > 0 && first / last >= require_ratio && last < first;
  if (!ok)
    fabric.print("FAILED: the loss fell {:.1f}x, less than the {:.1f}x required", first / last,
                 require_ratio);
  return ok ? EXIT_SUCCESS : EXIT_FAILURE;
}
