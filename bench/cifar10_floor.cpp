// The compute floor of the CIFAR-10 example: the same model (examples/cifar10/simple_cnn.hpp),
// optimizer, precision and Fabric calls, on batches that are already in memory on the device (no
// loader, no augmentation, no logging, no checkpoint). bench/seed/compare.py sets the example's
// epoch time against it and against the Python seed script.
//
//   bench_cifar10_floor [--epochs 1] [--train-size 50000] [--val-size 10000] [--batch-size 128]
//                       [--precision 16-mixed] [--accelerator auto]
//
// Prints one line per epoch in the example's format ("Epoch N | Val acc: ... | S s").
#include <torch/torch.h>

#include <chrono>
#include <cppfabric/cppfabric.hpp>
#include <cstdio>
#include <string>
#include <vector>

#include "../examples/cifar10/simple_cnn.hpp"

int main(int argc, char** argv) {
  int epochs = 1;
  int64_t train_size = 50000, val_size = 10000, batch_size = 128;
  std::string precision = "16-mixed", accelerator = "auto";
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string flag = argv[i], value = argv[i + 1];
    if (flag == "--epochs")
      epochs = std::stoi(value);
    else if (flag == "--train-size")
      train_size = std::stoll(value);
    else if (flag == "--val-size")
      val_size = std::stoll(value);
    else if (flag == "--batch-size")
      batch_size = std::stoll(value);
    else if (flag == "--precision")
      precision = value;
    else if (flag == "--accelerator")
      accelerator = value;
    else {
      std::fprintf(stderr,
                   "unknown flag %s (valid: --epochs --train-size --val-size --batch-size "
                   "--precision --accelerator)\n",
                   flag.c_str());
      return 2;
    }
  }
  if (argc % 2 == 0) {
    std::fprintf(stderr, "flag %s has no value\n", argv[argc - 1]);
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
  auto optimizer = std::make_shared<torch::optim::AdamW>(
      model->parameters(), torch::optim::AdamWOptions(3e-4).weight_decay(1e-2));
  cppfabric::optim::CosineAnnealingLR scheduler(*optimizer, /*T_max=*/20);
  auto [net, opt] = fabric.setup(model, optimizer);

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
      opt.zero_grad();
      auto outputs = net(x);
      auto loss = torch::nn::functional::cross_entropy(outputs, y);
      fabric.backward(loss);
      opt.step();
      loss_sum += loss.detach().to(torch::kFloat32);
      running_correct += outputs.detach().argmax(1).eq(y).sum();
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
