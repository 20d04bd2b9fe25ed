// Launchers: how the processes of a multi-device run come to exist. `fabric.launch()` uses the
// strategy's launcher; you rarely construct one yourself.
//
//   Fabric fabric({.accelerator = "cpu", .devices = 4});   // strategy "ddp"
//   fabric.launch();   // re-executes this program 3 times (LOCAL_RANK=1..3), then joins the group
//
// SubprocessScriptLauncher follows Python Fabric's subprocess launcher: the running executable is
// started again with the same arguments and the environment MASTER_ADDR, MASTER_PORT (a free port
// unless set), NODE_RANK, LOCAL_RANK and WORLD_SIZE. Children die with the process that started
// them; if any child fails, the others are killed and this process exits non-zero naming the rank.
// Rank 0 waits for its children when it exits. Under torchrun, srun or mpirun (the processes exist
// already) it only checks the settings. OMP_NUM_THREADS defaults to (CPU cores / processes).
#pragma once

#include <memory>

namespace cppfabric::environments {
class ClusterEnvironment;
}

namespace cppfabric::launchers {

class Launcher {
 public:
  virtual ~Launcher();
  /// Creates the processes (where needed) and prepares this one; runs once per process.
  virtual void launch() = 0;
};

class SubprocessScriptLauncher : public Launcher {
 public:
  SubprocessScriptLauncher(std::shared_ptr<environments::ClusterEnvironment> environment,
                           int num_processes, int num_nodes);
  void launch() override;

  int num_processes() const { return num_processes_; }
  int num_nodes() const { return num_nodes_; }

 private:
  void call_children_scripts();

  std::shared_ptr<environments::ClusterEnvironment> environment_;
  int num_processes_;
  int num_nodes_;
  bool launched_ = false;
};

/// Python's rule: unless OMP_NUM_THREADS is set, use (CPU cores available / num_processes) intra-op
/// threads (at least 1) and export OMP_NUM_THREADS. Returns the thread count in effect.
int set_num_threads_if_needed(int num_processes);

}  // namespace cppfabric::launchers
