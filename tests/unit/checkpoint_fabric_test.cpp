// fabric.save / fabric.load / fabric.load_raw and cppfabric::State: round trips for every
// stateful type, strict and non-strict loading, filters, errors, a bit-identical resume in a new
// process, and killing a process while it writes.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <torch/torch.h>
#include <unistd.h>

#include <chrono>
#include <cppfabric/cppfabric.hpp>
#include <cstdlib>
#include <random>
#include <set>
#include <string>
#include <thread>

#include "test_utils.hpp"
#include "utilities/filesystem.hpp"

namespace {

using cppfabric::Fabric;
using cppfabric::State;
using cppfabric::Value;
namespace ck = cppfabric::checkpoint;

std::string temp_dir() {
  static const std::string dir =
      ::testing::TempDir() + "cppfabric_ckpt_" + std::to_string(::getpid()) + "/";
  return dir;
}

// Removes this process's temporary folder after all tests (children leave it to the parent).
class RemoveTempDir : public ::testing::Environment {
 public:
  void TearDown() override {
    if (std::getenv("CPPFABRIC_CKPT_CHILD") == nullptr) {
      std::system(("rm -rf '" + temp_dir() + "'").c_str());
    }
  }
};
[[maybe_unused]] auto* const kRemoveTempDir =
    ::testing::AddGlobalTestEnvironment(new RemoveTempDir);

Fabric make_fabric() {
  return Fabric({.accelerator = "cpu", .devices = 1, .precision = "32-true"});
}

torch::nn::Sequential small_model() {
  return torch::nn::Sequential(torch::nn::Linear(3, 5), torch::nn::BatchNorm1d(5),
                               torch::nn::ReLU(), torch::nn::Linear(5, 2));
}

void expect_modules_equal(torch::nn::Module& a, torch::nn::Module& b) {
  auto pa = a.named_parameters();
  auto pb = b.named_parameters();
  ASSERT_EQ(pa.size(), pb.size());
  for (const auto& item : pa) EXPECT_TRUE(torch::equal(item.value(), pb[item.key()])) << item.key();
  auto ba = a.named_buffers();
  auto bb = b.named_buffers();
  for (const auto& item : ba) EXPECT_TRUE(torch::equal(item.value(), bb[item.key()])) << item.key();
}

template <typename Net, typename Opt>
void train(Net& net, Opt& opt, int steps) {
  for (int i = 0; i < steps; ++i) {
    opt.zero_grad();
    auto loss = torch::mse_loss(net(torch::randn({4, 3})), torch::randn({4, 2}));
    loss.backward();
    opt.step();
  }
}

// --------------------------------------------------------------------------------- State

TEST(CheckpointState, BuildsFromAnInitializerListAndReadsTypedValues) {
  auto t = torch::ones({2});
  State nested{{"x", 2}};
  State state{{"epoch", int64_t{5}}, {"i", 3}, {"lr", 0.5},        {"name", "run"},
              {"flag", true},        {"t", t}, {"nested", nested}, {"none", Value()}};
  EXPECT_EQ(state.get<int64_t>("epoch"), 5);
  EXPECT_EQ(state.get<int>("i"), 3);
  EXPECT_EQ(state.get<double>("lr"), 0.5);
  EXPECT_EQ(state.get<double>("i"), 3.0);  // an int reads as a float, as in Python
  EXPECT_EQ(state.get<std::string>("name"), "run");
  EXPECT_TRUE(state.get<bool>("flag"));
  EXPECT_TRUE(state.get<torch::Tensor>("t").is_same(t));
  EXPECT_EQ(state.get<State>("nested").get<int64_t>("x"), 2);
  EXPECT_TRUE(state.get<Value>("none").is_none());
  EXPECT_EQ(state.keys(),
            (std::vector<std::string>{"epoch", "i", "lr", "name", "flag", "t", "nested", "none"}));

  EXPECT_THROW_WITH(state.get<std::string>("epoch"), std::invalid_argument, "'epoch'", "int",
                    "str");
  EXPECT_THROW_WITH(state.get<int64_t>("lr"), std::invalid_argument, "'lr'", "float", "0.5");
  EXPECT_THROW_WITH(state.get<int64_t>("missing"), std::out_of_range, "'missing'", "epoch");
  auto model = small_model();
  State with_module{{"model", model}};
  EXPECT_THROW_WITH(with_module.get<int64_t>("model"), std::invalid_argument, "'model'", "module");
}

// --------------------------------------------------------------------------------- modules

TEST(CheckpointFabric, ModuleRoundTripInEveryForm) {
  auto fabric = make_fabric();
  torch::manual_seed(0);
  auto model = small_model();
  auto net = fabric.setup(model);
  const std::string path = temp_dir() + "module/model.ckpt";
  fabric.save(path, {{"model", net}});
  // The file is a flat name -> tensor dict without wrapper prefixes.
  const Value raw = ck::load_torch_file(path);
  EXPECT_TRUE(raw.at("model").is_ordered_dict());
  EXPECT_NE(raw.at("model").find("0.weight"), nullptr);
  EXPECT_NE(raw.at("model").find("1.running_mean"), nullptr);
  EXPECT_NE(raw.at("model").find("1.num_batches_tracked"), nullptr);

  auto holder = small_model();                                           // ModuleHolder
  std::shared_ptr<torch::nn::SequentialImpl> ptr = small_model().ptr();  // shared_ptr<Module>
  fabric.load(path, {{"model", holder}});
  fabric.load(path, {{"model", ptr}});
  expect_modules_equal(*model, *holder);
  expect_modules_equal(*model, *ptr);
}

TEST(CheckpointFabric, ModuleLoadChecksNamesShapesAndDtypes) {
  auto fabric = make_fabric();
  auto model = small_model();
  const std::string path = temp_dir() + "strict.ckpt";
  fabric.save(path, {{"model", model}});

  auto wider = torch::nn::Sequential(torch::nn::Linear(3, 6), torch::nn::BatchNorm1d(6),
                                     torch::nn::ReLU(), torch::nn::Linear(6, 2));
  EXPECT_THROW_WITH(fabric.load(path, {{"model", wider}}), std::runtime_error,
                    "size mismatch for 0.weight", "[5, 3]", "[6, 3]");

  auto doubled = small_model();
  doubled->to(torch::kDouble);
  EXPECT_THROW_WITH(fabric.load(path, {{"model", doubled}}), std::runtime_error,
                    "dtype mismatch for 0.weight", "Float", "Double");

  auto fewer = torch::nn::Sequential(torch::nn::Linear(3, 5));
  EXPECT_THROW_WITH(fabric.load(path, {{"model", fewer}}), std::runtime_error,
                    "Unexpected key(s) in state_dict", "\"1.running_mean\"");
  auto more =
      torch::nn::Sequential(torch::nn::Linear(3, 5), torch::nn::BatchNorm1d(5), torch::nn::ReLU(),
                            torch::nn::Linear(5, 2), torch::nn::Linear(2, 2));
  EXPECT_THROW_WITH(fabric.load(path, {{"model", more}}), std::runtime_error,
                    "Missing key(s) in state_dict", "\"4.weight\"");

  // Non-strict: missing and unexpected keys are tolerated; the rest loads.
  fabric.load(path, {{"model", fewer}}, /*strict=*/false);
  EXPECT_TRUE(torch::equal(fewer[0]->as<torch::nn::Linear>()->weight,
                           model[0]->as<torch::nn::Linear>()->weight));
  fabric.load(path, {{"model", more}}, /*strict=*/false);
  // Shapes stay strict even then.
  EXPECT_THROW_WITH(fabric.load(path, {{"model", wider}}, false), std::runtime_error,
                    "size mismatch");
}

TEST(CheckpointFabric, StrictTopLevelKeysAndTheRemainder) {
  auto fabric = make_fabric();
  auto model = small_model();
  const std::string path = temp_dir() + "keys.ckpt";
  fabric.save(path, {{"model", model}, {"epoch", 4}, {"note", "hello"}});

  EXPECT_THROW_WITH(fabric.load(path, {{"model", model}, {"scheduler", 0}}), std::runtime_error,
                    "'scheduler'", "does not exist in the loaded checkpoint", "strict");
  State state{{"model", model}, {"epoch", 0}, {"scheduler", 0}};
  State remainder = fabric.load(path, state, /*strict=*/false);
  EXPECT_EQ(state.get<int64_t>("epoch"), 4);      // plain values are updated in place
  EXPECT_EQ(state.get<int64_t>("scheduler"), 0);  // absent from the file: left alone
  EXPECT_EQ(remainder.keys(), std::vector<std::string>{"note"});
  EXPECT_EQ(remainder.get<std::string>("note"), "hello");

  State everything = fabric.load(path);
  EXPECT_EQ(everything.keys(), (std::vector<std::string>{"model", "epoch", "note"}));
  EXPECT_EQ(everything.get<Value>("model").items().size(), 9u);  // 6 parameters, 3 buffers
}

TEST(CheckpointFabric, FilterKeepsSelectedEntries) {
  auto fabric = make_fabric();
  auto model = small_model();
  const std::string path = temp_dir() + "filter.ckpt";
  fabric.save(path, {{"model", model}, {"epoch", 1}},
              {{"model", [](const Value& key, const Value&) {
                  return key.to_string().find("weight") != std::string::npos;
                }}});
  const Value raw = ck::load_torch_file(path);
  std::vector<std::string> keys;
  for (const auto& [k, v] : raw.at("model").items()) keys.push_back(k.to_string());
  EXPECT_EQ(keys, (std::vector<std::string>{"0.weight", "1.weight", "3.weight"}));
  EXPECT_EQ(raw.at("epoch").to_int(), 1);

  EXPECT_THROW_WITH(
      fabric.save(path, {{"model", model}}, {{"optimizer", [](auto&, auto&) { return true; }}}),
      std::invalid_argument, "The filter keys {'optimizer'} are not present", "{'model'}");
  EXPECT_THROW_WITH(fabric.save(path, {{"model", model}}, {{"model", nullptr}}),
                    cppfabric::TypeError, "callable", "'model'");
}

// --------------------------------------------------------------------------------- optimizers

template <typename O, typename Options>
void optimizer_round_trip(const Options& options, const char* name) {
  SCOPED_TRACE(name);
  auto fabric = make_fabric();
  torch::manual_seed(1);
  auto model = small_model();
  auto [net, opt] = fabric.setup(model, std::make_shared<O>(model->parameters(), options));
  train(net, opt, 3);
  const std::string path = temp_dir() + name + ".ckpt";
  fabric.save(path, {{"model", net}, {"optimizer", opt}});

  auto model2 = small_model();
  auto opt2 = std::make_shared<O>(model2->parameters(), Options(options).lr(123.0));
  fabric.load(path, {{"model", model2}, {"optimizer", opt2}});
  EXPECT_EQ(opt2->param_groups()[0].options().get_lr(), options.get_lr());
  // Same state, then the same step on the same data gives bit-identical parameters.
  auto in = torch::randn({4, 3});
  auto target = torch::randn({4, 2});
  for (auto [m, o] : {std::pair<torch::nn::Module*, torch::optim::Optimizer*>{model.ptr().get(),
                                                                              &opt.optimizer()},
                      {model2.ptr().get(), opt2.get()}}) {
    o->zero_grad();
    auto seq = dynamic_cast<torch::nn::SequentialImpl*>(m);
    torch::mse_loss(seq->forward(in), target).backward();
    o->step();
  }
  expect_modules_equal(*model, *model2);
  // And the saved layout is Python's.
  const Value sd = ck::load_torch_file(path).at("optimizer");
  EXPECT_EQ(sd.at("param_groups").elements()[0].at("params").elements().size(),
            model->parameters().size());
  EXPECT_EQ(sd.at("state").items().size(), model->parameters().size());
}

TEST(CheckpointFabric, OptimizerRoundTrips) {
  namespace o = torch::optim;
  optimizer_round_trip<o::SGD>(o::SGDOptions(0.1).momentum(0.9).nesterov(true), "sgd");
  optimizer_round_trip<o::Adam>(o::AdamOptions(0.01).amsgrad(true), "adam");
  optimizer_round_trip<o::AdamW>(o::AdamWOptions(0.01).weight_decay(0.1), "adamw");
  optimizer_round_trip<o::Adagrad>(o::AdagradOptions(0.1).lr_decay(0.01), "adagrad");
  optimizer_round_trip<o::RMSprop>(o::RMSpropOptions(0.01).momentum(0.3).centered(true), "rmsprop");
}

TEST(CheckpointFabric, AdamStepIsAFloatTensorAsInPython) {
  auto fabric = make_fabric();
  auto model = small_model();
  auto [net, opt] = fabric.setup(model, std::make_shared<torch::optim::Adam>(model->parameters()));
  train(net, opt, 2);
  const Value v = State{{"o", opt}}.to_value().at("o");
  const Value& entry = v.at("state").at(Value(0));
  EXPECT_EQ(entry.at("step").to_tensor().scalar_type(), torch::kFloat);
  EXPECT_EQ(entry.at("step").to_tensor().item<float>(), 2.0f);
  EXPECT_EQ(entry.find("max_exp_avg_sq"), nullptr);  // only with amsgrad, as in Python
  const Value& group = v.at("param_groups").elements()[0];
  EXPECT_EQ(group.at("betas").kind(), Value::Kind::Tuple);
  EXPECT_FALSE(group.at("decoupled_weight_decay").to_bool());
}

TEST(CheckpointFabric, OptimizerGroupMismatchIsAnError) {
  auto fabric = make_fabric();
  auto model = small_model();
  auto opt =
      std::make_shared<torch::optim::SGD>(model->parameters(), torch::optim::SGDOptions(0.1));
  const std::string path = temp_dir() + "opt_mismatch.ckpt";
  fabric.save(path, {{"optimizer", opt}});
  auto other = torch::nn::Linear(3, 5);
  auto opt2 =
      std::make_shared<torch::optim::SGD>(other->parameters(), torch::optim::SGDOptions(0.1));
  EXPECT_THROW_WITH(fabric.load(path, {{"optimizer", opt2}}), std::runtime_error,
                    "doesn't match the size");
}

// --------------------------------------------------------------------------------- others

TEST(CheckpointFabric, SchedulerRoundTrip) {
  auto fabric = make_fabric();
  auto model = small_model();
  auto opt =
      std::make_shared<torch::optim::SGD>(model->parameters(), torch::optim::SGDOptions(0.1));
  cppfabric::optim::CosineAnnealingLR scheduler(*opt, 10, 0.001);
  for (int i = 0; i < 4; ++i) scheduler.step();
  const std::string path = temp_dir() + "sched.ckpt";
  fabric.save(path, {{"optimizer", opt}, {"scheduler", scheduler}});
  const Value raw = ck::load_torch_file(path).at("scheduler");
  EXPECT_EQ(raw.at("last_epoch").kind(), Value::Kind::Int);  // Python's types
  EXPECT_EQ(raw.at("base_lrs").kind(), Value::Kind::List);

  auto opt2 =
      std::make_shared<torch::optim::SGD>(model->parameters(), torch::optim::SGDOptions(0.1));
  auto scheduler2 = std::make_shared<cppfabric::optim::CosineAnnealingLR>(*opt2, 10, 0.001);
  // As in Python, the scheduler's formulas read the optimizer's lr: load both.
  fabric.load(path, {{"optimizer", opt2}, {"scheduler", scheduler2}});
  EXPECT_EQ(scheduler2->state_dict(), scheduler.state_dict());
  scheduler.step();
  scheduler2->step();
  EXPECT_EQ(scheduler2->get_last_lr(), scheduler.get_last_lr());
}

TEST(CheckpointFabric, OneCycleGroupValuesTravelWithTheOptimizer) {
  // As in Python, OneCycleLR's max_lr / min_lr / momenta live in the optimizer's param groups:
  // fabric.load of the optimizer restores them, so a scheduler built with other arguments
  // continues the saved schedule.
  auto fabric = make_fabric();
  auto model = small_model();
  auto opt = std::make_shared<torch::optim::SGD>(model->parameters(),
                                                 torch::optim::SGDOptions(0.1).momentum(0.9));
  cppfabric::optim::OneCycleLR scheduler(*opt, 1.0, 20);
  for (int i = 0; i < 5; ++i) scheduler.step();
  const std::string path = temp_dir() + "onecycle.ckpt";
  fabric.save(path, {{"optimizer", opt}, {"scheduler", scheduler}});
  const Value group = ck::load_torch_file(path).at("optimizer").at("param_groups").elements()[0];
  EXPECT_EQ(group.at("max_lr"), Value(1.0));
  EXPECT_EQ(group.at("max_momentum"), Value(0.95));

  auto opt2 = std::make_shared<torch::optim::SGD>(model->parameters(),
                                                  torch::optim::SGDOptions(0.1).momentum(0.9));
  cppfabric::optim::OneCycleLR scheduler2(*opt2, 0.3, 20, 0.3, "cos", true, 0.5, 0.6);
  fabric.load(path, {{"optimizer", opt2}, {"scheduler", scheduler2}});
  EXPECT_EQ(scheduler2.state_dict(), scheduler.state_dict());
  for (int i = 0; i < 10; ++i) {
    scheduler.step();
    scheduler2.step();
    EXPECT_EQ(scheduler2.get_last_lr(), scheduler.get_last_lr()) << "step " << i;
    EXPECT_EQ(static_cast<torch::optim::SGDOptions&>(opt2->param_groups()[0].options()).momentum(),
              static_cast<torch::optim::SGDOptions&>(opt->param_groups()[0].options()).momentum());
  }
}

TEST(CheckpointFabric, MultiStepMilestonesRoundTrip) {
  auto fabric = make_fabric();
  auto model = small_model();
  auto opt =
      std::make_shared<torch::optim::SGD>(model->parameters(), torch::optim::SGDOptions(0.1));
  cppfabric::optim::MultiStepLR scheduler(*opt, {5, 2, 5}, 0.5);
  const std::string path = temp_dir() + "multistep.ckpt";
  fabric.save(path, {{"scheduler", scheduler}});
  cppfabric::optim::MultiStepLR scheduler2(*opt, {1}, 0.5);
  fabric.load(path, {{"scheduler", scheduler2}});
  EXPECT_EQ(scheduler2.state_dict(), scheduler.state_dict());
}

TEST(CheckpointFabric, GradScalerAndPrecisionRoundTrip) {
  auto fabric = make_fabric();
  cppfabric::precision::GradScaler scaler("cpu", {.init_scale = 1024.0, .growth_interval = 7});
  scaler.scale(torch::ones({1}));  // creates the scale
  const std::string path = temp_dir() + "scaler.ckpt";
  fabric.save(path, {{"scaler", scaler}, {"precision", fabric.strategy()->precision()}});
  const Value raw = ck::load_torch_file(path).at("scaler");
  EXPECT_EQ(raw.at("scale").to_double(), 1024.0);
  EXPECT_EQ(raw.at("growth_interval").kind(), Value::Kind::Int);
  EXPECT_EQ(raw.at("_growth_tracker").kind(), Value::Kind::Int);

  cppfabric::precision::GradScaler scaler2("cpu");
  fabric.load(path, {{"scaler", scaler2}, {"precision", fabric.strategy()->precision()}});
  EXPECT_EQ(scaler2.state_dict(), scaler.state_dict());
}

TEST(CheckpointFabric, RngStatesRestoreTheSequence) {
  auto fabric = make_fabric();
  torch::manual_seed(3);
  const std::string path = temp_dir() + "rng.ckpt";
  fabric.save(path, {{"rng", cppfabric::RngStates{}}});
  const auto first = torch::randn({8});
  torch::manual_seed(99);
  fabric.load(path, {{"rng", cppfabric::RngStates{}}});
  EXPECT_TRUE(torch::equal(torch::randn({8}), first));
}

struct Counter : cppfabric::Stateful {
  int64_t count = 0;
  Value state_dict() const override { return Value::dict({{Value("count"), Value(count)}}); }
  void load_state_dict(const Value& state) override { count = state.at("count").to_int(); }
};

TEST(CheckpointFabric, AnyStatefulPlugsIn) {
  auto fabric = make_fabric();
  Counter counter;
  counter.count = 42;
  const std::string path = temp_dir() + "stateful.ckpt";
  fabric.save(path, {{"loader", counter}});
  Counter other;
  fabric.load(path, {{"loader", other}});
  EXPECT_EQ(other.count, 42);
}

TEST(CheckpointFabric, LoadRawTakesBareStateDicts) {
  auto fabric = make_fabric();
  auto model = small_model();
  auto opt = std::make_shared<torch::optim::Adam>(model->parameters());
  auto net = fabric.setup_module(model);
  train(net, *opt, 1);
  const std::string mpath = temp_dir() + "raw_model.pt";
  const std::string opath = temp_dir() + "raw_opt.pt";
  ck::save_torch_file(State{{"m", model}}.to_value().at("m"), mpath);
  ck::save_torch_file(State{{"o", opt}}.to_value().at("o"), opath);
  auto model2 = small_model();
  auto opt2 = std::make_shared<torch::optim::Adam>(model2->parameters());
  fabric.load_raw(mpath, model2);
  fabric.load_raw(opath, opt2);
  expect_modules_equal(*model, *model2);
  EXPECT_EQ(opt2->state().size(), opt->state().size());
  EXPECT_THROW_WITH(fabric.load_raw(mpath, 3), cppfabric::TypeError, "plain value");
}

TEST(CheckpointFabric, CorruptAndForeignFilesAreClearErrors) {
  auto fabric = make_fabric();
  const std::string path = temp_dir() + "garbage.ckpt";
  {
    ASSERT_EQ(cppfabric::detail::make_directories(temp_dir()), 0);
    std::FILE* f = std::fopen(path.c_str(), "wb");
    std::fputs("definitely not a checkpoint", f);
    std::fclose(f);
  }
  EXPECT_THROW_WITH(fabric.load(path), std::runtime_error, path, "not a valid torch.save file");
  EXPECT_THROW_WITH(fabric.load(temp_dir() + "missing.ckpt"), std::runtime_error,
                    "Checkpoint file not found");
}

// --------------------------------------------------------------------------------- processes
// CheckpointChild.Run does one job in a child process (selected by environment variables) and
// is skipped otherwise.

std::string self_exe() {
  char buf[4096];
  const ssize_t n = ::readlink("/proc/self/exe", buf, sizeof(buf) - 1);
  return std::string(buf, n > 0 ? static_cast<std::size_t>(n) : 0);
}

struct Trainer {
  torch::nn::Sequential model{torch::nn::Linear(6, 16), torch::nn::Dropout(0.3), torch::nn::ReLU(),
                              torch::nn::Linear(16, 2)};
  std::shared_ptr<torch::optim::AdamW> opt =
      std::make_shared<torch::optim::AdamW>(model->parameters(), torch::optim::AdamWOptions(0.01));
  cppfabric::optim::StepLR scheduler{*opt, 3, 0.7};

  void steps(Fabric& fabric, int n) {
    auto [net, o] = std::tuple(fabric.setup_module(model), fabric.setup_optimizers(opt));
    for (int i = 0; i < n; ++i) {
      auto x = torch::randn({8, 6});  // data drawn from the global generator
      auto y = torch::randn({8, 2});
      o.zero_grad();
      fabric.backward(torch::mse_loss(net(x), y));
      o.step();
      scheduler.step();
    }
  }
  State state() { return State{{"model", model}, {"optimizer", opt}, {"scheduler", scheduler}}; }
};

TEST(CheckpointChild, Run) {
  const char* job = std::getenv("CPPFABRIC_CKPT_CHILD");
  if (job == nullptr) GTEST_SKIP() << "runs only as a child of another checkpoint test";
  const std::string path = std::getenv("CPPFABRIC_CKPT_PATH");
  const int n = std::atoi(std::getenv("CPPFABRIC_CKPT_STEPS"));
  auto fabric = make_fabric();
  const std::string what(job);
  if (what == "full" || what == "first") {
    Fabric::seed_everything(11, std::nullopt, false);
    Trainer t;
    t.steps(fabric, what == "full" ? 2 * n : n);
    State state = t.state();
    state.set("rng", cppfabric::RngStates{});
    state.set("step", n);
    fabric.save(path, state);
  } else if (what == "second") {
    Fabric::seed_everything(12345, std::nullopt, false);  // a different start, overwritten by load
    Trainer t;
    State state = t.state();
    state.set("rng", cppfabric::RngStates{});
    state.set("step", 0);
    fabric.load(path + ".half", state);
    ASSERT_EQ(state.get<int64_t>("step"), n);
    t.steps(fabric, n);
    fabric.save(path, t.state());
  } else if (what == "writer") {
    const int64_t numel = n;
    for (int64_t version = 0;; ++version) {
      fabric.save(path, {{"version", version},
                         {"payload", torch::full({numel}, static_cast<float>(version))}});
    }
  }
}

std::string child_env(const std::string& job, const std::string& path, int steps) {
  return "CPPFABRIC_CKPT_CHILD=" + job + " CPPFABRIC_CKPT_PATH=" + path +
         " CPPFABRIC_CKPT_STEPS=" + std::to_string(steps) + " ";
}

TEST(CheckpointFabric, ResumeInANewProcessIsBitIdentical) {
  const int n = 7;
  const std::string dir = temp_dir() + "resume/";
  const std::string filter = " --gtest_filter=CheckpointChild.Run 2>&1";
  int status = 0;
  std::string out = cppfabric::testing::run_command(
      child_env("full", dir + "full.ckpt", n) + self_exe() + filter, &status);
  ASSERT_EQ(status, 0) << out;
  out = cppfabric::testing::run_command(
      child_env("first", dir + "resumed.ckpt.half", n) + self_exe() + filter, &status);
  ASSERT_EQ(status, 0) << out;
  out = cppfabric::testing::run_command(
      child_env("second", dir + "resumed.ckpt", n) + self_exe() + filter, &status);
  ASSERT_EQ(status, 0) << out;

  const Value full = ck::load_torch_file(dir + "full.ckpt");
  const Value resumed = ck::load_torch_file(dir + "resumed.ckpt");
  const Value half = ck::load_torch_file(dir + "resumed.ckpt.half");
  int compared = 0;
  for (const auto& [key, value] : full.at("model").items()) {
    const auto& a = value.to_tensor();
    const auto& b = resumed.at("model").at(key).to_tensor();
    EXPECT_TRUE(torch::equal(a, b)) << key.to_string() << " differs after resuming";
    EXPECT_FALSE(torch::equal(a, half.at("model").at(key).to_tensor())) << "training did nothing";
    ++compared;
  }
  EXPECT_EQ(compared, 4);
  for (const auto& [index, entry] : full.at("optimizer").at("state").items()) {
    EXPECT_TRUE(
        torch::equal(entry.at("exp_avg").to_tensor(),
                     resumed.at("optimizer").at("state").at(index).at("exp_avg").to_tensor()));
  }
}

TEST(CheckpointFabric, KillingAWriterLeavesTheLastCheckpointLoadable) {
  const std::string path = temp_dir() + "kill/big.ckpt";
  const int64_t numel = 4 << 20;  // 16 MiB per checkpoint
  std::mt19937 rng(5);
  std::set<int64_t> versions;
  for (int round = 0; round < 5; ++round) {
    ::unlink(path.c_str());
    const pid_t pid = ::fork();
    ASSERT_GE(pid, 0);
    if (pid == 0) {
      ::setenv("CPPFABRIC_CKPT_CHILD", "writer", 1);
      ::setenv("CPPFABRIC_CKPT_PATH", path.c_str(), 1);
      ::setenv("CPPFABRIC_CKPT_STEPS", std::to_string(numel).c_str(), 1);
      const std::string exe = self_exe();
      ::execl(exe.c_str(), exe.c_str(), "--gtest_filter=CheckpointChild.Run", nullptr);
      ::_exit(127);
    }
    // Wait for the first complete checkpoint of this round (at most 120 s), then kill the writer
    // at a random moment of a later write.
    const auto start = std::chrono::steady_clock::now();
    struct stat st {};
    while (::stat(path.c_str(), &st) != 0 &&
           std::chrono::steady_clock::now() - start < std::chrono::seconds(120)) {
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(rng() % 400));
    ::kill(pid, SIGKILL);
    int wstatus = 0;
    ::waitpid(pid, &wstatus, 0);
    ASSERT_TRUE(WIFSIGNALED(wstatus)) << "the writer exited on its own";
    const Value ckpt = ck::load_torch_file(path);  // must not throw
    const int64_t version = ckpt.at("version").to_int();
    const auto& payload = ckpt.at("payload").to_tensor();
    EXPECT_EQ(payload.numel(), numel);
    EXPECT_EQ(payload.min().item<float>(), static_cast<float>(version));
    EXPECT_EQ(payload.max().item<float>(), static_cast<float>(version));
    versions.insert(version);
    std::cout << "[kill] round " << round << ": the file holds version " << version << "\n";
  }
  std::cout << "[kill] versions found after each kill:";
  for (auto v : versions) std::cout << " " << v;
  std::cout << "\n";
}

}  // namespace

namespace {

// GPU: a model and optimizer set up on CUDA save (tensors leave through the CPU) and load back
// onto the device; the CUDA generators' states round-trip. Skipped without a GPU.
TEST(CheckpointFabricGpu, CudaRoundTripAndRngStates) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device";
  Fabric fabric({.accelerator = "cuda", .devices = 1, .precision = "32-true"});
  torch::manual_seed(21);
  auto model = small_model();
  auto [net, opt] = fabric.setup(model, std::make_shared<torch::optim::AdamW>(model->parameters()));
  auto step = [&](auto& n, auto& o, const torch::Tensor& x, const torch::Tensor& y) {
    o.zero_grad();
    fabric.backward(torch::mse_loss(n(x), y));
    o.step();
  };
  auto x = torch::randn({4, 3}, torch::kCUDA);
  auto y = torch::randn({4, 2}, torch::kCUDA);
  step(net, opt, x, y);
  const std::string path = temp_dir() + "gpu.ckpt";
  fabric.save(path, {{"model", net}, {"optimizer", opt}, {"rng", cppfabric::RngStates{}}});
  const auto draw = torch::randn({16}, torch::kCUDA);

  const Value raw = ck::load_torch_file(path);
  EXPECT_TRUE(raw.at("model").at("0.weight").to_tensor().device().is_cpu());
  EXPECT_GE(raw.at("rng").at("torch.cuda").elements().size(), 1u);

  auto model2 = small_model();
  auto [net2, opt2] =
      fabric.setup(model2, std::make_shared<torch::optim::AdamW>(model2->parameters()));
  fabric.load(path, {{"model", net2}, {"optimizer", opt2}, {"rng", cppfabric::RngStates{}}});
  EXPECT_TRUE(torch::equal(torch::randn({16}, torch::kCUDA), draw));
  for (const auto& p : model2->parameters()) EXPECT_TRUE(p.is_cuda());
  for (const auto& [key, state] : opt2->state()) {
    auto& s = static_cast<torch::optim::AdamWParamState&>(*state);
    EXPECT_TRUE(s.exp_avg().is_cuda());
  }
  step(net, opt, x, y);
  step(net2, opt2, x, y);
  expect_modules_equal(*model, *model2);
}

}  // namespace
