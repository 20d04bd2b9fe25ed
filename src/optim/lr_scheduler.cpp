// torch.optim.lr_scheduler's recursive formulas, on LibTorch optimizers.
#include "cppfabric/optim/lr_scheduler.hpp"

#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <mutex>
#include <numbers>
#include <stdexcept>
#include <unordered_map>

#include "cppfabric/detail/fmt.hpp"
#include "optim/group_values.hpp"

namespace cppfabric::optim {
namespace {

constexpr double kPi = std::numbers::pi;

// Python keeps `initial_lr` (and OneCycleLR's max_lr, min_lr, ...) inside each param group;
// LibTorch's groups cannot hold extra keys, so they live here, keyed by the group's options
// object and checked against the group's first parameter (so a group freed and replaced at the
// same address does not inherit stale values).
struct GroupEntry {
  std::optional<c10::weak_intrusive_ptr<c10::TensorImpl, c10::UndefinedTensorImpl>> first_param;
  std::vector<std::pair<std::string, double>> values;  // in the order first set, as Python's dict
};

std::mutex& registry_mutex() {
  static std::mutex mutex;
  return mutex;
}

std::unordered_map<const void*, GroupEntry>& registry() {
  static std::unordered_map<const void*, GroupEntry> map;
  return map;
}

bool entry_matches(const GroupEntry& entry, const torch::optim::OptimizerParamGroup& group) {
  if (group.params().empty()) return !entry.first_param.has_value();
  if (!entry.first_param) return false;
  auto locked = entry.first_param->lock();
  return locked.get() == group.params().front().unsafeGetTensorImpl();
}

void prune_locked() {
  auto& map = registry();
  for (auto it = map.begin(); it != map.end();) {
    if (it->second.first_param && it->second.first_param->expired()) {
      it = map.erase(it);
    } else {
      ++it;
    }
  }
}

// The group's entry (nullptr when none matches); the registry mutex must be held.
GroupEntry* find_entry_locked(const torch::optim::OptimizerParamGroup& group) {
  auto it = registry().find(&group.options());
  if (it == registry().end() || !entry_matches(it->second, group)) return nullptr;
  return &it->second;
}

double* find_value_locked(GroupEntry* entry, const std::string& key) {
  if (entry == nullptr) return nullptr;
  for (auto& [name, value] : entry->values)
    if (name == key) return &value;
  return nullptr;
}

// group[key] = value (overwrite) or group.setdefault(key, value); returns the value now stored.
double store_group_value(const torch::optim::OptimizerParamGroup& group, const std::string& key,
                         double value, bool overwrite) {
  std::lock_guard<std::mutex> lock(registry_mutex());
  GroupEntry* entry = find_entry_locked(group);
  if (entry == nullptr) {
    prune_locked();
    GroupEntry fresh;
    if (!group.params().empty())
      fresh.first_param.emplace(group.params().front().getIntrusivePtr());
    entry = &registry().insert_or_assign(&group.options(), std::move(fresh)).first->second;
  }
  if (double* existing = find_value_locked(entry, key)) {
    if (overwrite) *existing = value;
    return *existing;
  }
  entry->values.emplace_back(key, value);
  return value;
}

std::string fmt_double(double value) { return fmt::format("{}", value); }

// ------------------------------------------------------------------ reading a state dict Value

const Value& require(const Value& state, const std::string& key) {
  if (!state.is_dict()) {
    throw std::invalid_argument(
        fmt::format("a scheduler state_dict must be a dict, but got a {}: {}", state.type_name(),
                    state.repr()));
  }
  const Value* found = state.find(Value(key));
  if (found == nullptr) {
    throw std::invalid_argument(
        fmt::format("scheduler state_dict lacks the key '{}'; pass a dict that the same kind "
                    "of scheduler's state_dict() returned",
                    key));
  }
  return *found;
}

[[noreturn]] void ill_typed(const std::string& key, const char* wanted, const Value& value) {
  throw std::invalid_argument(
      fmt::format("scheduler state_dict: '{}' must be {}, but it holds a {} ({})", key, wanted,
                  value.type_name(), value.repr()));
}

bool is_number(const Value& value) {
  return value.kind() == Value::Kind::Int || value.kind() == Value::Kind::Double;
}

int64_t require_int(const Value& state, const std::string& key) {
  const Value& value = require(state, key);
  if (value.kind() != Value::Kind::Int) ill_typed(key, "an int", value);
  return value.to_int();
}

double require_double(const Value& state, const std::string& key) {
  const Value& value = require(state, key);
  if (!is_number(value)) ill_typed(key, "a float", value);
  return value.to_double();
}

bool require_bool(const Value& state, const std::string& key) {
  const Value& value = require(state, key);
  if (value.kind() != Value::Kind::Bool) ill_typed(key, "a bool", value);
  return value.to_bool();
}

const std::string& require_string(const Value& state, const std::string& key) {
  const Value& value = require(state, key);
  if (value.kind() != Value::Kind::String) ill_typed(key, "a str", value);
  return value.to_string();
}

const Value::List& require_list(const Value& state, const std::string& key) {
  const Value& value = require(state, key);
  if (!value.is_sequence()) ill_typed(key, "a list", value);
  return value.elements();
}

std::vector<double> require_doubles(const Value& state, const std::string& key) {
  std::vector<double> out;
  for (const auto& item : require_list(state, key)) {
    if (!is_number(item)) ill_typed(key, "a list of floats", require(state, key));
    out.push_back(item.to_double());
  }
  return out;
}

std::vector<int64_t> require_ints(const Value& state, const std::string& key) {
  std::vector<int64_t> out;
  for (const auto& item : require_list(state, key)) {
    if (item.kind() != Value::Kind::Int) ill_typed(key, "a list of ints", require(state, key));
    out.push_back(item.to_int());
  }
  return out;
}

// A transient flag Python keeps in the dict (False between steps): checked when present.
void check_optional_bool(const Value& state, const std::string& key) {
  const Value* value = state.find(Value(key));
  if (value != nullptr && value->kind() != Value::Kind::Bool) ill_typed(key, "a bool", *value);
}

Value doubles(const std::vector<double>& values) {
  Value out = Value::list();
  for (double v : values) out.elements().emplace_back(v);
  return out;
}

void check_groups(const std::string& key, std::size_t found, std::size_t groups) {
  if (found != groups) {
    throw std::invalid_argument(
        fmt::format("scheduler state_dict holds {} for {} param groups, but the optimizer "
                    "has {}; load a state saved with the same optimizer layout",
                    key, found, groups));
  }
}

// Counter(milestones): one entry per distinct milestone, in the order first seen.
void count_milestone(std::vector<std::pair<int64_t, int64_t>>& counter, int64_t milestone) {
  auto it = std::find_if(counter.begin(), counter.end(),
                         [&](const auto& entry) { return entry.first == milestone; });
  if (it == counter.end()) {
    counter.emplace_back(milestone, 1);
  } else {
    ++it->second;
  }
}

}  // namespace

namespace detail {
const std::vector<std::string>& scheduler_group_keys() {
  static const std::vector<std::string> keys = {"initial_lr", "max_lr", "min_lr", "max_momentum",
                                                "base_momentum"};
  return keys;
}
std::optional<double> group_value(const torch::optim::OptimizerParamGroup& group,
                                  const std::string& key) {
  std::lock_guard<std::mutex> lock(registry_mutex());
  if (const double* value = find_value_locked(find_entry_locked(group), key)) return *value;
  return std::nullopt;
}
void set_group_value(const torch::optim::OptimizerParamGroup& group, const std::string& key,
                     double value) {
  store_group_value(group, key, value, /*overwrite=*/true);
}
std::vector<std::pair<std::string, double>> group_values(
    const torch::optim::OptimizerParamGroup& group) {
  std::lock_guard<std::mutex> lock(registry_mutex());
  const GroupEntry* entry = find_entry_locked(group);
  return entry != nullptr ? entry->values : std::vector<std::pair<std::string, double>>{};
}
}  // namespace detail

// ---------------------------------------------------------------------------------------------
// LRScheduler

LRScheduler::LRScheduler(torch::optim::Optimizer& optimizer) : optimizer_(&optimizer) {}

LRScheduler::~LRScheduler() = default;

std::size_t LRScheduler::num_groups() const { return optimizer_->param_groups().size(); }

std::vector<double> LRScheduler::group_lrs() const {
  std::vector<double> lrs;
  lrs.reserve(num_groups());
  for (const auto& group : optimizer_->param_groups()) lrs.push_back(group.options().get_lr());
  return lrs;
}

void LRScheduler::init_base_lrs() {
  base_lrs_.clear();
  for (const auto& group : optimizer_->param_groups()) {
    base_lrs_.push_back(
        store_group_value(group, "initial_lr", group.options().get_lr(), /*overwrite=*/false));
  }
  last_epoch_ = -1;
}

void LRScheduler::initial_step() {
  step_count_ = 0;
  is_initial_ = true;
  try {
    step();
  } catch (...) {
    is_initial_ = false;
    throw;
  }
  is_initial_ = false;
}

void LRScheduler::step() {
  ++step_count_;
  update_lr(std::nullopt);
}

void LRScheduler::update_lr(std::optional<int64_t> epoch) {
  std::vector<double> values;
  if (!epoch) {
    ++last_epoch_;
    values = get_lr();
  } else {
    last_epoch_ = *epoch;
    auto closed = closed_form_lr();
    values = closed ? std::move(*closed) : get_lr();
  }
  auto& groups = optimizer_->param_groups();
  if (values.size() != groups.size()) {
    throw std::logic_error(fmt::format("scheduler computed {} learning rates for {} param groups",
                                       values.size(), groups.size()));
  }
  for (std::size_t i = 0; i < groups.size(); ++i) groups[i].options().set_lr(values[i]);
  last_lr_ = group_lrs();
}

void LRScheduler::save_common(Value& state) const {
  state.set("base_lrs", doubles(base_lrs_));
  state.set("last_epoch", last_epoch_);
  state.set("_step_count", step_count_);
  state.set("_is_initial", false);
  state.set("_get_lr_called_within_step", false);
  state.set("_last_lr", doubles(last_lr_));
}

void LRScheduler::load_common(const Value& state) {
  auto base_lrs = require_doubles(state, "base_lrs");
  check_groups("base_lrs", base_lrs.size(), num_groups());
  auto last_lr = require_doubles(state, "_last_lr");
  check_groups("_last_lr", last_lr.size(), num_groups());
  const int64_t last_epoch = require_int(state, "last_epoch");
  const int64_t step_count = require_int(state, "_step_count");
  check_optional_bool(state, "_is_initial");
  check_optional_bool(state, "_get_lr_called_within_step");
  base_lrs_ = std::move(base_lrs);
  last_lr_ = std::move(last_lr);
  last_epoch_ = last_epoch;
  step_count_ = step_count;
}

Value LRScheduler::state_dict() const {
  Value state = Value::dict();
  save_common(state);
  return state;
}

void LRScheduler::load_state_dict(const Value& state) { load_common(state); }

// ---------------------------------------------------------------------------------------------
// CosineAnnealingLR

CosineAnnealingLR::CosineAnnealingLR(torch::optim::Optimizer& optimizer, int64_t T_max,
                                     double eta_min)
    : LRScheduler(optimizer), T_max_(T_max), eta_min_(eta_min) {
  if (T_max <= 0) {
    throw std::invalid_argument(fmt::format(
        "CosineAnnealingLR expects T_max (the number of epochs of a half cycle) to be a positive "
        "integer, but got T_max={}",
        T_max));
  }
  init_base_lrs();
  initial_step();
}

std::vector<double> CosineAnnealingLR::get_lr() {
  const auto current = group_lrs();
  const double t_max = static_cast<double>(T_max_);
  const double epoch = static_cast<double>(last_epoch_);
  std::vector<double> lrs(current.size());
  if (is_initial_) return current;
  if (step_count_ == 1 && last_epoch_ > 0) {
    for (std::size_t i = 0; i < lrs.size(); ++i) {
      lrs[i] = eta_min_ + (base_lrs_[i] - eta_min_) * (1 + std::cos(epoch * kPi / t_max)) / 2;
    }
    return lrs;
  }
  if ((last_epoch_ - 1 - T_max_) % (2 * T_max_) == 0) {
    for (std::size_t i = 0; i < lrs.size(); ++i) {
      lrs[i] = current[i] + (base_lrs_[i] - eta_min_) * (1 - std::cos(kPi / t_max)) / 2;
    }
    return lrs;
  }
  for (std::size_t i = 0; i < lrs.size(); ++i) {
    lrs[i] = (1 + std::cos(kPi * epoch / t_max)) / (1 + std::cos(kPi * (epoch - 1) / t_max)) *
                 (current[i] - eta_min_) +
             eta_min_;
  }
  return lrs;
}

std::optional<std::vector<double>> CosineAnnealingLR::closed_form_lr() const {
  std::vector<double> lrs(base_lrs_.size());
  const double epoch = static_cast<double>(last_epoch_);
  for (std::size_t i = 0; i < lrs.size(); ++i) {
    lrs[i] = eta_min_ + (base_lrs_[i] - eta_min_) *
                            (1 + std::cos(kPi * epoch / static_cast<double>(T_max_))) / 2;
  }
  return lrs;
}

Value CosineAnnealingLR::state_dict() const {
  Value state = Value::dict({{"T_max", T_max_}, {"eta_min", eta_min_}});
  save_common(state);
  return state;
}

void CosineAnnealingLR::load_state_dict(const Value& state) {
  const int64_t T_max = require_int(state, "T_max");
  const double eta_min = require_double(state, "eta_min");
  load_common(state);
  T_max_ = T_max;
  eta_min_ = eta_min;
}

// ---------------------------------------------------------------------------------------------
// StepLR

StepLR::StepLR(torch::optim::Optimizer& optimizer, int64_t step_size, double gamma)
    : LRScheduler(optimizer), step_size_(step_size), gamma_(gamma) {
  if (step_size <= 0) {
    throw std::invalid_argument(fmt::format(
        "StepLR expects step_size to be a positive integer, but got step_size={}", step_size));
  }
  init_base_lrs();
  initial_step();
}

std::vector<double> StepLR::get_lr() {
  auto lrs = group_lrs();
  if (last_epoch_ == 0 || last_epoch_ % step_size_ != 0) return lrs;
  for (auto& lr : lrs) lr = lr * gamma_;
  return lrs;
}

std::optional<std::vector<double>> StepLR::closed_form_lr() const {
  // Python's floor division.
  int64_t q = last_epoch_ / step_size_;
  if ((last_epoch_ % step_size_ != 0) && ((last_epoch_ < 0) != (step_size_ < 0))) --q;
  std::vector<double> lrs(base_lrs_.size());
  for (std::size_t i = 0; i < lrs.size(); ++i) {
    lrs[i] = base_lrs_[i] * std::pow(gamma_, static_cast<double>(q));
  }
  return lrs;
}

Value StepLR::state_dict() const {
  Value state = Value::dict({{"step_size", step_size_}, {"gamma", gamma_}});
  save_common(state);
  return state;
}

void StepLR::load_state_dict(const Value& state) {
  const int64_t step_size = require_int(state, "step_size");
  const double gamma = require_double(state, "gamma");
  load_common(state);
  step_size_ = step_size;
  gamma_ = gamma;
}

// ---------------------------------------------------------------------------------------------
// MultiStepLR

MultiStepLR::MultiStepLR(torch::optim::Optimizer& optimizer, std::vector<int64_t> milestones,
                         double gamma)
    : LRScheduler(optimizer), gamma_(gamma) {
  for (int64_t milestone : milestones) count_milestone(milestones_, milestone);
  init_base_lrs();
  initial_step();
}

std::vector<double> MultiStepLR::get_lr() {
  auto lrs = group_lrs();
  auto it = std::find_if(milestones_.begin(), milestones_.end(),
                         [&](const auto& entry) { return entry.first == last_epoch_; });
  if (it == milestones_.end()) return lrs;
  const int64_t count = it->second;
  for (auto& lr : lrs) lr = lr * std::pow(gamma_, static_cast<double>(count));
  return lrs;
}

std::optional<std::vector<double>> MultiStepLR::closed_form_lr() const {
  // bisect_right over the sorted milestones, repeats counted.
  int64_t passed = 0;
  for (const auto& [milestone, count] : milestones_)
    if (milestone <= last_epoch_) passed += count;
  std::vector<double> lrs(base_lrs_.size());
  for (std::size_t i = 0; i < lrs.size(); ++i) {
    lrs[i] = base_lrs_[i] * std::pow(gamma_, static_cast<double>(passed));
  }
  return lrs;
}

Value MultiStepLR::state_dict() const {
  Value counter = Value::dict();
  for (const auto& [milestone, count] : milestones_) counter.items().emplace_back(milestone, count);
  Value state = Value::dict({{"milestones", std::move(counter)}, {"gamma", gamma_}});
  save_common(state);
  return state;
}

void MultiStepLR::load_state_dict(const Value& state) {
  // Python's Counter {milestone: count}; a list of milestones (older cppfabric files) also loads.
  const Value& saved = require(state, "milestones");
  std::vector<std::pair<int64_t, int64_t>> milestones;
  if (saved.is_dict()) {
    for (const auto& [milestone, count] : saved.items()) {
      if (milestone.kind() != Value::Kind::Int || count.kind() != Value::Kind::Int) {
        ill_typed("milestones", "a Counter of int milestones", saved);
      }
      milestones.emplace_back(milestone.to_int(), count.to_int());
    }
  } else {
    for (int64_t milestone : require_ints(state, "milestones"))
      count_milestone(milestones, milestone);
  }
  const double gamma = require_double(state, "gamma");
  load_common(state);
  milestones_ = std::move(milestones);
  gamma_ = gamma;
}

// ---------------------------------------------------------------------------------------------
// ExponentialLR

ExponentialLR::ExponentialLR(torch::optim::Optimizer& optimizer, double gamma)
    : LRScheduler(optimizer), gamma_(gamma) {
  init_base_lrs();
  initial_step();
}

std::vector<double> ExponentialLR::get_lr() {
  auto lrs = group_lrs();
  if (is_initial_) return lrs;
  for (auto& lr : lrs) lr = lr * gamma_;
  return lrs;
}

std::optional<std::vector<double>> ExponentialLR::closed_form_lr() const {
  std::vector<double> lrs(base_lrs_.size());
  for (std::size_t i = 0; i < lrs.size(); ++i) {
    lrs[i] = base_lrs_[i] * std::pow(gamma_, static_cast<double>(last_epoch_));
  }
  return lrs;
}

Value ExponentialLR::state_dict() const {
  Value state = Value::dict({{"gamma", gamma_}});
  save_common(state);
  return state;
}

void ExponentialLR::load_state_dict(const Value& state) {
  const double gamma = require_double(state, "gamma");
  load_common(state);
  gamma_ = gamma;
}

// ---------------------------------------------------------------------------------------------
// LinearLR

LinearLR::LinearLR(torch::optim::Optimizer& optimizer, double start_factor, double end_factor,
                   int64_t total_iters)
    : LRScheduler(optimizer),
      start_factor_(start_factor),
      end_factor_(end_factor),
      total_iters_(total_iters) {
  if (!(start_factor > 0.0 && start_factor <= 1.0)) {
    throw std::invalid_argument(fmt::format(
        "LinearLR expects start_factor (the starting multiplicative factor) in (0, 1], but got "
        "start_factor={}",
        fmt_double(start_factor)));
  }
  if (!(end_factor >= 0.0 && end_factor <= 1.0)) {
    throw std::invalid_argument(fmt::format(
        "LinearLR expects end_factor (the ending multiplicative factor) in [0, 1], but got "
        "end_factor={}",
        fmt_double(end_factor)));
  }
  if (total_iters < 0) {
    throw std::invalid_argument(fmt::format(
        "LinearLR expects total_iters to be a non-negative integer, but got total_iters={}",
        total_iters));
  }
  init_base_lrs();
  initial_step();
}

std::vector<double> LinearLR::get_lr() {
  auto lrs = group_lrs();
  if (last_epoch_ == 0) {
    for (auto& lr : lrs) lr = lr * start_factor_;
    return lrs;
  }
  if (is_initial_ || last_epoch_ > total_iters_) return lrs;
  const double diff = end_factor_ - start_factor_;
  const double factor = 1.0 + diff / (static_cast<double>(total_iters_) * start_factor_ +
                                      static_cast<double>(last_epoch_ - 1) * diff);
  for (auto& lr : lrs) lr = lr * factor;
  return lrs;
}

std::optional<std::vector<double>> LinearLR::closed_form_lr() const {
  if (total_iters_ == 0) {
    throw std::invalid_argument("LinearLR with total_iters=0 has no closed form (division by 0)");
  }
  const double progressed = static_cast<double>(std::min(total_iters_, last_epoch_));
  std::vector<double> lrs(base_lrs_.size());
  for (std::size_t i = 0; i < lrs.size(); ++i) {
    lrs[i] = base_lrs_[i] * (start_factor_ + (end_factor_ - start_factor_) * progressed /
                                                 static_cast<double>(total_iters_));
  }
  return lrs;
}

Value LinearLR::state_dict() const {
  Value state = Value::dict({{"start_factor", start_factor_},
                             {"end_factor", end_factor_},
                             {"total_iters", total_iters_}});
  save_common(state);
  return state;
}

void LinearLR::load_state_dict(const Value& state) {
  const double start_factor = require_double(state, "start_factor");
  const double end_factor = require_double(state, "end_factor");
  const int64_t total_iters = require_int(state, "total_iters");
  load_common(state);
  start_factor_ = start_factor;
  end_factor_ = end_factor;
  total_iters_ = total_iters;
}

// ---------------------------------------------------------------------------------------------
// LambdaLR

LambdaLR::LambdaLR(torch::optim::Optimizer& optimizer, Lambda lr_lambda) : LRScheduler(optimizer) {
  if (!lr_lambda) throw std::invalid_argument("LambdaLR expects a callable lr_lambda, got none");
  lr_lambdas_.assign(num_groups(), lr_lambda);
  init_base_lrs();
  initial_step();
}

LambdaLR::LambdaLR(torch::optim::Optimizer& optimizer, std::vector<Lambda> lr_lambdas)
    : LRScheduler(optimizer), lr_lambdas_(std::move(lr_lambdas)) {
  if (lr_lambdas_.size() != num_groups()) {
    throw std::invalid_argument(
        fmt::format("LambdaLR expects one lr_lambda per param group ({}), but got {}", num_groups(),
                    lr_lambdas_.size()));
  }
  for (std::size_t i = 0; i < lr_lambdas_.size(); ++i) {
    if (!lr_lambdas_[i]) {
      throw std::invalid_argument(fmt::format("LambdaLR: lr_lambdas[{}] is empty", i));
    }
  }
  init_base_lrs();
  initial_step();
}

std::vector<double> LambdaLR::get_lr() {
  std::vector<double> lrs(base_lrs_.size());
  for (std::size_t i = 0; i < lrs.size(); ++i) {
    lrs[i] = base_lrs_[i] * lr_lambdas_[i](last_epoch_);
  }
  return lrs;
}

Value LambdaLR::state_dict() const {
  Value state = Value::dict();
  save_common(state);
  // The functions themselves are not saved, as in Python (which saves only callable objects'
  // attributes).
  state.set("lr_lambdas", Value::list(Value::List(lr_lambdas_.size())));
  return state;
}

void LambdaLR::load_state_dict(const Value& state) { load_common(state); }

// ---------------------------------------------------------------------------------------------
// OneCycleLR

OneCycleLR::OneCycleLR(torch::optim::Optimizer& optimizer, double max_lr, int64_t total_steps,
                       double pct_start, const std::string& anneal_strategy, bool cycle_momentum,
                       double base_momentum, double max_momentum, double div_factor,
                       double final_div_factor, bool three_phase)
    : OneCycleLR(optimizer, std::vector<double>(optimizer.param_groups().size(), max_lr),
                 total_steps, pct_start, anneal_strategy, cycle_momentum, base_momentum,
                 max_momentum, div_factor, final_div_factor, three_phase) {}

OneCycleLR::OneCycleLR(torch::optim::Optimizer& optimizer, std::vector<double> max_lrs,
                       int64_t total_steps, double pct_start, const std::string& anneal_strategy,
                       bool cycle_momentum, double base_momentum, double max_momentum,
                       double div_factor, double final_div_factor, bool three_phase)
    : LRScheduler(optimizer),
      total_steps_(total_steps),
      anneal_cos_(anneal_strategy == "cos"),
      cycle_momentum_(cycle_momentum) {
  if (total_steps <= 0) {
    throw std::invalid_argument(fmt::format(
        "OneCycleLR expects total_steps to be a positive integer, but got total_steps={}",
        total_steps));
  }
  if (!(pct_start >= 0.0 && pct_start <= 1.0)) {
    throw std::invalid_argument(
        fmt::format("OneCycleLR expects pct_start between 0 and 1, but got pct_start={}",
                    fmt_double(pct_start)));
  }
  if (anneal_strategy != "cos" && anneal_strategy != "linear") {
    throw std::invalid_argument(
        fmt::format("OneCycleLR anneal_strategy must be one of 'cos' or 'linear', but got '{}'",
                    anneal_strategy));
  }
  const std::size_t groups = num_groups();
  if (max_lrs.size() != groups) {
    throw std::invalid_argument(
        fmt::format("OneCycleLR max_lr must have one value per param group: max_lr has {} values, "
                    "param_groups has {}",
                    max_lrs.size(), groups));
  }
  if (cycle_momentum_) {
    bool has_momentum = true;
    bool has_betas = true;
    for (auto& group : optimizer.param_groups()) {
      auto& options = group.options();
      const bool momentum = dynamic_cast<torch::optim::SGDOptions*>(&options) != nullptr ||
                            dynamic_cast<torch::optim::RMSpropOptions*>(&options) != nullptr;
      const bool betas = dynamic_cast<torch::optim::AdamOptions*>(&options) != nullptr ||
                         dynamic_cast<torch::optim::AdamWOptions*>(&options) != nullptr;
      has_momentum = has_momentum && momentum;
      has_betas = has_betas && betas;
    }
    if (groups == 0 || (!has_momentum && !has_betas)) {
      throw std::invalid_argument(
          "OneCycleLR with cycle_momentum=true needs an optimizer with momentum (SGD, RMSprop) "
          "or betas (Adam, AdamW); pass cycle_momentum=false for other optimizers");
    }
    use_beta1_ = has_betas;
  }
  build_phases(pct_start, three_phase);
  // Python keeps these in the param groups (group["initial_lr"] = ..., group["max_lr"] = ...).
  for (std::size_t i = 0; i < groups; ++i) {
    const auto& group = optimizer.param_groups()[i];
    const double initial_lr = max_lrs[i] / div_factor;
    store_group_value(group, "initial_lr", initial_lr, /*overwrite=*/true);
    store_group_value(group, "max_lr", max_lrs[i], /*overwrite=*/true);
    store_group_value(group, "min_lr", initial_lr / final_div_factor, /*overwrite=*/true);
  }
  if (cycle_momentum_) {
    for (std::size_t i = 0; i < groups; ++i) {
      const auto& group = optimizer.param_groups()[i];
      set_momentum(i, max_momentum);
      store_group_value(group, "max_momentum", max_momentum, /*overwrite=*/true);
      store_group_value(group, "base_momentum", base_momentum, /*overwrite=*/true);
    }
  }
  init_base_lrs();
  initial_step();
}

void OneCycleLR::build_phases(double pct_start, bool three_phase) {
  const double total = static_cast<double>(total_steps_);
  if (three_phase) {
    phases_ = {
        {pct_start * total - 1, false, "initial_lr", "max_lr", "max_momentum", "base_momentum"},
        {2 * pct_start * total - 2, false, "max_lr", "initial_lr", "base_momentum", "max_momentum"},
        {total - 1, true, "initial_lr", "min_lr", "max_momentum", "max_momentum"},
    };
  } else {
    phases_ = {
        {pct_start * total - 1, false, "initial_lr", "max_lr", "max_momentum", "base_momentum"},
        {total - 1, true, "max_lr", "min_lr", "base_momentum", "max_momentum"},
    };
  }
}

double OneCycleLR::anneal(double start, double end, double pct) const {
  if (anneal_cos_) {
    const double cos_out = std::cos(kPi * pct) + 1;
    return end + (start - end) / 2.0 * cos_out;
  }
  return (end - start) * pct + start;
}

void OneCycleLR::set_momentum(std::size_t group, double momentum) {
  auto& options = optimizer_->param_groups()[group].options();
  if (auto* sgd = dynamic_cast<torch::optim::SGDOptions*>(&options)) {
    sgd->momentum(momentum);
  } else if (auto* rms = dynamic_cast<torch::optim::RMSpropOptions*>(&options)) {
    rms->momentum(momentum);
  } else if (auto* adam = dynamic_cast<torch::optim::AdamOptions*>(&options)) {
    adam->betas(std::make_tuple(momentum, std::get<1>(adam->betas())));
  } else if (auto* adamw = dynamic_cast<torch::optim::AdamWOptions*>(&options)) {
    adamw->betas(std::make_tuple(momentum, std::get<1>(adamw->betas())));
  }
}

std::vector<double> OneCycleLR::get_lr() {
  const int64_t step_num = last_epoch_;
  if (step_num > total_steps_) {
    throw std::invalid_argument(
        fmt::format("OneCycleLR stepped {} times, but total_steps is {}; build it with more "
                    "total_steps or stop stepping",
                    step_num, total_steps_));
  }
  auto& groups = optimizer_->param_groups();
  // group[key], as Python's get_lr reads it.
  auto value = [&](std::size_t g, const std::string& key) {
    if (auto found = detail::group_value(groups[g], key)) return *found;
    throw std::invalid_argument(fmt::format(
        "OneCycleLR: param group {} has no '{}'; build the OneCycleLR on this optimizer (or load "
        "the optimizer's state, whose param groups carry it) before stepping",
        g, key));
  };
  std::vector<double> lrs(groups.size());
  for (std::size_t g = 0; g < lrs.size(); ++g) {
    double start_step = 0.0;
    for (std::size_t i = 0; i < phases_.size(); ++i) {
      const Phase& phase = phases_[i];
      if (static_cast<double>(step_num) <= phase.end_step || i == phases_.size() - 1) {
        const double pct =
            (static_cast<double>(step_num) - start_step) / (phase.end_step - start_step);
        lrs[g] = anneal(value(g, phase.start_lr), value(g, phase.end_lr), pct);
        if (cycle_momentum_) {
          set_momentum(g,
                       anneal(value(g, phase.start_momentum), value(g, phase.end_momentum), pct));
        }
        break;
      }
      start_step = phase.end_step;
    }
  }
  return lrs;
}

Value OneCycleLR::state_dict() const {
  Value phases = Value::list();
  for (const auto& phase : phases_) {
    phases.elements().push_back(Value::dict({
        {"end_step", phase.end_step_is_int ? Value(static_cast<int64_t>(phase.end_step))
                                           : Value(phase.end_step)},
        {"start_lr", phase.start_lr},
        {"end_lr", phase.end_lr},
        {"start_momentum", phase.start_momentum},
        {"end_momentum", phase.end_momentum},
    }));
  }
  Value state = Value::dict({{"total_steps", total_steps_},
                             {"_schedule_phases", std::move(phases)},
                             {"_anneal_func_type", anneal_cos_ ? "cos" : "linear"},
                             {"cycle_momentum", cycle_momentum_}});
  if (cycle_momentum_) state.set("use_beta1", use_beta1_);
  save_common(state);
  return state;
}

void OneCycleLR::load_state_dict(const Value& state) {
  const int64_t total_steps = require_int(state, "total_steps");
  std::vector<Phase> phases;
  for (const auto& saved : require_list(state, "_schedule_phases")) {
    if (!saved.is_dict()) ill_typed("_schedule_phases", "a list of dicts", saved);
    const Value& end = require(saved, "end_step");
    if (!is_number(end)) ill_typed("end_step", "a float", end);
    Phase phase{end.to_double(), end.kind() == Value::Kind::Int, "", "", "", ""};
    for (auto [key, field] :
         {std::pair{"start_lr", &phase.start_lr}, std::pair{"end_lr", &phase.end_lr},
          std::pair{"start_momentum", &phase.start_momentum},
          std::pair{"end_momentum", &phase.end_momentum}}) {
      *field = require_string(saved, key);
      const auto& known = detail::scheduler_group_keys();
      if (std::find(known.begin(), known.end(), *field) == known.end()) {
        throw std::invalid_argument(fmt::format(
            "scheduler state_dict: a _schedule_phases entry names '{}' as its {}; expected one of "
            "{}",
            *field, key, fmt::join(known, ", ")));
      }
    }
    phases.push_back(std::move(phase));
  }
  if (phases.empty())
    ill_typed("_schedule_phases", "a non-empty list", state.at("_schedule_phases"));
  const std::string& anneal = require_string(state, "_anneal_func_type");
  if (anneal != "cos" && anneal != "linear") {
    throw std::invalid_argument(fmt::format(
        "scheduler state_dict: '_anneal_func_type' must be 'cos' or 'linear', but it is '{}'",
        anneal));
  }
  const bool cycle_momentum = require_bool(state, "cycle_momentum");
  const bool use_beta1 = cycle_momentum ? require_bool(state, "use_beta1") : false;
  load_common(state);
  total_steps_ = total_steps;
  phases_ = std::move(phases);
  anneal_cos_ = anneal == "cos";
  cycle_momentum_ = cycle_momentum;
  use_beta1_ = use_beta1;
}

// ---------------------------------------------------------------------------------------------
// SequentialLR

SequentialLR::SequentialLR(torch::optim::Optimizer& optimizer,
                           std::vector<std::shared_ptr<LRScheduler>> schedulers,
                           std::vector<int64_t> milestones)
    : LRScheduler(optimizer),
      schedulers_(std::move(schedulers)),
      milestones_(std::move(milestones)) {
  if (schedulers_.empty()) {
    throw std::invalid_argument("SequentialLR expects at least one scheduler, but got none");
  }
  for (std::size_t i = 0; i < schedulers_.size(); ++i) {
    if (!schedulers_[i]) {
      throw std::invalid_argument(
          fmt::format("SequentialLR: the scheduler at index {} is null", i));
    }
    if (&schedulers_[i]->optimizer() != &optimizer) {
      throw std::invalid_argument(fmt::format(
          "SequentialLR expects all schedulers to belong to the same optimizer, but the "
          "scheduler at index {} has a different one",
          i));
    }
  }
  if (milestones_.size() != schedulers_.size() - 1) {
    throw std::invalid_argument(fmt::format(
        "SequentialLR expects one milestone fewer than schedulers, but got {} schedulers and {} "
        "milestones",
        schedulers_.size(), milestones_.size()));
  }
  last_epoch_ = 0;
  for (auto& group : optimizer.param_groups()) {
    const auto initial = detail::group_value(group, "initial_lr");
    if (!initial) {
      throw std::invalid_argument(
          "SequentialLR: a param group has no initial_lr; build its schedulers on this "
          "optimizer first");
    }
    group.options().set_lr(*initial);
    base_lrs_.push_back(*initial);
  }
  for (auto& scheduler : schedulers_) recursive_undo(*scheduler);
  schedulers_.front()->initial_step();
  last_lr_ = schedulers_.front()->get_last_lr();
}

void SequentialLR::recursive_undo(LRScheduler& scheduler) {
  if (auto* sequential = dynamic_cast<SequentialLR*>(&scheduler)) {
    for (auto& child : sequential->schedulers_) recursive_undo(*child);
  } else {
    --scheduler.last_epoch_;
  }
}

void SequentialLR::step() {
  ++last_epoch_;
  const auto idx = static_cast<std::size_t>(
      std::upper_bound(milestones_.begin(), milestones_.end(), last_epoch_) - milestones_.begin());
  auto& scheduler = *schedulers_[idx];
  if (idx > 0 && milestones_[idx - 1] == last_epoch_) {
    scheduler.update_lr(0);
  } else {
    scheduler.step();
  }
  last_lr_ = scheduler.get_last_lr();
}

std::vector<double> SequentialLR::get_lr() {
  throw std::logic_error(
      "SequentialLR has no get_lr of its own (Python raises NotImplementedError too); nest it "
      "only where it is stepped, not restarted at a milestone");
}

Value SequentialLR::state_dict() const {
  Value milestones = Value::list();
  for (int64_t milestone : milestones_) milestones.elements().emplace_back(milestone);
  Value children = Value::list();
  for (const auto& scheduler : schedulers_) children.elements().push_back(scheduler->state_dict());
  return Value::dict({{"_milestones", std::move(milestones)},
                      {"last_epoch", last_epoch_},
                      {"_last_lr", doubles(last_lr_)},
                      {"_schedulers", std::move(children)}});
}

void SequentialLR::load_state_dict(const Value& state) {
  auto milestones = require_ints(state, "_milestones");
  const int64_t last_epoch = require_int(state, "last_epoch");
  auto last_lr = require_doubles(state, "_last_lr");
  check_groups("_last_lr", last_lr.size(), num_groups());
  const auto& children = require_list(state, "_schedulers");
  if (children.size() != schedulers_.size() || milestones.size() + 1 != schedulers_.size()) {
    throw std::invalid_argument(fmt::format(
        "SequentialLR state_dict holds {} schedulers and {} milestones, but this SequentialLR "
        "has {} schedulers and {} milestones; build it with the same schedulers",
        children.size(), milestones.size(), schedulers_.size(), milestones_.size()));
  }
  for (std::size_t i = 0; i < children.size(); ++i) schedulers_[i]->load_state_dict(children[i]);
  milestones_ = std::move(milestones);
  last_epoch_ = last_epoch;
  last_lr_ = std::move(last_lr);
}

}  // namespace cppfabric::optim
