// Python's utilities users call (rank_zero_only, rank-zero warnings once, suggested_max_num_workers),
// console lines with the rank prefix once, the terminate handler for escaping exceptions, and the
// small messages #16 asked for (State::get wording, devices=0 on the CPU, 16-true with Adam's eps).
#include <gtest/gtest.h>
#include <sched.h>
#include <torch/torch.h>

#include <cppfabric/cppfabric.hpp>
#include <stdexcept>
#include <thread>

#include "test_utils.hpp"
#include "unit/models.hpp"

using cppfabric::testing::CaptureConsole;
using cppfabric::testing::Net;
using cppfabric::testing::ScopedEnv;
namespace utilities = cppfabric::utilities;

namespace {
struct FakeRank {
  FakeRank(int rank, int world) { utilities::set_rank(rank, world); }
  ~FakeRank() { utilities::set_rank(0, 1); }
};

std::size_t count(const std::string& text, const std::string& part) {
  std::size_t n = 0;
  for (auto pos = text.find(part); pos != std::string::npos; pos = text.find(part, pos + 1)) ++n;
  return n;
}
}  // namespace

TEST(RankZeroOnly, CallsOnRankZeroOnlyAndReturnsOptional) {
  int calls = 0;
  auto add = utilities::rank_zero_only([&](int a, int b) {
    ++calls;
    return a + b;
  });
  auto touch = utilities::rank_zero_only([&] { ++calls; });
  EXPECT_EQ(add(2, 3), std::optional<int>(5));
  touch();
  EXPECT_EQ(calls, 2);
  {
    FakeRank rank(1, 2);
    EXPECT_EQ(add(2, 3), std::nullopt);
    touch();
    EXPECT_EQ(calls, 2);
  }
}

TEST(RankZeroOnly, WarningsShowOncePerMessage) {
  CaptureConsole console;
  utilities::rank_zero_warn("pin_memory has no effect here");
  utilities::rank_zero_warn("pin_memory has no effect here");
  utilities::rank_zero_warn("another warning");
  EXPECT_EQ(count(console.text(), "pin_memory has no effect here"), 1u) << console.text();
  EXPECT_EQ(count(console.text(), "another warning"), 1u);
  utilities::clear_shown_warnings();
  utilities::rank_zero_warn("pin_memory has no effect here");
  EXPECT_EQ(count(console.text(), "pin_memory has no effect here"), 2u);
  FakeRank rank(1, 2);
  utilities::clear_shown_warnings();
  utilities::rank_zero_warn("not on rank 1");
  EXPECT_EQ(count(console.text(), "not on rank 1"), 0u);
}

TEST(RankZeroOnly, SeedLineCarriesTheRankPrefixOnce) {
  {
    CaptureConsole console;
    cppfabric::Fabric::seed_everything(42);
    EXPECT_EQ(console.text(), "[info] [rank: 0] Seed set to 42\n");  // one process: Python's line
  }
  {
    FakeRank rank(1, 2);
    CaptureConsole console;  // its own pattern "[%l] %v"; the real console adds "[rank: 1] "
    cppfabric::Fabric::seed_everything(42);
    EXPECT_EQ(console.text(), "[info] Seed set to 42\n");
  }
}

TEST(RankZeroOnly, RankAndWorldSizeComeFromTheEnvironmentBeforeAnyFabric) {
  // A fresh process (gtest's "threadsafe" death tests re-execute this binary), as a launched
  // child starts: LOCAL_RANK set by the launcher, no Fabric yet.
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  ScopedEnv rank("RANK", std::nullopt);
  ScopedEnv local("LOCAL_RANK", "1");
  ScopedEnv world("WORLD_SIZE", "2");
  EXPECT_EXIT(
      {
        std::fprintf(stderr, "rank=%d world=%d\n", utilities::current_rank(),
                     utilities::current_world_size());
        utilities::rank_zero_info("rank zero only");
        utilities::console()->info("every rank");
        std::exit(utilities::current_rank() == 1 ? 0 : 3);
      },
      ::testing::ExitedWithCode(0), "rank=1 world=2\n\\[rank: 1\\] \\[info\\] every rank");
}

TEST(TerminateHandler, EscapingExceptionIsPrintedOnceWithTheRankAndExitsOne) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  ScopedEnv rank("RANK", "3");
  ScopedEnv world("WORLD_SIZE", "4");
  EXPECT_EXIT(
      {
        utilities::install_terminate_handler();
        std::thread([] {
          try {
            throw std::invalid_argument("bad value\nsecond line");
          } catch (...) {
            std::throw_with_nested(std::runtime_error("training failed"));
          }
        }).join();
      },
      ::testing::ExitedWithCode(1),
      "\\[rank: 3\\] Uncaught exception: std::runtime_error: training failed\n"
      "\\[rank: 3\\] caused by std::invalid_argument: bad value\n"
      "\\[rank: 3\\] second line\n");
}

TEST(TerminateHandler, MessageFormat) {
  std::exception_ptr error;
  try {
    throw std::out_of_range("no key 'x'");
  } catch (...) {
    error = std::current_exception();
  }
  EXPECT_EQ(utilities::uncaught_exception_message(error, 0, 1),
            "Uncaught exception: std::out_of_range: no key 'x'\n");
  EXPECT_EQ(utilities::uncaught_exception_message(error, 1, 2),
            "[rank: 1] Uncaught exception: std::out_of_range: no key 'x'\n");
  try {
    throw 42;
  } catch (...) {
    error = std::current_exception();
  }
  EXPECT_EQ(utilities::uncaught_exception_message(error, 0, 1),
            "Uncaught exception: int (not a std::exception)\n");
  EXPECT_EQ(utilities::uncaught_exception_message(nullptr, 0, 1),
            "terminate called without an active exception\n");
}

TEST(SuggestedMaxNumWorkers, AsPython) {
  cpu_set_t set;
  CPU_ZERO(&set);
  ASSERT_EQ(::sched_getaffinity(0, sizeof(set), &set), 0);
  const int cpus = CPU_COUNT(&set);
  EXPECT_EQ(utilities::num_cpus_available(), cpus);
  for (int local_world : {1, 2, 3, 8, 1000}) {
    EXPECT_EQ(utilities::suggested_max_num_workers(local_world),
              std::max(1, cpus / local_world - 1))
        << local_world;
  }
  EXPECT_THROW_WITH(utilities::suggested_max_num_workers(0), std::invalid_argument,
                    "local_world_size=0", "at least 1");
}

TEST(Messages, StateGetTypeErrorsReadAsEnglish) {
  cppfabric::State state{{"epoch", "five"}, {"lr", 0.1}, {"flag", true}};
  EXPECT_THROW_WITH(state.get<int64_t>("epoch"), std::invalid_argument,
                    "State key 'epoch' holds a str ('five'), not an int");
  EXPECT_THROW_WITH(state.get<std::string>("lr"), std::invalid_argument,
                    "holds a float (0.1), not a str");
  EXPECT_THROW_WITH(state.get<at::Tensor>("flag"), std::invalid_argument, "not a Tensor");
}

TEST(Messages, ZeroDevicesOnTheCpuTalksAboutProcesses) {
  EXPECT_THROW_WITH(cppfabric::Fabric({.accelerator = "cpu", .devices = 0}), std::invalid_argument,
                    "`Fabric(devices=0)` value is not a valid input", "number of processes");
  try {
    cppfabric::Fabric({.accelerator = "cpu", .devices = 0});
  } catch (const std::invalid_argument& e) {
    EXPECT_EQ(std::string(e.what()).find("GPUs"), std::string::npos) << e.what();
  }
}

TEST(Messages, HalfTrueWithAdamDefaultEpsWarnsOnce) {
  cppfabric::Fabric fabric({.accelerator = "cpu", .precision = "16-true"});
  CaptureConsole console;
  for (int i = 0; i < 2; ++i) {
    Net model;
    auto adamw = std::make_shared<torch::optim::AdamW>(model->parameters(),
                                                       torch::optim::AdamWOptions(1e-3));
    auto [net, opt] = fabric.setup(model, adamw);
  }
  EXPECT_EQ(count(console.text(), "eps rounds to 0 in float16"), 1u) << console.text();
  EXPECT_NE(console.text().find("AdamW(eps=1e-08)"), std::string::npos) << console.text();
  // A large enough eps, or another precision: no warning.
  utilities::clear_shown_warnings();
  Net model;
  auto fine = std::make_shared<torch::optim::Adam>(model->parameters(),
                                                   torch::optim::AdamOptions(1e-3).eps(1e-4));
  auto [net, opt] = fabric.setup(model, fine);
  EXPECT_EQ(count(console.text(), "eps rounds to 0 in float16"), 1u);
}
