// Precision: the autocast guard, the GradScaler (against Python's torch.amp.GradScaler), the
// precision plugins, and training with every precision string on CPU (CUDA ones with a GPU).
#include <gtest/gtest.h>
#include <torch/torch.h>
#include <unistd.h>

#include <cppfabric/cppfabric.hpp>
#include <cstdio>
#include <limits>
#include <sstream>

#include "test_utils.hpp"

using cppfabric::Fabric;
using cppfabric::Value;
using cppfabric::precision::AutocastGuard;
using cppfabric::precision::GradScaler;
using cppfabric::precision::GradScalerOptions;
using cppfabric::precision::MixedPrecision;
using cppfabric::testing::CaptureConsole;

namespace {

bool has_gpu() { return torch::cuda::device_count() > 0; }

struct NetImpl : torch::nn::Module {
  NetImpl() {
    fc1 = register_module("fc1", torch::nn::Linear(8, 32));
    fc2 = register_module("fc2", torch::nn::Linear(32, 1));
  }
  torch::Tensor forward(const torch::Tensor& x) { return fc2(torch::tanh(fc1(x))); }
  torch::nn::Linear fc1{nullptr}, fc2{nullptr};
};
TORCH_MODULE(Net);

}  // namespace

// ------------------------------------------------------------------ autocast guard

TEST(Autocast, CpuBf16OpPolicy) {
  auto x = torch::randn({4, 4});
  auto w = torch::randn({4, 4}, torch::requires_grad());
  EXPECT_EQ(torch::mm(x, w).scalar_type(), torch::kFloat32);
  {
    AutocastGuard guard(c10::kCPU, torch::kBFloat16);
    EXPECT_TRUE(guard.enabled());
    EXPECT_TRUE(cppfabric::precision::is_autocast_enabled(c10::kCPU));
    // The same policy as Python's torch.autocast("cpu", dtype=torch.bfloat16).
    EXPECT_EQ(torch::mm(x, w).scalar_type(), torch::kBFloat16);
    EXPECT_EQ(torch::nn::functional::linear(x, w).scalar_type(), torch::kBFloat16);
    EXPECT_EQ(torch::softmax(x, 0).scalar_type(), torch::kFloat32);
    EXPECT_EQ(torch::log_softmax(x, 0).scalar_type(), torch::kFloat32);
  }
  EXPECT_FALSE(cppfabric::precision::is_autocast_enabled(c10::kCPU));
  EXPECT_EQ(torch::mm(x, w).scalar_type(), torch::kFloat32);
}

TEST(Autocast, CpuFp16) {
  AutocastGuard guard(c10::kCPU, torch::kHalf);
  EXPECT_EQ(torch::mm(torch::randn({2, 2}), torch::randn({2, 2})).scalar_type(), torch::kHalf);
}

TEST(Autocast, Nesting) {
  auto x = torch::randn({2, 2});
  {
    AutocastGuard outer(c10::kCPU, torch::kBFloat16);
    {
      AutocastGuard inner(c10::kCPU, std::nullopt, /*enabled=*/false);
      EXPECT_EQ(torch::mm(x, x).scalar_type(), torch::kFloat32);
      {
        AutocastGuard innermost(c10::kCPU, torch::kHalf);
        EXPECT_EQ(torch::mm(x, x).scalar_type(), torch::kHalf);
      }
      EXPECT_EQ(torch::mm(x, x).scalar_type(), torch::kFloat32);
    }
    EXPECT_EQ(torch::mm(x, x).scalar_type(), torch::kBFloat16);
    EXPECT_EQ(cppfabric::precision::autocast_dtype(c10::kCPU), torch::kBFloat16);
  }
  EXPECT_EQ(torch::mm(x, x).scalar_type(), torch::kFloat32);
  EXPECT_EQ(cppfabric::precision::autocast_dtype(c10::kCPU), torch::kBFloat16)
      << "the CPU default autocast dtype is restored";
}

TEST(Autocast, CacheIsClearedWhenTheOutermostGuardEnds) {
  auto x = torch::ones({1, 4});
  auto w = torch::ones({4, 1}, torch::requires_grad());  // a leaf: autocast caches its cast
  at::Tensor first;
  {
    AutocastGuard guard(c10::kCPU, torch::kBFloat16);
    first = torch::mm(x, w);
    {
      torch::NoGradGuard no_grad;
      w.add_(1.0);  // an optimizer step, in place
    }
    // Inside the same region the cached low-precision copy is reused, as in Python.
    EXPECT_TRUE(torch::equal(torch::mm(x, w), first));
  }
  AutocastGuard again(c10::kCPU, torch::kBFloat16);
  const auto second = torch::mm(x, w);
  EXPECT_FLOAT_EQ(first.item<float>(), 4.0f);
  EXPECT_FLOAT_EQ(second.item<float>(), 8.0f) << "no stale weights after the guard ended";
}

TEST(Autocast, ExceptionSafe) {
  try {
    AutocastGuard guard(c10::kCPU, torch::kBFloat16);
    throw std::runtime_error("boom");
  } catch (const std::runtime_error&) {
  }
  EXPECT_FALSE(cppfabric::precision::is_autocast_enabled(c10::kCPU));
  EXPECT_EQ(torch::mm(torch::ones({1, 1}), torch::ones({1, 1})).scalar_type(), torch::kFloat32);
}

TEST(Autocast, GuardObjectAndErrors) {
  {
    auto guard = cppfabric::precision::autocast(c10::kCPU, torch::kBFloat16);
    EXPECT_TRUE(cppfabric::precision::is_autocast_enabled(c10::kCPU));
  }
  EXPECT_FALSE(cppfabric::precision::is_autocast_enabled(c10::kCPU));
  EXPECT_THROW_WITH(cppfabric::precision::autocast_device_type("mps"), std::invalid_argument,
                    "'mps'", "'cpu', 'cuda'");
  CaptureConsole console;
  AutocastGuard bad_dtype(c10::kCPU, torch::kFloat64);
  EXPECT_FALSE(bad_dtype.enabled());
  EXPECT_NE(console.text().find("Disabling autocast"), std::string::npos);
}

TEST(Autocast, CudaWithoutGpuDisables) {
  if (has_gpu()) GTEST_SKIP() << "a GPU is present";
  CaptureConsole console;
  AutocastGuard guard(c10::kCUDA, torch::kHalf);
  EXPECT_FALSE(guard.enabled());
  EXPECT_NE(console.text().find("CUDA is not available. Disabling autocast."), std::string::npos);
}

TEST(Autocast, CudaFp16AndBf16) {
  if (!has_gpu()) GTEST_SKIP() << "needs a GPU";
  auto x = torch::randn({4, 4}, torch::kCUDA);
  for (auto dtype : {torch::kHalf, torch::kBFloat16}) {
    AutocastGuard guard(c10::kCUDA, dtype);
    EXPECT_EQ(torch::mm(x, x).scalar_type(), dtype);
    EXPECT_EQ(torch::softmax(x, 0).scalar_type(), torch::kFloat32);
  }
}

// ------------------------------------------------------------------ GradScaler vs Python

namespace {

std::vector<std::string> split_lines(const std::string& text) {
  std::vector<std::string> lines;
  std::istringstream stream(text);
  for (std::string line; std::getline(stream, line);) lines.push_back(line);
  return lines;
}

std::string repr(double v) {
  if (std::isnan(v)) return "nan";
  if (std::isinf(v)) return v > 0 ? "inf" : "-inf";
  // Python's repr of a float is the shortest round trip; %.17g round-trips too, so compare values.
  return fmt::format("{}", v);
}

// The C++ twin of tests/python/grad_scaler_reference.py.
std::vector<std::string> run_cpp_trajectory() {
  torch::set_num_threads(1);
  torch::nn::Linear model(3, 2);
  {
    torch::NoGradGuard no_grad;
    model->weight.copy_(torch::tensor({{0.1, 0.2, 0.3}, {-0.4, 0.5, -0.6}}));
    model->bias.copy_(torch::tensor({0.01, -0.02}));
  }
  torch::optim::SGD optimizer(model->parameters(), torch::optim::SGDOptions(0.1));
  GradScaler scaler(
      "cpu",
      {.init_scale = 1024.0, .growth_factor = 2.0, .backoff_factor = 0.5, .growth_interval = 3});
  const double inf = std::numeric_limits<double>::infinity();
  std::vector<std::string> lines;
  for (int step = 0; step < 12; ++step) {
    optimizer.zero_grad();
    auto x = torch::tensor({{step + 1.0, 0.5, -1.0}}) * 0.1;
    auto loss = model(x).pow(2).sum();
    scaler.scale(loss).backward();
    {
      torch::NoGradGuard no_grad;
      if (step == 2) model->weight.grad()[0][0] = inf;
      if (step == 6) model->weight.grad()[1][2] = -inf;
      if (step == 9) model->bias.grad()[1] = std::numeric_limits<double>::quiet_NaN();
    }
    if (step == 4) scaler.unscale_(optimizer);
    const auto before = model->weight.detach().clone();
    const bool stepped = scaler.step(optimizer);
    EXPECT_EQ(stepped, !torch::equal(before, model->weight.detach())) << step;
    scaler.update();
    const auto state = scaler.state_dict();
    std::vector<double> values = {state.at("scale").to_double(),
                                  state.at("_growth_tracker").to_double(), stepped ? 1.0 : 0.0};
    for (const auto& p : {model->weight, model->bias}) {
      auto flat = p.detach().flatten();
      for (int64_t i = 0; i < flat.numel(); ++i) values.push_back(flat[i].item<float>());
    }
    std::vector<std::string> parts;
    for (double v : values) parts.push_back(repr(v));
    lines.push_back(fmt::format("step {} {}", step, fmt::join(parts, " ")));
  }
  return lines;
}

std::vector<double> numbers_after(const std::string& line, int skip) {
  std::istringstream stream(line);
  std::string token;
  for (int i = 0; i < skip; ++i) stream >> token;
  std::vector<double> out;
  while (stream >> token) out.push_back(std::strtod(token.c_str(), nullptr));
  return out;
}

}  // namespace

TEST(GradScalerParity, MatchesPythonTrajectoryExactly) {
  const auto python = cppfabric::testing::venv_python();
  if (!python) GTEST_SKIP() << "the bootstrapped venv is missing: run scripts/bootstrap";
  int status = 0;
  const std::string script =
      std::string(CPPFABRIC_SOURCE_DIR) + "/tests/python/grad_scaler_reference.py";
  const auto expected =
      split_lines(cppfabric::testing::run_command(*python + " " + script, &status));
  ASSERT_EQ(status, 0) << "the Python reference failed";
  const auto actual = run_cpp_trajectory();
  ASSERT_EQ(expected.size(), actual.size() + 1);
  int skipped = 0;
  for (std::size_t i = 0; i < actual.size(); ++i) {
    const auto want = numbers_after(expected[i], 2), got = numbers_after(actual[i], 2);
    ASSERT_EQ(want.size(), got.size()) << expected[i];
    for (std::size_t k = 0; k < want.size(); ++k) {
      EXPECT_EQ(want[k], got[k]) << "step " << i << " value " << k << "\n python: " << expected[i]
                                 << "\n c++:    " << actual[i];
    }
    skipped += want[2] == 0.0;
  }
  EXPECT_EQ(skipped, 3) << "the inf, -inf and NaN steps are skipped";
  EXPECT_EQ(expected.back(),
            "state _growth_tracker=2.0 backoff_factor=0.5 growth_factor=2.0 growth_interval=3.0 "
            "scale=256.0");
}

// The C++ twin of short_run in grad_scaler_reference.py: lines "<tag> <i> <scale> <tracker>".
std::vector<std::string> short_run(GradScaler& scaler, int first, int count,
                                   const std::string& tag) {
  auto p = torch::tensor({1.0f, 2.0f}).requires_grad_();
  torch::optim::SGD optimizer(std::vector<torch::Tensor>{p}, 0.1);
  std::vector<std::string> lines;
  for (int i = first; i < first + count; ++i) {
    optimizer.zero_grad();
    scaler.scale((p * p).sum()).backward();
    if (i % 3 == 1) {
      torch::NoGradGuard no_grad;
      p.grad()[0] = std::numeric_limits<double>::infinity();
    }
    scaler.step(optimizer);
    scaler.update();
    const Value state = scaler.state_dict();
    lines.push_back(fmt::format("{} {} {:.17g} {}", tag, i, state.at("scale").to_double(),
                                state.at("_growth_tracker").to_int()));
  }
  return lines;
}

TEST(GradScalerParity, StateCrossesTheLanguageLine) {
  const auto python = cppfabric::testing::venv_python();
  if (!python) GTEST_SKIP() << "the bootstrapped venv is missing: run scripts/bootstrap";
  const std::string base = ::testing::TempDir() + "cppfabric_scaler_" + std::to_string(::getpid());
  const std::string cpp_path = base + "_cpp.pt", py_path = base + "_py.pt";
  // Python's SAVE_AT = 3 (saved with a growth tracker of 1), RESUME_STEPS = 6.
  GradScaler mine("cpu", {.init_scale = 1024.0, .growth_interval = 2});
  short_run(mine, 0, 3, "");
  EXPECT_EQ(mine.state_dict().at("_growth_tracker").to_int(), 1);
  cppfabric::checkpoint::save_torch_file(mine.state_dict(), cpp_path);
  const auto mine_resumed = short_run(mine, 3, 6, "cpp_resumed");

  int status = 0;
  const std::string script =
      std::string(CPPFABRIC_SOURCE_DIR) + "/tests/python/grad_scaler_reference.py";
  const auto lines = split_lines(cppfabric::testing::run_command(
      *python + " -W ignore " + script + " state " + cpp_path + " " + py_path + " 2>&1", &status));
  ASSERT_EQ(status, 0) << "the Python reference failed: "
                       << fmt::format("{}", fmt::join(lines, "\n"));
  std::vector<std::string> cpp_resumed, py_resumed;
  for (const auto& line : lines) {
    if (line.starts_with("cpp_resumed ")) cpp_resumed.push_back(line);
    if (line.starts_with("py_resumed ")) py_resumed.push_back(line);
  }
  // Python resumed from the C++ state exactly as C++ went on.
  EXPECT_EQ(cpp_resumed, mine_resumed);

  // C++ resumes from Python's state: the same dict back, then the same steps.
  const Value saved = cppfabric::checkpoint::load_torch_file(py_path);
  GradScaler theirs("cpu");
  theirs.load_state_dict(saved);
  EXPECT_EQ(theirs.state_dict(), saved);
  EXPECT_EQ(short_run(theirs, 3, 6, "py_resumed"), py_resumed);
  ASSERT_EQ(py_resumed.size(), 6u);
  std::remove(cpp_path.c_str());
  std::remove(py_path.c_str());
}

// ------------------------------------------------------------------ GradScaler rules

TEST(GradScaler, DefaultsAndStateDict) {
  GradScaler scaler("cpu");
  EXPECT_TRUE(scaler.is_enabled());
  EXPECT_EQ(scaler.get_scale(), 65536.0);
  const auto state = scaler.state_dict();
  EXPECT_EQ(state.at("scale").to_double(), 65536.0);
  EXPECT_EQ(state.at("growth_factor").to_double(), 2.0);
  EXPECT_EQ(state.at("backoff_factor").to_double(), 0.5);
  EXPECT_EQ(state.at("growth_interval").to_double(), 2000.0);
  EXPECT_EQ(state.at("_growth_tracker").to_double(), 0.0);
  // torch.amp.GradScaler("cpu").state_dict(), key for key and type for type.
  EXPECT_EQ(state, Value::dict({{"scale", 65536.0},
                                {"growth_factor", 2.0},
                                {"backoff_factor", 0.5},
                                {"growth_interval", 2000},
                                {"_growth_tracker", 0}}));
  GradScaler other("cpu");
  other.load_state_dict(Value::dict({{"scale", 8.0},
                                     {"growth_factor", 4.0},
                                     {"backoff_factor", 0.25},
                                     {"growth_interval", 10},
                                     {"_growth_tracker", 3}}));
  EXPECT_EQ(other.get_scale(), 8.0);
  EXPECT_EQ(other.state_dict().at("_growth_tracker").to_double(), 3.0);
  EXPECT_TRUE(torch::equal(other.scale(torch::ones({2})), torch::full({2}, 8.0)));
  EXPECT_THROW_WITH(other.load_state_dict(Value::dict()), std::runtime_error, "empty");
  EXPECT_THROW_WITH(other.load_state_dict(Value::dict({{"scale", 1.0}})), std::invalid_argument,
                    "'growth_factor'");
  Value ill_typed = state;
  ill_typed.set("growth_interval", 2.5);
  EXPECT_THROW_WITH(other.load_state_dict(ill_typed), std::invalid_argument, "'growth_interval'",
                    "an int", "float");
  EXPECT_EQ(other.get_scale(), 8.0) << "a failed load changes nothing";
}

TEST(GradScaler, StageErrors) {
  torch::nn::Linear model(2, 1);
  torch::optim::SGD optimizer(model->parameters(), 0.1);
  GradScaler scaler("cpu");
  EXPECT_THROW_WITH(scaler.unscale_(optimizer), std::runtime_error, "before scale()");
  scaler.scale(model(torch::ones({1, 2})).sum()).backward();
  scaler.unscale_(optimizer);
  EXPECT_THROW_WITH(scaler.unscale_(optimizer), std::runtime_error,
                    "unscale_() has already been called on this optimizer since the last update()");
  EXPECT_TRUE(scaler.step(optimizer));
  EXPECT_THROW_WITH(scaler.step(optimizer), std::runtime_error,
                    "step() has already been called since the last update()");
  EXPECT_THROW_WITH(scaler.unscale_(optimizer), std::runtime_error,
                    "unscale_() is being called after step()");
  scaler.update();
  torch::optim::SGD no_grads(torch::nn::Linear(2, 1)->parameters(), 0.1);
  EXPECT_THROW_WITH(scaler.step(no_grads), std::runtime_error, "No inf checks were recorded");
}

TEST(GradScaler, RejectsFp16GradientsAndBadFactors) {
  auto p = torch::ones({2}, torch::TensorOptions().dtype(torch::kHalf).requires_grad(true));
  torch::optim::SGD optimizer(std::vector<torch::Tensor>{p}, 0.1);
  GradScaler scaler("cpu");
  scaler.scale(p.to(torch::kFloat32).sum()).backward();
  EXPECT_THROW_WITH(scaler.unscale_(optimizer), std::invalid_argument,
                    "Attempting to unscale FP16 gradients.");
  EXPECT_THROW_WITH(GradScaler("cpu", {.growth_factor = 1.0}), std::invalid_argument,
                    "growth factor must be > 1.0");
  EXPECT_THROW_WITH(GradScaler("cpu", {.backoff_factor = 1.5}), std::invalid_argument,
                    "backoff factor must be < 1.0");
  EXPECT_THROW_WITH(GradScaler("tpu"), std::invalid_argument, "'tpu'");
}

TEST(GradScaler, DisabledIsTransparent) {
  torch::nn::Linear model(2, 1);
  torch::optim::SGD optimizer(model->parameters(), 0.1);
  GradScaler scaler("cpu", {.enabled = false});
  auto loss = model(torch::ones({1, 2})).sum();
  EXPECT_TRUE(scaler.scale(loss).is_same(loss));
  loss.backward();
  EXPECT_TRUE(scaler.step(optimizer));
  scaler.update();
  EXPECT_EQ(scaler.get_scale(), 1.0);
  EXPECT_EQ(scaler.state_dict(), Value::dict());
}

TEST(GradScaler, CudaScalerWithoutGpuDisablesItself) {
  if (has_gpu()) GTEST_SKIP() << "a GPU is present";
  CaptureConsole console;
  GradScaler scaler;  // "cuda", as torch's default
  EXPECT_FALSE(scaler.is_enabled());
  EXPECT_NE(console.text().find("CUDA is not available"), std::string::npos);
}

// ------------------------------------------------------------------ plugins

TEST(PrecisionPlugins, StateIsPythons) {
  // Python's Precision.state_dict() is {}; MixedPrecision's is its scaler's (none: {}).
  cppfabric::precision::Precision plain;
  EXPECT_EQ(plain.state_dict(), Value::dict());
  EXPECT_NO_THROW(plain.load_state_dict(Value::dict()));
  EXPECT_EQ(plain.kind(), "precision plugin");
  MixedPrecision bf16("bf16-mixed", "cpu");
  EXPECT_EQ(bf16.state_dict(), Value::dict());
  auto scaler = std::make_shared<GradScaler>("cpu", GradScalerOptions{.init_scale = 64.0});
  MixedPrecision fp16("16-mixed", "cpu", scaler);
  Value state = fp16.state_dict();
  EXPECT_EQ(state, scaler->state_dict());
  state.set("scale", 8.0);
  fp16.load_state_dict(state);
  EXPECT_EQ(scaler->get_scale(), 8.0);
}

TEST(PrecisionPlugins, Errors) {
  EXPECT_THROW_WITH(MixedPrecision("32-true", "cpu"), std::invalid_argument,
                    "Passed `MixedPrecision(precision='32-true')`",
                    "must be '16-mixed' or 'bf16-mixed'");
  EXPECT_THROW_WITH(MixedPrecision("bf16-mixed", "cpu", std::make_shared<GradScaler>("cpu")),
                    std::invalid_argument, "does not use a scaler");
  EXPECT_THROW_WITH(MixedPrecision("16-mixed", "xla"), std::invalid_argument, "'xla'");
  EXPECT_THROW_WITH(cppfabric::precision::HalfPrecision("32-true"), std::invalid_argument,
                    "must be '16-true' or 'bf16-true'");
}

TEST(PrecisionPlugins, MixedConvertsInputsAndOutputs) {
  Fabric fabric({.accelerator = "cpu", .precision = "bf16-mixed"});
  struct ProbeImpl : torch::nn::Module {
    ProbeImpl() { fc = register_module("fc", torch::nn::Linear(4, 2)); }
    torch::Tensor forward(const torch::Tensor& x) {
      input_dtype = x.scalar_type();
      return fc(x);
    }
    torch::nn::Linear fc{nullptr};
    c10::ScalarType input_dtype = c10::kFloat;
  };
  auto probe = std::make_shared<ProbeImpl>();
  auto net = fabric.setup(probe);
  auto out = net(torch::ones({3, 4}));
  EXPECT_EQ(probe->input_dtype, torch::kBFloat16) << "inputs are cast down";
  EXPECT_EQ(out.scalar_type(), torch::kFloat32) << "outputs come back in the default dtype";
  EXPECT_EQ(probe->fc->weight.scalar_type(), torch::kFloat32) << "weights stay float32";
  EXPECT_THROW_WITH(out.sum().backward(), std::exception,
                    "requires you to call `fabric.backward(loss)`");
  {
    auto guard = fabric.autocast();
    EXPECT_EQ(torch::mm(torch::ones({2, 2}), torch::ones({2, 2})).scalar_type(), torch::kBFloat16);
  }
}

TEST(PrecisionPlugins, HalfTrueConvertsEverything) {
  Fabric fabric({.accelerator = "cpu", .precision = "bf16-true"});
  Net model;
  auto net = fabric.setup(model);
  EXPECT_EQ(model->fc1->weight.scalar_type(), torch::kBFloat16);
  EXPECT_EQ(net(torch::ones({2, 8})).scalar_type(), torch::kFloat32);
  auto guard = fabric.init_module();
  EXPECT_EQ(torch::nn::Linear(2, 2)->weight.scalar_type(), torch::kBFloat16);
}

TEST(PrecisionPlugins, ScalerThroughFabric) {
  // A user-supplied scaler on CPU, through `plugins`.
  auto scaler = std::make_shared<GradScaler>("cpu", GradScalerOptions{.init_scale = 256.0});
  auto plugin = std::make_shared<MixedPrecision>("16-mixed", "cpu", scaler);
  Fabric fabric({.accelerator = "cpu", .plugins = {plugin}});
  EXPECT_EQ(fabric.strategy()->precision(), plugin);
  torch::manual_seed(0);
  Net model;
  auto optimizer = std::make_shared<torch::optim::SGD>(model->parameters(), 0.01);
  auto [net, opt] = fabric.setup(model, optimizer);
  auto x = torch::randn({4, 8});
  auto loss = net(x).pow(2).sum();
  fabric.backward(loss);
  const auto scaled = model->fc2->weight.grad().clone();
  // clip_gradients unscales first: the norm it reports is the unscaled one.
  const auto norm = fabric.clip_gradients(net, opt, {.max_norm = 1e9});
  EXPECT_TRUE(torch::allclose(model->fc2->weight.grad() * 256.0, scaled));
  EXPECT_GT(norm.item<double>(), 0.0);
  opt.step();  // scaler.step: no second unscale, then update()
  EXPECT_EQ(plugin->state_dict().at("scale").to_double(), 256.0);
  EXPECT_EQ(plugin->state_dict().at("_growth_tracker").to_int(), 1);
  EXPECT_EQ(plugin->state_dict(), scaler->state_dict());  // the plugin's state is its scaler's
  EXPECT_THROW_WITH(Fabric({.accelerator = "cpu", .precision = "16-mixed", .plugins = {plugin}}),
                    std::invalid_argument, "Received both `precision=16-mixed`");
}

// ------------------------------------------------------------------ training with every precision

namespace {

// Trains a small regression model; returns {first loss, last loss}.
std::pair<double, double> train(Fabric& fabric, int steps = 300) {
  torch::manual_seed(7);
  Net model;
  // eps 1e-4: Adam's default 1e-8 is zero in float16, so "16-true" would divide by zero
  // (the same happens in Python).
  auto optimizer = std::make_shared<torch::optim::Adam>(model->parameters(),
                                                        torch::optim::AdamOptions(1e-2).eps(1e-4));
  auto [net, opt] = fabric.setup(model, optimizer);
  auto x = fabric.to_device(torch::randn({256, 8}));
  auto y = fabric.to_device(torch::sin(x.sum(1, true)));
  double first = 0, last = 0;
  for (int i = 0; i < steps; ++i) {
    opt.zero_grad();
    auto loss = torch::mse_loss(net(x), y);
    fabric.backward(loss);
    opt.step();
    (i == 0 ? first : last) = loss.item<double>();
  }
  return {first, last};
}

}  // namespace

TEST(PrecisionTraining, EveryPrecisionStringTrainsOnCpu) {
  Fabric reference_fabric({.accelerator = "cpu", .precision = "32-true"});
  const auto reference = train(reference_fabric);
  for (const char* precision :
       {"32-true", "64-true", "bf16-true", "16-true", "bf16-mixed", "16-mixed"}) {
    Fabric fabric({.accelerator = "cpu", .precision = precision});
    const auto [first, last] = train(fabric);
    EXPECT_LT(last, first / 10) << precision << ": " << first << " -> " << last;
    if (std::string(precision) == "bf16-mixed") {
      EXPECT_NEAR(last, reference.second, 0.02) << "bf16-mixed ends close to 32-true";
    }
  }
}

TEST(PrecisionTraining, Fp16AutocastWithScalerOnCpu) {
  auto plugin = std::make_shared<MixedPrecision>("16-mixed", "cpu");
  ASSERT_TRUE(plugin->scaler() && plugin->scaler()->is_enabled());
  Fabric fabric({.accelerator = "cpu", .plugins = {plugin}});
  const auto [first, last] = train(fabric);
  EXPECT_LT(last, first / 10);
}

TEST(PrecisionTraining, CudaMixedAndTrue) {
  if (!has_gpu()) GTEST_SKIP() << "needs a GPU";
  for (const char* precision :
       {"16-mixed", "bf16-mixed", "16-true", "bf16-true", "32-true", "64-true"}) {
    Fabric fabric({.accelerator = "cuda", .devices = 1, .precision = precision});
    const auto [first, last] = train(fabric);
    EXPECT_LT(last, first / 10) << precision;
  }
}
