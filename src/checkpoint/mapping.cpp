// How cppfabric's objects become Python-shaped state dicts and back:
//   module     -> {name: tensor} (OrderedDict), parameters then buffers, no wrapper prefix
//   optimizer  -> {"state": {index: {...}}, "param_groups": [{..., "params": [index...]}]}
//   scheduler  -> the Python scheduler's attribute dict (lists for "name.<i>" entries)
//   precision / GradScaler -> {"scale", "growth_factor", "backoff_factor", "growth_interval",
//                              "_growth_tracker"}
//   RngStates  -> {"torch": uint8 tensor, "torch.cuda": [uint8 tensor per device]}
#include <ATen/CPUGeneratorImpl.h>
#include <ATen/Context.h>
#include <ATen/detail/CUDAHooksInterface.h>
#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <mutex>
#include <set>
#include <stdexcept>

#include "cppfabric/detail/fmt.hpp"
#include "cppfabric/optim/lr_scheduler.hpp"
#include "cppfabric/precision/grad_scaler.hpp"
#include "cppfabric/precision/precision.hpp"
#include "cppfabric/state.hpp"
#include "optim/initial_lr.hpp"

namespace cppfabric {
namespace {

std::string shape_repr(at::IntArrayRef sizes) {
  return fmt::format("torch.Size([{}])", fmt::join(sizes, ", "));
}

// ------------------------------------------------------------------------------- modules

class ModuleStateful final : public Stateful {
 public:
  explicit ModuleStateful(std::shared_ptr<torch::nn::Module> module) : module_(std::move(module)) {
    if (!module_) throw std::invalid_argument("State: got a null module");
  }
  std::string kind() const override { return "module"; }

  Value state_dict() const override {
    Value out = Value::dict({}, /*ordered=*/true);
    for (const auto& item : entries())
      out.items().emplace_back(Value(item.key()), item.value().detach());
    return out;
  }

  void load_state_dict(const Value& state) override { load_state_dict(state, true); }

  void load_state_dict(const Value& state, bool strict) override {
    if (!state.is_dict()) {
      throw std::runtime_error(fmt::format(
          "Cannot load a {} into the module {}: a module's state must be a dict of tensors",
          state.type_name(), module_->name()));
    }
    auto own = entries();
    std::vector<std::string> missing, unexpected, problems;
    for (const auto& item : own)
      if (state.find(Value(item.key())) == nullptr)
        missing.push_back(fmt::format("\"{}\"", item.key()));
    for (const auto& [key, value] : state.items()) {
      if (key.kind() != Value::Kind::String || own.find(key.to_string()) == nullptr) {
        unexpected.push_back(key.kind() == Value::Kind::String
                                 ? fmt::format("\"{}\"", key.to_string())
                                 : key.repr());
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

 private:
  torch::OrderedDict<std::string, at::Tensor> entries() const {
    auto out = module_->named_parameters(true);
    for (const auto& item : module_->named_buffers(true)) out.insert(item.key(), item.value());
    return out;
  }
  std::shared_ptr<torch::nn::Module> module_;
};

// ------------------------------------------------------------------------------- optimizers

enum class OptKind { SGD, Adam, AdamW, Adagrad, RMSprop };

OptKind optimizer_kind(torch::optim::Optimizer& opt) {
  if (dynamic_cast<torch::optim::SGD*>(&opt)) return OptKind::SGD;
  if (dynamic_cast<torch::optim::AdamW*>(&opt)) return OptKind::AdamW;
  if (dynamic_cast<torch::optim::Adam*>(&opt)) return OptKind::Adam;
  if (dynamic_cast<torch::optim::Adagrad*>(&opt)) return OptKind::Adagrad;
  if (dynamic_cast<torch::optim::RMSprop*>(&opt)) return OptKind::RMSprop;
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

class OptimizerStateful final : public Stateful {
 public:
  explicit OptimizerStateful(std::shared_ptr<torch::optim::Optimizer> opt) : opt_(std::move(opt)) {
    if (!opt_) throw std::invalid_argument("State: got a null optimizer");
    kind_ = optimizer_kind(*opt_);
  }
  std::string kind() const override { return "optimizer"; }

  Value state_dict() const override {
    Value state = Value::dict();
    Value groups = Value::list();
    int64_t index = 0;
    for (auto& group : opt_->param_groups()) {
      Value ids = Value::list();
      for (const auto& p : group.params()) {
        auto it = opt_->state().find(p.unsafeGetTensorImpl());
        if (it != opt_->state().end())
          state.items().emplace_back(Value(index), param_state(*it->second, group));
        ids.elements().emplace_back(index++);
      }
      Value g = group_dict(group);
      g.items().emplace_back(Value("params"), std::move(ids));
      groups.elements().push_back(std::move(g));
    }
    return Value::dict(
        {{Value("state"), std::move(state)}, {Value("param_groups"), std::move(groups)}});
  }

  void load_state_dict(const Value& sd) override {
    if (!sd.is_dict() || !sd.find(Value("state")) || !sd.find(Value("param_groups"))) {
      throw std::runtime_error(
          fmt::format("An optimizer state must be a dict with 'state' and 'param_groups'; got a {}",
                      sd.type_name()));
    }
    const auto& saved_groups = sd.at(Value("param_groups")).elements();
    auto& groups = opt_->param_groups();
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
    for (std::size_t g = 0; g < groups.size(); ++g) set_group(groups[g], saved_groups[g]);
    // Replace the whole per-parameter state, as Python does.
    for (auto& group : groups)
      for (const auto& p : group.params()) opt_->state().erase(p.unsafeGetTensorImpl());
    for (const auto& [key, value] : sd.at(Value("state")).items()) {
      auto it = by_id.find(key.to_int());
      if (it == by_id.end()) {
        throw std::runtime_error(fmt::format(
            "optimizer state refers to parameter {} that no param group lists", key.repr()));
      }
      opt_->state()[it->second.unsafeGetTensorImpl()] = make_param_state(value, it->second);
    }
  }

 private:
  Value param_state(torch::optim::OptimizerParamState& s,
                    torch::optim::OptimizerParamGroup& group) const {
    Value d = Value::dict();
    auto add = [&](const char* k, Value v) { d.items().emplace_back(Value(k), std::move(v)); };
    switch (kind_) {
      case OptKind::SGD: {
        auto& st = static_cast<torch::optim::SGDParamState&>(s);
        add("momentum_buffer", tensor_or_none(st.momentum_buffer()));
        break;
      }
      case OptKind::Adam: {
        auto& st = static_cast<torch::optim::AdamParamState&>(s);
        add("step", step_tensor(st.step()));
        add("exp_avg", tensor_or_none(st.exp_avg()));
        add("exp_avg_sq", tensor_or_none(st.exp_avg_sq()));
        if (static_cast<torch::optim::AdamOptions&>(group.options()).amsgrad())
          add("max_exp_avg_sq", tensor_or_none(st.max_exp_avg_sq()));
        break;
      }
      case OptKind::AdamW: {
        auto& st = static_cast<torch::optim::AdamWParamState&>(s);
        add("step", step_tensor(st.step()));
        add("exp_avg", tensor_or_none(st.exp_avg()));
        add("exp_avg_sq", tensor_or_none(st.exp_avg_sq()));
        if (static_cast<torch::optim::AdamWOptions&>(group.options()).amsgrad())
          add("max_exp_avg_sq", tensor_or_none(st.max_exp_avg_sq()));
        break;
      }
      case OptKind::Adagrad: {
        auto& st = static_cast<torch::optim::AdagradParamState&>(s);
        add("sum", tensor_or_none(st.sum()));
        add("step", step_tensor(st.step()));
        break;
      }
      case OptKind::RMSprop: {
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
  Value group_dict(torch::optim::OptimizerParamGroup& group) const {
    Value d = Value::dict();
    auto add = [&](const char* k, Value v) { d.items().emplace_back(Value(k), std::move(v)); };
    switch (kind_) {
      case OptKind::SGD: {
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
      case OptKind::Adam:
      case OptKind::AdamW: {
        const bool w = kind_ == OptKind::AdamW;
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
      case OptKind::Adagrad: {
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
      case OptKind::RMSprop: {
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
    // A scheduler's initial_lr, which Python keeps in the group (needed there to rebuild a
    // scheduler with last_epoch >= 0 after loading).
    if (auto initial = optim::detail::initial_lr(group)) add("initial_lr", *initial);
    return d;
  }

  void set_group(torch::optim::OptimizerParamGroup& group, const Value& saved) {
    auto num = [&](const char* k, auto setter) {
      if (const Value* v = saved.find(Value(k))) setter(v->to_double());
    };
    auto flag = [&](const char* k, auto setter) {
      if (const Value* v = saved.find(Value(k)); v && !v->is_none()) setter(v->to_bool());
    };
    if (const Value* v = saved.find(Value("initial_lr")); v && !v->is_none()) {
      optim::detail::set_initial_lr(group, v->to_double());
    }
    if (const Value* v = saved.find(Value("maximize")); v && !v->is_none() && v->to_bool()) {
      throw std::runtime_error(
          "The checkpoint's optimizer uses maximize=True, which LibTorch's optimizers lack");
    }
    switch (kind_) {
      case OptKind::SGD: {
        auto& o = static_cast<torch::optim::SGDOptions&>(group.options());
        num("lr", [&](double x) { o.lr(x); });
        num("momentum", [&](double x) { o.momentum(x); });
        num("dampening", [&](double x) { o.dampening(x); });
        num("weight_decay", [&](double x) { o.weight_decay(x); });
        flag("nesterov", [&](bool x) { o.nesterov(x); });
        break;
      }
      case OptKind::Adam:
      case OptKind::AdamW: {
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
        if (kind_ == OptKind::AdamW) {
          apply(static_cast<torch::optim::AdamWOptions&>(group.options()));
        } else {
          apply(static_cast<torch::optim::AdamOptions&>(group.options()));
        }
        break;
      }
      case OptKind::Adagrad: {
        auto& o = static_cast<torch::optim::AdagradOptions&>(group.options());
        num("lr", [&](double x) { o.lr(x); });
        num("lr_decay", [&](double x) { o.lr_decay(x); });
        num("eps", [&](double x) { o.eps(x); });
        num("weight_decay", [&](double x) { o.weight_decay(x); });
        num("initial_accumulator_value", [&](double x) { o.initial_accumulator_value(x); });
        break;
      }
      case OptKind::RMSprop: {
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

  std::unique_ptr<torch::optim::OptimizerParamState> make_param_state(
      const Value& saved, const at::Tensor& param) const {
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
    switch (kind_) {
      case OptKind::SGD: {
        auto s = std::make_unique<torch::optim::SGDParamState>();
        s->momentum_buffer(tensor("momentum_buffer"));
        return s;
      }
      case OptKind::Adam: {
        auto s = std::make_unique<torch::optim::AdamParamState>();
        s->step(step());
        s->exp_avg(tensor("exp_avg"));
        s->exp_avg_sq(tensor("exp_avg_sq"));
        s->max_exp_avg_sq(tensor("max_exp_avg_sq"));
        return s;
      }
      case OptKind::AdamW: {
        auto s = std::make_unique<torch::optim::AdamWParamState>();
        s->step(step());
        s->exp_avg(tensor("exp_avg"));
        s->exp_avg_sq(tensor("exp_avg_sq"));
        s->max_exp_avg_sq(tensor("max_exp_avg_sq"));
        return s;
      }
      case OptKind::Adagrad: {
        auto s = std::make_unique<torch::optim::AdagradParamState>();
        s->step(step());
        s->sum(tensor("sum"));
        return s;
      }
      case OptKind::RMSprop: {
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

  std::shared_ptr<torch::optim::Optimizer> opt_;
  OptKind kind_;
};

// ------------------------------------------------------------------------- flat <-> nested
// Schedulers and precision plugins keep their state as {name: number} with lists flattened to
// "name.<i>" (and nested lists of dicts to "name.<i>.<field>"). Python's files hold real lists,
// ints and bools; these helpers convert using the key names Python stores as ints / bools.

const std::set<std::string>& int_keys() {
  static const std::set<std::string> keys = {
      "last_epoch", "_step_count", "T_max",       "step_size",       "total_iters",
      "milestones", "_milestones", "total_steps", "growth_interval", "_growth_tracker"};
  return keys;
}
const std::set<std::string>& bool_keys() {
  static const std::set<std::string> keys = {"three_phase", "cycle_momentum", "use_beta1",
                                             "_is_initial", "_get_lr_called_within_step"};
  return keys;
}

bool is_index(const std::string& s) {
  return !s.empty() && s.size() < 10 && std::all_of(s.begin(), s.end(), ::isdigit);
}

Value leaf(const std::string& name, double v) {
  if (bool_keys().count(name)) return Value(v != 0.0);
  if (int_keys().count(name)) return Value(static_cast<int64_t>(std::llround(v)));
  return Value(v);
}

// Inserts value at the dotted path under `node` (a dict or list).
void insert_path(Value& node, const std::vector<std::string>& parts, std::size_t i,
                 const std::string& name, double v) {
  const std::string& part = parts[i];
  const bool last = i + 1 == parts.size();
  const bool next_is_index = !last && is_index(parts[i + 1]);
  auto make_child = [&]() { return next_is_index ? Value::list() : Value::dict(); };
  if (node.kind() == Value::Kind::List) {
    const std::size_t index = std::stoul(part);
    auto& elements = node.elements();
    if (elements.size() <= index) elements.resize(index + 1);
    if (last) {
      elements[index] = leaf(name, v);
    } else {
      if (elements[index].is_none()) elements[index] = make_child();
      insert_path(elements[index], parts, i + 1, name, v);
    }
    return;
  }
  if (last) {
    node.set(Value(part), leaf(name, v));
    return;
  }
  Value* child = node.find(Value(part));
  if (child == nullptr) {
    node.set(Value(part), make_child());
    child = node.find(Value(part));
  }
  insert_path(*child, parts, i + 1, name, v);
}

Value nest(const std::map<std::string, double>& flat) {
  Value out = Value::dict();
  for (const auto& [key, v] : flat) {
    std::vector<std::string> parts;
    std::size_t start = 0;
    for (std::size_t pos; (pos = key.find('.', start)) != std::string::npos; start = pos + 1)
      parts.push_back(key.substr(start, pos - start));
    parts.push_back(key.substr(start));
    // The leaf's type comes from the nearest non-index name ("milestones.2" -> milestones).
    std::string name;
    for (const auto& p : parts)
      if (!is_index(p)) name = p;
    insert_path(out, parts, 0, name, v);
  }
  return out;
}

void flatten(const Value& v, const std::string& prefix, std::map<std::string, double>& out) {
  const std::string dot = prefix.empty() ? "" : prefix + ".";
  switch (v.kind()) {
    case Value::Kind::Bool:
    case Value::Kind::Int:
    case Value::Kind::Double:
      out[prefix] = v.to_double();
      break;
    case Value::Kind::Tensor:
      if (v.to_tensor().numel() == 1) out[prefix] = v.to_tensor().item<double>();
      break;
    case Value::Kind::List:
    case Value::Kind::Tuple: {
      const auto& e = v.elements();
      for (std::size_t i = 0; i < e.size(); ++i) flatten(e[i], dot + std::to_string(i), out);
      break;
    }
    case Value::Kind::Dict: {
      // A Counter ({milestone: count}) becomes the sorted milestones, repeated by count.
      const bool counter =
          !v.items().empty() && std::all_of(v.items().begin(), v.items().end(), [](const auto& kv) {
            return kv.first.kind() == Value::Kind::Int && kv.second.kind() == Value::Kind::Int;
          });
      if (counter && !prefix.empty()) {
        std::vector<int64_t> values;
        for (const auto& [k, n] : v.items())
          for (int64_t c = 0; c < std::min<int64_t>(n.to_int(), 1 << 20); ++c)
            values.push_back(k.to_int());
        std::sort(values.begin(), values.end());
        for (std::size_t i = 0; i < values.size(); ++i)
          out[dot + std::to_string(i)] = static_cast<double>(values[i]);
        break;
      }
      for (const auto& [k, item] : v.items()) {
        if (k.kind() == Value::Kind::String) flatten(item, dot + k.to_string(), out);
      }
      break;
    }
    default:
      break;  // None, strings: nothing numeric to keep
  }
}

std::map<std::string, double> flat(const Value& v, const char* what) {
  if (!v.is_dict()) {
    throw std::runtime_error(
        fmt::format("A {} state must be a dict, got a {}", what, v.type_name()));
  }
  std::map<std::string, double> out;
  flatten(v, "", out);
  return out;
}

class SchedulerStateful final : public Stateful {
 public:
  explicit SchedulerStateful(std::shared_ptr<optim::LRScheduler> s) : s_(std::move(s)) {
    if (!s_) throw std::invalid_argument("State: got a null scheduler");
  }
  std::string kind() const override { return "scheduler"; }
  Value state_dict() const override { return nest(s_->state_dict()); }
  void load_state_dict(const Value& state) override {
    s_->load_state_dict(flat(state, "scheduler"));
  }

 private:
  std::shared_ptr<optim::LRScheduler> s_;
};

template <typename T>
class ScalerLikeStateful final : public Stateful {
 public:
  explicit ScalerLikeStateful(std::shared_ptr<T> p) : p_(std::move(p)) {
    if (!p_) throw std::invalid_argument("State: got a null precision plugin or scaler");
  }
  std::string kind() const override { return "precision plugin"; }
  Value state_dict() const override { return nest(p_->state_dict()); }
  void load_state_dict(const Value& state) override {
    p_->load_state_dict(flat(state, "precision"));
  }

 private:
  std::shared_ptr<T> p_;
};

}  // namespace

namespace detail {
std::shared_ptr<Stateful> module_stateful(std::shared_ptr<torch::nn::Module> module) {
  return std::make_shared<ModuleStateful>(std::move(module));
}
std::shared_ptr<Stateful> optimizer_stateful(std::shared_ptr<torch::optim::Optimizer> optimizer) {
  return std::make_shared<OptimizerStateful>(std::move(optimizer));
}
std::shared_ptr<Stateful> scheduler_stateful(std::shared_ptr<optim::LRScheduler> scheduler) {
  return std::make_shared<SchedulerStateful>(std::move(scheduler));
}
std::shared_ptr<Stateful> precision_stateful(std::shared_ptr<precision::Precision> p) {
  return std::make_shared<ScalerLikeStateful<precision::Precision>>(std::move(p));
}
std::shared_ptr<Stateful> grad_scaler_stateful(std::shared_ptr<precision::GradScaler> s) {
  return std::make_shared<ScalerLikeStateful<precision::GradScaler>>(std::move(s));
}
}  // namespace detail

// ------------------------------------------------------------------------------- RNG states

Value RngStates::state_dict() const {
  Value out = Value::dict();
  {
    auto gen = at::detail::getDefaultCPUGenerator();
    std::lock_guard<std::mutex> lock(gen.mutex());
    out.set("torch", gen.get_state());
  }
  Value cuda = Value::list();
  if (at::globalContext().hasCUDA()) {
    const auto n = at::detail::getCUDAHooks().deviceCount();
    for (c10::DeviceIndex i = 0; i < n; ++i) {
      auto gen = at::globalContext().defaultGenerator(c10::Device(c10::kCUDA, i));
      std::lock_guard<std::mutex> lock(gen.mutex());
      cuda.elements().emplace_back(gen.get_state());
    }
  }
  out.set("torch.cuda", std::move(cuda));
  return out;
}

void RngStates::load_state_dict(const Value& state) {
  if (!state.is_dict()) {
    throw std::runtime_error(fmt::format("RNG states must be a dict, got a {}", state.type_name()));
  }
  if (const Value* cpu = state.find(Value("torch"))) {
    auto gen = at::detail::getDefaultCPUGenerator();
    std::lock_guard<std::mutex> lock(gen.mutex());
    gen.set_state(cpu->to_tensor());
  }
  if (const Value* cuda = state.find(Value("torch.cuda"))) {
    const auto& states = cuda->elements();
    const c10::DeviceIndex n =
        at::globalContext().hasCUDA() ? at::detail::getCUDAHooks().deviceCount() : 0;
    for (std::size_t i = 0; i < states.size() && static_cast<c10::DeviceIndex>(i) < n; ++i) {
      auto gen = at::globalContext().defaultGenerator(
          c10::Device(c10::kCUDA, static_cast<c10::DeviceIndex>(i)));
      std::lock_guard<std::mutex> lock(gen.mutex());
      gen.set_state(states[i].to_tensor());
    }
  }
}

}  // namespace cppfabric
