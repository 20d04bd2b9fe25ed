// Runs of programs/shard_program.cpp (each run starts its own processes) and comparisons of what
// they wrote: shared by the sharding, hybrid-sharding and activation-checkpointing tests.
#pragma once

#include <gtest/gtest.h>
#include <sys/wait.h>

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "distributed/multiprocess.hpp"
#include "test_utils.hpp"

namespace cppfabric::testing {

struct ShardRun {
  int code = -1;
  std::string output;
  std::string dir;  ///< the run's --out folder: params_rank<R>.bin and whatever it saved
};

inline int exit_code(int status) {
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

/// One launch of the program with `flags`, killed after `limit_s`; `tag` names its temp folder.
inline ShardRun run_shard_program(const std::string& flags, int limit_s, const std::string& tag) {
  ShardRun r;
  r.dir = temp_dir(tag);
  int status = 0;
  r.output = run_command("timeout -s KILL " + std::to_string(limit_s) + " " +
                             CPPFABRIC_SHARD_PROGRAM + " " + flags + " --out " + r.dir + " 2>&1",
                         &status);
  r.code = exit_code(status);
  return r;
}

inline double worst_difference(const std::vector<double>& a, const std::vector<double>& b) {
  double worst = 0;
  for (std::size_t i = 0; i < a.size() && i < b.size(); ++i) {
    worst = std::max(worst, std::abs(a[i] - b[i]));
  }
  return worst;
}

/// Every rank's parameters in `run` equal rank 0's of `reference` within 1e-5.
inline void expect_same_params(const ShardRun& reference, const ShardRun& run, int world,
                               const std::string& what) {
  const auto expected = read_params(reference.dir + "/params_rank0.bin");
  ASSERT_FALSE(expected.empty()) << what;
  for (int rank = 0; rank < world; ++rank) {
    const auto actual = read_params(run.dir + "/params_rank" + std::to_string(rank) + ".bin");
    ASSERT_EQ(actual.size(), expected.size()) << what << " rank " << rank;
    EXPECT_LE(worst_difference(expected, actual), 1e-5) << what << " rank " << rank;
  }
}

/// Python's dcp_to_torch_save of the sharded checkpoint `sharded` equals the "full" checkpoint
/// `full` of the same training, tensor for tensor (tests/python/dcp_equals_full.py).
inline void expect_python_consolidates_to_full(const std::string& python,
                                               const std::string& sharded, const std::string& full,
                                               int tensors) {
  int status = 0;
  const auto output =
      run_command(python + " " + CPPFABRIC_SOURCE_DIR + "/tests/python/dcp_equals_full.py " +
                      sharded + " " + full + " " + sharded + ".consolidated.pt 2>&1",
                  &status);
  EXPECT_EQ(status, 0) << output;
  EXPECT_NE(output.find("tensors " + std::to_string(tensors) + " worst 0"), std::string::npos)
      << output;
}

}  // namespace cppfabric::testing
