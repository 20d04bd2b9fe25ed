#include "cppfabric/strategies/strategy.hpp"

#include <torch/torch.h>

#include <cmath>
#include <limits>

#include "cppfabric/accelerators/accelerator.hpp"
#include "cppfabric/checkpoint/checkpoint_io.hpp"
#include "cppfabric/detail/fmt.hpp"
#include "cppfabric/precision/precision.hpp"
#include "cppfabric/state.hpp"
#include "cppfabric/utilities/errors.hpp"

namespace cppfabric::strategies {

Strategy::~Strategy() = default;

void Strategy::set_accelerator(std::shared_ptr<accelerators::Accelerator> accelerator) {
  accelerator_ = std::move(accelerator);
}
void Strategy::set_precision(std::shared_ptr<precision::Precision> precision) {
  precision_ = std::move(precision);
}
void Strategy::set_checkpoint_io(std::shared_ptr<checkpoint::CheckpointIO> io) {
  checkpoint_io_ = std::move(io);
}
void Strategy::set_cluster_environment(std::shared_ptr<environments::ClusterEnvironment> env) {
  cluster_environment_ = std::move(env);
}
void Strategy::set_parallel_devices(std::vector<c10::Device> devices) {
  parallel_devices_ = std::move(devices);
}

void Strategy::setup_environment() {
  if (accelerator_) accelerator_->setup_device(root_device());
}

void Strategy::module_to_device(torch::nn::Module& module) { module.to(root_device()); }

std::shared_ptr<torch::nn::Module> Strategy::setup_module(
    std::shared_ptr<torch::nn::Module> module) {
  return module;
}

void Strategy::backward(const at::Tensor& tensor, const at::Tensor& gradient,
                        std::optional<bool> retain_graph, bool create_graph) {
  precision_->pre_backward(tensor);
  precision_->backward(tensor, gradient, retain_graph, create_graph);
  precision_->post_backward(tensor);
}

void Strategy::optimizer_step(torch::optim::Optimizer& optimizer) {
  precision_->optimizer_step(optimizer);
}

namespace {
std::vector<at::Tensor> grads_of(torch::optim::Optimizer& optimizer) {
  std::vector<at::Tensor> grads;
  for (auto& group : optimizer.param_groups()) {
    for (auto& param : group.params()) {
      if (param.grad().defined()) grads.push_back(param.grad());
    }
  }
  return grads;
}
}  // namespace

at::Tensor Strategy::clip_gradients_norm(torch::optim::Optimizer& optimizer, double max_norm,
                                         double norm_type, bool error_if_nonfinite) {
  precision_->unscale_gradients(optimizer);
  const auto grads = grads_of(optimizer);
  if (grads.empty()) return torch::zeros({});
  // Stays on the device: no host synchronisation unless error_if_nonfinite asks for a check.
  std::vector<at::Tensor> norms;
  norms.reserve(grads.size());
  const bool inf_norm = std::isinf(norm_type);
  for (const auto& g : grads) {
    norms.push_back(inf_norm ? g.detach().abs().max().to(torch::kFloat32)
                             : torch::linalg_vector_norm(g.detach(), norm_type, std::nullopt, false,
                                                         torch::kFloat32));
  }
  auto stacked = torch::stack(norms);
  at::Tensor total =
      inf_norm ? stacked.max()
               : torch::linalg_vector_norm(stacked, norm_type, std::nullopt, false, std::nullopt);
  if (error_if_nonfinite && !torch::isfinite(total).item<bool>()) {
    throw std::runtime_error(fmt::format(
        "The total norm of order {} for gradients is non-finite, so it cannot be clipped. Pass "
        "error_if_nonfinite=false to clip_gradients to skip this check.",
        norm_type));
  }
  auto coef = torch::clamp(max_norm / (total + 1e-6), std::nullopt, 1.0);
  for (const auto& g : grads) g.detach().mul_(coef.to(g.device(), g.scalar_type()));
  return total;
}

void Strategy::clip_gradients_value(torch::optim::Optimizer& optimizer, double clip_val) {
  precision_->unscale_gradients(optimizer);
  for (const auto& g : grads_of(optimizer)) g.detach().clamp_(-clip_val, clip_val);
}

Guard Strategy::tensor_init_context() { return precision_->tensor_init_context(); }

Guard Strategy::module_init_context(bool empty_init) { return precision_->module_init_context(); }

void Strategy::teardown() {
  if (precision_) precision_->teardown();
  if (accelerator_) accelerator_->teardown();
}

// ------------------------------------------------------------------ checkpoints
// Lightning Fabric's Strategy.save_checkpoint / load_checkpoint: every rank converts, global rank
// 0 writes; every rank reads its own copy of the file.

namespace {

std::string key_set(const std::vector<std::string>& keys) {
  std::vector<std::string> quoted;
  for (const auto& k : keys) quoted.push_back(fmt::format("'{}'", k));
  return fmt::format("{{{}}}", fmt::join(quoted, ", "));
}

std::vector<std::string> checkpoint_keys(const Value& checkpoint) {
  std::vector<std::string> keys;
  for (const auto& [k, v] : checkpoint.items())
    keys.push_back(k.kind() == Value::Kind::String ? k.to_string() : k.repr());
  return keys;
}

// Loads `ckpt` into `state`; `where` names the nesting for messages.
void load_into(State& state, Value& ckpt, bool strict, const std::string& where) {
  if (strict) {
    for (const auto& key : state.keys()) {
      if (ckpt.find(Value(key)) == nullptr) {
        throw std::runtime_error(fmt::format(
            "The requested state contains a key '{}'{} that does not exist in the loaded "
            "checkpoint (its keys: {}). To disable strict loading, pass strict = false.",
            key, where, key_set(checkpoint_keys(ckpt))));
      }
    }
  }
  for (auto& [key, item] : state) {
    Value* found = ckpt.find(Value(key));
    if (found == nullptr) continue;
    Value value = std::move(*found);
    ckpt.erase(Value(key));
    if (item.is_stateful()) {
      try {
        item.stateful()->load_state_dict(value, strict);
      } catch (const std::invalid_argument& e) {
        throw std::runtime_error(
            fmt::format("Loading the checkpoint key '{}'{} into the {} failed: {}", key, where,
                        item.stateful()->kind(), e.what()));
      }
    } else if (item.is_state() && value.is_dict()) {
      load_into(*item.state(), value, strict, fmt::format("{} (inside '{}')", where, key));
    } else {
      item = State::Item(std::move(value));
    }
  }
}

}  // namespace

checkpoint::CheckpointIO& Strategy::require_checkpoint_io() const {
  if (!checkpoint_io_) {
    throw std::logic_error(fmt::format(
        "The {} strategy has no CheckpointIO: it was not set up by a Fabric (the connector gives "
        "every strategy one); call set_checkpoint_io() first.",
        name()));
  }
  return *checkpoint_io_;
}

Value Strategy::convert_stateful_objects(const State& state, const SaveFilter& filter) const {
  for (const auto& [key, fn] : filter) {
    if (!state.contains(key)) {
      std::vector<std::string> extra;
      for (const auto& [k, f] : filter)
        if (!state.contains(k)) extra.push_back(k);
      throw std::invalid_argument(
          fmt::format("The filter keys {} are not present in the state keys {}.", key_set(extra),
                      key_set(state.keys())));
    }
    if (!fn) {
      throw TypeError(
          fmt::format("Expected `fabric.save(filter=...)` for key '{}' to be a callable, given an "
                      "empty function",
                      key));
    }
  }
  Value checkpoint = state.to_value();
  for (auto& [key, value] : checkpoint.items()) {
    auto it = filter.find(key.to_string());
    if (it == filter.end() || !value.is_dict()) continue;
    Value::Items kept;
    for (auto& [k, v] : value.items())
      if (it->second(k, v)) kept.emplace_back(k, v);
    value = Value::dict(std::move(kept), value.is_ordered_dict());
  }
  return checkpoint;
}

void Strategy::load_state_into(State& state, Value& checkpoint, bool strict) {
  load_into(state, checkpoint, strict, "");
}

void Strategy::save_checkpoint(const std::string& path, const State& state,
                               const SaveFilter& filter) {
  // Every rank converts its objects (sharded strategies gather in state_dict()).
  Value checkpoint = convert_stateful_objects(state, filter);
  if (is_global_zero()) require_checkpoint_io().save_checkpoint(checkpoint, path);
}

State Strategy::load_checkpoint(const std::string& path, State& state, bool strict) {
  Value checkpoint = require_checkpoint_io().load_checkpoint(path);
  if (!checkpoint.is_dict()) {
    throw std::runtime_error(fmt::format(
        "The checkpoint {} holds a {}, not a dict of states; use fabric.load_raw for a bare state "
        "dict",
        path, checkpoint.type_name()));
  }
  if (!state.empty()) load_state_into(state, checkpoint, strict);
  return State::from_value(checkpoint);
}

void Strategy::load_raw_checkpoint(const std::string& path, Stateful& object, bool strict) {
  Value checkpoint = require_checkpoint_io().load_checkpoint(path);
  object.load_state_dict(checkpoint, strict);
}

}  // namespace cppfabric::strategies
