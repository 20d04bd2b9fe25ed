// Fabric's per-step overhead against a raw LibTorch loop.
//
//   bench_overhead [--rounds 30] [--steps 20] [--batch 128] [--width 512] [--threads 1]
//                  [--device cpu|cuda] [--strategy auto|ddp]
//   bench_overhead --callgrind [--rounds 3] [--batch 128] [--width 512]
//
// The same model/optimizer/data train side by side in one process: every round times `steps`
// raw steps, then `steps` Fabric steps (the order alternates each round), so drift in the
// machine affects both. Prints both medians and bests (microseconds per step) and the ratios
// Fabric/raw; on a shared machine the ratio of bests is the least noisy.
//
// --callgrind: instructions per step, which the machine's noise does not touch. Runs itself under
// `valgrind --tool=callgrind` with `--only fabric` for the single-device strategy and for DDP at
// world size 1 (the reducer, its hooks and buckets; gradients as bucket views and copied), each
// with 2 and 2+N steps, and takes the difference over N steps, so set-up is not counted. Prints
// instructions per step and the ratios DDP / single device (the target: <= 1.02).
#include <stdio.h>
#include <torch/torch.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cppfabric/cppfabric.hpp>
#include <cstdio>
#include <string>
#include <vector>

#include "run_child.hpp"

namespace {

struct MLPImpl : torch::nn::Module {
  MLPImpl(int64_t in, int64_t width, int64_t out) {
    l1 = register_module("l1", torch::nn::Linear(in, width));
    l2 = register_module("l2", torch::nn::Linear(width, width));
    l3 = register_module("l3", torch::nn::Linear(width, out));
  }
  torch::Tensor forward(const torch::Tensor& x) { return l3(torch::relu(l2(torch::relu(l1(x))))); }
  torch::nn::Linear l1{nullptr}, l2{nullptr}, l3{nullptr};
};
TORCH_MODULE(MLP);

double median(std::vector<double> v);

// Instructions callgrind counted for `self args` (its "Collected : N" line).
double callgrind_instructions(const std::string& self, const std::string& args) {
  const std::string command =
      "valgrind --tool=callgrind --callgrind-out-file=/dev/null " + self + " " + args + " 2>&1";
  return cppfabric::bench::run_and_read_number(
      command, "Collected : ", "`" + command + "` (is valgrind installed?)");
}

int callgrind_mode(int rounds, int64_t batch, int64_t width, int threads) {
  const std::string self = cppfabric::bench::self_path();
  const int extra = 4;
  const std::string common = "--only fabric --batch " + std::to_string(batch) + " --width " +
                             std::to_string(width) + " --threads " + std::to_string(threads);
  auto per_step = [&](const std::string& config) {
    const double a = callgrind_instructions(self, common + " --steps 2 " + config);
    const double b = callgrind_instructions(
        self, common + " --steps " + std::to_string(2 + extra) + " " + config);
    return (b - a) / extra;
  };
  std::printf(
      "callgrind: instructions per training step (difference of 2 and %d steps), batch "
      "%lld, width %lld\n",
      2 + extra, static_cast<long long>(batch), static_cast<long long>(width));
  const std::vector<std::pair<std::string, std::string>> configs = {
      {"single device", "--strategy auto"},
      {"ddp, bucket views", "--strategy ddp"},
      {"ddp, gradient copies", "--strategy ddp --bucket-view 0"}};
  std::vector<std::vector<double>> counts(configs.size());
  for (int r = 0; r < rounds; ++r) {
    for (std::size_t c = 0; c < configs.size(); ++c)
      counts[c].push_back(per_step(configs[c].second));
  }
  for (std::size_t c = 0; c < configs.size(); ++c) {
    std::sort(counts[c].begin(), counts[c].end());
    std::printf("%-22s %14.0f instructions/step (min %.0f, max %.0f over %d runs)\n",
                configs[c].first.c_str(), median(counts[c]), counts[c].front(), counts[c].back(),
                rounds);
  }
  for (std::size_t c = 1; c < configs.size(); ++c) {
    std::printf("ratio %s / single device: %.4f (min %.4f, max %.4f)\n", configs[c].first.c_str(),
                median(counts[c]) / median(counts[0]), counts[c].front() / counts[0].back(),
                counts[c].back() / counts[0].front());
  }
  return 0;
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

void sync(const torch::Device& device) {
  if (device.is_cuda()) torch::cuda::synchronize();
}

}  // namespace

int main(int argc, char** argv) {
  int rounds = 30, steps = 20;
  int64_t batch = 128, width = 512;
  std::string device_name = "cpu";
  std::string strategy = "auto";  // "ddp": the DDP code path (reducer, hooks) at world size 1
  std::string
      only;  // "raw" or "fabric": time one loop alone (for instruction counts under callgrind)
  int threads = 1;  // one intra-op thread: on a small shared machine more threads mostly add noise
  bool callgrind = false;
  int bucket_view = 1;
  if (!cppfabric::testing::Flags()
           .add("--rounds", &rounds)
           .add("--steps", &steps)
           .add("--batch", &batch)
           .add("--width", &width)
           .add("--threads", &threads)
           .add("--only", &only, {"raw", "fabric"})
           .add("--device", &device_name)
           .add("--strategy", &strategy)
           .add("--bucket-view", &bucket_view)
           .add("--callgrind", &callgrind)
           .parse(argc, argv)) {
    return 2;
  }

  if (callgrind) return callgrind_mode(rounds == 30 ? 3 : rounds, batch, width, threads);
  torch::set_num_threads(threads);
  cppfabric::FabricOptions options{.accelerator = device_name, .strategy = strategy, .devices = 1};
  if (strategy == "ddp") {
    cppfabric::strategies::DDPOptions ddp;
    ddp.gradient_as_bucket_view = bucket_view != 0;
    options.strategy = std::make_shared<cppfabric::strategies::DDPStrategy>(ddp);
  }
  cppfabric::Fabric fabric(options);
  fabric.launch();
  const torch::Device device = fabric.device();
  torch::manual_seed(0);

  MLP raw_model(256, width, 10), fabric_model(256, width, 10);
  {
    // Both loops start from the same weights, so their kernels see the same values.
    torch::NoGradGuard no_grad;
    const auto src = raw_model->parameters();
    const auto dst = fabric_model->parameters();
    for (std::size_t i = 0; i < src.size(); ++i) dst[i].copy_(src[i]);
  }
  raw_model->to(device);
  auto raw_opt = std::make_shared<torch::optim::AdamW>(raw_model->parameters(),
                                                       torch::optim::AdamWOptions(1e-3));
  auto fabric_opt_raw = std::make_shared<torch::optim::AdamW>(fabric_model->parameters(),
                                                              torch::optim::AdamWOptions(1e-3));
  auto [net, opt] = fabric.setup(fabric_model, fabric_opt_raw);

  auto x = torch::randn({batch, 256}, device);
  auto y =
      torch::randint(0, 10, {batch}, torch::TensorOptions().dtype(torch::kLong).device(device));

  auto raw_step = [&] {
    raw_opt->zero_grad();
    auto loss = torch::nn::functional::cross_entropy(raw_model(x), y);
    loss.backward();
    raw_opt->step();
  };
  auto fabric_step = [&] {
    opt.zero_grad();
    auto loss = torch::nn::functional::cross_entropy(net(x), y);
    fabric.backward(loss);
    opt.step();
  };
  auto time_steps = [&](auto& step) {
    sync(device);
    const auto start = std::chrono::steady_clock::now();
    for (int s = 0; s < steps; ++s) step();
    sync(device);
    return std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - start)
               .count() /
           steps;
  };

  if (!only.empty()) {
    // Same set-up as below; only one loop runs. Compare `valgrind --tool=callgrind` instruction
    // counts of `--only raw` and `--only fabric`: deterministic, unlike wall time.
    for (int s = 0; s < steps; ++s) only == "raw" ? raw_step() : fabric_step();
    std::printf("ran %d %s steps\n", steps, only.c_str());
    return 0;
  }
  for (int s = 0; s < 5; ++s) {  // warm-up
    raw_step();
    fabric_step();
  }
  std::vector<double> raw_times, fabric_times, ratios;
  for (int r = 0; r < rounds; ++r) {
    double raw_us = 0, fabric_us = 0;
    if (r % 2 == 0) {
      raw_us = time_steps(raw_step);
      fabric_us = time_steps(fabric_step);
    } else {
      fabric_us = time_steps(fabric_step);
      raw_us = time_steps(raw_step);
    }
    raw_times.push_back(raw_us);
    fabric_times.push_back(fabric_us);
    ratios.push_back(fabric_us / raw_us);
  }
  const double raw_med = median(raw_times), fabric_med = median(fabric_times);
  std::printf("strategy %s | ", fabric.strategy()->name().c_str());
  std::printf("device %s | batch %lld | width %lld | %d rounds x %d steps\n", device.str().c_str(),
              static_cast<long long>(batch), static_cast<long long>(width), rounds, steps);
  std::printf("raw LibTorch   median %10.1f us/step\n", raw_med);
  std::printf("cppfabric      median %10.1f us/step\n", fabric_med);
  const double raw_min = *std::min_element(raw_times.begin(), raw_times.end());
  const double fabric_min = *std::min_element(fabric_times.begin(), fabric_times.end());
  std::printf("raw LibTorch   best   %10.1f us/step\n", raw_min);
  std::printf("cppfabric      best   %10.1f us/step\n", fabric_min);
  std::printf(
      "ratio fabric/raw: of medians %.4f | median of per-round ratios %.4f | of bests %.4f\n",
      fabric_med / raw_med, median(ratios), fabric_min / raw_min);
  return 0;
}
