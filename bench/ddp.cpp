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
#include <torch/torch.h>

#include <chrono>
#include <cppfabric/cppfabric.hpp>
#include <cstdio>
#include <string>
#include <vector>

#include "../tests/linear_stack.hpp"
#include "run_child.hpp"

namespace {

struct Args {
  int rounds = 7, steps = 20, threads = 1, layers = 4, single_threads = 0;
  int64_t batch = 64, width = 1024;
  std::string mode;  // empty: the driver
};

// layers x Linear(width, width) + head.
using Net = cppfabric::testing::LinearStack<torch::nn::Linear>;

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
  Net model(a.layers, a.width, 10, cppfabric::testing::relu, "l");
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

}  // namespace

int main(int argc, char** argv) {
  Args a;
  const std::vector<std::string> modes = {"single", "ddp", "ddp-copy", "ddp-after"};
  auto flags = cppfabric::bench::mode_flags(a, modes);
  flags.add("--single-threads", &a.single_threads);
  if (!flags.parse(argc, argv)) return 2;
  try {
    if (!a.mode.empty()) return child(a);
    std::printf(
        "DDP on CPU (Gloo, loopback): %d x Linear(%ld, %ld) + head, batch %ld per rank, "
        "%d thread(s) per rank, %d rounds x %d steps\n",
        a.layers, static_cast<long>(a.width), static_cast<long>(a.width),
        static_cast<long>(a.batch), a.threads, a.rounds, a.steps);
    const std::string kTime = "us_per_step=";
    auto values = cppfabric::bench::run_modes(flags, a.rounds, modes, {kTime});
    auto times = [&](const std::string& mode) { return values[mode][kTime]; };
    for (const auto& mode : modes) {
      const auto s = cppfabric::bench::stats(times(mode));
      std::printf("%-10s us/step min %9.1f median %9.1f max %9.1f\n", mode.c_str(), s.min, s.median,
                  s.max);
    }
    auto print = [](const char* what, const std::vector<double>& v) {
      const auto s = cppfabric::bench::stats(v);
      std::printf("%-48s min %.3f median %.3f max %.3f\n", what, s.min, s.median, s.max);
    };
    using cppfabric::bench::ratios;
    print("ratio 2-process DDP / one process (same batch)", ratios(times("ddp"), times("single")));
    print("ratio reduce-after-backward / overlapped", ratios(times("ddp-after"), times("ddp")));
    print("ratio gradient copies / bucket views", ratios(times("ddp-copy"), times("ddp")));
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_ddp: %s\n", e.what());
    return 1;
  }
  return 0;
}
