// The CIFAR-10 example's model (the seed's SimpleCNN: three conv + max-pool blocks, fc 2048 -> 256
// -> 10, dropout after fc1) and its training step, shared by examples/cifar10/main.cpp and
// bench/cifar10_floor.cpp.
#pragma once

#include <torch/torch.h>

#include <cppfabric/cppfabric.hpp>
#include <functional>
#include <vector>

struct SimpleCNNImpl : torch::nn::Module {
  explicit SimpleCNNImpl(int64_t num_classes = 10) {
    conv1 =
        register_module("conv1", torch::nn::Conv2d(torch::nn::Conv2dOptions(3, 32, 3).padding(1)));
    conv2 =
        register_module("conv2", torch::nn::Conv2d(torch::nn::Conv2dOptions(32, 64, 3).padding(1)));
    conv3 = register_module("conv3",
                            torch::nn::Conv2d(torch::nn::Conv2dOptions(64, 128, 3).padding(1)));
    fc1 = register_module("fc1", torch::nn::Linear(128 * 4 * 4, 256));
    fc2 = register_module("fc2", torch::nn::Linear(256, num_classes));
    dropout = register_module("dropout", torch::nn::Dropout(0.25));
  }
  torch::Tensor forward(torch::Tensor x) {
    x = torch::max_pool2d(torch::relu(conv1(x)), 2);  // 32 x 16 x 16
    x = torch::max_pool2d(torch::relu(conv2(x)), 2);  // 64 x 8 x 8
    x = torch::max_pool2d(torch::relu(conv3(x)), 2);  // 128 x 4 x 4
    x = torch::flatten(x, 1);
    x = dropout(torch::relu(fc1(x)));
    return fc2(x);
  }
  torch::nn::Conv2d conv1{nullptr}, conv2{nullptr}, conv3{nullptr};
  torch::nn::Linear fc1{nullptr}, fc2{nullptr};
  torch::nn::Dropout dropout{nullptr};
};
TORCH_MODULE(SimpleCNN);

// One training step on {images, labels}: zero_grad, forward, cross-entropy, fabric.backward,
// optimizer step. Returns the loss and the outputs, detached. `--cuda-graph` records it in a CUDA
// graph (cppfabric::CapturedStep); otherwise it is called directly. `after_backward`, if set, runs
// between backward and the optimizer step (host code: in a recorded step only while recording).
template <typename Net>
cppfabric::CapturedStep::Function train_step(cppfabric::Fabric& fabric, Net& net,
                                             cppfabric::FabricOptimizer& opt,
                                             std::function<void()> after_backward = nullptr) {
  return [&fabric, &net, &opt, after_backward](const std::vector<at::Tensor>& in) {
    opt.zero_grad();
    auto outputs = net(in[0]);
    auto loss = torch::nn::functional::cross_entropy(outputs, in[1]);
    fabric.backward(loss);
    if (after_backward) after_backward();
    opt.step();
    return std::vector<at::Tensor>{loss.detach(), outputs.detach()};
  };
}
