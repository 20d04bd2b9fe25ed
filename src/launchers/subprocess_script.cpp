#include "cppfabric/launchers/subprocess_script.hpp"

#include <ATen/Parallel.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <stdexcept>
#include <string>
#include <thread>

#include "cppfabric/detail/fmt.hpp"
#include "cppfabric/environments/cluster_environment.hpp"
#include "launchers/num_threads.hpp"
#include "launchers/process_supervisor.hpp"
#include "utilities/env.hpp"

namespace cppfabric::launchers {

Launcher::~Launcher() = default;

namespace {

// One set of children per process (Python: "The launcher can only create subprocesses once").
// Leaked on purpose: the observer thread and the exit handler use it until _exit.
detail::ProcessSupervisor& children() {
  static auto* supervisor = new detail::ProcessSupervisor();
  return *supervisor;
}

[[noreturn]] void stop_everything(const detail::ProcessSupervisor::Failure& failure) {
  // stderr directly: this runs on the observer thread or at exit, when loggers may be gone.
  std::fprintf(stderr,
               "[rank 0] cppfabric: %s. Terminating all other processes of this run (no zombies "
               "are left behind).\n",
               failure.describe().c_str());
  std::fflush(stderr);
  std::fflush(stdout);
  // No grace period, as in Python: SIGTERM does not stop a process stuck in a collective.
  children().stop_all(std::chrono::milliseconds(0));
  std::_Exit(failure.exit_code());
}

void observe_children() {
  while (true) {
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
    if (auto failure = children().poll()) stop_everything(*failure);
    if (children().all_exited()) return;
  }
}

// Rank 0 returns from main before its children: wait for them so that a child failing at the
// very end still turns into a non-zero exit, and none is killed mid-way by our exit. A child
// stopped by a signal (SIGSTOP) would keep this wait going forever: it counts as failed here.
void wait_for_children_at_exit() {
  if (auto failure = children().wait(std::nullopt, /*stopped_is_failure=*/true)) {
    stop_everything(*failure);
  }
}

}  // namespace

SubprocessScriptLauncher::SubprocessScriptLauncher(
    std::shared_ptr<environments::ClusterEnvironment> environment, int num_processes, int num_nodes)
    : environment_(std::move(environment)), num_processes_(num_processes), num_nodes_(num_nodes) {
  if (!environment_) throw std::invalid_argument("SubprocessScriptLauncher needs an environment");
  if (num_processes_ < 1 || num_nodes_ < 1) {
    throw std::invalid_argument(
        fmt::format("SubprocessScriptLauncher: num_processes ({}) and num_nodes ({}) must be >= 1",
                    num_processes_, num_nodes_));
  }
}

void SubprocessScriptLauncher::launch() {
  environment_->validate_settings(num_processes_, num_nodes_);
  if (!environment_->creates_processes_externally()) {
    call_children_scripts();
  }
  set_num_threads_if_needed(num_processes_);
}

void SubprocessScriptLauncher::call_children_scripts() {
  if (launched_ || children().size() > 0) {
    throw std::runtime_error("The launcher can only create subprocesses once.");
  }
  if (environment_->local_rank() != 0) {
    throw std::runtime_error(
        "cppfabric attempted to launch new processes with local_rank > 0. LOCAL_RANK was probably "
        "set by hand, or a ClusterEnvironment's creates_processes_externally() is wrong.");
  }
  launched_ = true;
  const std::string address = environment_->main_address();
  const std::string port = std::to_string(environment_->main_port());
  ::setenv("MASTER_ADDR", address.c_str(), 1);
  ::setenv("MASTER_PORT", port.c_str(), 1);
  ::setenv("NODE_RANK", std::to_string(environment_->node_rank()).c_str(), 1);
  ::setenv("LOCAL_RANK", "0", 1);
  ::setenv("WORLD_SIZE", std::to_string(num_processes_ * num_nodes_).c_str(), 1);

  std::vector<std::string> command = detail::current_command_line();
  if (command.empty()) command.push_back(detail::current_executable());
  command[0] = detail::current_executable();  // argv[0] may be relative to a changed directory
  for (int local_rank = 1; local_rank < num_processes_; ++local_rank) {
    const int rank = environment_->node_rank() * num_processes_ + local_rank;
    children().spawn(command, {{"LOCAL_RANK", std::to_string(local_rank)}},
                     fmt::format("rank {} (local rank {})", rank, local_rank));
  }
  std::atexit(wait_for_children_at_exit);
  std::thread(observe_children).detach();
}

int set_num_threads_if_needed(int num_processes) {
  const int threads = detail::suggested_max_num_threads(num_processes);  // validates it too
  if (auto set = detail::env_int("OMP_NUM_THREADS", "a thread count such as 4")) {
    return static_cast<int>(*set);
  }
  at::set_num_threads(threads);
  ::setenv("OMP_NUM_THREADS", std::to_string(threads).c_str(), 1);
  return threads;
}

}  // namespace cppfabric::launchers
