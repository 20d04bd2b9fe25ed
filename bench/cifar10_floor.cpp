// The compute floor of the CIFAR-10 example: the same model (examples/cifar10/simple_cnn.hpp),
// optimizer, precision and Fabric calls, on batches that are already in memory on the device (no
// loader, no augmentation, no logging, no checkpoint). bench/seed/compare.py sets the example's
// epoch time against it and against the Python seed script.
//
//   bench_cifar10_floor [--epochs 1] [--train-size 50000] [--val-size 10000] [--batch-size 128]
//                       [--precision 16-mixed] [--accelerator auto] [--step libtorch|fused|graph]
//
// --step: how the training step runs: "libtorch" (LibTorch's AdamW, as the example), "fused"
// (cppfabric::optim::AdamW, ATen's fused kernel) or "graph" (the fused step recorded in a CUDA
// graph and replayed: cppfabric::CapturedStep; eager on a CPU). scripts/gpu-check runs all three.
//
// Prints one line per epoch in the example's format ("Epoch N | Val acc: ... | S s").
#include <torch/torch.h>

#include <chrono>
#include <cppfabric/cppfabric.hpp>
#include <cppfabric/optim/fused.hpp>
#include <cstdio>
#include <optional>
#include <string>
#include <vector>

#include "../examples/cifar10/simple_cnn.hpp"
#include "run_child.hpp"

int main(int argc, char** argv) {
  int epochs = 1;
  int64_t train_size = 50000, val_size = 10000, batch_size = 128;
  std::string precision = "16-mixed", accelerator = "auto", step_kind = "libtorch";
  if (!cppfabric::testing::Flags()
           .add("--epochs", &epochs)
           .add("--train-size", &train_size)
           .add("--val-size", &val_size)
           .add("--batch-size", &batch_size)
           .add("--precision", &precision)
           .add("--accelerator", &accelerator)
           .add("--step", &step_kind, {"libtorch", "fused", "graph"})
           .parse(argc, argv)) {
    return 2;
  }
  if (epochs < 1 || train_size < 1 || val_size < 1 || batch_size < 1) {
    std::fprintf(stderr, "--epochs, --train-size, --val-size and --batch-size must be >= 1\n");
    return 2;
  }

  cppfabric::Fabric fabric({.accelerator = accelerator, .devices = 1, .precision = precision});
  fabric.launch();
  cppfabric::Fabric::seed_everything(42);
  SimpleCNN model(10);
  const auto adamw_options = torch::optim::AdamWOptions(3e-4).weight_decay(1e-2);
  std::shared_ptr<torch::optim::AdamW> optimizer =
      step_kind != "libtorch"
          ? std::make_shared<cppfabric::optim::AdamW>(model->parameters(), adamw_options)
          : std::make_shared<torch::optim::AdamW>(model->parameters(), adamw_options);
  cppfabric::optim::CosineAnnealingLR scheduler(*optimizer, /*T_max=*/20);
  auto [net, opt] = fabric.setup(model, optimizer);
  const auto step_once = train_step(fabric, net, opt);
  std::optional<cppfabric::CapturedStep> captured;
  if (step_kind == "graph") captured.emplace(fabric, opt, step_once);

  // Normalised images and labels, built once, on the device.
  const auto on_device = torch::TensorOptions().device(fabric.device());
  auto batches = [&](int64_t n, int64_t size) {
    std::vector<std::pair<torch::Tensor, torch::Tensor>> out;
    for (int64_t start = 0; start < n; start += size) {
      const int64_t b = std::min(size, n - start);
      out.emplace_back(torch::randn({b, 3, 32, 32}, on_device),
                       torch::randint(0, 10, {b}, on_device.dtype(torch::kLong)));
    }
    return out;
  };
  const auto train = batches(train_size, batch_size);
  const auto val = batches(val_size, 2 * batch_size);

  for (int epoch = 0; epoch < epochs; ++epoch) {
    const auto start = std::chrono::steady_clock::now();
    net.train();
    auto loss_sum = torch::zeros({}, on_device);
    auto running_correct = torch::zeros({}, on_device.dtype(torch::kLong));
    for (const auto& [x, y] : train) {
      const auto results = captured ? (*captured)({x, y}) : step_once({x, y});
      loss_sum += results[0].to(torch::kFloat32);
      running_correct += results[1].argmax(1).eq(y).sum();
    }
    scheduler.step();
    net.eval();
    auto correct = torch::zeros({}, on_device.dtype(torch::kLong));
    {
      torch::NoGradGuard no_grad;
      for (const auto& [x, y] : val) correct += net(x).argmax(1).eq(y).sum();
    }
    const double accuracy = correct.item<double>() / static_cast<double>(val_size);
    const double seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    fabric.print("Epoch {} | Val acc: {:.4f} | {:.3f} s", epoch, accuracy, seconds);
  }
  return 0;
}
