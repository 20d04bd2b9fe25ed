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
#include "optim/initial_lr.hpp"

namespace cppfabric::optim {
namespace {

constexpr double kPi = std::numbers::pi;

// Python keeps `initial_lr` inside each param group; LibTorch's groups cannot hold extra keys,
// so it lives here, keyed by the group's options object and checked against the group's first
// parameter (so a group freed and replaced at the same address does not inherit a stale value).
struct InitialLrEntry {
  std::optional<c10::weak_intrusive_ptr<c10::TensorImpl, c10::UndefinedTensorImpl>> first_param;
  double value;
};

std::mutex& registry_mutex() {
  static std::mutex mutex;
  return mutex;
}

std::unordered_map<const void*, InitialLrEntry>& registry() {
  static std::unordered_map<const void*, InitialLrEntry> map;
  return map;
}

bool entry_matches(const InitialLrEntry& entry, const torch::optim::OptimizerParamGroup& group) {
  if (group.params().empty()) return !entry.first_param.has_value();
  if (!entry.first_param) return false;
  auto locked = entry.first_param->lock();
  return locked.get() == group.params().front().unsafeGetTensorImpl();
}

InitialLrEntry make_entry(const torch::optim::OptimizerParamGroup& group, double value) {
  InitialLrEntry entry{std::nullopt, value};
  if (!group.params().empty()) {
    entry.first_param.emplace(group.params().front().getIntrusivePtr());
  }
  return entry;
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

std::optional<double> find_initial_lr(const torch::optim::OptimizerParamGroup& group) {
  std::lock_guard<std::mutex> lock(registry_mutex());
  auto it = registry().find(&group.options());
  if (it == registry().end() || !entry_matches(it->second, group)) return std::nullopt;
  return it->second.value;
}

// group["initial_lr"] = value (overwrite: OneCycleLR) or group.setdefault("initial_lr", value).
double set_initial_lr(const torch::optim::OptimizerParamGroup& group, double value,
                      bool overwrite) {
  std::lock_guard<std::mutex> lock(registry_mutex());
  prune_locked();
  auto& map = registry();
  auto it = map.find(&group.options());
  if (it != map.end() && entry_matches(it->second, group) && !overwrite) return it->second.value;
  map.insert_or_assign(&group.options(), make_entry(group, value));
  return value;
}

std::string fmt_double(double value) { return fmt::format("{}", value); }

double require(const SchedulerStateDict& state, const std::string& key) {
  auto it = state.find(key);
  if (it == state.end()) {
    throw std::invalid_argument(
        fmt::format("scheduler state_dict lacks the key '{}'; pass a dict that the same kind "
                    "of scheduler's state_dict() returned",
                    key));
  }
  return it->second;
}

void save_list(SchedulerStateDict& state, const std::string& name,
               const std::vector<double>& values) {
  for (std::size_t i = 0; i < values.size(); ++i) state[fmt::format("{}.{}", name, i)] = values[i];
}

std::vector<double> load_list(const SchedulerStateDict& state, const std::string& name,
                              std::size_t count) {
  std::vector<double> values(count);
  for (std::size_t i = 0; i < count; ++i) values[i] = require(state, fmt::format("{}.{}", name, i));
  return values;
}

// How many "name.<i>" entries the state holds (consecutive from 0).
std::size_t count_list(const SchedulerStateDict& state, const std::string& name) {
  std::size_t count = 0;
  while (state.count(fmt::format("{}.{}", name, count)) != 0) ++count;
  return count;
}

}  // namespace

namespace detail {
std::optional<double> initial_lr(const torch::optim::OptimizerParamGroup& group) {
  return find_initial_lr(group);
}
void set_initial_lr(const torch::optim::OptimizerParamGroup& group, double value) {
  optim::set_initial_lr(group, value, /*overwrite=*/true);
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
    base_lrs_.push_back(set_initial_lr(group, group.options().get_lr(), /*overwrite=*/false));
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

void LRScheduler::save_common(StateDict& state) const {
  state["last_epoch"] = static_cast<double>(last_epoch_);
  state["_step_count"] = static_cast<double>(step_count_);
  save_list(state, "base_lrs", base_lrs_);
  save_list(state, "_last_lr", last_lr_);
}

void LRScheduler::load_common(const StateDict& state) {
  const std::size_t groups = count_list(state, "base_lrs");
  if (groups != num_groups()) {
    throw std::invalid_argument(
        fmt::format("scheduler state_dict holds base_lrs for {} param groups, but the optimizer "
                    "has {}; load a state saved with the same optimizer layout",
                    groups, num_groups()));
  }
  last_epoch_ = static_cast<int64_t>(require(state, "last_epoch"));
  step_count_ = static_cast<int64_t>(require(state, "_step_count"));
  base_lrs_ = load_list(state, "base_lrs", groups);
  last_lr_ = load_list(state, "_last_lr", groups);
}

LRScheduler::StateDict LRScheduler::state_dict() const {
  StateDict state;
  save_common(state);
  return state;
}

void LRScheduler::load_state_dict(const StateDict& state) { load_common(state); }

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

LRScheduler::StateDict CosineAnnealingLR::state_dict() const {
  auto state = LRScheduler::state_dict();
  state["T_max"] = static_cast<double>(T_max_);
  state["eta_min"] = eta_min_;
  return state;
}

void CosineAnnealingLR::load_state_dict(const StateDict& state) {
  load_common(state);
  T_max_ = static_cast<int64_t>(require(state, "T_max"));
  eta_min_ = require(state, "eta_min");
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

LRScheduler::StateDict StepLR::state_dict() const {
  auto state = LRScheduler::state_dict();
  state["step_size"] = static_cast<double>(step_size_);
  state["gamma"] = gamma_;
  return state;
}

void StepLR::load_state_dict(const StateDict& state) {
  load_common(state);
  step_size_ = static_cast<int64_t>(require(state, "step_size"));
  gamma_ = require(state, "gamma");
}

// ---------------------------------------------------------------------------------------------
// MultiStepLR

MultiStepLR::MultiStepLR(torch::optim::Optimizer& optimizer, std::vector<int64_t> milestones,
                         double gamma)
    : LRScheduler(optimizer), milestones_(std::move(milestones)), gamma_(gamma) {
  std::sort(milestones_.begin(), milestones_.end());
  init_base_lrs();
  initial_step();
}

std::vector<double> MultiStepLR::get_lr() {
  auto lrs = group_lrs();
  const auto count = std::count(milestones_.begin(), milestones_.end(), last_epoch_);
  if (count == 0) return lrs;
  for (auto& lr : lrs) lr = lr * std::pow(gamma_, static_cast<double>(count));
  return lrs;
}

std::optional<std::vector<double>> MultiStepLR::closed_form_lr() const {
  const auto passed =
      std::upper_bound(milestones_.begin(), milestones_.end(), last_epoch_) - milestones_.begin();
  std::vector<double> lrs(base_lrs_.size());
  for (std::size_t i = 0; i < lrs.size(); ++i) {
    lrs[i] = base_lrs_[i] * std::pow(gamma_, static_cast<double>(passed));
  }
  return lrs;
}

LRScheduler::StateDict MultiStepLR::state_dict() const {
  auto state = LRScheduler::state_dict();
  state["gamma"] = gamma_;
  for (std::size_t i = 0; i < milestones_.size(); ++i) {
    state[fmt::format("milestones.{}", i)] = static_cast<double>(milestones_[i]);
  }
  return state;
}

void MultiStepLR::load_state_dict(const StateDict& state) {
  load_common(state);
  gamma_ = require(state, "gamma");
  const auto values = load_list(state, "milestones", count_list(state, "milestones"));
  milestones_.assign(values.size(), 0);
  for (std::size_t i = 0; i < values.size(); ++i) milestones_[i] = static_cast<int64_t>(values[i]);
  std::sort(milestones_.begin(), milestones_.end());
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

LRScheduler::StateDict ExponentialLR::state_dict() const {
  auto state = LRScheduler::state_dict();
  state["gamma"] = gamma_;
  return state;
}

void ExponentialLR::load_state_dict(const StateDict& state) {
  load_common(state);
  gamma_ = require(state, "gamma");
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

LRScheduler::StateDict LinearLR::state_dict() const {
  auto state = LRScheduler::state_dict();
  state["start_factor"] = start_factor_;
  state["end_factor"] = end_factor_;
  state["total_iters"] = static_cast<double>(total_iters_);
  return state;
}

void LinearLR::load_state_dict(const StateDict& state) {
  load_common(state);
  start_factor_ = require(state, "start_factor");
  end_factor_ = require(state, "end_factor");
  total_iters_ = static_cast<int64_t>(require(state, "total_iters"));
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

// ---------------------------------------------------------------------------------------------
// OneCycleLR

namespace {
enum OneCycleValue { kInitialLr, kMaxLr, kMinLr, kMaxMomentum, kBaseMomentum };
}  // namespace

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
      cycle_momentum_(cycle_momentum),
      three_phase_(three_phase) {
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
  build_phases(pct_start);
  max_lrs_ = std::move(max_lrs);
  initial_lrs_.resize(groups);
  min_lrs_.resize(groups);
  for (std::size_t i = 0; i < groups; ++i) {
    initial_lrs_[i] = max_lrs_[i] / div_factor;
    min_lrs_[i] = initial_lrs_[i] / final_div_factor;
    set_initial_lr(optimizer.param_groups()[i], initial_lrs_[i], /*overwrite=*/true);
  }
  if (cycle_momentum_) {
    max_momentums_.assign(groups, max_momentum);
    base_momentums_.assign(groups, base_momentum);
    for (std::size_t i = 0; i < groups; ++i) set_momentum(i, max_momentum);
  }
  init_base_lrs();
  initial_step();
}

void OneCycleLR::build_phases(double pct_start) {
  const double total = static_cast<double>(total_steps_);
  if (three_phase_) {
    phases_ = {
        {pct_start * total - 1, kInitialLr, kMaxLr, kMaxMomentum, kBaseMomentum},
        {2 * pct_start * total - 2, kMaxLr, kInitialLr, kBaseMomentum, kMaxMomentum},
        {total - 1, kInitialLr, kMinLr, kMaxMomentum, kMaxMomentum},
    };
  } else {
    phases_ = {
        {pct_start * total - 1, kInitialLr, kMaxLr, kMaxMomentum, kBaseMomentum},
        {total - 1, kMaxLr, kMinLr, kBaseMomentum, kMaxMomentum},
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

double OneCycleLR::group_value(int which, std::size_t group) const {
  switch (which) {
    case kInitialLr:
      return initial_lrs_[group];
    case kMaxLr:
      return max_lrs_[group];
    case kMinLr:
      return min_lrs_[group];
    case kMaxMomentum:
      return max_momentums_[group];
    default:
      return base_momentums_[group];
  }
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
  std::vector<double> lrs(num_groups());
  for (std::size_t g = 0; g < lrs.size(); ++g) {
    double start_step = 0.0;
    for (std::size_t i = 0; i < phases_.size(); ++i) {
      const Phase& phase = phases_[i];
      if (static_cast<double>(step_num) <= phase.end_step || i == phases_.size() - 1) {
        const double pct =
            (static_cast<double>(step_num) - start_step) / (phase.end_step - start_step);
        lrs[g] = anneal(group_value(phase.start_lr, g), group_value(phase.end_lr, g), pct);
        if (cycle_momentum_) {
          set_momentum(g, anneal(group_value(phase.start_momentum, g),
                                 group_value(phase.end_momentum, g), pct));
        }
        break;
      }
      start_step = phase.end_step;
    }
  }
  return lrs;
}

LRScheduler::StateDict OneCycleLR::state_dict() const {
  auto state = LRScheduler::state_dict();
  state["total_steps"] = static_cast<double>(total_steps_);
  state["three_phase"] = three_phase_ ? 1.0 : 0.0;
  state["cycle_momentum"] = cycle_momentum_ ? 1.0 : 0.0;
  state["use_beta1"] = use_beta1_ ? 1.0 : 0.0;
  state["anneal_cos"] = anneal_cos_ ? 1.0 : 0.0;
  for (std::size_t i = 0; i < phases_.size(); ++i) {
    state[fmt::format("_schedule_phases.{}.end_step", i)] = phases_[i].end_step;
  }
  save_list(state, "initial_lr", initial_lrs_);
  save_list(state, "max_lr", max_lrs_);
  save_list(state, "min_lr", min_lrs_);
  if (cycle_momentum_) {
    save_list(state, "max_momentum", max_momentums_);
    save_list(state, "base_momentum", base_momentums_);
  }
  return state;
}

void OneCycleLR::load_state_dict(const StateDict& state) {
  load_common(state);
  const std::size_t groups = num_groups();
  total_steps_ = static_cast<int64_t>(require(state, "total_steps"));
  three_phase_ = require(state, "three_phase") != 0.0;
  build_phases(0.0);
  for (std::size_t i = 0; i < phases_.size(); ++i) {
    phases_[i].end_step = require(state, fmt::format("_schedule_phases.{}.end_step", i));
  }
  cycle_momentum_ = require(state, "cycle_momentum") != 0.0;
  use_beta1_ = require(state, "use_beta1") != 0.0;
  anneal_cos_ = require(state, "anneal_cos") != 0.0;
  initial_lrs_ = load_list(state, "initial_lr", groups);
  max_lrs_ = load_list(state, "max_lr", groups);
  min_lrs_ = load_list(state, "min_lr", groups);
  if (cycle_momentum_) {
    max_momentums_ = load_list(state, "max_momentum", groups);
    base_momentums_ = load_list(state, "base_momentum", groups);
  }
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
    const auto initial = find_initial_lr(group);
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

LRScheduler::StateDict SequentialLR::state_dict() const {
  StateDict state;
  state["last_epoch"] = static_cast<double>(last_epoch_);
  save_list(state, "_last_lr", last_lr_);
  for (std::size_t i = 0; i < milestones_.size(); ++i) {
    state[fmt::format("_milestones.{}", i)] = static_cast<double>(milestones_[i]);
  }
  for (std::size_t i = 0; i < schedulers_.size(); ++i) {
    const std::string prefix = fmt::format("_schedulers.{}.", i);
    for (const auto& [key, value] : schedulers_[i]->state_dict()) state[prefix + key] = value;
  }
  return state;
}

void SequentialLR::load_state_dict(const StateDict& state) {
  last_epoch_ = static_cast<int64_t>(require(state, "last_epoch"));
  last_lr_ = load_list(state, "_last_lr", count_list(state, "_last_lr"));
  const auto milestones = load_list(state, "_milestones", count_list(state, "_milestones"));
  milestones_.assign(milestones.size(), 0);
  for (std::size_t i = 0; i < milestones.size(); ++i) {
    milestones_[i] = static_cast<int64_t>(milestones[i]);
  }
  for (std::size_t i = 0; i < schedulers_.size(); ++i) {
    const std::string prefix = fmt::format("_schedulers.{}.", i);
    StateDict child;
    for (auto it = state.lower_bound(prefix); it != state.end() && it->first.starts_with(prefix);
         ++it) {
      child.emplace(it->first.substr(prefix.size()), it->second);
    }
    schedulers_[i]->load_state_dict(child);
  }
}

}  // namespace cppfabric::optim
