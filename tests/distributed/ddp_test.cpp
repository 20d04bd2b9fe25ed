// DDP over real processes on loopback: the training program (programs/ddp_program.cpp) started
// through fabric.launch(), a torchrun-style environment and mpirun, compared with one process that
// trains on everyone's rows; and Fabric's collectives in forked ranks.
#include <gtest/gtest.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <torch/torch.h>

#include <chrono>
#include <cmath>
#include <cppfabric/cppfabric.hpp>
#include <fstream>
#include <iterator>
#include <thread>

#include "distributed/multiprocess.hpp"
#include "test_utils.hpp"

namespace {

using cppfabric::Fabric;
using cppfabric::testing::find_free_port;
using cppfabric::testing::run_command;
using cppfabric::testing::run_ranks;

using cppfabric::testing::read_params;

std::string temp_dir() { return cppfabric::testing::temp_dir("ddp"); }

struct Run {
  int code = -1;
  std::string output;
  double seconds = 0;
};

// Runs a shell command with everything it prints; `timeout` guards against any hang.
Run run(const std::string& command, int limit_s = 120) {
  Run r;
  const auto start = std::chrono::steady_clock::now();
  int status = 0;
  r.output =
      run_command("timeout -s KILL " + std::to_string(limit_s) + " " + command + " 2>&1", &status);
  r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  r.code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  return r;
}

const std::string kProgram = CPPFABRIC_DDP_PROGRAM;

// The single-process reference for `world` ranks' worth of rows.
std::vector<double> reference(int world, const std::string& extra = "") {
  const std::string dir = temp_dir();
  const auto r = run(kProgram + " --reference --world " + std::to_string(world) + " --out " + dir +
                     " " + extra);
  EXPECT_EQ(r.code, 0) << r.output;
  return read_params(dir + "/params_rank0.bin");
}

void expect_matches(const std::vector<double>& expected, const std::vector<double>& actual,
                    const std::string& what) {
  ASSERT_EQ(expected.size(), actual.size()) << what;
  ASSERT_FALSE(expected.empty()) << what;
  double worst = 0;
  for (std::size_t i = 0; i < expected.size(); ++i) {
    worst = std::max(worst, std::abs(expected[i] - actual[i]));
  }
  EXPECT_LE(worst, 1e-6) << what;
}

// Every rank's parameters (written to DIR/params_rank<R>.bin) equal the reference.
void expect_ranks_match(const std::vector<double>& expected, const std::string& dir, int world,
                        const std::string& what) {
  for (int rank = 0; rank < world; ++rank) {
    expect_matches(expected, read_params(dir + "/params_rank" + std::to_string(rank) + ".bin"),
                   what + " rank " + std::to_string(rank));
  }
}

void expect_ddp_matches_reference(int world, const std::string& extra = "") {
  const auto expected = reference(world, extra);
  const std::string dir = temp_dir();
  const auto r =
      run(kProgram + " --devices " + std::to_string(world) + " --out " + dir + " " + extra);
  ASSERT_EQ(r.code, 0) << r.output;
  expect_ranks_match(expected, dir, world, extra);
}

TEST(DdpLaunch, TwoProcessesMatchOneProcessOnAllRows) { expect_ddp_matches_reference(2); }

// gradient_as_bucket_view (on by default) and off: both equal single-process training, with and
// without accumulation; the program checks whether the gradients really share the bucket.
TEST(DdpLaunch, GradientsAsBucketViewsOnAndOff) {
  expect_ddp_matches_reference(2, "--expect-bucket-view 1");
  expect_ddp_matches_reference(2, "--no-bucket-view --expect-bucket-view 0");
  expect_ddp_matches_reference(2, "--accumulate 3 --expect-bucket-view 1");
  expect_ddp_matches_reference(2, "--accumulate 3 --no-bucket-view --expect-bucket-view 0");
  expect_ddp_matches_reference(1, "--accumulate 2 --expect-bucket-view 1");
}

TEST(DdpLaunch, ThreeProcessesMatchOneProcessOnAllRows) { expect_ddp_matches_reference(3); }

TEST(DdpLaunch, NoBackwardSyncAccumulatesLocallyThenSyncs) {
  // The program also checks that gradients differ across ranks inside the guard and agree after.
  expect_ddp_matches_reference(2, "--accumulate 3");
}

TEST(DdpLaunch, FindUnusedParametersReducesTheUsedOnes) {
  expect_ddp_matches_reference(2, "--unused --strategy ddp_find_unused_parameters_true");
}

// #15 item 7: a backward that throws midway (after some buckets were all-reduced) must not leave
// its marks behind; the next steps equal training without the interruption.
TEST(DdpLaunch, ABackwardThatThrowsMidwayIsDiscarded) {
  // Tiny buckets: one per parameter, so fc2's all-reduces are in flight when backward throws.
  expect_ddp_matches_reference(2, "--throw-step 1 --bucket-cap-mb 0.000001");
  expect_ddp_matches_reference(2, "--throw-step 2");
}

TEST(DdpLaunch, ABackwardThatThrowsMidwayIsDiscardedWithoutFabricsForward) {
  // Only the gradient hooks of the next backward can notice the interrupted pass.
  expect_ddp_matches_reference(2, "--throw-step 1 --throw-bypass --bucket-cap-mb 0.000001");
  expect_ddp_matches_reference(1, "--throw-step 0 --throw-bypass --accumulate 2");
}

TEST(DdpLaunch, UnusedParametersWithoutFindUnusedFailClearly) {
  const std::string dir = temp_dir();
  const auto r = run(kProgram + " --devices 2 --unused --timeout-s 20 --out " + dir);
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.output.find("received no gradient"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("extra.weight"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("ddp_find_unused_parameters_true"), std::string::npos) << r.output;
}

TEST(DdpLaunch, CheckpointWrittenOnceAndLoadedByEveryRank) {
  const std::string dir = temp_dir();
  const std::string save_dir = temp_dir();
  const auto r = run(kProgram + " --devices 2 --steps 2 --save-dir " + save_dir + " --out " + dir);
  ASSERT_EQ(r.code, 0) << r.output;
  int status = 0;
  const auto files = run_command("ls -A " + save_dir, &status);
  EXPECT_EQ(files, "ddp.ckpt\n") << "no temporary file may be left behind";
}

TEST(DdpLaunch, LaunchWithAFunctionReturnsItsValue) {
  const std::string dir = temp_dir();
  const auto r = run(kProgram + " --devices 2 --launch-fn --steps 1 --out " + dir);
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_NE(r.output.find("launch_fn returned 42"), std::string::npos) << r.output;
}

TEST(DdpLaunch, ALostRankStopsEveryProcessAndNamesIt) {
  const std::string dir = temp_dir();
  const auto r = run(kProgram +
                         " --devices 3 --steps 50 --kill-rank 1 --kill-step 2 --timeout-s "
                         "30 --out " +
                         dir,
                     90);
  EXPECT_NE(r.code, 0) << r.output;
  EXPECT_LT(r.seconds, 80) << "the run was only stopped by the test's own timeout";
  EXPECT_NE(r.output.find("rank 1 (local rank 1)"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("signal 9"), std::string::npos) << r.output;
}

std::string torchrun_env(int rank, int world, int port) {
  return "env TORCHELASTIC_RUN_ID=test RANK=" + std::to_string(rank) +
         " LOCAL_RANK=" + std::to_string(rank) +
         " GROUP_RANK=0 LOCAL_WORLD_SIZE=" + std::to_string(world) +
         " WORLD_SIZE=" + std::to_string(world) +
         " MASTER_ADDR=127.0.0.1 MASTER_PORT=" + std::to_string(port) + " ";
}

// Starts `world` processes the way torchrun would; returns the combined output and the worst code.
Run run_torchrun_style(int world, const std::string& flags) {
  const int port = find_free_port();
  std::string script = "bash -c '";
  for (int rank = 0; rank < world; ++rank) {
    script += torchrun_env(rank, world, port) + kProgram + " --devices " + std::to_string(world) +
              " " + flags + " & p" + std::to_string(rank) + "=$!; ";
  }
  script += "worst=0; for p in";
  for (int rank = 0; rank < world; ++rank) script += " $p" + std::to_string(rank);
  script += "; do wait $p; c=$?; [ $c -gt $worst ] && worst=$c; done; exit $worst'";
  return run(script, 90);
}

TEST(DdpTorchrun, ProcessesStartedByTheLauncherNeedNoSpawn) {
  const auto expected = reference(2);
  const std::string dir = temp_dir();
  const auto r = run_torchrun_style(2, "--out " + dir);
  ASSERT_EQ(r.code, 0) << r.output;
  expect_ranks_match(expected, dir, 2, "torchrun");
}

TEST(DdpTorchrun, SurvivorsFailWithinTheTimeoutWhenARankDies) {
  const std::string dir = temp_dir();
  const auto r =
      run_torchrun_style(2, "--steps 200 --kill-rank 1 --kill-step 2 --timeout-s 15 --out " + dir);
  EXPECT_NE(r.code, 0) << r.output;
  EXPECT_LT(r.seconds, 80) << r.output;
  EXPECT_NE(r.output.find("rank 0 of 2"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("Another rank may have exited"), std::string::npos) << r.output;
}

TEST(DdpGpu, NcclAtWorldSizeOneMatchesOneDevice) {
  if (cppfabric::accelerators::CUDAAccelerator::device_count() < 1) {
    GTEST_SKIP() << "no CUDA device visible";
  }
  const std::string dir = temp_dir();
  const auto r =
      run(kProgram + " --accelerator cuda --devices 1 --strategy ddp --accumulate 2 --out " + dir);
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_NE(r.output.find("backend=nccl"), std::string::npos) << r.output;
  const std::string ref_acc_dir = temp_dir();
  const auto ref_acc = run(
      kProgram + " --reference --world 1 --accelerator cuda --accumulate 2 --out " + ref_acc_dir);
  ASSERT_EQ(ref_acc.code, 0) << ref_acc.output;
  expect_matches(read_params(ref_acc_dir + "/params_rank0.bin"),
                 read_params(dir + "/params_rank0.bin"), "nccl world size 1");
}

// Two network namespaces joined by a veth pair: two "machines" on one host. Needs CAP_NET_ADMIN.
class TwoNamespaces {
 public:
  TwoNamespaces() {
    const std::string id = std::to_string(::getpid());
    a_ = "cfab" + id + "a";
    b_ = "cfab" + id + "b";
    const std::string va = "cfv" + id + "a", vb = "cfv" + id + "b";
    const std::vector<std::string> steps = {
        "ip netns add " + a_,
        "ip netns add " + b_,
        "ip link add " + va + " type veth peer name " + vb,
        "ip link set " + va + " netns " + a_,
        "ip link set " + vb + " netns " + b_,
        "ip netns exec " + a_ + " ip addr add 10.77.0.1/24 dev " + va,
        "ip netns exec " + b_ + " ip addr add 10.77.0.2/24 dev " + vb,
        "ip netns exec " + a_ + " ip link set " + va + " up",
        "ip netns exec " + b_ + " ip link set " + vb + " up",
        "ip netns exec " + a_ + " ip link set lo up",
        "ip netns exec " + b_ + " ip link set lo up",
    };
    for (const auto& step : steps) {
      int status = 0;
      const auto out = run_command(step + " 2>&1", &status);
      if (status != 0) {
        reason_ = "cannot create network namespaces here (`" + step + "`: " + out + ")";
        return;
      }
    }
    ok_ = true;
  }
  ~TwoNamespaces() {
    int status = 0;
    run_command("ip netns del " + a_ + " 2>/dev/null; ip netns del " + b_ + " 2>/dev/null",
                &status);
  }
  bool ok() const { return ok_; }
  const std::string& reason() const { return reason_; }
  std::string exec(int node) const { return "ip netns exec " + (node == 0 ? a_ : b_) + " "; }

 private:
  std::string a_, b_, reason_;
  bool ok_ = false;
};

TEST(DdpTwoNodes, OneProcessPerNodeInSeparateNetworkNamespaces) {
  TwoNamespaces ns;
  if (!ns.ok()) GTEST_SKIP() << ns.reason();
  const auto expected = reference(2);
  const std::string dir = temp_dir();
  std::string script = "bash -c '";
  for (int node = 0; node < 2; ++node) {
    script += ns.exec(node) + "env NODE_RANK=" + std::to_string(node) +
              " MASTER_ADDR=10.77.0.1 MASTER_PORT=29517 " + kProgram +
              " --devices 1 --num-nodes 2 --timeout-s 60 --out " + dir + " & p" +
              std::to_string(node) + "=$!; ";
  }
  script += "wait $p0; a=$?; wait $p1; b=$?; exit $((a > b ? a : b))'";
  const auto r = run(script, 120);
  ASSERT_EQ(r.code, 0) << r.output;
  expect_ranks_match(expected, dir, 2, "two nodes");
}

TEST(DdpMpi, MpirunStartsTheProgram) {
  int status = 0;
  run_command("command -v mpirun >/dev/null 2>&1", &status);
  if (status != 0) GTEST_SKIP() << "mpirun is not installed (apt-get install openmpi-bin)";
  const auto expected = reference(2);
  const std::string dir = temp_dir();
  const int port = find_free_port();
  const auto r =
      run("env OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 "
          "OMPI_MCA_plm_rsh_agent=false mpirun --oversubscribe -np 2 -x MASTER_ADDR=127.0.0.1 -x "
          "MASTER_PORT=" +
              std::to_string(port) + " " + kProgram + " --devices 2 --out " + dir,
          90);
  ASSERT_EQ(r.code, 0) << r.output;
  expect_ranks_match(expected, dir, 2, "mpirun");
}

// ------------------------------------------------------------------ collectives in forked ranks

// What the launcher gives local rank `rank` of a one-node job (for forked ranks).
struct LocalRankEnv {
  LocalRankEnv(int rank, int world, int port)
      : local("LOCAL_RANK", std::to_string(rank)),
        size("WORLD_SIZE", std::to_string(world)),
        master("MASTER_PORT", std::to_string(port)) {}
  cppfabric::testing::ScopedEnv local, size, master;
};

int collectives_body(int rank, int port, int world) {
  LocalRankEnv env(rank, world, port);
  Fabric fabric({.accelerator = "cpu", .devices = world});
  fabric.launch();
  EXPECT_EQ(fabric.global_rank(), rank);
  EXPECT_EQ(fabric.world_size(), world);

  // all_reduce: Python's dtype rules and ops.
  auto mean = fabric.all_reduce(torch::tensor({static_cast<float>(rank + 1)}));
  EXPECT_FLOAT_EQ(mean.item<float>(), (world + 1) / 2.0f);
  auto sum = fabric.all_reduce(rank + 1, "sum");
  EXPECT_EQ(sum.scalar_type(), torch::kInt32);
  EXPECT_EQ(sum.item<int>(), world * (world + 1) / 2);
  EXPECT_EQ(fabric.all_reduce(rank, "max").item<int>(), world - 1);
  EXPECT_EQ(fabric.all_reduce(rank, "min").item<int>(), 0);
  auto int_mean = fabric.all_reduce(torch::tensor({rank * 3}, torch::kInt64), "mean");
  EXPECT_EQ(int_mean.item<int64_t>(), (3 * world * (world - 1) / 2) / world);

  // broadcast: shapes may differ on the receivers.
  auto mine = rank == 1 ? torch::arange(6, torch::kFloat64).reshape({2, 3}) : torch::zeros({1});
  auto got = fabric.broadcast(mine, 1);
  EXPECT_EQ(got.sizes(), (std::vector<int64_t>{2, 3}));
  EXPECT_EQ(got.scalar_type(), torch::kFloat64);
  EXPECT_TRUE(torch::equal(got, torch::arange(6, torch::kFloat64).reshape({2, 3})));

  // all_gather, with and without gradients.
  auto gathered = fabric.all_gather(torch::full({2}, static_cast<float>(rank)));
  EXPECT_EQ(gathered.sizes(), (std::vector<int64_t>{world, 2}));
  for (int r = 0; r < world; ++r) EXPECT_EQ(gathered[r][0].item<float>(), r);
  auto x = torch::full({2}, static_cast<float>(rank + 1), torch::requires_grad());
  auto all = fabric.all_gather(x, /*sync_grads=*/true);
  // d/dx_r of sum_k (k + 1) * all[k] summed over ranks = world * (r + 1)
  auto weights = torch::arange(1, world + 1, torch::kFloat32).unsqueeze(1);
  (all * weights).sum().backward();
  EXPECT_TRUE(torch::allclose(x.grad(), torch::full({2}, static_cast<float>(world * (rank + 1)))));

  { auto guard = fabric.rank_zero_first(); }
  fabric.barrier();
  return ::testing::Test::HasFailure() ? 1 : 0;
}

TEST(DdpCollectives, TwoRanks) {
  auto codes = run_ranks(2, [](int rank, int port) { return collectives_body(rank, port, 2); });
  EXPECT_EQ(codes, (std::vector<int>{0, 0}));
}

TEST(DdpCollectives, ThreeRanks) {
  auto codes = run_ranks(3, [](int rank, int port) { return collectives_body(rank, port, 3); });
  EXPECT_EQ(codes, (std::vector<int>{0, 0, 0}));
}

// Python's rank_zero_first waits without a limit: rank 0 may preprocess for longer than the
// collective timeout (2 s here) while the others wait, and collectives afterwards still work.
TEST(DdpCollectives, RankZeroFirstOutlastsTheCollectiveTimeout) {
  auto codes = run_ranks(2, [](int rank, int port) {
    LocalRankEnv env(rank, 2, port);
    auto ddp = std::make_shared<cppfabric::strategies::DDPStrategy>(
        cppfabric::strategies::DDPOptions{.timeout = std::chrono::seconds(2)});
    Fabric fabric({.accelerator = "cpu", .strategy = ddp, .devices = 2});
    fabric.launch();
    const auto start = std::chrono::steady_clock::now();
    bool ran = false;
    {
      auto guard = fabric.rank_zero_first();
      if (rank == 0) std::this_thread::sleep_for(std::chrono::seconds(4));
      ran = true;
    }
    const auto waited = std::chrono::steady_clock::now() - start;
    EXPECT_TRUE(ran);
    if (rank == 1) EXPECT_GE(waited, std::chrono::milliseconds(3500));
    { auto local = fabric.rank_zero_first(/*local=*/true); }
    EXPECT_EQ(fabric.all_reduce(1, "sum").item<int>(), 2);
    // The plain barrier keeps the collective timeout: rank 1 waits 2 s, not 4.
    if (rank == 0) std::this_thread::sleep_for(std::chrono::seconds(4));
    bool timed_out = false;
    try {
      fabric.barrier();
    } catch (const std::runtime_error&) {
      timed_out = true;
    }
    if (rank == 1) EXPECT_TRUE(timed_out);  // rank 0 then fails too: its peer gave up
    return ::testing::Test::HasFailure() ? 1 : 0;
  });
  EXPECT_EQ(codes, (std::vector<int>{0, 0}));
}

TEST(DdpCollectives, StoreListensOnLoopbackOnlyForSingleHostJobs) {
  auto codes = run_ranks(1, [](int rank, int port) {
    auto group = cppfabric::collectives::ProcessGroup::create(
        {.main_address = "127.0.0.1", .main_port = port, .rank = 0, .world_size = 1});
    // /proc/net/tcp lists listening sockets as local_address:port in hex; 0100007F is 127.0.0.1.
    char hex_port[8];
    std::snprintf(hex_port, sizeof(hex_port), "%04X", port);
    std::ifstream tcp("/proc/net/tcp");
    std::string line;
    bool loopback = false, any = false;
    while (std::getline(tcp, line)) {
      if (line.find(std::string(":") + hex_port + " 00000000:0000 0A") == std::string::npos)
        continue;
      if (line.find("0100007F:" + std::string(hex_port)) != std::string::npos) loopback = true;
      if (line.find("00000000:" + std::string(hex_port)) != std::string::npos) any = true;
    }
    std::ifstream tcp6("/proc/net/tcp6");
    while (std::getline(tcp6, line)) {
      if (line.find(std::string(":") + hex_port + " ") != std::string::npos &&
          line.find(" 0A ") != std::string::npos &&
          line.find("00000000000000000000000000000000:" + std::string(hex_port)) !=
              std::string::npos) {
        any = true;
      }
    }
    EXPECT_TRUE(loopback);
    EXPECT_FALSE(any);
    return ::testing::Test::HasFailure() ? 1 : 0;
  });
  EXPECT_EQ(codes, (std::vector<int>{0}));
}

}  // namespace

namespace {

#ifdef CPPFABRIC_CLI
TEST(DdpCli, RunStartsEveryRankWithATorchrunEnvironment) {
  const auto expected = reference(2);
  const std::string dir = temp_dir();
  const int port = find_free_port();
  const auto r = run(std::string(CPPFABRIC_CLI) +
                     " run --accelerator cpu --strategy ddp --devices 2 --main-port " +
                     std::to_string(port) + " " + kProgram + " --devices 2 --out " + dir);
  ASSERT_EQ(r.code, 0) << r.output;
  expect_ranks_match(expected, dir, 2, "cli");
}

TEST(DdpCli, AFailingRankStopsTheRun) {
  const std::string dir = temp_dir();
  const int port = find_free_port();
  const auto r =
      run(std::string(CPPFABRIC_CLI) + " run --accelerator cpu --devices 2 --main-port " +
          std::to_string(port) + " " + kProgram +
          " --devices 2 --steps 200 --kill-rank 1 --kill-step 1 --out " + dir);
  EXPECT_EQ(r.code, 128 + 9) << r.output;
  EXPECT_NE(r.output.find("rank 1 (local rank 1)"), std::string::npos) << r.output;
  EXPECT_LT(r.seconds, 80);
}

TEST(DdpCli, LaunchInsideTheCliIsRejected) {
  const std::string dir = temp_dir();
  const auto r = run(std::string(CPPFABRIC_CLI) + " run --accelerator cpu --devices 1 " + kProgram +
                     " --devices 1 --launch-fn --out " + dir);
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.output.find("launched through the CLI"), std::string::npos) << r.output;
}
#endif

}  // namespace

namespace {

// Loggers and print act on rank 0 only, with real ranks (the unit tests fake them).
TEST(DdpRankZero, LoggersWriteOnGlobalRankZeroOnly) {
  const std::string root = temp_dir();
  auto codes = run_ranks(2, [&root](int rank, int port) {
    LocalRankEnv env(rank, 2, port);
    auto csv = std::make_shared<cppfabric::loggers::CSVLogger>(root, "ranks");
    auto tb = std::make_shared<cppfabric::loggers::TensorBoardLogger>(root, "tb");
    Fabric fabric({.accelerator = "cpu", .devices = 2, .loggers = {csv, tb}});
    fabric.launch();
    for (int step = 0; step < 3; ++step) {
      fabric.log("rank_value", 10.0 * fabric.global_rank() + step, step);
    }
    fabric.print("printed by rank {}", fabric.global_rank());
    fabric.barrier();
    csv->finalize("success");
    tb->finalize("success");
    fabric.barrier();
    return ::testing::Test::HasFailure() ? 1 : 0;
  });
  ASSERT_EQ(codes, (std::vector<int>{0, 0}));
  std::ifstream csv_file(root + "/ranks/version_0/metrics.csv");
  ASSERT_TRUE(csv_file.good()) << "rank 0 wrote no metrics.csv";
  const std::string text((std::istreambuf_iterator<char>(csv_file)),
                         std::istreambuf_iterator<char>());
  // Rank 0's values (0, 1, 2) and none of rank 1's (10, 11, 12).
  EXPECT_NE(text.find("rank_value"), std::string::npos) << text;
  EXPECT_EQ(text.find("10.0"), std::string::npos) << text;
  EXPECT_EQ(text.find("11.0"), std::string::npos) << text;
  struct stat info {};
  EXPECT_NE(::stat((root + "/ranks/version_1").c_str(), &info), 0)
      << "a second version directory means rank 1 created one";
  EXPECT_NE(::stat((root + "/tb/version_1").c_str(), &info), 0);
}

}  // namespace
