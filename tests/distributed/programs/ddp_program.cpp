// A small DDP training program the distributed tests start for real: through fabric.launch()
// (self-spawn), a torchrun-style environment, `cppfabric run`, or mpirun. Each rank writes its
// final parameters to OUT/params_rank<R>.bin; checks that need several ranks (identical gradients,
// no_backward_sync) run inside and fail the process.
//
//   ddp_program --devices 2 --steps 4 --out DIR [--strategy ddp] [--accumulate 2] [--unused]
//               [--reference] [--kill-rank R --kill-step S] [--timeout-s T] [--launch-fn]
//               [--throw-step S [--throw-bypass]] [--bucket-cap-mb MB] [--no-bucket-view]
//               [--expect-bucket-view 0|1] [--launch-thread] [--ckpt-dir DIR]
// --throw-step S: before step S, one extra forward/backward whose backward throws midway (after
// fc2's gradients are ready); the program catches it, zeroes the gradients and trains on, so the
// result must equal a run without it. --throw-bypass: the step after the throw calls the module
// directly, not through Fabric, so only the reducer's gradient hooks can notice the interruption.
// --no-bucket-view: DDPOptions::gradient_as_bucket_view = false. --expect-bucket-view 1: checks
// that after each synchronised backward the gradients share the bucket's storage (0: they don't).
//
// --launch-thread calls fabric.launch() from a std::thread that ends before training starts.
// --ckpt-dir DIR resumes from DIR/last.ckpt when it exists and saves it after every step (model,
// optimizer, step), so a restarted run continues from its last complete checkpoint.
//
// Faults for the fault-matrix tests come from the environment:
//   CPPFABRIC_TEST_FAULT=ACTION@WHERE   ACTION: kill (SIGKILL), stop (SIGSTOP), throw, fsize (a
//                                        1 KiB file-size limit: the save's write fails as on a
//                                        full disk; with 'save' only);
//                                        WHERE: forward, backward (inside autograd, between the
//                                        gradient hooks), step (before optimizer.step()), save
//                                        (inside fabric.save, while the state is collected),
//                                        order (an extra collective: ACTION must be 'barrier')
//   CPPFABRIC_TEST_FAULT_RANK=R (default 1), CPPFABRIC_TEST_FAULT_STEP=S (default 1)
//   CPPFABRIC_TEST_FAULT_RESTART=K      only fault when TORCHELASTIC_RESTART_COUNT is K (unset: any)
#include <signal.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <torch/torch.h>
#include <unistd.h>

#include <chrono>
#include <cppfabric/cppfabric.hpp>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <stdexcept>
#include <string>
#include <thread>

#include "distributed/programs/program_utils.hpp"
#include "flags.hpp"

namespace {

using namespace cppfabric::testing;  // Flags; program_utils.hpp

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
  bool no_launch = false;
  bool launch_fn = false;
  bool launch_thread = false;
  std::string ckpt_dir;  // set: resume from / save to ckpt_dir/last.ckpt
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
  Flags()
      .add("--devices", &a.devices)
      .add("--strategy", &a.strategy)
      .add("--accelerator", &a.accelerator)
      .add("--num-nodes", &a.num_nodes)
      .add("--steps", &a.steps)
      .add("--batch", &a.batch)
      .add("--accumulate", &a.accumulate)
      .add("--world", &a.world)
      .add("--kill-rank", &a.kill_rank)
      .add("--kill-step", &a.kill_step)
      .add("--timeout-s", &a.timeout_s)
      .add("--throw-step", &a.throw_step)
      .add("--expect-bucket-view", &a.expect_bucket_view)
      .add("--bucket-cap-mb", &a.bucket_cap_mb)
      .add("--save-dir", &a.save_dir)
      .add("--ckpt-dir", &a.ckpt_dir)
      .add("--out", &a.out)
      .add("--unused", &a.unused)
      .add("--reference", &a.reference)
      .add("--no-launch", &a.no_launch)
      .add("--launch-fn", &a.launch_fn)
      .add("--no-bucket-view", &a.no_bucket_view)
      .add("--throw-bypass", &a.throw_bypass)
      .add("--launch-thread", &a.launch_thread)
      .read(argc, argv);
  return a;
}

int env_int_or(const char* name, int fallback) {
  const char* value = std::getenv(name);
  return value && *value ? std::stoi(value) : fallback;
}

// The fault CPPFABRIC_TEST_FAULT* asks for (see the top of this file).
struct Fault {
  std::string action;  // "" when none
  std::string where;
  int rank = 1;
  int step = 1;

  static Fault from_env() {
    Fault f;
    const char* spec = std::getenv("CPPFABRIC_TEST_FAULT");
    if (!spec || !*spec) return f;
    const std::string text = spec;
    const auto at = text.find('@');
    if (at == std::string::npos) {
      throw std::invalid_argument("CPPFABRIC_TEST_FAULT='" + text + "' must be ACTION@WHERE");
    }
    f.action = text.substr(0, at);
    f.where = text.substr(at + 1);
    if (f.action != "kill" && f.action != "stop" && f.action != "throw" && f.action != "barrier" &&
        f.action != "fsize") {
      throw std::invalid_argument("CPPFABRIC_TEST_FAULT action '" + f.action +
                                  "' is not one of 'kill', 'stop', 'throw', 'barrier', 'fsize'");
    }
    if (f.where != "forward" && f.where != "backward" && f.where != "step" && f.where != "save" &&
        f.where != "order") {
      throw std::invalid_argument("CPPFABRIC_TEST_FAULT place '" + f.where +
                                  "' is not one of 'forward', 'backward', 'step', 'save', 'order'");
    }
    if ((f.where == "order") != (f.action == "barrier")) {
      throw std::invalid_argument("CPPFABRIC_TEST_FAULT: 'barrier' goes with 'order' only");
    }
    if (f.action == "fsize" && f.where != "save") {
      throw std::invalid_argument("CPPFABRIC_TEST_FAULT: 'fsize' goes with 'save' only");
    }
    f.rank = env_int_or("CPPFABRIC_TEST_FAULT_RANK", 1);
    f.step = env_int_or("CPPFABRIC_TEST_FAULT_STEP", 1);
    const int restart = env_int_or("CPPFABRIC_TEST_FAULT_RESTART", -1);
    if (restart >= 0 && env_int_or("TORCHELASTIC_RESTART_COUNT", 0) != restart) f.action.clear();
    return f;
  }

  bool armed(const char* place, int current_rank, int current_step) const {
    return !action.empty() && where == place && rank == current_rank && step == current_step;
  }

  // Runs the fault (kill and stop do not return while the process is stopped or dead).
  void fire(int current_rank, int current_step) const {
    std::fprintf(stderr, "[rank %d] fault: %s at %s, step %d\n", current_rank, action.c_str(),
                 where.c_str(), current_step);
    std::fflush(stderr);
    if (action == "kill") ::raise(SIGKILL);
    if (action == "stop") ::raise(SIGSTOP);
    if (action == "fsize") {
      // Writes past 1 KiB of a file now fail with EFBIG (instead of SIGXFSZ), as on a full disk:
      // the checkpoint (several KiB) cannot be written, this rank's short log file still can.
      ::signal(SIGXFSZ, SIG_IGN);
      const rlimit limit{1024, 1024};
      ::setrlimit(RLIMIT_FSIZE, &limit);
    }
    if (action == "throw") {
      throw std::runtime_error("injected fault at " + where + ", step " +
                               std::to_string(current_step));
    }
  }
};

// Part of the saved state: collecting it runs the 'save' fault on its rank and step.
struct SaveFaultPoint : cppfabric::Stateful {
  const Fault* fault = nullptr;
  int rank = 0;
  int step = 0;
  cppfabric::Value state_dict() const override {
    if (fault->armed("save", rank, step)) fault->fire(rank, step);
    return cppfabric::Value::dict({{"step", static_cast<int64_t>(step)}});
  }
  void load_state_dict(const cppfabric::Value&) override {}
};

bool file_exists(const std::string& path) {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0;
}

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

  const Fault fault = Fault::from_env();
  int start_step = 0;
  const std::string ckpt = args.ckpt_dir.empty() ? "" : args.ckpt_dir + "/last.ckpt";
  if (!ckpt.empty() && file_exists(ckpt)) {
    auto remainder = fabric.load(ckpt, {{"model", net}, {"optimizer", opt}});
    start_step = static_cast<int>(remainder.get<int64_t>("step"));
    std::fprintf(stderr, "[rank %d] resumed from %s at step %d\n", rank, ckpt.c_str(), start_step);
  }

  const int rows = args.reference ? world * args.batch : args.batch;
  const int first = args.reference ? 0 : rank * args.batch;
  for (int step = start_step; step < args.steps; ++step) {
    if (step == args.kill_step && rank == args.kill_rank) {
      std::fprintf(stderr, "[rank %d] killing myself at step %d\n", rank, step);
      std::fflush(stderr);
      ::raise(SIGKILL);
    }
    if (step == args.throw_step) {
      opt.zero_grad();
      if (!backward_throws(fabric, net, model->throw_in_backward, step, rows, 8)) {
        return fail(fabric, "the injected backward failure did not propagate");
      }
      if (!model->fc2->weight.grad().defined() || model->fc1->weight.grad().defined()) {
        return fail(fabric, "the backward was not interrupted between fc2 and fc1");
      }
    }
    if (fault.armed("order", rank, step)) {
      fault.fire(rank, step);
      fabric.barrier();  // a collective the other ranks do not run
    }
    opt.zero_grad();
    for (int micro = 0; micro < args.accumulate; ++micro) {
      auto [x, y] = micro_batch(fabric, step, micro, world * args.batch, first, rows, 8, 4);
      const bool last = micro + 1 == args.accumulate;
      auto guard = fabric.no_backward_sync(net, /*enabled=*/!last);
      if (fault.armed("forward", rank, step)) fault.fire(rank, step);
      // --throw-bypass: the step after the interrupted backward skips Fabric's forward.
      auto output = step == args.throw_step && args.throw_bypass ? model->forward(x) : net(x);
      if (fault.armed("backward", rank, step)) {
        // fc1's gradient is computed after fc2's (whose hooks have already run): the fault lands
        // in the middle of the backward pass.
        model->fc1->weight.register_hook([&fault, rank, step](torch::Tensor grad) {
          fault.fire(rank, step);
          return grad;
        });
      }
      auto loss = torch::mse_loss(output, y);
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
    if (fault.armed("step", rank, step)) fault.fire(rank, step);
    opt.step();
    if (!ckpt.empty() || fault.where == "save") {
      SaveFaultPoint point;
      point.fault = &fault;
      point.rank = rank;
      point.step = step;
      const std::string path = ckpt.empty() ? args.out + "/fault.ckpt" : ckpt;
      fabric.save(path, {{"model", net},
                         {"optimizer", opt},
                         {"step", static_cast<int64_t>(step + 1)},
                         {"fault_point", point}});
    }
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
  write_params(model->parameters(), args.out, rank);
  fabric.barrier();
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  return cppfabric::testing::main_or_error("ddp_program", [&] {
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
    } else if (args.launch_thread) {
      // The launching thread ends here; the other ranks must live on.
      std::exception_ptr error;
      std::thread([&] {
        try {
          fabric.launch();
        } catch (...) {
          error = std::current_exception();
        }
      }).join();
      if (error) std::rethrow_exception(error);
    } else if (!args.no_launch && !std::getenv("LT_CLI_USED")) {
      fabric.launch();
    }
    return train(fabric, args);
  });
}
