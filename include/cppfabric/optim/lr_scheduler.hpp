// Learning-rate schedulers that LibTorch lacks, with torch.optim.lr_scheduler's semantics.
//
//   auto optimizer = std::make_shared<torch::optim::AdamW>(model->parameters(),
//                                                          torch::optim::AdamWOptions(3e-4));
//   cppfabric::optim::CosineAnnealingLR scheduler(*optimizer, /*T_max=*/20);
//   for (int epoch = 0; epoch < 20; ++epoch) {
//     train_one_epoch();          // calls optimizer->step()
//     scheduler.step();           // after the optimizer's step, as in Python
//   }
//
// As in Python, constructing a scheduler performs the initial step (last_epoch becomes 0) and
// writes the first learning rate into every param group; it records each group's current lr as
// the group's `initial_lr` unless a scheduler already did so for that group (Python's
// `group.setdefault("initial_lr", ...)`), so schedulers built one after another for
// SequentialLR all start from the optimizer's original learning rates. LibTorch's param groups
// have no `initial_lr` field, so cppfabric keeps it beside the group (keyed by the group and
// its first parameter), with OneCycleLR's other per-group values (`max_lr`, `min_lr`,
// `max_momentum`, `base_momentum`); checkpoints save them with the optimizer's param groups, as
// Python does. The learning rates follow Python's recursive ("chainable") formulas, which read
// the group's current lr: changing a group's lr by hand changes the schedule.
//
// Every scheduler is a cppfabric::Stateful. state_dict() returns what Python's
// scheduler.state_dict() returns (torch 2.11): the scheduler's attributes with the same keys, in
// the same order, with the same types (ints, floats, bools, lists, dicts, strings):
//   CosineAnnealingLR  T_max, eta_min, then the common keys
//   StepLR             step_size, gamma, ...
//   MultiStepLR        milestones ({milestone: count}: the contents of Python's Counter), gamma, ...
//   ExponentialLR      gamma, ...
//   LinearLR           start_factor, end_factor, total_iters, ...
//   LambdaLR           the common keys, then lr_lambdas ([None] per group: functions are not
//                      saved, as in Python)
//   OneCycleLR         total_steps, _schedule_phases (a list of {end_step, start_lr, end_lr,
//                      start_momentum, end_momentum}, the last four naming group keys),
//                      _anneal_func_type ("cos" or "linear"), cycle_momentum, use_beta1 (only
//                      with cycle_momentum), ...
//   SequentialLR       _milestones, last_epoch, _last_lr, _schedulers (each child's state_dict();
//                      no common keys, as in Python)
//   common keys        base_lrs, last_epoch, _step_count, _is_initial,
//                      _get_lr_called_within_step, _last_lr
// A state Python saved (torch.save(scheduler.state_dict())) loads with load_state_dict(), and
// Python's scheduler.load_state_dict() takes ours. load_state_dict() throws std::invalid_argument
// naming a missing or ill-typed key. Like Python, it does not touch the optimizer's learning
// rates or param-group values: restore the optimizer's own state too (fabric.load does both).
//
// OneCycleLR's cycle_momentum (default true, as in Python) works with SGD and RMSprop
// (`momentum`) and Adam/AdamW (`betas`' first value); other optimizers throw unless
// cycle_momentum is false.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "cppfabric/stateful.hpp"

namespace torch::optim {
class Optimizer;
}  // namespace torch::optim

namespace cppfabric::optim {

/// Common base: the optimizer, last_epoch, base_lrs and the last learning rates.
class LRScheduler : public Stateful {
 public:
  ~LRScheduler() override;
  LRScheduler(const LRScheduler&) = delete;
  LRScheduler& operator=(const LRScheduler&) = delete;

  /// Advances one epoch (or iteration) and writes the new learning rates into the optimizer.
  virtual void step();
  /// The learning rates the last step() wrote, one per param group.
  std::vector<double> get_last_lr() const { return last_lr_; }
  /// Index of the last epoch seen (0 right after construction).
  int64_t last_epoch() const { return last_epoch_; }
  /// Each param group's `initial_lr` when the scheduler was built.
  const std::vector<double>& base_lrs() const { return base_lrs_; }
  torch::optim::Optimizer& optimizer() const { return *optimizer_; }

  /// Python's state_dict(): the common keys (a subclass adds its own around them).
  Value state_dict() const override;
  void load_state_dict(const Value& state) override;
  std::string kind() const override { return "scheduler"; }

 protected:
  explicit LRScheduler(torch::optim::Optimizer& optimizer);

  /// The next learning rates (Python's get_lr), computed after last_epoch was advanced.
  virtual std::vector<double> get_lr() = 0;
  /// Python's _get_closed_form_lr, where the scheduler has one.
  virtual std::optional<std::vector<double>> closed_form_lr() const { return std::nullopt; }

  /// Registers initial_lr (setdefault), fills base_lrs; called by every constructor first.
  void init_base_lrs();
  /// Python's _initial_step: _step_count = 0, then step() in initial mode.
  void initial_step();
  /// Python's _update_lr: advances (or sets) last_epoch, computes and writes the lrs.
  void update_lr(std::optional<int64_t> epoch);
  /// The learning rate currently in each param group.
  std::vector<double> group_lrs() const;
  std::size_t num_groups() const;

  /// Appends the common keys (base_lrs ... _last_lr) to the dict `state`.
  void save_common(Value& state) const;
  /// Reads the common keys back; checks that base_lrs and _last_lr have one entry per group.
  void load_common(const Value& state);

  torch::optim::Optimizer* optimizer_;
  int64_t last_epoch_ = -1;
  int64_t step_count_ = 0;
  bool is_initial_ = false;
  std::vector<double> base_lrs_;
  std::vector<double> last_lr_;

  friend class SequentialLR;
};

/// Cosine annealing from each base lr down to eta_min over T_max epochs (and back up after).
class CosineAnnealingLR final : public LRScheduler {
 public:
  CosineAnnealingLR(torch::optim::Optimizer& optimizer, int64_t T_max, double eta_min = 0.0);
  Value state_dict() const override;
  void load_state_dict(const Value& state) override;

 protected:
  std::vector<double> get_lr() override;
  std::optional<std::vector<double>> closed_form_lr() const override;

 private:
  int64_t T_max_;
  double eta_min_;
};

/// Multiplies the lr by gamma every step_size epochs.
class StepLR final : public LRScheduler {
 public:
  StepLR(torch::optim::Optimizer& optimizer, int64_t step_size, double gamma = 0.1);
  Value state_dict() const override;
  void load_state_dict(const Value& state) override;

 protected:
  std::vector<double> get_lr() override;
  std::optional<std::vector<double>> closed_form_lr() const override;

 private:
  int64_t step_size_;
  double gamma_;
};

/// Multiplies the lr by gamma at each milestone (a milestone given twice multiplies twice).
class MultiStepLR final : public LRScheduler {
 public:
  MultiStepLR(torch::optim::Optimizer& optimizer, std::vector<int64_t> milestones,
              double gamma = 0.1);
  Value state_dict() const override;
  void load_state_dict(const Value& state) override;

 protected:
  std::vector<double> get_lr() override;
  std::optional<std::vector<double>> closed_form_lr() const override;

 private:
  /// How often each milestone was given, in the order first given (Python's Counter).
  std::vector<std::pair<int64_t, int64_t>> milestones_;
  double gamma_;
};

/// Multiplies the lr by gamma every epoch.
class ExponentialLR final : public LRScheduler {
 public:
  ExponentialLR(torch::optim::Optimizer& optimizer, double gamma);
  Value state_dict() const override;
  void load_state_dict(const Value& state) override;

 protected:
  std::vector<double> get_lr() override;
  std::optional<std::vector<double>> closed_form_lr() const override;

 private:
  double gamma_;
};

/// Scales the lr linearly from start_factor to end_factor over total_iters epochs.
class LinearLR final : public LRScheduler {
 public:
  LinearLR(torch::optim::Optimizer& optimizer, double start_factor = 1.0 / 3,
           double end_factor = 1.0, int64_t total_iters = 5);
  Value state_dict() const override;
  void load_state_dict(const Value& state) override;

 protected:
  std::vector<double> get_lr() override;
  std::optional<std::vector<double>> closed_form_lr() const override;

 private:
  double start_factor_;
  double end_factor_;
  int64_t total_iters_;
};

/// lr = base_lr * lr_lambda(epoch); one function for all groups, or one per group.
class LambdaLR final : public LRScheduler {
 public:
  using Lambda = std::function<double(int64_t)>;
  LambdaLR(torch::optim::Optimizer& optimizer, Lambda lr_lambda);
  LambdaLR(torch::optim::Optimizer& optimizer, std::vector<Lambda> lr_lambdas);
  Value state_dict() const override;
  void load_state_dict(const Value& state) override;

 protected:
  std::vector<double> get_lr() override;

 private:
  std::vector<Lambda> lr_lambdas_;
};

/// The 1cycle policy: warm up to max_lr, then anneal to max_lr / div_factor / final_div_factor.
/// Step it once per batch; stepping more than total_steps times throws.
class OneCycleLR final : public LRScheduler {
 public:
  OneCycleLR(torch::optim::Optimizer& optimizer, double max_lr, int64_t total_steps,
             double pct_start = 0.3, const std::string& anneal_strategy = "cos",
             bool cycle_momentum = true, double base_momentum = 0.85, double max_momentum = 0.95,
             double div_factor = 25.0, double final_div_factor = 1e4, bool three_phase = false);
  /// One max_lr per param group.
  OneCycleLR(torch::optim::Optimizer& optimizer, std::vector<double> max_lrs, int64_t total_steps,
             double pct_start = 0.3, const std::string& anneal_strategy = "cos",
             bool cycle_momentum = true, double base_momentum = 0.85, double max_momentum = 0.95,
             double div_factor = 25.0, double final_div_factor = 1e4, bool three_phase = false);
  Value state_dict() const override;
  void load_state_dict(const Value& state) override;

 protected:
  std::vector<double> get_lr() override;

 private:
  void build_phases(double pct_start, bool three_phase);
  double anneal(double start, double end, double pct) const;
  void set_momentum(std::size_t group, double momentum);

  /// Python's _schedule_phases entry: where the phase ends and the param-group keys it anneals
  /// between ("initial_lr", "max_lr", "min_lr", "max_momentum", "base_momentum").
  struct Phase {
    double end_step;
    bool end_step_is_int;  // Python stores the last phase's end (total_steps - 1) as an int
    std::string start_lr, end_lr, start_momentum, end_momentum;
  };
  int64_t total_steps_;
  bool anneal_cos_;
  bool cycle_momentum_;
  bool use_beta1_ = false;
  std::vector<Phase> phases_;
};

/// Runs schedulers one after another, switching at each milestone.
class SequentialLR final : public LRScheduler {
 public:
  SequentialLR(torch::optim::Optimizer& optimizer,
               std::vector<std::shared_ptr<LRScheduler>> schedulers,
               std::vector<int64_t> milestones);
  void step() override;
  Value state_dict() const override;
  void load_state_dict(const Value& state) override;
  const std::vector<std::shared_ptr<LRScheduler>>& schedulers() const { return schedulers_; }

 protected:
  std::vector<double> get_lr() override;

 private:
  static void recursive_undo(LRScheduler& scheduler);
  std::vector<std::shared_ptr<LRScheduler>> schedulers_;
  std::vector<int64_t> milestones_;
};

}  // namespace cppfabric::optim
