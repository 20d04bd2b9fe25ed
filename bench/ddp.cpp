// DDP on CPU over Gloo: what the reducer costs and what overlapping it with backward buys.
//
//   bench_ddp [--rounds 7] [--steps 20] [--batch 64] [--width 1024] [--layers 4] [--threads 1]
//             [--single-threads N]
//
// Runs, round by round in alternating order, separate invocations of itself (--mode M), each
// timing `steps` training steps (forward, backward, optimizer) after a warm-up:
//   single     one process, batch 2*B, --single-threads intra-op threads (default 2*threads: the
//              same cores as two ranks; on a loaded machine 1 can be faster)
//   ddp        2 processes (fabric.launch, Gloo on loopback), batch B each, reducer overlapped
//              with backward, gradients as bucket views (the defaults)
//   ddp-copy   the same with gradient_as_bucket_view = false
//   ddp-after  2 processes, backward under no_backward_sync, then one all-reduce of all
//              gradients after backward (reduce-after-backward, no overlap)
// and prints per-round ratios as min / median / max:
//   ddp/single (2-process DDP against one process on the same total batch), ddp-after/ddp
//   (> 1: overlap helps), ddp-copy/ddp (> 1: bucket views help).
#include <stdio.h>
#include <torch/torch.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cppfabric/cppfabric.hpp>
#include <cstdio>
#include <map>
#include <string>
#include <vector>

#include "run_child.hpp"

namespace {

struct Args {
  int rounds = 7, steps = 20, threads = 1, layers = 4, single_threads = 0;
  int64_t batch = 64, width = 1024;
  std::string mode;  // empty: the driver
};

struct NetImpl : torch::nn::Module {
  NetImpl(int layers, int64_t width) {
    for (int l = 0; l < layers; ++l) {
      body.push_back(register_module("l" + std::to_string(l), torch::nn::Linear(width, width)));
    }
    head = register_module("head", torch::nn::Linear(width, 10));
  }
  torch::Tensor forward(torch::Tensor x) {
    for (auto& layer : body) x = torch::relu(layer(x));
    return head(x);
  }
  std::vector<torch::nn::Linear> body;
  torch::nn::Linear head{nullptr};
};
TORCH_MODULE(Net);

// Times `steps` steps in this process (all ranks of a DDP run); rank 0 prints the result.
int child(const Args& a) {
  const bool ddp = a.mode != "single";
  std::shared_ptr<cppfabric::strategies::Strategy> strategy;
  cppfabric::FabricOptions options{.accelerator = "cpu"};
  if (ddp) {
    cppfabric::strategies::DDPOptions ddp_options;
    ddp_options.gradient_as_bucket_view = a.mode != "ddp-copy";
    options.strategy = std::make_shared<cppfabric::strategies::DDPStrategy>(ddp_options);
    options.devices = 2;
  } else {
    options.strategy = "single_device";
    options.devices = 1;
  }
  torch::set_num_threads(ddp ? a.threads
                             : (a.single_threads > 0 ? a.single_threads : 2 * a.threads));
  cppfabric::Fabric fabric(options);
  fabric.launch();
  torch::manual_seed(0);
  Net model(a.layers, a.width);
  auto optimizer =
      std::make_shared<torch::optim::SGD>(model->parameters(), torch::optim::SGDOptions(1e-3));
  auto [net, opt] = fabric.setup(model, optimizer);
  const int64_t rows = ddp ? a.batch : 2 * a.batch;
  auto x = torch::randn({rows, a.width});
  auto y = torch::randint(0, 10, {rows}, torch::kLong);
  std::vector<torch::Tensor> params = model->parameters();
  auto* ddp_strategy = dynamic_cast<cppfabric::strategies::DDPStrategy*>(fabric.strategy().get());
  if (ddp && ddp_strategy == nullptr) throw std::runtime_error("expected the DDP strategy");
  auto step = [&] {
    opt.zero_grad();
    auto loss = torch::nn::functional::cross_entropy(net(x), y);
    if (a.mode == "ddp-after") {
      {
        auto guard = fabric.no_backward_sync(net);
        fabric.backward(loss);
      }
      std::vector<torch::Tensor> grads;
      for (auto& p : params) grads.push_back(p.grad().reshape({-1}));
      auto flat = torch::cat(grads);
      // The process group directly (fabric.all_reduce adds a barrier): one collective per step.
      ddp_strategy->process_group()->all_reduce(flat, cppfabric::collectives::ReduceKind::Sum);
      flat.div_(fabric.world_size());
      int64_t offset = 0;
      for (auto& p : params) {
        p.mutable_grad().copy_(flat.narrow(0, offset, p.numel()).view(p.sizes()));
        offset += p.numel();
      }
    } else {
      fabric.backward(loss);
    }
    opt.step();
  };
  for (int s = 0; s < 3; ++s) step();
  fabric.barrier();
  const auto start = std::chrono::steady_clock::now();
  for (int s = 0; s < a.steps; ++s) step();
  fabric.barrier();
  const double us =
      std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - start).count() /
      a.steps;
  if (fabric.global_rank() == 0) std::printf("us_per_step=%.1f\n", us);
  return 0;
}

double run_mode(const std::string& self, const Args& a, const std::string& mode) {
  const std::string command = self + " --mode " + mode + " --steps " + std::to_string(a.steps) +
                              " --batch " + std::to_string(a.batch) + " --width " +
                              std::to_string(a.width) + " --layers " + std::to_string(a.layers) +
                              " --threads " + std::to_string(a.threads) + " --single-threads " +
                              std::to_string(a.single_threads) + " 2>&1";
  return cppfabric::bench::run_and_read_number(command, "us_per_step=", "mode " + mode);
}

struct Stats {
  double min, median, max;
};
Stats stats(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return {v.front(), v[v.size() / 2], v.back()};
}

}  // namespace

int main(int argc, char** argv) {
  Args a;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string flag = argv[i], value = argv[i + 1];
    if (flag == "--rounds")
      a.rounds = std::stoi(value);
    else if (flag == "--steps")
      a.steps = std::stoi(value);
    else if (flag == "--batch")
      a.batch = std::stoll(value);
    else if (flag == "--width")
      a.width = std::stoll(value);
    else if (flag == "--layers")
      a.layers = std::stoi(value);
    else if (flag == "--threads")
      a.threads = std::stoi(value);
    else if (flag == "--single-threads")
      a.single_threads = std::stoi(value);
    else if (flag == "--mode")
      a.mode = value;
    else {
      std::fprintf(stderr,
                   "unknown flag %s (valid: --rounds --steps --batch --width --layers --threads "
                   "--single-threads)\n",
                   flag.c_str());
      return 2;
    }
  }
  const std::vector<std::string> modes = {"single", "ddp", "ddp-copy", "ddp-after"};
  try {
    if (!a.mode.empty()) {
      if (std::find(modes.begin(), modes.end(), a.mode) == modes.end()) {
        std::fprintf(stderr, "--mode %s: valid choices are single, ddp, ddp-copy, ddp-after\n",
                     a.mode.c_str());
        return 2;
      }
      return child(a);
    }
    char self[4096];
    const auto n = ::readlink("/proc/self/exe", self, sizeof(self) - 1);
    if (n <= 0) throw std::runtime_error("cannot find this executable (/proc/self/exe)");
    self[n] = '\0';
    std::printf(
        "DDP on CPU (Gloo, loopback): %d x Linear(%ld, %ld) + head, batch %ld per rank, "
        "%d thread(s) per rank, %d rounds x %d steps\n",
        a.layers, static_cast<long>(a.width), static_cast<long>(a.width),
        static_cast<long>(a.batch), a.threads, a.rounds, a.steps);
    std::map<std::string, std::vector<double>> times;
    std::vector<double> vs_single, after_vs_overlap, copy_vs_view;
    for (int r = 0; r < a.rounds; ++r) {
      std::map<std::string, double> t;
      for (std::size_t k = 0; k < modes.size(); ++k) {
        const auto& mode = modes[(k + r) % modes.size()];  // rotate the order each round
        t[mode] = run_mode(self, a, mode);
        times[mode].push_back(t[mode]);
      }
      vs_single.push_back(t["ddp"] / t["single"]);
      after_vs_overlap.push_back(t["ddp-after"] / t["ddp"]);
      copy_vs_view.push_back(t["ddp-copy"] / t["ddp"]);
    }
    for (const auto& mode : modes) {
      const auto s = stats(times[mode]);
      std::printf("%-10s us/step min %9.1f median %9.1f max %9.1f\n", mode.c_str(), s.min, s.median,
                  s.max);
    }
    auto print = [](const char* what, const std::vector<double>& v) {
      const auto s = stats(v);
      std::printf("%-48s min %.3f median %.3f max %.3f\n", what, s.min, s.median, s.max);
    };
    print("ratio 2-process DDP / one process (same batch)", vs_single);
    print("ratio reduce-after-backward / overlapped", after_vs_overlap);
    print("ratio gradient copies / bucket views", copy_vs_view);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_ddp: %s\n", e.what());
    return 1;
  }
  return 0;
}
