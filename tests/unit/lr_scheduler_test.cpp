// cppfabric::optim schedulers against torch.optim.lr_scheduler
// (tests/python/lr_scheduler_reference.py): trajectories, and states that cross the language
// line mid-schedule in both directions.
#include <gtest/gtest.h>
#include <stdlib.h>
#include <torch/torch.h>

#include <cmath>
#include <cppfabric/checkpoint/torch_pickle.hpp>
#include <cppfabric/optim/lr_scheduler.hpp>
#include <cppfabric/state.hpp>
#include <cstdlib>
#include <functional>
#include <map>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "test_utils.hpp"

namespace {

using cppfabric::Value;
using cppfabric::optim::CosineAnnealingLR;
using cppfabric::optim::ExponentialLR;
using cppfabric::optim::LambdaLR;
using cppfabric::optim::LinearLR;
using cppfabric::optim::LRScheduler;
using cppfabric::optim::MultiStepLR;
using cppfabric::optim::OneCycleLR;
using cppfabric::optim::SequentialLR;
using cppfabric::optim::StepLR;

constexpr int kSteps = 30;
// lr_scheduler_reference.py's SAVE_AT and RESUME_STEPS.
constexpr int kSaveAt = 7;
constexpr int kResumeSteps = 15;

// Two param groups, lr 0.1 and 0.05, as the Python script builds them.
std::unique_ptr<torch::optim::SGD> make_optimizer(double momentum = 0.0) {
  std::vector<torch::optim::OptimizerParamGroup> groups;
  groups.emplace_back(
      std::vector<torch::Tensor>{torch::zeros({2}, torch::requires_grad())},
      std::make_unique<torch::optim::SGDOptions>(torch::optim::SGDOptions(0.1).momentum(momentum)));
  groups.emplace_back(std::vector<torch::Tensor>{torch::zeros({3}, torch::requires_grad())},
                      std::make_unique<torch::optim::SGDOptions>(
                          torch::optim::SGDOptions(0.05).momentum(momentum)));
  return std::make_unique<torch::optim::SGD>(std::move(groups),
                                             torch::optim::SGDOptions(0.1).momentum(momentum));
}

double pow95(int64_t epoch) { return std::pow(0.95, static_cast<double>(epoch)); }

struct Case {
  std::unique_ptr<torch::optim::SGD> optimizer;
  std::shared_ptr<LRScheduler> scheduler;
  bool momentum = false;
};

// The same cases, in the same order, as lr_scheduler_reference.py.
std::map<std::string, std::function<Case()>> cases() {
  std::map<std::string, std::function<Case()>> out;
  out["cosine"] = [] {
    auto opt = make_optimizer();
    auto s = std::make_shared<CosineAnnealingLR>(*opt, 10, 0.001);
    return Case{std::move(opt), s};
  };
  out["step"] = [] {
    auto opt = make_optimizer();
    auto s = std::make_shared<StepLR>(*opt, 7, 0.5);
    return Case{std::move(opt), s};
  };
  out["multistep"] = [] {
    auto opt = make_optimizer();
    auto s = std::make_shared<MultiStepLR>(*opt, std::vector<int64_t>{20, 5, 12, 12}, 0.3);
    return Case{std::move(opt), s};
  };
  out["exponential"] = [] {
    auto opt = make_optimizer();
    auto s = std::make_shared<ExponentialLR>(*opt, 0.9);
    return Case{std::move(opt), s};
  };
  out["linear"] = [] {
    auto opt = make_optimizer();
    auto s = std::make_shared<LinearLR>(*opt, 0.25, 0.9, 8);
    return Case{std::move(opt), s};
  };
  out["linear_default"] = [] {
    auto opt = make_optimizer();
    auto s = std::make_shared<LinearLR>(*opt);
    return Case{std::move(opt), s};
  };
  out["lambda"] = [] {
    auto opt = make_optimizer();
    auto s = std::make_shared<LambdaLR>(*opt, pow95);
    return Case{std::move(opt), s};
  };
  out["onecycle"] = [] {
    auto opt = make_optimizer(0.9);
    auto s = std::make_shared<OneCycleLR>(*opt, std::vector<double>{1.0, 0.5}, kSteps);
    return Case{std::move(opt), s, true};
  };
  out["onecycle_linear3"] = [] {
    auto opt = make_optimizer();
    auto s = std::make_shared<OneCycleLR>(*opt, 0.8, kSteps + 5, 0.25, "linear",
                                          /*cycle_momentum=*/false, 0.85, 0.95, 10.0, 100.0,
                                          /*three_phase=*/true);
    return Case{std::move(opt), s};
  };
  out["sequential"] = [] {
    auto opt = make_optimizer();
    std::vector<std::shared_ptr<LRScheduler>> children{
        std::make_shared<LinearLR>(*opt, 0.1, 1.0, 5),
        std::make_shared<CosineAnnealingLR>(*opt, 10), std::make_shared<ExponentialLR>(*opt, 0.9)};
    auto s = std::make_shared<SequentialLR>(*opt, children, std::vector<int64_t>{5, 15});
    return Case{std::move(opt), s};
  };
  out["sequential2"] = [] {
    auto opt = make_optimizer();
    std::vector<std::shared_ptr<LRScheduler>> children{std::make_shared<ExponentialLR>(*opt, 0.8),
                                                       std::make_shared<StepLR>(*opt, 4, 0.5),
                                                       std::make_shared<LambdaLR>(*opt, pow95)};
    auto s = std::make_shared<SequentialLR>(*opt, children, std::vector<int64_t>{6, 18});
    return Case{std::move(opt), s};
  };
  return out;
}

std::vector<double> group_momentums(torch::optim::SGD& opt) {
  std::vector<double> out;
  for (auto& group : opt.param_groups()) {
    out.push_back(static_cast<torch::optim::SGDOptions&>(group.options()).momentum());
  }
  return out;
}

// name -> per step -> per group values, from the Python script.
using Trajectories = std::map<std::string, std::vector<std::vector<double>>>;

// Runs lr_scheduler_reference.py with `args`; parses its `<name> <step> <values...>` lines.
Trajectories python_trajectories(const std::string& args = "") {
  const auto python = cppfabric::testing::venv_python();
  if (!python) return {};
  const std::string script =
      std::string(CPPFABRIC_SOURCE_DIR) + "/tests/python/lr_scheduler_reference.py";
  int status = 0;
  const std::string output = cppfabric::testing::run_command(
      *python + " -W ignore " + script + " " + args + " 2>&1", &status);
  EXPECT_EQ(status, 0) << output;
  Trajectories out;
  std::istringstream lines(output);
  std::string line;
  while (std::getline(lines, line)) {
    std::istringstream fields(line);
    std::string name;
    std::size_t step = 0;
    if (!(fields >> name >> step)) continue;
    std::vector<double> values;
    std::string value;
    while (fields >> value) values.push_back(std::strtod(value.c_str(), nullptr));
    auto& steps = out[name];
    if (steps.size() <= step) steps.resize(step + 1);
    steps[step] = values;
  }
  return out;
}

void expect_close(const std::vector<double>& actual, const std::vector<double>& expected,
                  const std::string& where) {
  ASSERT_EQ(actual.size(), expected.size()) << where;
  for (std::size_t i = 0; i < actual.size(); ++i) {
    const double tolerance = 1e-12 * std::max(std::abs(expected[i]), 1e-300);
    EXPECT_NEAR(actual[i], expected[i], tolerance) << where << " group " << i;
  }
}

std::vector<double> group_lrs(torch::optim::Optimizer& opt) {
  std::vector<double> out;
  for (auto& group : opt.param_groups()) out.push_back(group.options().get_lr());
  return out;
}

// The optimizer as a checkpoint sees it (Python's optimizer.state_dict() layout).
std::shared_ptr<cppfabric::Stateful> optimizer_state(torch::optim::Optimizer& opt) {
  return cppfabric::detail::optimizer_stateful(cppfabric::detail::borrow(opt));
}

// The same keys in the same order, the same kinds, equal ints / bools / strings, and floats
// within a relative 1e-12 (the two runs compute them with the same formulas).
void expect_same_layout(const Value& actual, const Value& expected, const std::string& where) {
  ASSERT_EQ(std::string(actual.type_name()), std::string(expected.type_name()))
      << where << ": " << actual.repr() << " vs " << expected.repr();
  switch (expected.kind()) {
    case Value::Kind::Double:
      EXPECT_NEAR(actual.to_double(), expected.to_double(),
                  1e-12 * std::max(std::abs(expected.to_double()), 1e-300))
          << where;
      break;
    case Value::Kind::List:
    case Value::Kind::Tuple:
      ASSERT_EQ(actual.elements().size(), expected.elements().size()) << where;
      for (std::size_t i = 0; i < expected.elements().size(); ++i) {
        expect_same_layout(actual.elements()[i], expected.elements()[i],
                           where + "[" + std::to_string(i) + "]");
      }
      break;
    case Value::Kind::Dict:
      ASSERT_EQ(actual.items().size(), expected.items().size()) << where;
      for (std::size_t i = 0; i < expected.items().size(); ++i) {
        const auto& [key, value] = expected.items()[i];
        ASSERT_TRUE(actual.items()[i].first == key)
            << where << ": key " << i << " is " << actual.items()[i].first.repr() << ", Python has "
            << key.repr();
        expect_same_layout(actual.items()[i].second, value, where + "." + key.repr());
      }
      break;
    default:
      EXPECT_TRUE(actual == expected)
          << where << ": " << actual.repr() << " vs " << expected.repr();
  }
}

// A fresh folder under the test temp dir.
std::string make_temp_dir() {
  std::string pattern = ::testing::TempDir() + "cppfabric_sched_XXXXXX";
  if (::mkdtemp(pattern.data()) == nullptr) ADD_FAILURE() << "mkdtemp failed: " << pattern;
  return pattern;
}

}  // namespace

TEST(LRScheduler, TrajectoriesMatchPython) {
  if (!cppfabric::testing::venv_python()) GTEST_SKIP() << "bootstrapped venv missing";
  const Trajectories expected = python_trajectories();
  ASSERT_FALSE(expected.empty());
  for (auto& [name, make] : cases()) {
    SCOPED_TRACE(name);
    ASSERT_TRUE(expected.count(name)) << "the Python script printed no '" << name << "'";
    const auto& lrs = expected.at(name);
    ASSERT_EQ(lrs.size(), static_cast<std::size_t>(kSteps + 1));
    Case c = make();
    for (int step = 0; step <= kSteps; ++step) {
      if (step > 0) {
        c.optimizer->step();
        c.scheduler->step();
      }
      const std::string where = name + " step " + std::to_string(step);
      expect_close(c.scheduler->get_last_lr(), lrs[step], where);
      expect_close(group_lrs(*c.optimizer), lrs[step], where + " (optimizer)");
      if (c.momentum) {
        expect_close(group_momentums(*c.optimizer), expected.at(name + "_momentum")[step],
                     where + " momentum");
      }
    }
  }
}

TEST(LRScheduler, ConstructionPerformsInitialStep) {
  auto opt = make_optimizer();
  StepLR scheduler(*opt, 3);
  EXPECT_EQ(scheduler.last_epoch(), 0);
  EXPECT_EQ(scheduler.base_lrs(), (std::vector<double>{0.1, 0.05}));
  EXPECT_EQ(scheduler.get_last_lr(), (std::vector<double>{0.1, 0.05}));
  const auto state = scheduler.state_dict();
  EXPECT_EQ(state.at("last_epoch").to_int(), 0);
  EXPECT_EQ(state.at("_step_count").to_int(), 1);
  EXPECT_EQ(state.at("base_lrs").elements().at(1).to_double(), 0.05);
  EXPECT_EQ(state.at("step_size").to_int(), 3);
  EXPECT_EQ(state.at("gamma").to_double(), 0.1);
  // Python's StepLR.state_dict(), key for key and type for type.
  const Value python = Value::dict({{"step_size", 3},
                                    {"gamma", 0.1},
                                    {"base_lrs", Value::list({0.1, 0.05})},
                                    {"last_epoch", 0},
                                    {"_step_count", 1},
                                    {"_is_initial", false},
                                    {"_get_lr_called_within_step", false},
                                    {"_last_lr", Value::list({0.1, 0.05})}});
  EXPECT_EQ(state, python);
}

TEST(LRScheduler, StateDictRoundTrip) {
  for (auto& [name, make] : cases()) {
    SCOPED_TRACE(name);
    Case original = make();
    for (int i = 0; i < 7; ++i) original.scheduler->step();
    const auto state = original.scheduler->state_dict();
    const auto lrs = group_lrs(*original.optimizer);
    const auto momentums = group_momentums(*original.optimizer);

    Case restored = make();
    restored.scheduler->load_state_dict(state);
    // What the optimizer's own load_state_dict restores.
    for (std::size_t g = 0; g < lrs.size(); ++g) {
      auto& options =
          static_cast<torch::optim::SGDOptions&>(restored.optimizer->param_groups()[g].options());
      options.lr(lrs[g]);
      options.momentum(momentums[g]);
    }
    EXPECT_EQ(restored.scheduler->last_epoch(), original.scheduler->last_epoch());
    EXPECT_EQ(restored.scheduler->get_last_lr(), original.scheduler->get_last_lr());
    EXPECT_EQ(restored.scheduler->state_dict(), state);
    for (int i = 0; i < 15; ++i) {
      original.scheduler->step();
      restored.scheduler->step();
      EXPECT_EQ(restored.scheduler->get_last_lr(), original.scheduler->get_last_lr())
          << "step " << i;
      EXPECT_EQ(group_momentums(*restored.optimizer), group_momentums(*original.optimizer));
    }
  }
}

TEST(LRScheduler, StateDictMissingKeyThrows) {
  auto opt = make_optimizer();
  CosineAnnealingLR scheduler(*opt, 5);
  auto state = scheduler.state_dict();
  const Value original = state;
  Value copy = state;
  state.erase("T_max");
  EXPECT_THROW_WITH(scheduler.load_state_dict(state), std::invalid_argument, "T_max");
  copy.set("T_max", 5.0);  // a float where Python keeps an int
  EXPECT_THROW_WITH(scheduler.load_state_dict(copy), std::invalid_argument, "'T_max'", "an int",
                    "float");
  copy.set("T_max", 5);
  copy.set("base_lrs", Value::list({0.1}));  // one group fewer than the optimizer's
  EXPECT_THROW_WITH(scheduler.load_state_dict(copy), std::invalid_argument, "base_lrs", "1", "2");
  EXPECT_THROW_WITH(scheduler.load_state_dict(Value(3)), std::invalid_argument, "must be a dict");
  // A failed load leaves the scheduler as it was.
  EXPECT_EQ(scheduler.state_dict(), original);

  auto opt2 = make_optimizer();
  OneCycleLR one_cycle(*opt2, 0.1, 10);
  Value cycle = one_cycle.state_dict();
  Value phases = cycle.at("_schedule_phases");
  phases.elements()[0].set("end_lr", "peak_lr");
  cycle.set("_schedule_phases", phases);
  EXPECT_THROW_WITH(one_cycle.load_state_dict(cycle), std::invalid_argument, "peak_lr", "max_lr");
  cycle = one_cycle.state_dict();
  cycle.erase("use_beta1");  // present whenever cycle_momentum is true
  EXPECT_THROW_WITH(one_cycle.load_state_dict(cycle), std::invalid_argument, "use_beta1");

  std::vector<std::shared_ptr<LRScheduler>> children{std::make_shared<StepLR>(*opt, 2),
                                                     std::make_shared<ExponentialLR>(*opt, 0.9)};
  SequentialLR sequential(*opt, children, {3});
  Value seq = sequential.state_dict();
  Value fewer = seq;
  fewer.set("_schedulers", Value::list({seq.at("_schedulers").elements()[0]}));
  EXPECT_THROW_WITH(sequential.load_state_dict(fewer), std::invalid_argument, "1 schedulers",
                    "2 schedulers");
}

TEST(LRScheduler, StateDictsHavePythonsLayout) {
  // Keys, order and types, for the less regular schedulers (all of them are checked against
  // files Python wrote in StateResumesFromPython).
  auto opt = make_optimizer(0.9);
  OneCycleLR one_cycle(*opt, 1.0, 30);
  const Value state = one_cycle.state_dict();
  std::vector<std::string> keys;
  for (const auto& [key, value] : state.items()) keys.push_back(key.to_string());
  EXPECT_EQ(keys, (std::vector<std::string>{"total_steps", "_schedule_phases", "_anneal_func_type",
                                            "cycle_momentum", "use_beta1", "base_lrs", "last_epoch",
                                            "_step_count", "_is_initial",
                                            "_get_lr_called_within_step", "_last_lr"}));
  const auto& phases = state.at("_schedule_phases").elements();
  ASSERT_EQ(phases.size(), 2u);
  EXPECT_EQ(phases[0], Value::dict({{"end_step", 8.0},
                                    {"start_lr", "initial_lr"},
                                    {"end_lr", "max_lr"},
                                    {"start_momentum", "max_momentum"},
                                    {"end_momentum", "base_momentum"}}));
  EXPECT_EQ(phases[1].at("end_step"), Value(29));  // an int, as Python stores total_steps - 1
  EXPECT_EQ(state.at("_anneal_func_type"), Value("cos"));
  EXPECT_EQ(state.at("use_beta1"), Value(false));

  // The per-group values live in the optimizer's param groups, as in Python.
  const Value groups = optimizer_state(*opt)->state_dict().at("param_groups");
  const Value& group = groups.elements()[1];
  EXPECT_EQ(group.at("initial_lr"), Value(1.0 / 25));
  EXPECT_EQ(group.at("max_lr"), Value(1.0));
  EXPECT_EQ(group.at("min_lr"), Value(1.0 / 25 / 1e4));
  EXPECT_EQ(group.at("max_momentum"), Value(0.95));
  EXPECT_EQ(group.at("base_momentum"), Value(0.85));

  auto opt2 = make_optimizer();
  MultiStepLR multi(*opt2, {20, 5, 12, 12}, 0.3);
  EXPECT_EQ(multi.state_dict().at("milestones"),
            Value::dict({{20, 1}, {5, 1}, {12, 2}}));  // Counter, in first-seen order
  LambdaLR lambda(*opt2, pow95);
  EXPECT_EQ(lambda.state_dict().items().back().second, Value::list({Value(), Value()}));
}

TEST(LRScheduler, OneCycleCyclesAdamBeta1) {
  auto param = torch::zeros({2}, torch::requires_grad());
  torch::optim::Adam adam(std::vector<torch::Tensor>{param},
                          torch::optim::AdamOptions(1e-3).betas(std::make_tuple(0.9, 0.99)));
  OneCycleLR scheduler(adam, 0.01, 10);
  auto& options = static_cast<torch::optim::AdamOptions&>(adam.param_groups()[0].options());
  EXPECT_NEAR(std::get<0>(options.betas()), 0.95, 1e-12);
  EXPECT_EQ(std::get<1>(options.betas()), 0.99);
  EXPECT_NEAR(scheduler.get_last_lr()[0], 0.01 / 25.0, 1e-15);
  for (int i = 0; i < 2; ++i) scheduler.step();  // the peak: step 2 ~ pct_start * 10 - 1
  EXPECT_NEAR(std::get<0>(options.betas()), 0.85, 1e-12);
  EXPECT_EQ(std::get<1>(options.betas()), 0.99);
  EXPECT_NEAR(scheduler.get_last_lr()[0], 0.01, 1e-12);
}

TEST(LRScheduler, ArgumentErrors) {
  auto opt = make_optimizer();
  EXPECT_THROW_WITH(OneCycleLR(*opt, 0.1, 0), std::invalid_argument, "total_steps", "0");
  EXPECT_THROW_WITH(OneCycleLR(*opt, 0.1, -3), std::invalid_argument, "total_steps", "-3");
  EXPECT_THROW_WITH(OneCycleLR(*opt, 0.1, 10, 0.3, "exp"), std::invalid_argument, "'cos'",
                    "'linear'", "exp");
  EXPECT_THROW_WITH(OneCycleLR(*opt, 0.1, 10, 1.5), std::invalid_argument, "pct_start", "1.5");
  EXPECT_THROW_WITH(OneCycleLR(*opt, std::vector<double>{0.1}, 10), std::invalid_argument, "max_lr",
                    "1", "2");
  EXPECT_THROW_WITH(LinearLR(*opt, 0.0), std::invalid_argument, "start_factor", "(0, 1]", "0");
  EXPECT_THROW_WITH(LinearLR(*opt, 1.5), std::invalid_argument, "start_factor", "1.5");
  EXPECT_THROW_WITH(LinearLR(*opt, 0.5, 2.0), std::invalid_argument, "end_factor", "[0, 1]");
  EXPECT_THROW_WITH(CosineAnnealingLR(*opt, 0), std::invalid_argument, "T_max", "0");
  EXPECT_THROW_WITH(StepLR(*opt, 0), std::invalid_argument, "step_size", "0");
  EXPECT_THROW_WITH(LambdaLR(*opt, std::vector<LambdaLR::Lambda>{pow95}), std::invalid_argument,
                    "2", "1");

  auto a = std::make_shared<StepLR>(*opt, 2);
  auto b = std::make_shared<ExponentialLR>(*opt, 0.9);
  EXPECT_THROW_WITH(SequentialLR(*opt, {a, b}, {}), std::invalid_argument, "2 schedulers",
                    "0 milestones");
  EXPECT_THROW_WITH(SequentialLR(*opt, {a, b}, {3, 4}), std::invalid_argument, "2 schedulers",
                    "2 milestones");
  EXPECT_THROW_WITH(SequentialLR(*opt, {}, {}), std::invalid_argument, "at least one");
  auto other = make_optimizer();
  auto c = std::make_shared<StepLR>(*other, 2);
  EXPECT_THROW_WITH(SequentialLR(*opt, {a, c}, {3}), std::invalid_argument, "same optimizer",
                    "index 1");

  auto param = torch::zeros({2}, torch::requires_grad());
  torch::optim::Adagrad adagrad(std::vector<torch::Tensor>{param},
                                torch::optim::AdagradOptions(0.1));
  EXPECT_THROW_WITH(OneCycleLR(adagrad, 0.1, 10), std::invalid_argument, "cycle_momentum");
  EXPECT_NO_THROW(OneCycleLR(adagrad, 0.1, 10, 0.3, "cos", /*cycle_momentum=*/false));
}

TEST(LRScheduler, OneCycleSteppingPastTotalStepsThrows) {
  auto opt = make_optimizer();
  OneCycleLR scheduler(*opt, 0.1, 3);
  for (int i = 0; i < 3; ++i) scheduler.step();
  EXPECT_THROW_WITH(scheduler.step(), std::invalid_argument, "4", "total_steps is 3");
}

// Python saves mid-schedule (torch.save of scheduler.state_dict() and optimizer.state_dict());
// C++ loads both and continues with Python's learning rates.
TEST(LRScheduler, StateResumesFromPython) {
  if (!cppfabric::testing::venv_python()) GTEST_SKIP() << "bootstrapped venv missing";
  const std::string dir = make_temp_dir();
  const Trajectories expected = python_trajectories("save " + dir);
  ASSERT_FALSE(expected.empty());
  for (auto& [name, make] : cases()) {
    SCOPED_TRACE(name);
    const Value file = cppfabric::checkpoint::load_torch_file(dir + "/" + name + ".py.pt");
    const Value& saved = file.at("scheduler");

    // A C++ run to the same step writes Python's layout.
    Case native = make();
    for (int i = 0; i < kSaveAt; ++i) native.scheduler->step();
    expect_same_layout(native.scheduler->state_dict(), saved, name);

    Case c = make();
    optimizer_state(*c.optimizer)->load_state_dict(file.at("optimizer"));
    c.scheduler->load_state_dict(saved);
    EXPECT_EQ(c.scheduler->state_dict(), saved) << "the loaded state saves back unchanged";
    ASSERT_EQ(expected.at(name).size(), static_cast<std::size_t>(kResumeSteps + 1));
    for (int step = 1; step <= kResumeSteps; ++step) {
      c.optimizer->step();
      c.scheduler->step();
      const std::string where = name + " resumed step " + std::to_string(step);
      expect_close(c.scheduler->get_last_lr(), expected.at(name)[step], where);
      expect_close(group_lrs(*c.optimizer), expected.at(name)[step], where + " (optimizer)");
      if (c.momentum) {
        expect_close(group_momentums(*c.optimizer), expected.at(name + "_momentum")[step],
                     where + " momentum");
      }
    }
  }
  std::system(("rm -rf " + dir).c_str());
}

// C++ saves mid-schedule (scheduler and optimizer, as fabric.save writes them); Python's
// torch.load(weights_only=True) + optimizer/scheduler.load_state_dict continues identically.
TEST(LRScheduler, StateResumesInPython) {
  if (!cppfabric::testing::venv_python()) GTEST_SKIP() << "bootstrapped venv missing";
  const std::string dir = make_temp_dir();
  Trajectories mine;
  for (auto& [name, make] : cases()) {
    Case c = make();
    for (int i = 0; i < kSaveAt; ++i) {
      c.optimizer->step();
      c.scheduler->step();
    }
    cppfabric::checkpoint::save_torch_file(
        Value::dict({{"scheduler", c.scheduler->state_dict()},
                     {"optimizer", optimizer_state(*c.optimizer)->state_dict()}}),
        dir + "/" + name + ".cpp.pt");
    mine[name].resize(kResumeSteps + 1);
    if (c.momentum) mine[name + "_momentum"].resize(kResumeSteps + 1);
    for (int step = 1; step <= kResumeSteps; ++step) {
      c.optimizer->step();
      c.scheduler->step();
      mine[name][step] = c.scheduler->get_last_lr();
      if (c.momentum) mine[name + "_momentum"][step] = group_momentums(*c.optimizer);
    }
  }
  const Trajectories python = python_trajectories("load " + dir);
  ASSERT_FALSE(python.empty());
  for (const auto& [name, steps] : mine) {
    SCOPED_TRACE(name);
    ASSERT_TRUE(python.count(name)) << "Python printed no '" << name << "'";
    ASSERT_EQ(python.at(name).size(), steps.size());
    for (int step = 1; step <= kResumeSteps; ++step) {
      expect_close(python.at(name)[step], steps[step],
                   name + " resumed in Python, step " + std::to_string(step));
    }
  }
  std::system(("rm -rf " + dir).c_str());
}
