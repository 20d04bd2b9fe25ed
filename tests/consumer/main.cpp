// Uses cppfabric's public API from a project that found it with find_package(cppfabric):
// 20 steps of SGD on a linear regression. Exits 0 only when the loss went down.
#include <torch/torch.h>

#include <cppfabric/cppfabric.hpp>
#include <cstdio>
#include <memory>

int main() {
  cppfabric::Fabric fabric({.accelerator = "cpu", .devices = 1});
  fabric.launch();

  torch::manual_seed(0);
  const auto x = torch::randn({64, 4});
  const auto y = x.matmul(torch::randn({4, 1})) + 0.5;

  torch::nn::Linear model(4, 1);
  auto optimizer =
      std::make_shared<torch::optim::SGD>(model->parameters(), torch::optim::SGDOptions(0.1));
  auto [net, opt] = fabric.setup(model, optimizer);

  double first = 0.0;
  double last = 0.0;
  for (int step = 0; step < 20; ++step) {
    opt.zero_grad();
    auto loss = torch::mse_loss(net(x), y);
    fabric.backward(loss);
    opt.step();
    last = loss.item<double>();
    fabric.print("loss {:.4f}", last);
    if (step == 0) first = last;
  }
  if (!(last < first)) {
    std::fprintf(stderr, "consumer: loss did not go down (first %.4f, last %.4f)\n", first, last);
    return 1;
  }
  return 0;
}
