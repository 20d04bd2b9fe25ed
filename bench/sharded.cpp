// FSDP and ZeRO against DDP at 2 processes on CPU (Gloo, loopback): per-rank memory between steps
// and step time, printed as ratios to DDP.
//
//   bench_sharded [--rounds 3] [--steps 10] [--batch 32] [--width 2048] [--layers 8]
//                 [--threads 1]
//
// Runs, round by round in rotating order, separate 2-process invocations of itself (--mode M) for
// M in ddp, fsdp (FULL_SHARD, every layer an FSDPUnit), fsdp-outer (FULL_SHARD, one unit),
// zero2 (deepspeed_stage_2). Each times `steps` AdamW steps after a warm-up and reports, for rank 0,
// the bytes of parameters + gradients + optimizer state it holds between steps (distinct
// storages, counted from the tensors), microseconds per step (wall clock) and the CPU time per
// step of rank 0's process (all threads). The driver prints each mode's medians, the ratios
// mode/ddp and the min-max of the per-round time ratios (memory target for FULL_SHARD: <= 1/2 +
// 10%; time: <= 1.3x). On a shared machine the wall-clock ratios swing with the load; the CPU
// ratios much less.
#include <torch/torch.h>

#include <chrono>
#include <cppfabric/cppfabric.hpp>
#include <cppfabric/strategies/fsdp_unit.hpp>
#include <cstdio>
#include <ctime>
#include <set>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "../tests/linear_stack.hpp"
#include "run_child.hpp"

namespace {

using cppfabric::strategies::FSDPUnit;

struct Args {
  int rounds = 3, steps = 10, threads = 1, layers = 8;
  int64_t batch = 32, width = 2048;
  std::string mode;
};

// layers x Linear(width, width) + head: each layer an FSDP unit (Net) or none (Plain: under
// fsdp-outer the whole model is one unit).
using Net = cppfabric::testing::LinearStack<FSDPUnit<torch::nn::LinearImpl>>;
using Plain = cppfabric::testing::LinearStack<torch::nn::Linear>;

int64_t held_bytes(torch::nn::Module& model, torch::optim::Optimizer& optimizer) {
  std::set<const void*> seen;
  int64_t total = 0;
  auto add = [&](const at::Tensor& t) {
    if (!t.defined()) return;
    if (seen.insert(t.storage().unsafeGetStorageImpl()).second) {
      total += static_cast<int64_t>(t.storage().nbytes());
    }
  };
  for (const auto& p : model.parameters()) {
    add(p);
    add(p.grad());
  }
  for (auto& group : optimizer.param_groups()) {
    for (auto& p : group.params()) {
      add(p);
      add(p.grad());
    }
  }
  for (const auto& [key, state] : optimizer.state()) {
    if (auto* s = dynamic_cast<torch::optim::AdamWParamState*>(state.get())) {
      add(s->exp_avg());
      add(s->exp_avg_sq());
    }
  }
  return total;
}

// CPU time of this process (all its threads, the backend's included), in microseconds.
double process_cpu_us() {
  timespec t{};
  ::clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t);
  return static_cast<double>(t.tv_sec) * 1e6 + static_cast<double>(t.tv_nsec) / 1e3;
}

template <typename Holder>
int train(const Args& a, cppfabric::Fabric& fabric, Holder model) {
  auto optimizer =
      std::make_shared<torch::optim::AdamW>(model->parameters(), torch::optim::AdamWOptions(1e-4));
  auto [net, opt] = fabric.setup(model, optimizer);
  auto x = torch::randn({a.batch, a.width});
  auto y = torch::randint(0, 10, {a.batch}, torch::kLong);
  auto step = [&] {
    opt.zero_grad();
    auto loss = torch::nn::functional::cross_entropy(net(x), y);
    fabric.backward(loss);
    opt.step();
  };
  for (int s = 0; s < 2; ++s) step();
  fabric.barrier();
  const double cpu_start = process_cpu_us();
  const auto start = std::chrono::steady_clock::now();
  for (int s = 0; s < a.steps; ++s) step();
  fabric.barrier();
  const double us =
      std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - start).count() /
      a.steps;
  const double cpu_us = (process_cpu_us() - cpu_start) / a.steps;
  const int64_t bytes = held_bytes(*model.ptr(), *optimizer);
  if (fabric.global_rank() == 0) {
    std::printf("bytes=%lld\nus_per_step=%.1f\ncpu_us_per_step=%.1f\n",
                static_cast<long long>(bytes), us, cpu_us);
  }
  return 0;
}

int child(const Args& a) {
  cppfabric::FabricOptions options{.accelerator = "cpu", .devices = 2};
  if (a.mode == "ddp") {
    options.strategy = "ddp";
  } else if (a.mode == "fsdp" || a.mode == "fsdp-outer") {
    options.strategy = "fsdp";
  } else {
    options.strategy = "deepspeed_stage_2";
  }
  torch::set_num_threads(a.threads);
  cppfabric::Fabric fabric(options);
  fabric.launch();
  torch::manual_seed(0);
  using cppfabric::testing::relu;
  if (a.mode == "fsdp-outer") return train(a, fabric, Plain(a.layers, a.width, 10, relu, "l"));
  return train(a, fabric, Net(a.layers, a.width, 10, relu, "l"));
}

}  // namespace

int main(int argc, char** argv) {
  Args a;
  const std::vector<std::string> modes = {"ddp", "fsdp", "fsdp-outer", "zero2"};
  const auto flags = cppfabric::bench::mode_flags(a, modes);
  if (!flags.parse(argc, argv)) return 2;
  try {
    if (!a.mode.empty()) return child(a);
    std::printf(
        "Sharded vs DDP on CPU (Gloo, loopback, 2 processes): %d x Linear(%ld, %ld) + head, AdamW, "
        "batch %ld per rank, %d thread(s) per rank, %d rounds x %d steps\n",
        a.layers, static_cast<long>(a.width), static_cast<long>(a.width),
        static_cast<long>(a.batch), a.threads, a.rounds, a.steps);
    const std::string kTime = "us_per_step=", kCpu = "cpu_us_per_step=", kBytes = "bytes=";
    auto values = cppfabric::bench::run_modes(flags, a.rounds, modes, {kTime, kCpu, kBytes});
    using cppfabric::bench::ratios;
    using cppfabric::bench::stats;
    const double ddp_t = stats(values["ddp"][kTime]).median;
    const double ddp_b = stats(values["ddp"][kBytes]).median;
    const double ddp_c = stats(values["ddp"][kCpu]).median;
    for (const auto& mode : modes) {
      const double t = stats(values[mode][kTime]).median;
      const double c = stats(values[mode][kCpu]).median;
      const double b = stats(values[mode][kBytes]).median;
      // Per round (the modes of one round ran back to back): min / max of mode/ddp.
      const auto per_round = stats(ratios(values[mode][kTime], values["ddp"][kTime]));
      std::printf(
          "%-11s %8.1f ms/step %8.1f cpu-ms/step %7.1f MB/rank   time %.2fx ddp (per round "
          "%.2f-%.2f)   cpu %.2fx ddp   memory %.3fx ddp\n",
          mode.c_str(), t / 1000.0, c / 1000.0, b / 1e6, t / ddp_t, per_round.min, per_round.max,
          c / ddp_c, b / ddp_b);
    }
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_sharded: %s\n", e.what());
    return 1;
  }
}
