// ModuleStateful and OptimizerStateful (src/checkpoint/adapters.hpp), and the public factories
// detail::module_stateful / optimizer_stateful (include/cppfabric/state.hpp).
#include "checkpoint/adapters.hpp"

#include <torch/torch.h>

#include <cmath>
#include <map>
#include <stdexcept>
#include <string_view>
#include <tuple>
#include <unordered_set>
#include <utility>

#include "cppfabric/detail/fmt.hpp"
#include "cppfabric/optim/fused.hpp"
#include "cppfabric/state.hpp"
#include "optim/group_values.hpp"

namespace cppfabric {
namespace checkpoint {
namespace {

std::string shape_repr(at::IntArrayRef sizes) {
  return fmt::format("torch.Size([{}])", fmt::join(sizes, ", "));
}

// Parameters then buffers, by their dotted names.
torch::OrderedDict<std::string, at::Tensor> module_entries(const torch::nn::Module& module) {
  auto out = module.named_parameters(true);
  for (const auto& item : module.named_buffers(true)) out.insert(item.key(), item.value());
  return out;
}

}  // namespace

// ------------------------------------------------------------------------------- modules

ModuleStateful::ModuleStateful(std::shared_ptr<torch::nn::Module> module)
    : module_(std::move(module)) {
  if (!module_) throw std::invalid_argument("State: got a null module");
}

Value ModuleStateful::state_dict() const {
  Value out = Value::dict({}, /*ordered=*/true);
  for (const auto& item : module_entries(*module_))
    out.items().emplace_back(Value(item.key()), item.value().detach());
  return out;
}

void ModuleStateful::load_state_dict(const Value& state, bool strict) {
  if (!state.is_dict()) {
    throw std::runtime_error(fmt::format(
        "Cannot load a {} into the module {}: a module's state must be a dict of tensors",
        state.type_name(), module_->name()));
  }
  auto own = module_entries(*module_);
  std::vector<std::string> missing, unexpected, problems;
  std::unordered_set<std::string_view> present;  // linear in the keys, not quadratic
  for (const auto& [key, value] : state.items())
    if (key.kind() == Value::Kind::String) present.insert(key.to_string());
  for (const auto& item : own)
    if (present.count(item.key()) == 0) missing.push_back(fmt::format("\"{}\"", item.key()));
  for (const auto& [key, value] : state.items()) {
    if (key.kind() != Value::Kind::String || own.find(key.to_string()) == nullptr) {
      unexpected.push_back(
          key.kind() == Value::Kind::String ? fmt::format("\"{}\"", key.to_string()) : key.repr());
      continue;
    }
    const std::string& name = key.to_string();
    const at::Tensor& target = own[name];
    if (value.kind() != Value::Kind::Tensor) {
      problems.push_back(fmt::format("{} holds a {} in the checkpoint, expected a Tensor", name,
                                     value.type_name()));
      continue;
    }
    const at::Tensor& source = value.to_tensor();
    if (!source.sizes().equals(target.sizes())) {
      problems.push_back(
          fmt::format("size mismatch for {}: the checkpoint has shape {}, the model has shape {}",
                      name, shape_repr(source.sizes()), shape_repr(target.sizes())));
    } else if (source.scalar_type() != target.scalar_type()) {
      problems.push_back(
          fmt::format("dtype mismatch for {}: the checkpoint has {}, the model has {}", name,
                      c10::toString(source.scalar_type()), c10::toString(target.scalar_type())));
    }
  }
  std::vector<std::string> errors;
  if (strict && !unexpected.empty())
    errors.push_back(
        fmt::format("Unexpected key(s) in state_dict: {}.", fmt::join(unexpected, ", ")));
  if (strict && !missing.empty())
    errors.push_back(fmt::format("Missing key(s) in state_dict: {}.", fmt::join(missing, ", ")));
  errors.insert(errors.end(), problems.begin(), problems.end());
  if (!errors.empty()) {
    throw std::runtime_error(fmt::format("Error(s) in loading state_dict for {}:\n\t{}",
                                         module_->name(), fmt::join(errors, "\n\t")));
  }
  torch::NoGradGuard no_grad;
  for (const auto& [key, value] : state.items()) {
    if (auto* target = own.find(key.to_string())) target->copy_(value.to_tensor());
  }
}

// ------------------------------------------------------------------------------- optimizers

namespace {

using Type = OptimizerStateful::Type;

Type optimizer_type(torch::optim::Optimizer& opt) {
  if (dynamic_cast<torch::optim::SGD*>(&opt)) return Type::SGD;
  if (dynamic_cast<torch::optim::AdamW*>(&opt)) return Type::AdamW;
  if (dynamic_cast<torch::optim::Adam*>(&opt)) return Type::Adam;
  if (dynamic_cast<torch::optim::Adagrad*>(&opt)) return Type::Adagrad;
  if (dynamic_cast<torch::optim::RMSprop*>(&opt)) return Type::RMSprop;
  throw std::invalid_argument(
      "Checkpoints map the optimizers SGD, Adam, AdamW, Adagrad and RMSprop to Python's layout; "
      "this optimizer is none of them. Wrap it in a cppfabric::Stateful to save it.");
}

Value tensor_or_none(const at::Tensor& t) { return t.defined() ? Value(t.detach()) : Value(); }
Value step_tensor(int64_t step) {
  // Python keeps `step` as a float32 scalar tensor on the CPU.
  return Value(at::scalar_tensor(static_cast<double>(step), at::TensorOptions().dtype(at::kFloat)));
}
int64_t read_step(const Value& v) {
  if (v.kind() == Value::Kind::Tensor) {
    const auto& t = v.to_tensor();
    if (t.numel() != 1) throw std::runtime_error("optimizer state: `step` must hold one number");
    return static_cast<int64_t>(std::llround(t.item<double>()));
  }
  return static_cast<int64_t>(std::llround(v.to_double()));
}

Value param_state(Type type, torch::optim::OptimizerParamState& s,
                  torch::optim::OptimizerParamGroup& group) {
  Value d = Value::dict();
  auto add = [&](const char* k, Value v) { d.items().emplace_back(Value(k), std::move(v)); };
  switch (type) {
    case Type::SGD: {
      auto& st = static_cast<torch::optim::SGDParamState&>(s);
      add("momentum_buffer", tensor_or_none(st.momentum_buffer()));
      break;
    }
    case Type::Adam: {
      auto& st = static_cast<torch::optim::AdamParamState&>(s);
      add("step", step_tensor(st.step()));
      add("exp_avg", tensor_or_none(st.exp_avg()));
      add("exp_avg_sq", tensor_or_none(st.exp_avg_sq()));
      if (static_cast<torch::optim::AdamOptions&>(group.options()).amsgrad())
        add("max_exp_avg_sq", tensor_or_none(st.max_exp_avg_sq()));
      break;
    }
    case Type::AdamW: {
      auto& st = static_cast<torch::optim::AdamWParamState&>(s);
      add("step", step_tensor(st.step()));
      add("exp_avg", tensor_or_none(st.exp_avg()));
      add("exp_avg_sq", tensor_or_none(st.exp_avg_sq()));
      if (static_cast<torch::optim::AdamWOptions&>(group.options()).amsgrad())
        add("max_exp_avg_sq", tensor_or_none(st.max_exp_avg_sq()));
      break;
    }
    case Type::Adagrad: {
      auto& st = static_cast<torch::optim::AdagradParamState&>(s);
      add("sum", tensor_or_none(st.sum()));
      add("step", step_tensor(st.step()));
      break;
    }
    case Type::RMSprop: {
      auto& st = static_cast<torch::optim::RMSpropParamState&>(s);
      add("step", step_tensor(st.step()));
      add("square_avg", tensor_or_none(st.square_avg()));
      if (st.momentum_buffer().defined())
        add("momentum_buffer", Value(st.momentum_buffer().detach()));
      if (st.grad_avg().defined()) add("grad_avg", Value(st.grad_avg().detach()));
      break;
    }
  }
  return d;
}

// Python's param_group keys, in the order torch 2.11 writes them.
Value group_dict(Type type, torch::optim::OptimizerParamGroup& group) {
  Value d = Value::dict();
  auto add = [&](const char* k, Value v) { d.items().emplace_back(Value(k), std::move(v)); };
  switch (type) {
    case Type::SGD: {
      auto& o = static_cast<torch::optim::SGDOptions&>(group.options());
      add("lr", o.lr());
      add("momentum", o.momentum());
      add("dampening", o.dampening());
      add("weight_decay", o.weight_decay());
      add("nesterov", o.nesterov());
      add("maximize", false);
      add("foreach", Value());
      add("differentiable", false);
      add("fused", Value());
      break;
    }
    case Type::Adam:
    case Type::AdamW: {
      const bool w = type == Type::AdamW;
      double lr, eps, wd;
      std::tuple<double, double> betas;
      bool amsgrad;
      if (w) {
        auto& o = static_cast<torch::optim::AdamWOptions&>(group.options());
        lr = o.lr();
        betas = o.betas();
        eps = o.eps();
        wd = o.weight_decay();
        amsgrad = o.amsgrad();
      } else {
        auto& o = static_cast<torch::optim::AdamOptions&>(group.options());
        lr = o.lr();
        betas = o.betas();
        eps = o.eps();
        wd = o.weight_decay();
        amsgrad = o.amsgrad();
      }
      add("lr", lr);
      add("betas", Value::tuple({Value(std::get<0>(betas)), Value(std::get<1>(betas))}));
      add("eps", eps);
      add("weight_decay", wd);
      add("amsgrad", amsgrad);
      add("maximize", false);
      add("foreach", Value());
      add("capturable", false);
      add("differentiable", false);
      add("fused", Value());
      add("decoupled_weight_decay", w);
      break;
    }
    case Type::Adagrad: {
      auto& o = static_cast<torch::optim::AdagradOptions&>(group.options());
      add("lr", o.lr());
      add("lr_decay", o.lr_decay());
      add("eps", o.eps());
      add("weight_decay", o.weight_decay());
      add("initial_accumulator_value", o.initial_accumulator_value());
      add("foreach", Value());
      add("maximize", false);
      add("differentiable", false);
      add("fused", Value());
      break;
    }
    case Type::RMSprop: {
      auto& o = static_cast<torch::optim::RMSpropOptions&>(group.options());
      add("lr", o.lr());
      add("momentum", o.momentum());
      add("alpha", o.alpha());
      add("eps", o.eps());
      add("centered", o.centered());
      add("weight_decay", o.weight_decay());
      add("capturable", false);
      add("foreach", Value());
      add("maximize", false);
      add("differentiable", false);
      break;
    }
  }
  // The keys Python's schedulers keep in the group: initial_lr (needed there to rebuild a
  // scheduler with last_epoch >= 0 after loading), OneCycleLR's max_lr, min_lr, ...
  for (const auto& [key, value] : optim::detail::group_values(group)) add(key.c_str(), value);
  return d;
}

void set_group(Type type, torch::optim::OptimizerParamGroup& group, const Value& saved) {
  auto num = [&](const char* k, auto setter) {
    if (const Value* v = saved.find(Value(k))) setter(v->to_double());
  };
  auto flag = [&](const char* k, auto setter) {
    if (const Value* v = saved.find(Value(k)); v && !v->is_none()) setter(v->to_bool());
  };
  for (const auto& key : optim::detail::scheduler_group_keys()) {
    if (const Value* v = saved.find(Value(key)); v && !v->is_none()) {
      optim::detail::set_group_value(group, key, v->to_double());
    }
  }
  if (const Value* v = saved.find(Value("maximize")); v && !v->is_none() && v->to_bool()) {
    throw std::runtime_error(
        "The checkpoint's optimizer uses maximize=True, which LibTorch's optimizers lack");
  }
  switch (type) {
    case Type::SGD: {
      auto& o = static_cast<torch::optim::SGDOptions&>(group.options());
      num("lr", [&](double x) { o.lr(x); });
      num("momentum", [&](double x) { o.momentum(x); });
      num("dampening", [&](double x) { o.dampening(x); });
      num("weight_decay", [&](double x) { o.weight_decay(x); });
      flag("nesterov", [&](bool x) { o.nesterov(x); });
      break;
    }
    case Type::Adam:
    case Type::AdamW: {
      auto apply = [&](auto& o) {
        num("lr", [&](double x) { o.lr(x); });
        if (const Value* b = saved.find(Value("betas"))) {
          const auto& e = b->elements();
          if (e.size() != 2)
            throw std::runtime_error("optimizer param group: `betas` must hold two numbers");
          o.betas(std::make_tuple(e[0].to_double(), e[1].to_double()));
        }
        num("eps", [&](double x) { o.eps(x); });
        num("weight_decay", [&](double x) { o.weight_decay(x); });
        flag("amsgrad", [&](bool x) { o.amsgrad(x); });
      };
      if (type == Type::AdamW) {
        apply(static_cast<torch::optim::AdamWOptions&>(group.options()));
      } else {
        apply(static_cast<torch::optim::AdamOptions&>(group.options()));
      }
      break;
    }
    case Type::Adagrad: {
      auto& o = static_cast<torch::optim::AdagradOptions&>(group.options());
      num("lr", [&](double x) { o.lr(x); });
      num("lr_decay", [&](double x) { o.lr_decay(x); });
      num("eps", [&](double x) { o.eps(x); });
      num("weight_decay", [&](double x) { o.weight_decay(x); });
      num("initial_accumulator_value", [&](double x) { o.initial_accumulator_value(x); });
      break;
    }
    case Type::RMSprop: {
      auto& o = static_cast<torch::optim::RMSpropOptions&>(group.options());
      num("lr", [&](double x) { o.lr(x); });
      num("momentum", [&](double x) { o.momentum(x); });
      num("alpha", [&](double x) { o.alpha(x); });
      num("eps", [&](double x) { o.eps(x); });
      flag("centered", [&](bool x) { o.centered(x); });
      num("weight_decay", [&](double x) { o.weight_decay(x); });
      break;
    }
  }
}

std::unique_ptr<torch::optim::OptimizerParamState> make_param_state(Type type, const Value& saved,
                                                                    const at::Tensor& param) {
  if (!saved.is_dict()) {
    throw std::runtime_error(
        fmt::format("optimizer state entry must be a dict, got a {}", saved.type_name()));
  }
  // Like Python: floating state follows the parameter's dtype and device.
  auto tensor = [&](const char* k) -> at::Tensor {
    const Value* v = saved.find(Value(k));
    if (v == nullptr || v->is_none()) return {};
    const at::Tensor& t = v->to_tensor();
    if (!t.sizes().equals(param.sizes())) {
      throw std::runtime_error(
          fmt::format("optimizer state '{}' has shape {} but its parameter has shape {}", k,
                      shape_repr(t.sizes()), shape_repr(param.sizes())));
    }
    return t.to(param.device(), t.is_floating_point() ? param.scalar_type() : t.scalar_type())
        .clone();
  };
  auto step = [&]() -> int64_t {
    const Value* v = saved.find(Value("step"));
    return v ? read_step(*v) : 0;
  };
  switch (type) {
    case Type::SGD: {
      auto s = std::make_unique<torch::optim::SGDParamState>();
      s->momentum_buffer(tensor("momentum_buffer"));
      return s;
    }
    case Type::Adam: {
      auto s = std::make_unique<torch::optim::AdamParamState>();
      s->step(step());
      s->exp_avg(tensor("exp_avg"));
      s->exp_avg_sq(tensor("exp_avg_sq"));
      s->max_exp_avg_sq(tensor("max_exp_avg_sq"));
      return s;
    }
    case Type::AdamW: {
      auto s = std::make_unique<torch::optim::AdamWParamState>();
      s->step(step());
      s->exp_avg(tensor("exp_avg"));
      s->exp_avg_sq(tensor("exp_avg_sq"));
      s->max_exp_avg_sq(tensor("max_exp_avg_sq"));
      return s;
    }
    case Type::Adagrad: {
      auto s = std::make_unique<torch::optim::AdagradParamState>();
      s->step(step());
      s->sum(tensor("sum"));
      return s;
    }
    case Type::RMSprop: {
      auto s = std::make_unique<torch::optim::RMSpropParamState>();
      s->step(step());
      s->square_avg(tensor("square_avg"));
      s->momentum_buffer(tensor("momentum_buffer"));
      s->grad_avg(tensor("grad_avg"));
      return s;
    }
  }
  return nullptr;
}

}  // namespace

OptimizerStateful::OptimizerStateful(std::shared_ptr<torch::optim::Optimizer> optimizer)
    : optimizer_(std::move(optimizer)) {
  if (!optimizer_) throw std::invalid_argument("State: got a null optimizer");
  type_ = optimizer_type(*optimizer_);
}

namespace {
// The fused optimizers keep their step counts on the device; after replays of a recorded step
// (CapturedStep) the host's are behind. Saving reads them; loading reads them first, so that a
// loaded count equal to the stale host count is not taken for the device's.
void sync_device_steps(torch::optim::Optimizer& optimizer) {
  if (auto* graph_safe = dynamic_cast<optim::GraphSafeStep*>(&optimizer)) graph_safe->sync_steps();
}
}  // namespace

Value OptimizerStateful::state_dict() const {
  sync_device_steps(*optimizer_);
  Value state = Value::dict();
  Value groups = Value::list();
  int64_t index = 0;
  for (auto& group : optimizer_->param_groups()) {
    Value ids = Value::list();
    for (const auto& p : group.params()) {
      auto it = optimizer_->state().find(p.unsafeGetTensorImpl());
      if (it != optimizer_->state().end()) {
        Value entry = param_state(type_, *it->second, group);
        state.items().emplace_back(std::piecewise_construct, std::forward_as_tuple(index),
                                   std::forward_as_tuple(std::move(entry)));
      }
      ids.elements().emplace_back(index++);
    }
    Value g = group_dict(type_, group);
    g.items().emplace_back(Value("params"), std::move(ids));
    groups.elements().push_back(std::move(g));
  }
  return Value::dict(
      {{Value("state"), std::move(state)}, {Value("param_groups"), std::move(groups)}});
}

void OptimizerStateful::load_state_dict(const Value& sd) {
  sync_device_steps(*optimizer_);
  if (!sd.is_dict() || !sd.find(Value("state")) || !sd.find(Value("param_groups"))) {
    throw std::runtime_error(
        fmt::format("An optimizer state must be a dict with 'state' and 'param_groups'; got a {}",
                    sd.type_name()));
  }
  const auto& saved_groups = sd.at(Value("param_groups")).elements();
  auto& groups = optimizer_->param_groups();
  if (saved_groups.size() != groups.size()) {
    throw std::runtime_error(
        fmt::format("loaded state dict has a different number of parameter groups ({}) than the "
                    "optimizer ({})",
                    saved_groups.size(), groups.size()));
  }
  std::map<int64_t, at::Tensor> by_id;
  for (std::size_t g = 0; g < groups.size(); ++g) {
    const auto& ids = saved_groups[g].at(Value("params")).elements();
    if (ids.size() != groups[g].params().size()) {
      throw std::runtime_error(fmt::format(
          "loaded state dict contains a parameter group ({}) that doesn't match the size of the "
          "optimizer's group: {} parameters saved, {} in the optimizer",
          g, ids.size(), groups[g].params().size()));
    }
    for (std::size_t i = 0; i < ids.size(); ++i) by_id[ids[i].to_int()] = groups[g].params()[i];
  }
  for (std::size_t g = 0; g < groups.size(); ++g) set_group(type_, groups[g], saved_groups[g]);
  // Replace the whole per-parameter state, as Python does.
  for (auto& group : groups)
    for (const auto& p : group.params()) optimizer_->state().erase(p.unsafeGetTensorImpl());
  for (const auto& [key, value] : sd.at(Value("state")).items()) {
    auto it = by_id.find(key.to_int());
    if (it == by_id.end()) {
      throw std::runtime_error(fmt::format(
          "optimizer state refers to parameter {} that no param group lists", key.repr()));
    }
    optimizer_->state()[it->second.unsafeGetTensorImpl()] =
        make_param_state(type_, value, it->second);
  }
}

}  // namespace checkpoint

namespace detail {
std::shared_ptr<Stateful> module_stateful(std::shared_ptr<torch::nn::Module> module) {
  return std::make_shared<checkpoint::ModuleStateful>(std::move(module));
}
std::shared_ptr<Stateful> optimizer_stateful(std::shared_ptr<torch::optim::Optimizer> optimizer) {
  return std::make_shared<checkpoint::OptimizerStateful>(std::move(optimizer));
}
}  // namespace detail

}  // namespace cppfabric
