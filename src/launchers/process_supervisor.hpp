// Starting, watching and stopping child processes: the one piece of process control shared by
// `fabric.launch()` (SubprocessScriptLauncher, which re-executes the program for local ranks
// 1..N-1) and the `cppfabric run` command-line tool (tools/cppfabric, which starts every rank).
// Private; no LibTorch here.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <map>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

namespace cppfabric::detail {

/// The running program's executable (/proc/self/exe) and its full argv (/proc/self/cmdline).
std::string current_executable();
std::vector<std::string> current_command_line();

/// "exit code 3", "signal 9 (Killed)".
std::string describe_wait_status(int status);

/// Children started with `spawn` die with this process (PR_SET_PDEATHSIG), so an exiting or
/// crashing parent never leaves orphans behind. They are forked from one process-lifetime thread,
/// whichever thread calls `spawn`: a child does not die when the thread that asked for it exits.
class ProcessSupervisor {
 public:
  struct Child {
    pid_t pid = -1;
    std::string label;          // e.g. "rank 1"
    std::optional<int> status;  // waitpid status once reaped
  };
  struct Failure {
    std::string label;
    pid_t pid = -1;
    int status = 0;
    /// "rank 1 (PID 1234) failed with exit code 3"
    std::string describe() const;
    /// The exit code a supervisor should exit with: the child's code, or 128 + signal.
    int exit_code() const;
  };

  ProcessSupervisor() = default;
  ProcessSupervisor(const ProcessSupervisor&) = delete;
  ProcessSupervisor& operator=(const ProcessSupervisor&) = delete;

  /// Starts `argv` (argv[0] is the program path, searched in PATH when it has no '/') with this
  /// process's environment plus `env` (which overrides, an empty value removes). Throws
  /// std::runtime_error when the program cannot be started (the child reports exec failures back).
  pid_t spawn(const std::vector<std::string>& argv, const std::map<std::string, std::string>& env,
              std::string label);

  /// Reaps children that have exited, without blocking; returns the first failure seen (a non-zero
  /// exit or a signal), once. With `stopped_is_failure`, a child stopped by a signal (SIGSTOP,
  /// SIGTSTP: it will not finish on its own) counts as failed too, though it is still alive.
  std::optional<Failure> poll(bool stopped_is_failure = false);
  /// Blocks until every child has exited or one has failed (then returns that failure at once,
  /// leaving the others running: call stop_all). `timeout` unset waits without limit.
  std::optional<Failure> wait(std::optional<std::chrono::milliseconds> timeout = std::nullopt,
                              bool stopped_is_failure = false);
  /// Stops every child still running: SIGTERM, up to `grace` for them to exit, then SIGKILL for the
  /// rest, and reaps them (giving up after kKillTimeout, so it never hangs). A zero `grace` skips
  /// SIGTERM. Exits seen here are not reported by poll() or wait() afterwards.
  void stop_all(std::chrono::milliseconds grace);
  /// True when every child has been reaped.
  bool all_exited();
  std::size_t size();

  /// How long stop_all waits for SIGKILLed children to be reaped.
  static constexpr std::chrono::seconds kKillTimeout{10};

 private:
  void signal_all(int signal);
  /// Reaps until every child has exited or `timeout` has passed, whatever their exit status.
  void reap_all(std::chrono::milliseconds timeout);

  std::mutex mutex_;
  std::vector<Child> children_;
  bool failure_reported_ = false;
};

}  // namespace cppfabric::detail
