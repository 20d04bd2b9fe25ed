// A small DDP training program the distributed tests start for real: through fabric.launch()
// (self-spawn), a torchrun-style environment, `cppfabric run`, or mpirun. Each rank writes its
// final parameters to OUT/params_rank<R>.bin; checks that need several ranks (identical gradients,
// no_backward_sync) run inside and fail the process.
//
//   ddp_program --devices 2 --steps 4 --out DIR [--strategy ddp] [--accumulate 2] [--unused]
//               [--reference] [--kill-rank R --kill-step S] [--timeout-s T] [--launch-fn]
//               [--throw-step S [--throw-bypass]] [--bucket-cap-mb MB] [--no-bucket-view]
//               [--expect-bucket-view 0|1]
// --throw-step S: before step S, one extra forward/backward whose backward throws midway (after
// fc2's gradients are ready); the program catches it, zeroes the gradients and trains on, so the
// result must equal a run without it. --throw-bypass: the step after the throw calls the module
// directly, not through Fabric, so only the reducer's gradient hooks can notice the interruption.
// --no-bucket-view: DDPOptions::gradient_as_bucket_view = false. --expect-bucket-view 1: checks
// that after each synchronised backward the gradients share the bucket's storage (0: they don't).
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
  int throw_step = -1;
  bool throw_bypass = false;
  double bucket_cap_mb = 0;  // > 0: DDPOptions with both bucket caps set to this
  bool no_bucket_view = false;
  int expect_bucket_view = -1;
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
    } else if (key == "--no-bucket-view") {
      a.no_bucket_view = true;
    } else if (key == "--throw-bypass") {
      a.throw_bypass = true;
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
    else if (k == "--throw-step")
      a.throw_step = std::stoi(v);
    else if (k == "--expect-bucket-view")
      a.expect_bucket_view = std::stoi(v);
    else if (k == "--bucket-cap-mb")
      a.bucket_cap_mb = std::stod(v);
    else if (k == "--save-dir")
      a.save_dir = v;
    else if (k == "--out")
      a.out = v;
    else
      throw std::invalid_argument("unknown flag " + k);
  }
  return a;
}

// Identity forward; its backward throws (an exception in the middle of a backward pass).
struct ThrowInBackward : torch::autograd::Function<ThrowInBackward> {
  static torch::Tensor forward(torch::autograd::AutogradContext*, const torch::Tensor& x) {
    return x.clone();
  }
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext*,
                                                 torch::autograd::variable_list) {
    throw std::runtime_error("injected failure in backward");
  }
};

struct NetImpl : torch::nn::Module {
  explicit NetImpl(bool with_unused) {
    fc1 = register_module("fc1", torch::nn::Linear(8, 16));
    fc2 = register_module("fc2", torch::nn::Linear(16, 4));
    if (with_unused) extra = register_module("extra", torch::nn::Linear(4, 4));
  }
  torch::Tensor forward(const torch::Tensor& x) {
    auto h = torch::relu(fc1(x));
    if (throw_in_backward) h = ThrowInBackward::apply(h);
    return fc2(h);
  }
  torch::nn::Linear fc1{nullptr}, fc2{nullptr}, extra{nullptr};
  bool throw_in_backward = false;
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
    if (step == args.throw_step) {
      opt.zero_grad();
      torch::manual_seed(500 + step);
      auto x = fabric.to_device(torch::randn({rows, 8}));
      model->throw_in_backward = true;
      auto loss = net(x).pow(2).mean();
      model->throw_in_backward = false;
      bool thrown = false;
      try {
        fabric.backward(loss);
      } catch (const std::exception& e) {
        thrown = std::string(e.what()).find("injected failure") != std::string::npos;
        if (!thrown) throw;
      }
      if (!thrown) return fail(fabric, "the injected backward failure did not propagate");
      if (!model->fc2->weight.grad().defined() || model->fc1->weight.grad().defined()) {
        return fail(fabric, "the backward was not interrupted between fc2 and fc1");
      }
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
      // --throw-bypass: the step after the interrupted backward skips Fabric's forward.
      auto out = step == args.throw_step && args.throw_bypass ? model->forward(x) : net(x);
      auto loss = torch::mse_loss(out, y);
      fabric.backward(loss);
      if (!args.reference && last && args.expect_bucket_view >= 0) {
        // One bucket holds every gradient (default caps): views share its storage.
        const bool shared = model->fc1->weight.grad().is_alias_of(model->fc2->weight.grad());
        if (shared != (args.expect_bucket_view == 1)) {
          return fail(fabric, shared ? "gradients are bucket views with gradient_as_bucket_view off"
                                     : "gradients are not bucket views");
        }
      }
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
      if (args.timeout_s > 0 || args.bucket_cap_mb > 0 || args.no_bucket_view) {
        cppfabric::strategies::DDPOptions ddp{
            .find_unused_parameters = args.strategy == "ddp_find_unused_parameters_true"};
        if (args.timeout_s > 0) ddp.timeout = std::chrono::seconds(args.timeout_s);
        ddp.gradient_as_bucket_view = !args.no_bucket_view;
        if (args.bucket_cap_mb > 0) {
          ddp.bucket_cap_mb = ddp.first_bucket_cap_mb = args.bucket_cap_mb;
        }
        options.strategy = std::make_shared<cppfabric::strategies::DDPStrategy>(ddp);
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
