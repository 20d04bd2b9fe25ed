#include "cppfabric/fabric.hpp"

#include <torch/torch.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <unordered_set>

#include "backward_scope.hpp"
#include "connector.hpp"
#include "cppfabric/accelerators/accelerator.hpp"
#include "cppfabric/checkpoint/torch_pickle.hpp"
#include "cppfabric/data/collection.hpp"
#include "cppfabric/launchers/subprocess_script.hpp"
#include "cppfabric/loggers/logger.hpp"
#include "cppfabric/precision/precision.hpp"
#include "cppfabric/utilities/rank_zero.hpp"
#include "cppfabric/utilities/seed.hpp"
#include "cppfabric/utilities/terminate.hpp"
#include "data/map_tensors.hpp"

namespace cppfabric {

struct Fabric::Impl {
  explicit Impl(FabricOptions options)
      : connector(options),
        callbacks(std::make_shared<std::vector<std::shared_ptr<Callback>>>(options.callbacks)),
        loggers(options.loggers) {}

  detail::Connector connector;
  std::shared_ptr<std::vector<std::shared_ptr<Callback>>> callbacks;
  std::vector<std::shared_ptr<loggers::Logger>> loggers;
  bool launched = false;
  int models_setup = 0;
  /// Raw modules already given to the strategy, and what it returned for them (weak: the user
  /// owns both). Setting up the same module again reuses the wrapping, on every strategy.
  std::vector<std::pair<std::weak_ptr<torch::nn::Module>, std::weak_ptr<torch::nn::Module>>>
      set_up_modules;
};

Fabric::Fabric(FabricOptions options) : impl_(std::make_unique<Impl>(std::move(options))) {
  utilities::install_terminate_handler();  // an escaping exception: once per rank, exit 1
  for (const auto& callback : *impl_->callbacks) {
    if (!callback) throw TypeError("FabricOptions::callbacks holds a null callback pointer.");
  }
  for (const auto& logger : impl_->loggers) {
    if (!logger) throw TypeError("FabricOptions::loggers holds a null logger pointer.");
  }
  utilities::set_rank(global_rank(), world_size());
  if (detail::using_cli()) {
    // `cppfabric run` started every process: the launcher only checks the settings.
    if (auto launcher = strategy()->launcher()) launcher->launch();
    strategy()->setup_environment();
    impl_->launched = true;
  }
}

Fabric::~Fabric() = default;

// ------------------------------------------------------------------ launch

void Fabric::launch() {
  if (detail::using_cli()) {
    throw std::runtime_error(
        "This program was launched through the CLI (`cppfabric run`), and processes have already "
        "been created. Calling `.launch()` again is not allowed: remove the call.");
  }
  if (impl_->launched) return;
  impl_->launched = true;
  if (auto launcher = strategy()->launcher()) launcher->launch();
  strategy()->setup_environment();
}

void Fabric::validate_launched(const char* what) const {
  if (!impl_->launched && strategy()->is_parallel()) {
    throw std::runtime_error(fmt::format(
        "To use Fabric with more than one device, you must call `.launch()` (before `{}`) or use "
        "the CLI: `cppfabric run --help`.",
        what));
  }
}

// ------------------------------------------------------------------ setup

void Fabric::throw_already_setup(const char* what, const char* method) {
  throw std::invalid_argument(
      fmt::format("{} should be passed only once to the `{}` method.", what, method));
}

void Fabric::throw_no_optimizers() {
  throw std::invalid_argument("`setup_optimizers` requires at least one optimizer as input.");
}

namespace {
void check_optimizers_belong(
    torch::nn::Module& module,
    const std::vector<std::shared_ptr<torch::optim::Optimizer>>& optimizers, const char* method) {
  std::unordered_set<const void*> owned;
  for (const auto& p : module.parameters()) owned.insert(p.unsafeGetTensorImpl());
  for (std::size_t i = 0; i < optimizers.size(); ++i) {
    if (!optimizers[i]) {
      throw std::invalid_argument(fmt::format("Optimizer {} passed to `{}` is null.", i, method));
    }
    for (const auto& group : optimizers[i]->param_groups()) {
      for (const auto& param : group.params()) {
        if (owned.count(param.unsafeGetTensorImpl()) == 0) {
          throw std::invalid_argument(fmt::format(
              "Optimizer {} passed to `{}` holds a parameter (shape {}) that is not a parameter of "
              "the module being set up. Create the optimizer from this module's parameters(), e.g. "
              "`std::make_shared<torch::optim::SGD>(model->parameters(), ...)`.",
              i, method, fmt::format("{}", param.sizes().vec())));
        }
      }
    }
  }
}
}  // namespace

std::shared_ptr<torch::nn::Module> Fabric::setup_module_impl(
    const std::shared_ptr<torch::nn::Module>& module,
    const std::vector<std::shared_ptr<torch::optim::Optimizer>>& optimizers, bool move_to_device,
    const char* method) {
  validate_launched(method);
  if (!module)
    throw std::invalid_argument(fmt::format("The module passed to `{}` is null.", method));
  check_optimizers_belong(*module, optimizers, method);
  const auto& strat = strategy();
  strat->precision()->convert_module(*module);
  if (move_to_device) {
    // Warn when the parameters are spread over several devices, as Python does.
    std::optional<std::pair<std::string, c10::Device>> first;
    int spread = 0;
    for (const auto& item : module->named_parameters()) {
      const auto device = item.value().device();
      if (!first) {
        first.emplace(item.key(), device);
      } else if (device != first->second) {
        if (spread++ == 0) {
          utilities::rank_zero_warn(fmt::format(
              "The model passed to `Fabric.{}()` has parameters on different devices (for example "
              "'{}' on {} and '{}' on {}). Since move_to_device is true, all parameters will be "
              "moved to {}.",
              method, first->first, first->second.str(), item.key(), device.str(),
              this->device().str()));
        }
      }
    }
    move_module(*module);
  }
  // Python accepts the same raw module twice on every strategy; wrapping it a second time would
  // register a second set of gradient hooks (DDP), so the first wrapping is reused.
  std::shared_ptr<torch::nn::Module> forward;
  for (const auto& [original, wrapped] : impl_->set_up_modules) {
    if (original.lock() == module) forward = wrapped.lock();
  }
  if (!forward) {
    forward = strat->setup_module(module);
    std::erase_if(impl_->set_up_modules, [](const auto& entry) { return entry.first.expired(); });
    impl_->set_up_modules.emplace_back(module, forward);
  }
  for (const auto& optimizer : optimizers) strat->setup_optimizer(*optimizer);
  ++impl_->models_setup;
  return forward;
}

void Fabric::validate_setup_optimizers(
    const std::vector<std::shared_ptr<torch::optim::Optimizer>>& optimizers) {
  validate_launched("setup_optimizers");
  for (const auto& optimizer : optimizers) {
    if (!optimizer)
      throw std::invalid_argument("An optimizer passed to `setup_optimizers` is null.");
    for (const auto& group : optimizer->param_groups()) {
      for (const auto& param : group.params()) {
        if (param.is_meta()) {
          throw std::runtime_error(
              "The optimizer has references to the model's meta-device parameters. Materializing "
              "them is currently not supported. Create the optimizer after setting up the model, "
              "then call `fabric.setup_optimizers(optimizer)`.");
        }
      }
    }
  }
  for (const auto& optimizer : optimizers) strategy()->setup_optimizer(*optimizer);
}

namespace {
/// "16-true" keeps Adam's state in float16, where the default eps (1e-8) rounds to 0: once a
/// second moment underflows, the update divides by zero and training stalls or turns NaN.
template <typename Opt, typename Options>
void warn_half_eps(const torch::optim::Optimizer& optimizer, const char* name) {
  if (dynamic_cast<const Opt*>(&optimizer) == nullptr) return;
  for (const auto& group : optimizer.param_groups()) {
    const double eps = static_cast<const Options&>(group.options()).eps();
    if (eps < 6e-8) {  // below float16's smallest positive (subnormal) value, 5.96e-8
      utilities::rank_zero_warn(fmt::format(
          "precision='16-true' with {}(eps={}): eps rounds to 0 in float16, so the update divides "
          "by zero once a second moment underflows and training stalls or turns NaN. Use "
          "eps=1e-4 or larger (e.g. {}Options(lr).eps(1e-4)), or precision='16-mixed' or "
          "'bf16-true'.",
          name, eps, name));
      return;
    }
  }
}
}  // namespace

FabricOptimizer Fabric::make_optimizer(const std::shared_ptr<torch::optim::Optimizer>& optimizer) {
  if (strategy()->precision()->name() == "16-true") {
    warn_half_eps<torch::optim::AdamW, torch::optim::AdamWOptions>(*optimizer, "AdamW");
    warn_half_eps<torch::optim::Adam, torch::optim::AdamOptions>(*optimizer, "Adam");
  }
  return FabricOptimizer(optimizer, strategy(), impl_->callbacks);
}

c10::Device Fabric::module_device(const std::shared_ptr<torch::nn::Module>& module,
                                  bool move_to_device) const {
  if (move_to_device) return device();
  const auto params = module->parameters();
  return params.empty() ? c10::Device(c10::kCPU) : params.front().device();
}

void Fabric::notify_after_setup(torch::nn::Module& module) {
  for (const auto& callback : *impl_->callbacks) callback->on_after_setup(*this, module);
}

// ------------------------------------------------------------------ training

void Fabric::backward(const at::Tensor& tensor, const at::Tensor& gradient,
                      std::optional<bool> retain_graph, bool create_graph) {
  if (!tensor.defined()) throw std::invalid_argument("fabric.backward() got an undefined tensor.");
  detail::FabricBackwardScope scope;
  strategy()->backward(tensor, gradient, retain_graph, create_graph);
}

at::Tensor Fabric::clip_gradients(const FabricModuleBase& module, const FabricOptimizer& optimizer,
                                  const ClipGradientsOptions& options) {
  if (options.clip_val && options.max_norm) {
    throw std::invalid_argument(
        "Only one of `clip_val` or `max_norm` can be set as this specifies the underlying clipping "
        "algorithm!");
  }
  if (options.clip_val) {
    strategy()->clip_gradients_value(optimizer.optimizer(), *options.clip_val);
    return {};
  }
  if (options.max_norm) {
    return strategy()->clip_gradients_norm(optimizer.optimizer(), *options.max_norm,
                                           options.norm_type, options.error_if_nonfinite);
  }
  throw std::invalid_argument(
      "You have to specify either `clip_val` or `max_norm` to do gradient clipping!");
}

Guard Fabric::autocast() { return strategy()->precision()->forward_context(); }

Guard Fabric::no_backward_sync(const FabricModuleBase& module, bool enabled) {
  if (!enabled) return {};
  return strategy()->no_backward_sync(*module.forward_module(), enabled);
}

Guard Fabric::init_tensor() { return strategy()->tensor_init_context(); }

Guard Fabric::init_module(std::optional<bool> empty_init) {
  validate_launched("init_module");
  return strategy()->module_init_context(empty_init.value_or(false));
}

// ------------------------------------------------------------------ devices

at::Tensor Fabric::to_device(const at::Tensor& tensor) const {
  if (!tensor.defined()) return tensor;
  const auto target = device();
  return tensor.to(target, /*non_blocking=*/!target.is_cpu());
}

Value Fabric::to_device(const Value& tree) const {
  const auto target = device();
  return data::move_to_device(tree, target, /*non_blocking=*/!target.is_cpu());
}

data::Batch Fabric::to_device(const data::Batch& batch) const {
  data::Batch out(to_device(batch.data), to_device(batch.target));
  if (!batch.fields.is_none()) out.fields = to_device(batch.fields);
  return out;
}

void Fabric::move_module(torch::nn::Module& module) const {
  strategy()->accelerator()->setup_device(device());
  strategy()->module_to_device(module);
}

// ------------------------------------------------------------------ output

void Fabric::print_line(const std::string& line) const {
  std::fwrite(line.data(), 1, line.size(), stdout);
  std::fputc('\n', stdout);
  std::fflush(stdout);
}

void Fabric::log(const std::string& name, double value, std::optional<int64_t> step) {
  log_dict(std::map<std::string, double>{{name, value}}, step);
}

void Fabric::log(const std::string& name, const at::Tensor& value, std::optional<int64_t> step) {
  log_dict(std::map<std::string, at::Tensor>{{name, value}}, step);
}

void Fabric::log_dict(const std::map<std::string, double>& metrics, std::optional<int64_t> step) {
  if (!is_global_zero()) return;
  for (const auto& logger : impl_->loggers) logger->log_metrics(metrics, step);
}

void Fabric::log_dict(const std::map<std::string, at::Tensor>& metrics,
                      std::optional<int64_t> step) {
  std::map<std::string, double> scalars;
  for (const auto& [name, tensor] : metrics) {
    if (!tensor.defined() || tensor.numel() != 1) {
      throw std::invalid_argument(fmt::format(
          "The metric `{}` ({} elements) does not contain a single element, thus it cannot be "
          "converted to a scalar. Log a scalar or a one-element tensor.",
          name, tensor.defined() ? tensor.numel() : 0));
    }
    scalars[name] = tensor.item<double>();
  }
  log_dict(scalars, step);
}

// ------------------------------------------------------------------ collectives

void Fabric::barrier(const std::string& name) {
  validate_launched("barrier");
  strategy()->barrier(name);
}

void Fabric::validate_src(int src) const {
  if (src < 0 || src >= world_size()) {
    throw std::invalid_argument(fmt::format(
        "broadcast(src={}) is not a rank: valid ranks are 0..{}.", src, world_size() - 1));
  }
}

at::Tensor Fabric::broadcast(const at::Tensor& tensor, int src) {
  validate_launched("broadcast");
  validate_src(src);
  return strategy()->broadcast(tensor, src);
}

namespace {
at::Tensor bytes_to_tensor(const std::string& bytes) {
  auto t = torch::empty({static_cast<int64_t>(bytes.size())}, torch::kUInt8);
  if (!bytes.empty()) std::memcpy(t.data_ptr(), bytes.data(), bytes.size());
  return t;
}
std::string tensor_to_bytes(const at::Tensor& tensor) {
  const auto cpu = tensor.to(torch::kCPU).contiguous();
  return std::string(static_cast<const char*>(cpu.data_ptr()),
                     static_cast<std::size_t>(cpu.numel()));
}
}  // namespace

std::string Fabric::broadcast(const std::string& value, int src) {
  validate_launched("broadcast");
  validate_src(src);
  if (world_size() == 1) return value;
  // Receivers' payload is ignored: the strategy sends src's shape first.
  const auto payload =
      global_rank() == src ? bytes_to_tensor(value) : torch::empty({0}, torch::kUInt8);
  return tensor_to_bytes(strategy()->broadcast(to_device(payload), src));
}

Value Fabric::broadcast(const Value& value, int src) {
  validate_launched("broadcast");
  validate_src(src);
  if (world_size() == 1) return value;
  const std::string bytes =
      global_rank() == src ? checkpoint::to_torch_bytes(value) : std::string();
  const std::string received = broadcast(bytes, src);
  if (global_rank() == src) return value;
  return checkpoint::from_torch_bytes(received, fmt::format("broadcast from rank {}", src));
}

double Fabric::broadcast_number(double value, int src) {
  validate_launched("broadcast");
  validate_src(src);
  if (world_size() == 1) return value;
  auto t = torch::tensor(value, torch::TensorOptions().dtype(torch::kFloat64));
  return strategy()->broadcast(to_device(t), src).item<double>();
}

int64_t Fabric::broadcast_number(int64_t value, int src) {
  validate_launched("broadcast");
  validate_src(src);
  if (world_size() == 1) return value;
  auto t = torch::tensor(value, torch::TensorOptions().dtype(torch::kInt64));
  return strategy()->broadcast(to_device(t), src).item<int64_t>();
}

std::vector<at::Tensor> Fabric::all_gather(const std::vector<at::Tensor>& tensors,
                                           bool sync_grads) {
  std::vector<at::Tensor> out;
  out.reserve(tensors.size());
  for (const auto& t : tensors) out.push_back(all_gather(t, sync_grads));
  return out;
}

std::map<std::string, at::Tensor> Fabric::all_gather(
    const std::map<std::string, at::Tensor>& tensors, bool sync_grads) {
  std::map<std::string, at::Tensor> out;
  for (const auto& [key, t] : tensors) out.emplace(key, all_gather(t, sync_grads));
  return out;
}

Value Fabric::all_gather(const Value& tree, bool sync_grads) {
  return detail::map_tensors(tree, [&](const at::Tensor& t) { return all_gather(t, sync_grads); });
}

std::vector<at::Tensor> Fabric::all_reduce(const std::vector<at::Tensor>& tensors,
                                           const std::string& reduce_op) {
  collectives::reduce_kind_from_string(reduce_op);  // a bad op fails before any collective
  std::vector<at::Tensor> out;
  out.reserve(tensors.size());
  for (const auto& t : tensors) out.push_back(all_reduce(t, reduce_op));
  return out;
}

std::map<std::string, at::Tensor> Fabric::all_reduce(
    const std::map<std::string, at::Tensor>& tensors, const std::string& reduce_op) {
  collectives::reduce_kind_from_string(reduce_op);
  std::map<std::string, at::Tensor> out;
  for (const auto& [key, t] : tensors) out.emplace(key, all_reduce(t, reduce_op));
  return out;
}

Value Fabric::all_reduce(const Value& tree, const std::string& reduce_op) {
  collectives::reduce_kind_from_string(reduce_op);
  return detail::map_tensors(tree, [&](const at::Tensor& t) { return all_reduce(t, reduce_op); });
}

at::Tensor Fabric::all_gather(const at::Tensor& tensor, bool sync_grads) {
  validate_launched("all_gather");
  return strategy()->all_gather(to_device(tensor), sync_grads);
}

at::Tensor Fabric::all_reduce(const at::Tensor& tensor, const std::string& reduce_op) {
  validate_launched("all_reduce");
  const auto op = collectives::reduce_kind_from_string(reduce_op);
  return strategy()->all_reduce(to_device(tensor), op);
}

at::Tensor Fabric::scalar_to_tensor(double value, bool is_bool, bool is_integral) const {
  const auto dtype = is_bool ? torch::kUInt8 : is_integral ? torch::kInt32 : torch::kFloat32;
  return torch::tensor(value, torch::TensorOptions().dtype(dtype)).to(device());
}

Guard Fabric::rank_zero_first(bool local) {
  // Not bound by the collective timeout: rank 0 may download or preprocess for longer. Python
  // uses a barrier with a 10000-day limit here; so do we.
  constexpr std::chrono::milliseconds no_limit = std::chrono::hours(24 * 10000);
  const int rank = local ? local_rank() : global_rank();
  if (rank != 0) strategy()->barrier_with_timeout("rank_zero_first", no_limit);
  return Guard([this, rank] {
    if (rank == 0) strategy()->barrier_with_timeout("rank_zero_first", no_limit);
  });
}

// ------------------------------------------------------------------ checkpoints
// Python's Fabric.save / load / load_raw: the strategy converts, writes and reads; save and load
// end with a barrier.

void Fabric::save(const std::string& path, const State& state, const SaveFilter& filter) {
  if (world_size() == 1) {
    strategy()->save_checkpoint(path, state, filter);
    barrier();
    return;
  }
  // Rank 0 alone writes, so it alone can fail (a full disk): instead of a bare barrier, which the
  // other ranks would wait at forever, every rank learns whether any rank failed.
  std::exception_ptr error;
  try {
    strategy()->save_checkpoint(path, state, filter);
  } catch (...) {
    error = std::current_exception();
  }
  const double failed_rank_plus_one =
      all_reduce(error ? static_cast<double>(global_rank() + 1) : 0.0, "max").item<double>();
  if (error) std::rethrow_exception(error);
  if (failed_rank_plus_one > 0) {
    throw std::runtime_error(
        fmt::format("Saving the checkpoint {} failed on global rank {} (its error is raised there)",
                    path, static_cast<int>(failed_rank_plus_one) - 1));
  }
}

State Fabric::load(const std::string& path, State& state, bool strict) {
  State remainder = strategy()->load_checkpoint(path, state, strict);
  barrier();
  return remainder;
}

State Fabric::load(const std::string& path, State&& state, bool strict) {
  State local = std::move(state);
  return load(path, local, strict);
}

State Fabric::load(const std::string& path) {
  State empty;
  return load(path, empty, true);
}

void Fabric::load_raw(const std::string& path, const State::Item& obj, bool strict) {
  if (!obj.is_stateful()) {
    throw TypeError(
        "fabric.load_raw() loads into a module, an optimizer or another stateful object; got a "
        "plain value");
  }
  strategy()->load_raw_checkpoint(path, *obj.stateful(), strict);
}

// ------------------------------------------------------------------ callbacks, seeding

void Fabric::call_impl(std::string_view hook_name, const HookArgs& args) {
  for (const auto& callback : *impl_->callbacks) callback->on_hook(hook_name, args);
}

uint64_t Fabric::seed_everything(std::optional<int64_t> seed, std::optional<bool> workers,
                                 bool verbose) {
  return utilities::seed_everything(seed, workers.value_or(true), verbose);
}

// ------------------------------------------------------------------ properties

c10::Device Fabric::device() const { return strategy()->root_device(); }
int Fabric::global_rank() const { return strategy()->global_rank(); }
int Fabric::local_rank() const { return strategy()->local_rank(); }
int Fabric::node_rank() const { return strategy()->node_rank(); }
int Fabric::world_size() const { return strategy()->world_size(); }
bool Fabric::is_global_zero() const { return strategy()->is_global_zero(); }
const std::shared_ptr<accelerators::Accelerator>& Fabric::accelerator() const {
  return impl_->connector.accelerator;
}
const std::shared_ptr<strategies::Strategy>& Fabric::strategy() const {
  return impl_->connector.strategy;
}
const std::shared_ptr<loggers::Logger>& Fabric::logger() const {
  if (impl_->loggers.empty()) {
    throw std::out_of_range(
        "fabric.logger(): this Fabric has no loggers. Pass some with FabricOptions::loggers.");
  }
  return impl_->loggers.front();
}
const std::vector<std::shared_ptr<loggers::Logger>>& Fabric::loggers() const {
  return impl_->loggers;
}
const std::vector<std::shared_ptr<Callback>>& Fabric::callbacks() const {
  return *impl_->callbacks;
}

}  // namespace cppfabric
