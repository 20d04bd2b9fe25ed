// Checkpoints across the language line, against Python (tests/python/checkpoint_reference.py):
// cppfabric save -> torch.load(weights_only=True) + Lightning Fabric.load, and Python
// fabric.save -> cppfabric load, each followed by one more training step on both sides.
#include <gtest/gtest.h>
#include <torch/torch.h>
#include <unistd.h>

#include <cppfabric/cppfabric.hpp>
#include <cstdlib>
#include <map>
#include <sstream>
#include <string>

#include "test_utils.hpp"

namespace {

using cppfabric::Fabric;
using cppfabric::State;
using cppfabric::Value;

torch::nn::Sequential build_model() {
  return torch::nn::Sequential(torch::nn::Linear(4, 8), torch::nn::BatchNorm1d(8),
                               torch::nn::ReLU(), torch::nn::Linear(8, 3));
}

// The hyper-parameters checkpoint_reference.py uses.
std::shared_ptr<torch::optim::Optimizer> build_optimizer(const std::string& name,
                                                         std::vector<torch::Tensor> params) {
  namespace o = torch::optim;
  if (name == "sgd")
    return std::make_shared<o::SGD>(
        params, o::SGDOptions(0.05).momentum(0.9).weight_decay(1e-3).nesterov(true));
  if (name == "adam")
    return std::make_shared<o::Adam>(
        params, o::AdamOptions(0.01).betas({0.8, 0.95}).eps(1e-7).amsgrad(true));
  if (name == "adamw")
    return std::make_shared<o::AdamW>(params, o::AdamWOptions(0.01).weight_decay(0.05));
  if (name == "adagrad")
    return std::make_shared<o::Adagrad>(
        params, o::AdagradOptions(0.05).lr_decay(0.01).initial_accumulator_value(0.1));
  if (name == "rmsprop")
    return std::make_shared<o::RMSprop>(params,
                                        o::RMSpropOptions(0.01).momentum(0.5).centered(true));
  throw std::invalid_argument(name);
}

template <typename Net, typename Opt>
double train_step(Net& net, Opt& opt, const torch::Tensor& x, const torch::Tensor& y) {
  opt.zero_grad();
  auto loss = torch::mse_loss(net(x), y);
  loss.backward();
  opt.step();
  return torch::mse_loss(net(x), y).template item<double>();
}

std::map<std::string, std::string> run_reference(const std::string& args) {
  int status = 0;
  const std::string script =
      std::string(CPPFABRIC_SOURCE_DIR) + "/tests/python/checkpoint_reference.py";
  const std::string out = cppfabric::testing::run_command(
      *cppfabric::testing::venv_python() + " -W ignore " + script + " " + args + " 2>&1", &status);
  EXPECT_EQ(status, 0) << out;
  std::map<std::string, std::string> values;
  std::istringstream lines(out);
  std::string key, value;
  while (lines >> key >> value) values[key] = value;
  return values;
}

std::string temp_path(const std::string& name) {
  return ::testing::TempDir() + "cppfabric_ckpt_py_" + std::to_string(::getpid()) + "_" + name;
}

class RemovePythonTempFiles : public ::testing::Environment {
 public:
  void TearDown() override { std::system(("rm -rf " + temp_path("*")).c_str()); }
};
[[maybe_unused]] auto* const kRemovePythonTempFiles =
    ::testing::AddGlobalTestEnvironment(new RemovePythonTempFiles);

class CheckpointPython : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    if (!cppfabric::testing::venv_python()) GTEST_SKIP() << "bootstrapped venv missing";
  }
};

TEST_P(CheckpointPython, CppSaveLoadsInPythonFabric) {
  const std::string opt_name = GetParam();
  torch::manual_seed(7);
  Fabric fabric({.accelerator = "cpu", .devices = 1});
  auto model = build_model();
  auto [net, opt] = fabric.setup(model, build_optimizer(opt_name, model->parameters()));
  cppfabric::optim::StepLR scheduler(opt.optimizer(), 2, 0.5);
  auto x = torch::randn({16, 4});
  auto y = torch::randn({16, 3});
  for (int i = 0; i < 3; ++i) {
    train_step(net, opt, x, y);
    scheduler.step();
  }
  const std::string path = temp_path(opt_name + "/cpp.ckpt");  // folder created by save
  fabric.save(path, {{"model", net},
                     {"optimizer", opt},
                     {"scheduler", scheduler},
                     {"epoch", 3},
                     {"ratio", 0.5},
                     {"name", "cpp"},
                     {"flag", true},
                     {"nothing", Value()},
                     {"batch_x", x},
                     {"batch_y", y}});
  const double cpp_loss = train_step(net, opt, x, y);

  auto py = run_reference("read " + path + " " + opt_name);
  EXPECT_EQ(py["model_equal"], "1");
  EXPECT_EQ(py["optimizer_equal"], "1");
  EXPECT_EQ(py["rebuilt_scheduler"], "1");
  EXPECT_EQ(py["epoch"], "3");
  EXPECT_EQ(py["ratio"], "0.5");
  EXPECT_EQ(py["name"], "cpp");
  EXPECT_EQ(py["flag"], "1");
  EXPECT_EQ(py["nothing"], "True");
  EXPECT_EQ(py["scheduler_last_epoch"], std::to_string(scheduler.last_epoch()));
  EXPECT_DOUBLE_EQ(std::stod(py["scheduler_base_lr"]), scheduler.base_lrs()[0]);
  EXPECT_DOUBLE_EQ(std::stod(py["param_group_lr"]), scheduler.get_last_lr()[0]);
  ASSERT_FALSE(py["loss_after"].empty());
  EXPECT_NEAR(std::stod(py["loss_after"]), cpp_loss, 1e-5 * std::abs(cpp_loss));
}

TEST_P(CheckpointPython, PythonFabricSaveLoadsInCpp) {
  const std::string opt_name = GetParam();
  const std::string path = temp_path(opt_name + "_py.ckpt");
  auto py = run_reference("write " + path + " " + opt_name);
  ASSERT_FALSE(py["loss_after"].empty());

  Fabric fabric({.accelerator = "cpu", .devices = 1});
  auto model = build_model();
  auto [net, opt] = fabric.setup(model, build_optimizer(opt_name, model->parameters()));
  cppfabric::optim::StepLR scheduler(opt.optimizer(), 2, 0.5);
  State state{{"model", net}, {"optimizer", opt}, {"scheduler", scheduler}, {"epoch", 0}};
  State remainder = fabric.load(path, state);
  EXPECT_EQ(state.get<int64_t>("epoch"), 7);
  EXPECT_EQ(remainder.get<double>("ratio"), 0.25);
  EXPECT_EQ(remainder.get<std::string>("name"), "python");
  EXPECT_TRUE(remainder.get<bool>("flag"));
  EXPECT_FALSE(remainder.contains("model"));
  const Value nested = remainder.get<Value>("nested");
  EXPECT_EQ(nested.at("a").elements()[2].elements()[1].to_double(), 4.5);
  EXPECT_TRUE(nested.at("b").is_none());
  EXPECT_EQ(scheduler.last_epoch(), std::stoll(py["scheduler_last_epoch"]));

  // Tensors and optimizer state equal the file's.
  const Value raw = cppfabric::checkpoint::load_torch_file(path);
  for (const auto& [key, value] : raw.at("model").items()) {
    const auto own = net.state_dict();
    ASSERT_TRUE(own.contains(key.to_string())) << key.to_string();
    EXPECT_TRUE(torch::equal(own[key.to_string()], value.to_tensor())) << key.to_string();
  }
  const Value mine = cppfabric::State{{"o", opt}}.to_value().at("o");
  const Value& saved = raw.at("optimizer");
  ASSERT_EQ(mine.at("state").items().size(), saved.at("state").items().size());
  for (const auto& [index, entry] : saved.at("state").items()) {
    const Value& own = mine.at("state").at(index);
    for (const auto& [field, v] : entry.items()) {
      const Value* o = own.find(field);
      ASSERT_NE(o, nullptr) << field.to_string();
      if (v.kind() == Value::Kind::Tensor) {
        EXPECT_TRUE(torch::equal(o->to_tensor(), v.to_tensor())) << field.to_string();
      }
    }
  }
  EXPECT_DOUBLE_EQ(opt.param_groups()[0].options().get_lr(), std::stod(py["lr"]));

  const double cpp_loss = train_step(net, opt, remainder.get<torch::Tensor>("batch_x"),
                                     remainder.get<torch::Tensor>("batch_y"));
  const double py_loss = std::stod(py["loss_after"]);
  EXPECT_NEAR(cpp_loss, py_loss, 1e-5 * std::abs(py_loss));
}

INSTANTIATE_TEST_SUITE_P(Optimizers, CheckpointPython,
                         ::testing::Values("sgd", "adam", "adamw", "adagrad", "rmsprop"));

}  // namespace
