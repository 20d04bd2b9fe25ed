// A small DDP training program the distributed tests start for real: through fabric.launch()
// (self-spawn), a torchrun-style environment, `cppfabric run`, or mpirun. Each rank writes its
// final parameters to OUT/params_rank<R>.bin; checks that need several ranks (identical gradients,
// no_backward_sync) run inside and fail the process.
//
//   ddp_program --devices 2 --steps 4 --out DIR [--strategy ddp] [--accumulate 2] [--unused]
//               [--reference] [--kill-rank R --kill-step S] [--timeout-s T] [--launch-fn]
#include <signal.h>
#include <torch/torch.h>
#include <unistd.h>

#include <chrono>
#include <cppfabric/cppfabric.hpp>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <map>
#include <string>

namespace {

struct Args {
  std::string devices = "2";
  std::string strategy = "ddp";
  std::string accelerator = "cpu";
  int steps = 4;
  int batch = 4;  // rows per rank per micro-batch
  int accumulate = 1;
  bool unused = false;
  bool reference = false;  // one process over everyone's rows
  int world = 2;           // the world size the data is generated for (reference mode)
  int num_nodes = 1;
  int kill_rank = -1;
  int kill_step = -1;
  int timeout_s = 0;
  bool launch = true;
  bool launch_fn = false;
  std::string out = ".";
  std::string save_dir;  // set: rank 0 saves model + optimizer, every rank loads and compares
};

Args parse(int argc, char** argv) {
  Args a;
  std::map<std::string, std::string> kv;
  for (int i = 1; i < argc; ++i) {
    std::string key = argv[i];
    if (key == "--unused") {
      a.unused = true;
    } else if (key == "--reference") {
      a.reference = true;
    } else if (key == "--no-launch") {
      a.launch = false;
    } else if (key == "--launch-fn") {
      a.launch_fn = true;
    } else if (i + 1 < argc) {
      kv[key] = argv[++i];
    } else {
      throw std::invalid_argument("missing value for " + key);
    }
  }
  for (const auto& [k, v] : kv) {
    if (k == "--devices")
      a.devices = v;
    else if (k == "--strategy")
      a.strategy = v;
    else if (k == "--accelerator")
      a.accelerator = v;
    else if (k == "--num-nodes")
      a.num_nodes = std::stoi(v);
    else if (k == "--steps")
      a.steps = std::stoi(v);
    else if (k == "--batch")
      a.batch = std::stoi(v);
    else if (k == "--accumulate")
      a.accumulate = std::stoi(v);
    else if (k == "--world")
      a.world = std::stoi(v);
    else if (k == "--kill-rank")
      a.kill_rank = std::stoi(v);
    else if (k == "--kill-step")
      a.kill_step = std::stoi(v);
    else if (k == "--timeout-s")
      a.timeout_s = std::stoi(v);
    else if (k == "--save-dir")
      a.save_dir = v;
    else if (k == "--out")
      a.out = v;
    else
      throw std::invalid_argument("unknown flag " + k);
  }
  return a;
}

struct NetImpl : torch::nn::Module {
  explicit NetImpl(bool with_unused) {
    fc1 = register_module("fc1", torch::nn::Linear(8, 16));
    fc2 = register_module("fc2", torch::nn::Linear(16, 4));
    if (with_unused) extra = register_module("extra", torch::nn::Linear(4, 4));
  }
  torch::Tensor forward(const torch::Tensor& x) { return fc2(torch::relu(fc1(x))); }
  torch::nn::Linear fc1{nullptr}, fc2{nullptr}, extra{nullptr};
};
TORCH_MODULE(Net);

// The flattened gradients of every parameter (zeros where undefined).
torch::Tensor flat_grads(torch::nn::Module& m) {
  std::vector<torch::Tensor> parts;
  for (const auto& p : m.parameters()) {
    parts.push_back(p.grad().defined() ? p.grad().reshape({-1})
                                       : torch::zeros({p.numel()}, p.options()));
  }
  return torch::cat(parts);
}

int fail(const cppfabric::Fabric& fabric, const std::string& what) {
  std::fprintf(stderr, "[rank %d] CHECK FAILED: %s\n", fabric.global_rank(), what.c_str());
  return 3;
}

int train(cppfabric::Fabric& fabric, const Args& args) {
  const int world = args.reference ? args.world : fabric.world_size();
  const int rank = fabric.global_rank();
  // Different initial weights per rank: DDP must broadcast rank 0's.
  torch::manual_seed(42 + (args.reference ? 0 : rank));
  Net model(args.unused);
  auto optimizer = std::make_shared<torch::optim::SGD>(model->parameters(),
                                                       torch::optim::SGDOptions(0.1).momentum(0.9));
  auto [net, opt] = fabric.setup(model, optimizer);

  const int rows = args.reference ? world * args.batch : args.batch;
  const int first = args.reference ? 0 : rank * args.batch;
  for (int step = 0; step < args.steps; ++step) {
    if (step == args.kill_step && rank == args.kill_rank) {
      std::fprintf(stderr, "[rank %d] killing myself at step %d\n", rank, step);
      std::fflush(stderr);
      ::raise(SIGKILL);
    }
    opt.zero_grad();
    for (int micro = 0; micro < args.accumulate; ++micro) {
      // The same global data on every rank; each takes its own rows.
      torch::manual_seed(1000 + step * 10 + micro);
      auto x = torch::randn({world * args.batch, 8});
      auto y = torch::randn({world * args.batch, 4});
      x = fabric.to_device(x.narrow(0, first, rows));
      y = fabric.to_device(y.narrow(0, first, rows));
      const bool last = micro + 1 == args.accumulate;
      auto guard = fabric.no_backward_sync(net, /*enabled=*/!last);
      auto loss = torch::mse_loss(net(x), y);
      fabric.backward(loss);
      if (!args.reference && world > 1) {
        auto gathered = fabric.all_gather(flat_grads(*net.module()));
        const double spread = (gathered - gathered[0]).abs().max().item<double>();
        if (last && spread != 0.0) {
          return fail(fabric, "gradients differ between ranks after a synchronised backward");
        }
        if (!last && spread == 0.0) {
          return fail(fabric, "gradients were synchronised inside no_backward_sync");
        }
      }
    }
    opt.step();
  }
  if (args.unused && !args.reference) {
    if (model->extra->weight.grad().defined()) {
      return fail(fabric, "the unused parameter received a gradient");
    }
  }
  if (!args.save_dir.empty()) {
    const std::string path = args.save_dir + "/ddp.ckpt";
    fabric.save(path, {{"model", net}, {"optimizer", opt}, {"steps", args.steps}});
    torch::manual_seed(7 + rank);
    Net fresh(args.unused);
    auto fresh_opt = std::make_shared<torch::optim::SGD>(
        fresh->parameters(), torch::optim::SGDOptions(0.1).momentum(0.9));
    auto [fresh_net, fresh_fabric_opt] = fabric.setup(fresh, fresh_opt);
    auto remainder = fabric.load(path, {{"model", fresh_net}, {"optimizer", fresh_fabric_opt}});
    if (remainder.get<int64_t>("steps") != args.steps) return fail(fabric, "steps not restored");
    auto a = model->parameters(), b = fresh->parameters();
    for (std::size_t i = 0; i < a.size(); ++i) {
      if (!torch::equal(a[i].cpu(), b[i].cpu())) return fail(fabric, "loaded weights differ");
    }
  }
  std::vector<torch::Tensor> parts;
  for (const auto& p : model->parameters()) parts.push_back(p.detach().reshape({-1}));
  auto flat = torch::cat(parts).to(torch::kCPU, torch::kFloat64).contiguous();
  const std::string path = args.out + "/params_rank" + std::to_string(rank) + ".bin";
  std::ofstream out(path, std::ios::binary);
  out.write(reinterpret_cast<const char*>(flat.data_ptr<double>()),
            static_cast<std::streamsize>(flat.numel() * sizeof(double)));
  fabric.barrier();
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    const Args args = parse(argc, argv);
    std::shared_ptr<cppfabric::strategies::Strategy> strategy;
    cppfabric::FabricOptions options{.accelerator = args.accelerator};
    if (args.reference) {
      options.devices = 1;
      options.strategy = "single_device";
    } else {
      options.devices = cppfabric::DevicesArg(args.devices);
      options.num_nodes = args.num_nodes;
      if (args.timeout_s > 0) {
        options.strategy =
            std::make_shared<cppfabric::strategies::DDPStrategy>(cppfabric::strategies::DDPOptions{
                .find_unused_parameters = args.strategy == "ddp_find_unused_parameters_true",
                .timeout = std::chrono::seconds(args.timeout_s)});
      } else {
        options.strategy = args.strategy;
      }
    }
    cppfabric::Fabric fabric(options);
    if (args.launch_fn) {
      const int result = fabric.launch([&](cppfabric::Fabric& f) { return 40 + f.world_size(); });
      if (fabric.global_rank() == 0) std::printf("launch_fn returned %d\n", result);
    } else if (args.launch && !std::getenv("LT_CLI_USED")) {
      fabric.launch();
    }
    return train(fabric, args);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "ddp_program error: %s\n", e.what());
    return 1;
  }
}
