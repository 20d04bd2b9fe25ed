// The sharded-training program the distributed tests start as real processes: trains a small
// model with AdamW under DDP, FSDP (three sharding strategies) or ZeRO (stages 1 and 2) and writes
// each rank's full parameters to OUT/params_rank<R>.bin, so the test can compare strategies.
//
//   shard_program --strategy fsdp --devices 2 --steps 4 --out DIR [--sharding SHARD_GRAD_OP]
//                 [--precision bf16-mixed] [--accumulate 3] [--clip 0.5] [--inner]
//                 [--bucket N] [--memory] [--global-batch G] [--save-dir D --save-step K]
//                 [--load-dir D] [--form sharded|full] [--scaler [--inf-step K]]
//                 [--param-dtype bf16] [--reduce-dtype f32|bf16] [--buffer-dtype bf16 --bn]
// --inner: the model declares two FSDPUnit submodules (inner units). --bucket N: ZeRO's
// reduce_bucket_size in elements (several buckets, overlapped). --memory: a 52M-parameter model of
// 8 inner units; prints per-rank byte counts ("MEM ...") taken from the tensors between steps.
// --global-batch G: each rank takes G/N rows, so runs at different world sizes train alike (for
// checkpoints saved at one world size and resumed at another). --save-dir/--save-step: fabric.save
// of model, optimizer and step into D/ckpt after step K; --load-dir: fabric.load from D/ckpt and
// continue from the saved step. --form: FSDP's state_dict_type. --scaler: "16-mixed" on the CPU
// with a GradScaler; --inf-step K: at step K element 0 of the first parameter's gradient is inf on
// every rank (after sharding only its owner sees it: the ranks must still agree to skip).
// --param-dtype/--reduce-dtype: under fsdp, FSDPOptions::mixed_precision; under any other strategy
// the reference FSDP must equal: the Linear layers compute with their weights (and the input)
// cast to the param dtype, and the averaged gradients are rounded to the reduce dtype.
// --bn adds a BatchNorm1d (buffers) after fc1; --buffer-dtype sets mixed_precision's
// buffer_dtype; the program prints the buffers' dtypes after setup, in a "full" checkpoint and
// after loading it ("BUFFERS ...").
// Activation checkpointing: --ac-model trains 3 residual MLP units (8 -> --hidden -> 8, dropout
// --dropout) and an outer head; --ac all|types|NAME[,NAME]: FSDP's activation_checkpointing_policy
// (every unit, checkpoint_module_types<MlpBlockImpl>(), or the named units "block0".."block2");
// --act-memory: prints "ACT rank=R bytes=N", the CPU bytes the first forward allocated that are
// still allocated when it returns (what the graph keeps); --ac-bad: a unit whose forward returns a
// tuple, with --ac all (must fail with a clear error); --ac-nested: like --ac-model with each
// unit's fc2 an inner unit of its own ("block0.fc2").
#include <c10/core/Allocator.h>
#include <c10/core/CPUAllocator.h>
#include <c10/core/impl/alloc_cpu.h>
// --accelerator cpu|cuda (default cpu). --offload: FSDPOptions::cpu_offload; --check-offload
// prints where the optimizer's parameters, their gradients and its state live after training
// ("OFFLOAD rank=R params=<device> pinned=<0|1> grads=<device> optim=<device>", the first
// non-empty tensor of each; pinned: every parameter's).
// --num-nodes N: Fabric's num_nodes (start one program per node with NODE_RANK, MASTER_ADDR and
// MASTER_PORT set). --mesh R,S: FSDPOptions::device_mesh {R, S} (with --sharding HYBRID_SHARD).
// --throw-step S: before step S, one extra forward/backward whose backward throws midway (after
// the gradients of fc2 and mid, before fc1's: with --inner their units' collectives are already
// launched); the gradients are zeroed and training goes on, so the result must equal a run
// without it. --throw-no-zero: the gradients of the previous step are still there when it throws
// (zeroed only by the next step's zero_grad).
#include <torch/torch.h>

#include <atomic>
#include <cppfabric/cppfabric.hpp>
#include <cppfabric/strategies/fsdp_unit.hpp>
#include <cstdio>
#include <limits>
#include <map>
#include <mutex>
#include <optional>
#include <set>
#include <stdexcept>
#include <string>
#include <thread>
#include <type_traits>
#include <vector>

#include "distributed/programs/program_utils.hpp"
#include "flags.hpp"
#include "linear_stack.hpp"

namespace {

using cppfabric::strategies::FSDPUnit;
using namespace cppfabric::testing;  // Flags; program_utils.hpp

struct Args {
  std::string strategy = "ddp";
  std::string sharding = "FULL_SHARD";
  std::string devices = "2";
  std::string precision = "32-true";
  int steps = 4;
  int batch = 4;
  int accumulate = 1;
  double clip = 0;
  bool inner = false;
  int64_t bucket = 0;
  bool memory = false;
  int global_batch = 0;  // > 0: rows per step over all ranks (each rank takes its 1/N)
  std::string save_dir;  // set: save model + optimizer + step after step `save_step`
  int save_step = 0;
  std::string load_dir;  // set: resume from it before training
  std::string form = "sharded";
  bool scaler = false;  // "16-mixed" on the CPU with a GradScaler("cpu")
  int inf_step = -1;    // at this step the first element of the first parameter's grad is inf
  std::string param_dtype, reduce_dtype, buffer_dtype;  // "", "f32", "bf16", "f16"
  bool bn = false;
  int throw_step = -1;         // before this step, a backward that throws midway
  bool throw_no_zero = false;  // the gradients are zeroed only after the throwing backward
  std::string out = ".";
  bool ac_model = false;  // residual MLP units (activation checkpointing tests)
  std::string ac;         // "" (off), "all", "types" or unit names, comma-separated
  int hidden = 47;
  double dropout = 0;
  bool act_memory = false;
  bool ac_bad = false;
  bool ac_nested = false;
  int num_nodes = 1;
  std::vector<int> mesh;  // FSDPOptions::device_mesh
  std::string accelerator = "cpu";
  bool offload = false;
  bool check_offload = false;
};

std::optional<c10::ScalarType> dtype_arg(const std::string& v) {
  if (v.empty()) return std::nullopt;
  if (v == "f32") return torch::kFloat32;
  if (v == "bf16") return torch::kBFloat16;
  if (v == "f16") return torch::kFloat16;
  throw std::invalid_argument("dtype '" + v + "': valid choices are f32, bf16, f16");
}

Args parse(int argc, char** argv) {
  Args a;
  const std::vector<std::string> dtypes = {"f32", "bf16", "f16"};
  Flags()
      .add("--strategy", &a.strategy)
      .add("--sharding", &a.sharding)
      .add("--devices", &a.devices)
      .add("--precision", &a.precision)
      .add("--steps", &a.steps)
      .add("--batch", &a.batch)
      .add("--accumulate", &a.accumulate)
      .add("--clip", &a.clip)
      .add("--bucket", &a.bucket)
      .add("--out", &a.out)
      .add("--global-batch", &a.global_batch)
      .add("--save-dir", &a.save_dir)
      .add("--save-step", &a.save_step)
      .add("--load-dir", &a.load_dir)
      .add("--form", &a.form)
      .add("--inf-step", &a.inf_step)
      .add("--param-dtype", &a.param_dtype, dtypes)
      .add("--reduce-dtype", &a.reduce_dtype, dtypes)
      .add("--buffer-dtype", &a.buffer_dtype, dtypes)
      .add("--ac", &a.ac)
      .add("--hidden", &a.hidden)
      .add("--dropout", &a.dropout)
      .add("--num-nodes", &a.num_nodes)
      .add("--accelerator", &a.accelerator)
      .add("--throw-step", &a.throw_step)
      .add("--mesh", &a.mesh)
      .add("--inner", &a.inner)
      .add("--memory", &a.memory)
      .add("--scaler", &a.scaler)
      .add("--throw-no-zero", &a.throw_no_zero)
      .add("--bn", &a.bn)
      .add("--offload", &a.offload)
      .add("--check-offload", &a.check_offload)
      .add("--ac-model", &a.ac_model)
      .add("--act-memory", &a.act_memory)
      .add("--ac-bad", &a.ac_bad)
      .add("--ac-nested", &a.ac_nested)
      .read(argc, argv);
  if (!a.mesh.empty() && a.mesh.size() != 2) {
    throw std::invalid_argument("--mesh takes R,S (two sizes), got " +
                                std::to_string(a.mesh.size()) + " numbers");
  }
  return a;
}

// 8 -> 15 -> 15 -> 4: 199 + 240 = 439 parameters with the middle layer (prime: never divisible
// by the world size); without --inner the same layers are plain Linear modules.
struct NetImpl : torch::nn::Module {
  NetImpl(bool inner, bool bn, std::optional<c10::ScalarType> emulate)
      : inner(inner), emulate(emulate) {
    if (inner) {
      u1 = register_module("fc1", FSDPUnit<torch::nn::LinearImpl>(8, 15));
      u2 = register_module("mid", FSDPUnit<torch::nn::LinearImpl>(15, 15));
    } else {
      fc1 = register_module("fc1", torch::nn::Linear(8, 15));
      mid = register_module("mid", torch::nn::Linear(15, 15));
    }
    if (bn) norm = register_module("norm", torch::nn::BatchNorm1d(15));
    fc2 = register_module("fc2", torch::nn::Linear(15, 4));
  }
  // The reference for FSDP's mixed precision: the layer computes in `emulate`.
  torch::Tensor linear(torch::nn::LinearImpl& layer, const torch::Tensor& x) {
    return torch::nn::functional::linear(x.to(*emulate), layer.weight.to(*emulate),
                                         layer.bias.to(*emulate));
  }
  torch::Tensor forward(const torch::Tensor& x) {
    torch::Tensor h;
    if (emulate) {
      h = torch::tanh(linear(inner ? *u1 : *fc1, x));
    } else {
      h = torch::tanh(inner ? u1(x) : fc1(x));
    }
    if (throw_in_backward) h = ThrowInBackward::apply(h);
    if (norm) h = norm(h);
    if (emulate) {
      h = torch::relu(linear(inner ? *u2 : *mid, h));
    } else {
      h = torch::relu(inner ? u2(h) : mid(h));
    }
    forward_dtype = fc2->weight.scalar_type();
    return emulate ? linear(*fc2, h) : fc2(h);
  }
  bool inner;
  bool throw_in_backward = false;
  std::optional<c10::ScalarType> emulate;
  c10::ScalarType forward_dtype = torch::kFloat32;  // fc2's weight during the last forward
  torch::nn::Linear fc1{nullptr}, mid{nullptr}, fc2{nullptr};
  torch::nn::BatchNorm1d norm{nullptr};
  FSDPUnit<torch::nn::LinearImpl> u1{nullptr}, u2{nullptr};
};
TORCH_MODULE(Net);

// 8 units of 2560 x 2560 (+ bias): 52.5M parameters; a small outer head.
using Big = cppfabric::testing::LinearStack<FSDPUnit<torch::nn::LinearImpl>>;

// x + fc2(dropout(gelu(fc1(x)))): GELU's input and fc2's input (batch x hidden each) are what
// autograd keeps per unit without checkpointing.
struct MlpBlockImpl : torch::nn::Module {
  MlpBlockImpl(int64_t dim, int64_t hidden, double p) {
    fc1 = register_module("fc1", torch::nn::Linear(dim, hidden));
    fc2 = register_module("fc2", torch::nn::Linear(hidden, dim));
    drop = register_module("drop", torch::nn::Dropout(p));
  }
  torch::Tensor forward(const torch::Tensor& x) { return x + fc2(drop(torch::gelu(fc1(x)))); }
  torch::nn::Linear fc1{nullptr}, fc2{nullptr};
  torch::nn::Dropout drop{nullptr};
};

// The same with fc2 an inner unit of its own (--ac-nested): checkpointed units inside
// checkpointed units ("block0.fc2").
struct NestedBlockImpl : torch::nn::Module {
  NestedBlockImpl(int64_t dim, int64_t hidden, double p) {
    fc1 = register_module("fc1", torch::nn::Linear(dim, hidden));
    fc2 = register_module("fc2", FSDPUnit<torch::nn::LinearImpl>(hidden, dim));
    drop = register_module("drop", torch::nn::Dropout(p));
  }
  torch::Tensor forward(const torch::Tensor& x) { return x + fc2(drop(torch::gelu(fc1(x)))); }
  torch::nn::Linear fc1{nullptr};
  FSDPUnit<torch::nn::LinearImpl> fc2{nullptr};
  torch::nn::Dropout drop{nullptr};
};

// A unit returning two tensors: cannot be checkpointed.
struct PairImpl : torch::nn::Module {
  PairImpl() { fc = register_module("fc", torch::nn::Linear(8, 8)); }
  std::tuple<torch::Tensor, torch::Tensor> forward(const torch::Tensor& x) {
    auto h = fc(x);
    return {h, torch::tanh(h)};
  }
  torch::nn::Linear fc{nullptr};
};

// The first unit takes the data batch (no input requires grad): its parameters must still get
// gradients through the checkpoint.
struct AcNetImpl : torch::nn::Module {
  AcNetImpl(int64_t hidden, double p, bool bad, bool nested) {
    for (int i = 0; i < 3; ++i) {
      const std::string name = "block" + std::to_string(i);
      if (nested) {
        nested_blocks.push_back(register_module(name, FSDPUnit<NestedBlockImpl>(8, hidden, p)));
      } else {
        blocks.push_back(register_module(name, FSDPUnit<MlpBlockImpl>(8, hidden, p)));
      }
    }
    if (bad) pair = register_module("pair", FSDPUnit<PairImpl>());
    head = register_module("head", torch::nn::Linear(8, 4));
  }
  torch::Tensor forward(torch::Tensor x) {
    for (auto& b : blocks) x = b(x);
    for (auto& b : nested_blocks) x = b(x);
    if (pair) {
      auto [a, b] = pair(x);
      x = a + b;
    }
    return head(x);
  }
  std::vector<FSDPUnit<MlpBlockImpl>> blocks;
  std::vector<FSDPUnit<NestedBlockImpl>> nested_blocks;
  FSDPUnit<PairImpl> pair{nullptr};
  torch::nn::Linear head{nullptr};
};
TORCH_MODULE(AcNet);

// Counts the bytes the calling thread allocates from the CPU allocator between open() and
// close() and that are still allocated at close() (--act-memory): what a forward leaves behind,
// untouched by other threads (Gloo's) allocating or freeing meanwhile. The context is the data
// pointer itself, as LibTorch's raw_allocate needs.
class CountingAllocator final : public c10::Allocator {
 public:
  c10::DataPtr allocate(size_t n) override {
    void* data = c10::alloc_cpu(n);
    const bool counted = open_.load() && std::this_thread::get_id() == thread_;
    if (data != nullptr) {
      std::lock_guard<std::mutex> lock(mutex_);
      sizes_[data] = counted ? static_cast<int64_t>(n) : 0;
    }
    if (counted) kept_ += static_cast<int64_t>(n);
    return {data, data, &CountingAllocator::release, c10::Device(c10::kCPU)};
  }
  c10::DeleterFnPtr raw_deleter() const override { return &CountingAllocator::release; }
  void copy_data(void* dest, const void* src, std::size_t count) const override {
    default_copy_data(dest, src, count);
  }
  static void open() {
    thread_ = std::this_thread::get_id();
    kept_ = 0;
    open_ = true;
  }
  static int64_t close() {
    open_ = false;
    return kept_.load();
  }

 private:
  static void release(void* data) {
    if (data == nullptr) return;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      auto it = sizes_.find(data);
      if (it != sizes_.end()) {
        kept_ -= it->second;
        sizes_.erase(it);
      }
    }
    c10::free_cpu(data);
  }
  static inline std::mutex mutex_;
  static inline std::map<void*, int64_t> sizes_;
  static inline std::atomic<int64_t> kept_{0};
  static inline std::atomic<bool> open_{false};
  static inline std::thread::id thread_;
};
CountingAllocator* counting_allocator = nullptr;

cppfabric::strategies::ActivationCheckpointingPolicy ac_policy(const std::string& spec) {
  using namespace cppfabric::strategies;
  if (spec.empty()) return nullptr;
  if (spec == "all") return checkpoint_all_units();
  if (spec == "types") return checkpoint_module_types<MlpBlockImpl>();
  std::set<std::string> names;
  std::size_t from = 0;
  while (from <= spec.size()) {
    const auto comma = spec.find(',', from);
    names.insert(spec.substr(from, comma == std::string::npos ? std::string::npos : comma - from));
    if (comma == std::string::npos) break;
    from = comma + 1;
  }
  return
      [names](const std::string& name, const torch::nn::Module&) { return names.count(name) > 0; };
}

std::shared_ptr<cppfabric::strategies::Strategy> make_strategy(const Args& a) {
  using namespace cppfabric::strategies;
  if (a.strategy == "fsdp") {
    FSDPOptions o{.sharding_strategy = a.sharding,
                  .state_dict_type = a.form,
                  .activation_checkpointing_policy = ac_policy(a.ac),
                  .device_mesh = a.mesh};
    o.cpu_offload = a.offload;
    if (!a.param_dtype.empty() || !a.reduce_dtype.empty() || !a.buffer_dtype.empty()) {
      o.mixed_precision = FSDPMixedPrecision{.param_dtype = dtype_arg(a.param_dtype),
                                             .reduce_dtype = dtype_arg(a.reduce_dtype),
                                             .buffer_dtype = dtype_arg(a.buffer_dtype)};
    }
    return std::make_shared<FSDPStrategy>(o);
  }
  if (a.strategy.rfind("deepspeed", 0) == 0 && a.bucket > 0) {
    ZeROOptions z;
    z.stage = a.strategy == "deepspeed_stage_1" ? 1 : 2;
    z.reduce_bucket_size = a.bucket;
    return std::make_shared<ZeROStrategy>(z);
  }
  return nullptr;
}

// Bytes of distinct storages reached from `tensors`, skipping those already in `seen`.
int64_t storage_bytes(const std::vector<at::Tensor>& tensors, std::set<const void*>& seen) {
  int64_t total = 0;
  for (const auto& t : tensors) {
    if (!t.defined()) continue;
    const void* key = t.storage().unsafeGetStorageImpl();
    if (!seen.insert(key).second) continue;
    total += static_cast<int64_t>(t.storage().nbytes());
  }
  return total;
}

template <typename Holder>
int train(cppfabric::Fabric& fabric, const Args& args, Holder model) {
  const int world = fabric.world_size();
  const int rank = fabric.global_rank();
  auto optimizer = std::make_shared<torch::optim::AdamW>(
      model->parameters(), torch::optim::AdamWOptions(1e-2).weight_decay(1e-2));
  auto [net, opt] = fabric.setup(model, optimizer);
  auto* sharding = dynamic_cast<cppfabric::strategies::ShardingStrategy*>(fabric.strategy().get());
  if constexpr (std::is_same_v<Holder, Net>) {
    if (model->norm && rank == 0) {
      std::printf("BUFFERS setup %s\n", c10::toString(model->norm->running_mean.scalar_type()));
    }
  }
  if (sharding && sharding->replicate_group()) {
    // HYBRID_SHARD: which global ranks this rank shards with and replicates with.
    auto text = [](const std::vector<int>& ranks) {
      std::string out;
      for (int r : ranks) out.append(out.empty() ? "" : ",").append(std::to_string(r));
      return out;
    };
    std::printf("GROUPS rank=%d shard=%s replicate=%s\n", rank,
                text(sharding->shard_group()->global_ranks()).c_str(),
                text(sharding->replicate_group()->global_ranks()).c_str());
    std::fflush(stdout);
  }
  const int in_features = args.memory ? 2560 : 8;
  const int out_features = 4;
  double last_loss = 0;
  int start = 0;
  if (!args.load_dir.empty()) {
    auto remainder = fabric.load(args.load_dir + "/ckpt", {{"model", net}, {"optimizer", opt}});
    start = static_cast<int>(remainder.template get<int64_t>("step"));
    if (rank == 0) std::printf("resumed at step %d\n", start);
  }
  int current_step = -1;
  if (args.inf_step >= 0) {
    // Before accumulation and reduction: only the rank whose shard holds element 0 sees the inf
    // after a reduce-scatter; DDP's all-reduce gives it to every rank.
    model->parameters()[0].register_hook([&current_step, &args](torch::Tensor grad) {
      if (current_step != args.inf_step) return grad;
      auto poisoned = grad.clone();
      poisoned.view({-1})[0] = std::numeric_limits<float>::infinity();
      return poisoned;
    });
  }
  const int rows = args.global_batch > 0 ? args.global_batch / world : args.batch;
  const int global_rows = args.global_batch > 0 ? args.global_batch : world * args.batch;
  for (int step = start; step < args.steps; ++step) {
    current_step = step;
    if constexpr (std::is_same_v<Holder, Net>) {
      if (step == args.throw_step) {
        if (!args.throw_no_zero) opt.zero_grad();
        if (!backward_throws(fabric, net, model->throw_in_backward, step, rows, in_features)) {
          throw std::runtime_error("the injected backward failure did not propagate");
        }
      }
    }
    if (sharding && args.memory) sharding->reset_peak_memory(*net.module());
    opt.zero_grad();
    for (int micro = 0; micro < args.accumulate; ++micro) {
      auto [x, y] = micro_batch(fabric, step, micro, global_rows, rank * rows, rows, in_features,
                                out_features);
      const bool last = micro + 1 == args.accumulate;
      auto guard = fabric.no_backward_sync(net, /*enabled=*/!last);
      const bool measure = counting_allocator && step == start && micro == 0;
      if (measure) CountingAllocator::open();
      auto pred = net(x);
      if (measure) {
        std::printf("ACT rank=%d bytes=%lld\n", rank,
                    static_cast<long long>(CountingAllocator::close()));
        std::fflush(stdout);
      }
      auto loss = torch::mse_loss(pred.to(torch::kFloat32), y);
      fabric.backward(loss);
      const auto reduce_dtype =
          dtype_arg(args.reduce_dtype.empty() ? args.param_dtype : args.reduce_dtype);
      if (last && args.strategy != "fsdp" && reduce_dtype) {
        // The reference: FSDP reduces in the reduce dtype (param_dtype's unless set), which is
        // exactly this rounding of the average with 2 ranks.
        torch::NoGradGuard no_grad;
        for (auto& p : model->parameters()) p.mutable_grad().copy_(p.grad().to(*reduce_dtype));
      }
      const at::Tensor mean_loss = fabric.all_reduce(loss.detach().clone());
      last_loss = mean_loss.item().toDouble();
    }
    if (args.clip > 0) {
      auto norm = fabric.clip_gradients(net, opt, {.max_norm = args.clip});
      if (rank == 0) std::printf("step %d grad norm %.8f\n", step, norm.template item<double>());
    }
    opt.step();
    if (!args.save_dir.empty() && step + 1 == args.save_step) {
      fabric.save(args.save_dir + "/ckpt",
                  {{"model", net}, {"optimizer", opt}, {"step", static_cast<int64_t>(step + 1)}});
    }
  }
  if constexpr (std::is_same_v<Holder, Net>) {
    if (rank == 0) {
      std::printf("DTYPES forward %s shard %s grad %s\n", c10::toString(model->forward_dtype),
                  c10::toString(model->fc2->weight.scalar_type()),
                  c10::toString(optimizer->param_groups()[0].params()[0].grad().scalar_type()));
    }
    if (model->norm) {
      // Saved in the buffers' original dtype; loading keeps buffer_dtype.
      torch::NoGradGuard no_grad;
      const auto before = model->norm->running_mean.to(torch::kFloat32);
      fabric.save(args.out + "/buffers_ckpt", {{"model", net}});
      model->norm->running_mean.fill_(7);
      fabric.load(args.out + "/buffers_ckpt", {{"model", net}});
      if (rank == 0) {
        const auto saved =
            cppfabric::checkpoint::TorchCheckpointIO().load_checkpoint(args.out + "/buffers_ckpt");
        const auto mean = saved.at(cppfabric::Value("model"))
                              .at(cppfabric::Value("norm.running_mean"))
                              .to_tensor();
        std::printf(
            "BUFFERS saved %s loaded %s equal %d\n", c10::toString(mean.scalar_type()),
            c10::toString(model->norm->running_mean.scalar_type()),
            static_cast<int>(torch::equal(model->norm->running_mean.to(torch::kFloat32), before)));
      }
    }
  }
  if (args.memory) {
    // Between steps: what this rank holds, counted from the tensors themselves.
    std::set<const void*> seen;
    std::vector<at::Tensor> params, grads, states;
    for (const auto& p : model->parameters()) params.push_back(p);
    for (auto& group : optimizer->param_groups()) {
      for (auto& p : group.params()) {
        params.push_back(p);
        grads.push_back(p.grad());
      }
    }
    for (const auto& p : model->parameters()) grads.push_back(p.grad());
    for (const auto& [key, state] : optimizer->state()) {
      if (auto* s = dynamic_cast<torch::optim::AdamWParamState*>(state.get())) {
        states.push_back(s->exp_avg());
        states.push_back(s->exp_avg_sq());
        if (s->max_exp_avg_sq().defined()) states.push_back(s->max_exp_avg_sq());
      }
    }
    const int64_t pb = storage_bytes(params, seen);
    const int64_t gb = storage_bytes(grads, seen);
    const int64_t sb = storage_bytes(states, seen);
    int64_t peak = 0, total = 0, unit = 0;
    if (sharding) {
      const auto m = sharding->memory_stats(*net.module());
      peak = m.peak_full_bytes;
      total = m.total_param_bytes;
      unit = m.largest_unit_bytes;
    }
    std::printf(
        "MEM rank=%d params=%lld grads=%lld optim=%lld peak_full=%lld total_params=%lld "
        "largest_unit=%lld\n",
        rank, static_cast<long long>(pb), static_cast<long long>(gb), static_cast<long long>(sb),
        static_cast<long long>(peak), static_cast<long long>(total), static_cast<long long>(unit));
    std::fflush(stdout);
  }
  if (args.check_offload) {
    auto where = [](const at::Tensor& t) { return t.defined() ? t.device().str() : "none"; };
    std::string params = "none", grads = "none", optim = "none";
    bool pinned = true;
    for (auto& group : optimizer->param_groups()) {
      for (auto& p : group.params()) {
        if (p.numel() == 0) continue;
        if (params == "none") params = where(p);
        if (grads == "none") grads = where(p.grad());
        pinned = pinned && p.is_pinned();
      }
    }
    for (const auto& [key, state] : optimizer->state()) {
      if (auto* s = dynamic_cast<torch::optim::AdamWParamState*>(state.get())) {
        if (optim == "none" && s->exp_avg().numel() > 0) optim = where(s->exp_avg());
      }
    }
    std::printf("OFFLOAD rank=%d params=%s pinned=%d grads=%s optim=%s\n", rank, params.c_str(),
                static_cast<int>(pinned), grads.c_str(), optim.c_str());
    std::fflush(stdout);
  }
  {
    cppfabric::Guard full;
    if (sharding) full = sharding->summon_full_params(*net.module());
    write_params(model->parameters(), args.out, rank);
  }
  if (rank == 0) std::printf("final loss %.10f\n", last_loss);
  if (args.scaler) {
    auto* mixed =
        dynamic_cast<cppfabric::precision::MixedPrecision*>(fabric.strategy()->precision().get());
    std::printf("rank %d scale %.1f\n", rank, mixed->scaler()->get_scale());
  }
  fabric.barrier();
  return 0;
}

int run(cppfabric::Fabric& fabric, const Args& args) {
  torch::manual_seed(42 + fabric.global_rank());  // different per rank: setup must broadcast
  if (args.memory) return train(fabric, args, Big(8, 2560, 4, cppfabric::testing::tanh, "block"));
  if (args.ac_model || args.ac_bad || args.ac_nested) {
    return train(fabric, args, AcNet(args.hidden, args.dropout, args.ac_bad, args.ac_nested));
  }
  const auto emulate = args.strategy == "fsdp" ? std::nullopt : dtype_arg(args.param_dtype);
  return train(fabric, args, Net(args.inner, args.bn, emulate));
}

}  // namespace

int main(int argc, char** argv) {
  return cppfabric::testing::main_or_error("shard_program", [&] {
    const Args args = parse(argc, argv);
    if (args.act_memory) {
      static CountingAllocator allocator;
      c10::SetCPUAllocator(&allocator, /*priority=*/100);
      counting_allocator = &allocator;
    }
    cppfabric::FabricOptions options{.accelerator = args.accelerator};
    options.devices = cppfabric::DevicesArg(args.devices);
    options.num_nodes = args.num_nodes;
    if (!args.scaler) options.precision = args.precision;
    if (args.scaler) {
      options.plugins = {std::make_shared<cppfabric::precision::MixedPrecision>(
          "16-mixed", "cpu", std::make_shared<cppfabric::precision::GradScaler>("cpu"))};
    }
    if (auto strategy = make_strategy(args)) {
      options.strategy = strategy;
    } else {
      options.strategy = args.strategy;
    }
    cppfabric::Fabric fabric(options);
    fabric.launch();
    return run(fabric, args);
  });
}
