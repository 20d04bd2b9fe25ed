// Regression tests for what the libFuzzer targets in fuzz/ found (fuzz/run.sh; the note of branch ckpt lists the runs).
#include <gtest/gtest.h>

#include <chrono>
#include <cppfabric/environments/slurm.hpp>
#include <string>

namespace {

using cppfabric::environments::SLURMEnvironment;

TEST(FuzzRegressions, SlurmNodeListParsingMatchesLightning) {
  // Lightning's results for its two substitutions (first node of every range, then a single
  // bracketed number), then the first of space- and comma-separated names.
  EXPECT_EQ(SLURMEnvironment::resolve_root_node_address("node[1-4]"), "node1");
  EXPECT_EQ(SLURMEnvironment::resolve_root_node_address("a[001,005],b[2-3]"), "a001");
  EXPECT_EQ(SLURMEnvironment::resolve_root_node_address("host1,host2"), "host1");
  EXPECT_EQ(SLURMEnvironment::resolve_root_node_address("gpu-[01-02]-x y"), "gpu-01-x");
  EXPECT_EQ(SLURMEnvironment::resolve_root_node_address("n[5]"), "n5");
  EXPECT_EQ(SLURMEnvironment::resolve_root_node_address("[,]"), "");
  EXPECT_EQ(SLURMEnvironment::resolve_root_node_address("a[1]b[2-3]"), "a1]b[2");
  EXPECT_EQ(SLURMEnvironment::resolve_root_node_address("x[[1-2]]"), "x[1");
  EXPECT_EQ(SLURMEnvironment::resolve_root_node_address("[a\n-]"), "[a\n-]");
  EXPECT_EQ(SLURMEnvironment::resolve_root_node_address("single"), "single");
}

TEST(FuzzRegressions, LongSlurmNodeListsAreLinear) {
  // std::regex took 13 s on a 10 KB list of 1600 '[' (fuzz/slurm.cpp) and overflowed the stack
  // on a 100k-character range.
  std::string many;
  for (int i = 0; i < 1600; ++i) many += i % 3 == 0 ? "m]n[" : "[x";
  many += "-]";
  const auto start = std::chrono::steady_clock::now();
  (void)SLURMEnvironment::resolve_root_node_address(many);
  const std::string big = "node[" + std::string(1000000, '1') + "-2]";
  EXPECT_EQ(SLURMEnvironment::resolve_root_node_address(big), "node" + std::string(1000000, '1'));
  EXPECT_LT(std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count(), 1.0);
}

}  // namespace
