// Cluster environments: Python's variables, defaults, detection order and validation errors.
#include <gtest/gtest.h>

#include <cppfabric/environments/cluster_environment.hpp>
#include <cppfabric/environments/lightning.hpp>
#include <cppfabric/environments/mpi.hpp>
#include <cppfabric/environments/slurm.hpp>
#include <cppfabric/environments/torchelastic.hpp>

#include "test_utils.hpp"

using cppfabric::testing::CaptureConsole;
using cppfabric::testing::ScopedEnv;
using namespace cppfabric::environments;

namespace {

// Every variable any environment reads, cleared for the duration of a test.
class EnvironmentTest : public ::testing::Test {
 protected:
  std::vector<std::unique_ptr<ScopedEnv>> cleared_ = [] {
    std::vector<std::unique_ptr<ScopedEnv>> out;
    for (const char* name : {"MASTER_ADDR",
                             "MASTER_PORT",
                             "STANDALONE_PORT",
                             "LOCAL_RANK",
                             "NODE_RANK",
                             "GROUP_RANK",
                             "WORLD_SIZE",
                             "RANK",
                             "TORCHELASTIC_RUN_ID",
                             "SLURM_NTASKS",
                             "SLURM_NTASKS_PER_NODE",
                             "SLURM_NNODES",
                             "SLURM_PROCID",
                             "SLURM_LOCALID",
                             "SLURM_NODEID",
                             "SLURM_JOB_ID",
                             "SLURM_JOB_NAME",
                             "SLURM_NODELIST",
                             "OMPI_COMM_WORLD_SIZE",
                             "OMPI_COMM_WORLD_RANK",
                             "OMPI_COMM_WORLD_LOCAL_RANK",
                             "OMPI_COMM_WORLD_LOCAL_SIZE",
                             "PMI_SIZE",
                             "PMI_RANK",
                             "MPI_LOCALRANKID",
                             "MPI_LOCALNRANKS"}) {
      out.push_back(std::make_unique<ScopedEnv>(name, std::nullopt));
    }
    return out;
  }();
  std::vector<std::unique_ptr<ScopedEnv>> set_;
  void set(const char* name, const char* value) {
    set_.push_back(std::make_unique<ScopedEnv>(name, value));
  }
};

}  // namespace

TEST_F(EnvironmentTest, LightningDefaults) {
  LightningEnvironment env;
  EXPECT_FALSE(env.creates_processes_externally());
  EXPECT_EQ(env.main_address(), "127.0.0.1");
  const int port = env.main_port();
  EXPECT_GT(port, 0);
  EXPECT_EQ(env.main_port(), port) << "chosen once";
  EXPECT_EQ(env.world_size(), 1);
  EXPECT_EQ(env.global_rank(), 0);
  EXPECT_EQ(env.local_rank(), 0);
  EXPECT_EQ(env.node_rank(), 0);
  env.set_world_size(4);
  env.set_global_rank(3);
  EXPECT_EQ(env.world_size(), 4);
  EXPECT_EQ(env.global_rank(), 3);
  EXPECT_TRUE(LightningEnvironment::detect());
}

TEST_F(EnvironmentTest, LightningFromVariables) {
  set("MASTER_ADDR", "1.2.3.4");
  set("MASTER_PORT", "500");
  set("LOCAL_RANK", "2");
  set("GROUP_RANK", "3");
  LightningEnvironment env;
  EXPECT_TRUE(env.creates_processes_externally());
  EXPECT_EQ(env.main_address(), "1.2.3.4");
  EXPECT_EQ(env.main_port(), 500);
  EXPECT_EQ(env.local_rank(), 2);
  EXPECT_EQ(env.node_rank(), 3) << "GROUP_RANK when NODE_RANK is unset";
  set("NODE_RANK", "1");
  EXPECT_EQ(env.node_rank(), 1);
  set("WORLD_SIZE", "8");
  env.teardown();
  EXPECT_EQ(std::getenv("WORLD_SIZE"), nullptr);
}

TEST_F(EnvironmentTest, StandalonePortAndBadValues) {
  set("STANDALONE_PORT", "4321");
  EXPECT_EQ(find_free_network_port(), 4321);
  EXPECT_EQ(LightningEnvironment().main_port(), 4321);
  set("LOCAL_RANK", "x");
  EXPECT_THROW_WITH(LightningEnvironment().local_rank(), std::invalid_argument, "LOCAL_RANK='x'");
}

TEST_F(EnvironmentTest, TorchElastic) {
  EXPECT_FALSE(TorchElasticEnvironment::detect());
  set("TORCHELASTIC_RUN_ID", "1");
  set("WORLD_SIZE", "4");
  set("RANK", "3");
  set("LOCAL_RANK", "1");
  set("GROUP_RANK", "1");
  EXPECT_TRUE(TorchElasticEnvironment::detect());
  TorchElasticEnvironment env;
  EXPECT_TRUE(env.creates_processes_externally());
  EXPECT_EQ(env.world_size(), 4);
  EXPECT_EQ(env.global_rank(), 3);
  EXPECT_EQ(env.local_rank(), 1);
  EXPECT_EQ(env.node_rank(), 1);
  {
    CaptureConsole console;
    EXPECT_EQ(env.main_address(), "127.0.0.1");
    EXPECT_EQ(env.main_port(), 12910);
    EXPECT_NE(console.text().find("MASTER_ADDR environment variable is not defined"),
              std::string::npos);
  }
  env.set_world_size(100);  // ignored, as in Python
  EXPECT_EQ(env.world_size(), 4);
  EXPECT_NO_THROW(env.validate_settings(2, 2));
  EXPECT_THROW_WITH(env.validate_settings(3, 1), std::invalid_argument, "`devices=3`",
                    "`num_nodes=1`", "(3 * 1)", "world size (4)");
  EXPECT_EQ(detect_cluster_environment()->describe(),
            "cppfabric::environments::TorchElasticEnvironment");
}

TEST_F(EnvironmentTest, SlurmAttributes) {
  set("SLURM_NTASKS", "4");
  set("SLURM_NTASKS_PER_NODE", "2");
  set("SLURM_NNODES", "2");
  set("SLURM_PROCID", "3");
  set("SLURM_LOCALID", "1");
  set("SLURM_NODEID", "1");
  set("SLURM_JOB_ID", "123456");
  set("SLURM_NODELIST", "node[7-9]");
  ASSERT_TRUE(SLURMEnvironment::detect());
  SLURMEnvironment env;
  EXPECT_EQ(env.world_size(), 4);
  EXPECT_EQ(env.global_rank(), 3);
  EXPECT_EQ(env.local_rank(), 1);
  EXPECT_EQ(env.node_rank(), 1);
  EXPECT_EQ(env.main_address(), "node7");
  EXPECT_EQ(env.main_port(), 15000 + 3456) << "the last four digits of the job id";
  EXPECT_STREQ(std::getenv("MASTER_PORT"), "18456");
  EXPECT_EQ(SLURMEnvironment::job_id(), 123456);
  EXPECT_NO_THROW(env.validate_settings(2, 2));
  EXPECT_THROW_WITH(env.validate_settings(4, 2), std::invalid_argument,
                    "`--ntasks-per-node=2` does not match", "HINT: Set `devices=2`");
  EXPECT_THROW_WITH(env.validate_settings(2, 1), std::invalid_argument, "`--nodes=2`",
                    "HINT: Set `num_nodes=2`");
  EXPECT_EQ(detect_cluster_environment()->describe(), "cppfabric::environments::SLURMEnvironment");
}

TEST_F(EnvironmentTest, SlurmNtasksWithoutPerNode) {
  set("SLURM_NTASKS", "4");
  EXPECT_THROW_WITH(SLURMEnvironment(), std::runtime_error, "`--ntasks=4`",
                    "`--ntasks-per-node=4`");
}

TEST_F(EnvironmentTest, SlurmInteractiveIsNotDetected) {
  set("SLURM_NTASKS", "1");
  set("SLURM_JOB_NAME", "interactive");
  set("SLURM_JOB_ID", "1234");
  EXPECT_FALSE(SLURMEnvironment::detect());
  EXPECT_FALSE(SLURMEnvironment::job_id().has_value());
  EXPECT_EQ(detect_cluster_environment()->describe(),
            "cppfabric::environments::LightningEnvironment");
}

TEST_F(EnvironmentTest, SlurmNodeLists) {
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"127.0.0.1", "127.0.0.1"},
      {"alpha,beta,gamma", "alpha"},
      {"alpha beta gamma", "alpha"},
      {"1.2.3.[100-110]", "1.2.3.100"},
      {"1.2.3.[089, 100-110]", "1.2.3.089"},
      {"host[22]", "host22"},
      {"host[1,5-9]", "host1"},
      {"host[5-9,1]", "host5"},
      {"alpha, beta", "alpha"},
  };
  for (const auto& [nodes, root] : cases) {
    EXPECT_EQ(SLURMEnvironment::resolve_root_node_address(nodes), root) << nodes;
  }
}

TEST_F(EnvironmentTest, Mpi) {
  EXPECT_FALSE(MPIEnvironment::detect());
  set("OMPI_COMM_WORLD_SIZE", "8");
  set("OMPI_COMM_WORLD_RANK", "5");
  set("OMPI_COMM_WORLD_LOCAL_RANK", "1");
  set("OMPI_COMM_WORLD_LOCAL_SIZE", "4");
  ASSERT_TRUE(MPIEnvironment::detect());
  MPIEnvironment env;
  EXPECT_EQ(env.world_size(), 8);
  EXPECT_EQ(env.global_rank(), 5);
  EXPECT_EQ(env.local_rank(), 1);
  EXPECT_EQ(env.node_rank(), 1);
  set("MASTER_PORT", "2345");
  EXPECT_EQ(env.main_port(), 2345);
  EXPECT_EQ(detect_cluster_environment()->describe(), "cppfabric::environments::MPIEnvironment");
}

TEST_F(EnvironmentTest, MpichVariables) {
  set("PMI_SIZE", "2");
  set("PMI_RANK", "1");
  set("MPI_LOCALRANKID", "1");
  MPIEnvironment env;
  EXPECT_TRUE(MPIEnvironment::detect());
  EXPECT_EQ(env.world_size(), 2);
  EXPECT_EQ(env.global_rank(), 1);
  EXPECT_EQ(env.local_rank(), 1);
  EXPECT_EQ(env.node_rank(), 0);
}

TEST_F(EnvironmentTest, DetectionOrderPrefersTorchElastic) {
  set("TORCHELASTIC_RUN_ID", "x");
  set("SLURM_NTASKS", "1");
  set("OMPI_COMM_WORLD_SIZE", "2");
  EXPECT_EQ(detect_cluster_environment()->describe(),
            "cppfabric::environments::TorchElasticEnvironment");
}
