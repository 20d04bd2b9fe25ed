#include "launchers/process_supervisor.hpp"

#include <fcntl.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <fstream>
#include <functional>
#include <future>
#include <iterator>
#include <stdexcept>
#include <thread>

#include "cppfabric/detail/fmt.hpp"

extern char** environ;

namespace cppfabric::detail {

namespace {

// PR_SET_PDEATHSIG fires when the *thread* that forked the child exits, not when its process does:
// children forked from a short-lived thread (fabric.launch() called from a std::thread) would be
// killed as soon as that thread returns. Every child is therefore forked from this one thread,
// which is started on first use and lives as long as the process (leaked on purpose: it blocks
// waiting for work until the process exits). It runs with every signal blocked, so signals meant
// for the program are delivered to the program's own threads.
class SpawnerThread {
 public:
  static SpawnerThread& instance() {
    static std::mutex guard;
    static SpawnerThread* spawner = nullptr;
    std::lock_guard<std::mutex> lock(guard);
    // A child made by fork() (without exec) inherits the pointer but not the thread: it gets its
    // own (the old object is left alone; its thread does not exist in this process).
    if (!spawner || spawner->owner_ != ::getpid()) spawner = new SpawnerThread();
    return *spawner;
  }

  // Runs `task` on the spawner thread and waits for it; rethrows what it throws.
  void run(std::function<void()> task) {
    std::packaged_task<void()> job(std::move(task));
    auto done = job.get_future();
    {
      std::lock_guard<std::mutex> lock(mutex_);
      jobs_.push_back(std::move(job));
    }
    wake_.notify_one();
    done.get();
  }

 private:
  SpawnerThread() {
    sigset_t all, previous;
    sigfillset(&all);
    ::pthread_sigmask(SIG_SETMASK, &all, &previous);  // inherited by the new thread
    try {
      std::thread([this] { loop(); }).detach();
    } catch (...) {
      ::pthread_sigmask(SIG_SETMASK, &previous, nullptr);
      throw;
    }
    ::pthread_sigmask(SIG_SETMASK, &previous, nullptr);
  }

  [[noreturn]] void loop() {
    while (true) {
      std::packaged_task<void()> job;
      {
        std::unique_lock<std::mutex> lock(mutex_);
        wake_.wait(lock, [this] { return !jobs_.empty(); });
        job = std::move(jobs_.front());
        jobs_.pop_front();
      }
      job();
    }
  }

  const pid_t owner_ = ::getpid();
  std::mutex mutex_;
  std::condition_variable wake_;
  std::deque<std::packaged_task<void()>> jobs_;
};

}  // namespace

std::string current_executable() {
  std::vector<char> buffer(4096);
  const ssize_t n = ::readlink("/proc/self/exe", buffer.data(), buffer.size() - 1);
  if (n <= 0) {
    throw std::runtime_error(
        fmt::format("cannot read /proc/self/exe to re-execute this program: {}", strerror(errno)));
  }
  return std::string(buffer.data(), static_cast<std::size_t>(n));
}

std::vector<std::string> current_command_line() {
  std::ifstream in("/proc/self/cmdline", std::ios::binary);
  if (!in) throw std::runtime_error("cannot read /proc/self/cmdline to re-execute this program");
  const std::string all((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  std::vector<std::string> args;
  std::size_t start = 0;
  while (start < all.size()) {
    const std::size_t end = all.find('\0', start);
    args.push_back(all.substr(start, end == std::string::npos ? std::string::npos : end - start));
    if (end == std::string::npos) break;
    start = end + 1;
  }
  return args;
}

std::string describe_wait_status(int status) {
  if (WIFEXITED(status)) return fmt::format("exit code {}", WEXITSTATUS(status));
  if (WIFSIGNALED(status)) {
    const int sig = WTERMSIG(status);
    const char* name = ::strsignal(sig);
    return fmt::format("signal {} ({})", sig, name ? name : "unknown");
  }
  if (WIFSTOPPED(status)) {
    const int sig = WSTOPSIG(status);
    const char* name = ::strsignal(sig);
    return fmt::format("a stop by signal {} ({}), which it does not recover from by itself", sig,
                       name ? name : "unknown");
  }
  return fmt::format("wait status {}", status);
}

std::string ProcessSupervisor::Failure::describe() const {
  return fmt::format("{} (PID {}) failed with {}", label, pid, describe_wait_status(status));
}

int ProcessSupervisor::Failure::exit_code() const {
  if (WIFEXITED(status)) return WEXITSTATUS(status) == 0 ? 1 : WEXITSTATUS(status);
  if (WIFSIGNALED(status)) return 128 + WTERMSIG(status);
  if (WIFSTOPPED(status)) return 128 + WSTOPSIG(status);
  return 1;
}

pid_t ProcessSupervisor::spawn(const std::vector<std::string>& argv,
                               const std::map<std::string, std::string>& env, std::string label) {
  if (argv.empty()) throw std::invalid_argument("ProcessSupervisor::spawn: empty command");
  // Everything the child needs is built before fork(): after it, only async-signal-safe calls.
  std::map<std::string, std::string> merged;
  for (char** e = environ; e && *e; ++e) {
    const std::string entry = *e;
    const auto eq = entry.find('=');
    if (eq != std::string::npos) merged[entry.substr(0, eq)] = entry.substr(eq + 1);
  }
  for (const auto& [key, value] : env) {
    if (value.empty()) {
      merged.erase(key);
    } else {
      merged[key] = value;
    }
  }
  std::vector<std::string> env_strings;
  for (const auto& [key, value] : merged) env_strings.push_back(key + "=" + value);
  std::vector<char*> envp;
  for (auto& s : env_strings) envp.push_back(s.data());
  envp.push_back(nullptr);
  std::vector<std::string> args = argv;
  std::vector<char*> c_argv;
  for (auto& a : args) c_argv.push_back(a.data());
  c_argv.push_back(nullptr);

  pid_t pid = -1;
  SpawnerThread::instance().run([&] {
    int report[2];
    if (::pipe2(report, O_CLOEXEC) != 0) {
      throw std::runtime_error(
          fmt::format("cannot start {}: pipe failed: {}", label, strerror(errno)));
    }
    const pid_t parent = ::getpid();
    pid = ::fork();
    if (pid < 0) {
      const int err = errno;
      ::close(report[0]);
      ::close(report[1]);
      throw std::runtime_error(
          fmt::format("cannot start {}: fork failed: {}", label, strerror(err)));
    }
    if (pid == 0) {
      ::close(report[0]);
      ::prctl(PR_SET_PDEATHSIG, SIGKILL);
      if (::getppid() != parent) ::_exit(127);  // the parent died before prctl took effect
      ::signal(SIGPIPE, SIG_DFL);
      sigset_t none;
      sigemptyset(&none);
      ::sigprocmask(SIG_SETMASK, &none, nullptr);
      ::execvpe(c_argv[0], c_argv.data(), envp.data());
      const int err = errno;
      ssize_t ignored = ::write(report[1], &err, sizeof(err));
      (void)ignored;
      ::_exit(127);
    }
    ::close(report[1]);
    int child_errno = 0;
    ssize_t n;
    do {
      n = ::read(report[0], &child_errno, sizeof(child_errno));
    } while (n < 0 && errno == EINTR);
    ::close(report[0]);
    if (n == static_cast<ssize_t>(sizeof(child_errno))) {
      int status = 0;
      ::waitpid(pid, &status, 0);
      throw std::runtime_error(fmt::format("cannot start {}: exec of '{}' failed: {}", label,
                                           argv[0], strerror(child_errno)));
    }
  });
  std::lock_guard<std::mutex> lock(mutex_);
  children_.push_back(Child{pid, std::move(label), std::nullopt});
  return pid;
}

std::optional<ProcessSupervisor::Failure> ProcessSupervisor::poll(bool stopped_is_failure) {
  std::lock_guard<std::mutex> lock(mutex_);
  std::optional<Failure> failure;
  for (auto& child : children_) {
    if (child.status) continue;
    int status = 0;
    pid_t r;
    do {
      r = ::waitpid(child.pid, &status, WNOHANG | (stopped_is_failure ? WUNTRACED : 0));
    } while (r < 0 && errno == EINTR);
    if (r == child.pid && WIFSTOPPED(status)) {
      // Still alive (not reaped), but it will not finish by itself.
      if (!failure && !failure_reported_) {
        failure = Failure{child.label, child.pid, status};
        failure_reported_ = true;
      }
      continue;
    }
    if (r == child.pid) {
      child.status = status;
    } else if (r < 0) {
      child.status = 0;  // reaped elsewhere (ECHILD): nothing more can be known
    }
    const bool failed =
        child.status && !(WIFEXITED(*child.status) && WEXITSTATUS(*child.status) == 0);
    if (failed && !failure && !failure_reported_) {
      failure = Failure{child.label, child.pid, *child.status};
      failure_reported_ = true;
    }
  }
  return failure;
}

std::optional<ProcessSupervisor::Failure> ProcessSupervisor::wait(
    std::optional<std::chrono::milliseconds> timeout, bool stopped_is_failure) {
  const auto start = std::chrono::steady_clock::now();
  while (true) {
    if (auto failure = poll(stopped_is_failure)) return failure;
    if (all_exited()) return std::nullopt;
    if (timeout && std::chrono::steady_clock::now() - start > *timeout) return std::nullopt;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
}

void ProcessSupervisor::signal_all(int signal) {
  std::lock_guard<std::mutex> lock(mutex_);
  for (const auto& child : children_) {
    if (!child.status) ::kill(child.pid, signal);
  }
}

void ProcessSupervisor::reap_all(std::chrono::milliseconds timeout) {
  // Not wait(): that returns at the first failure, and a child stopped by a signal is one.
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  while (true) {
    poll();
    if (all_exited() || std::chrono::steady_clock::now() >= deadline) return;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
}

void ProcessSupervisor::stop_all(std::chrono::milliseconds grace) {
  if (grace.count() > 0) {
    signal_all(SIGTERM);
    reap_all(grace);
  }
  if (all_exited()) return;
  signal_all(SIGKILL);
  reap_all(kKillTimeout);
}

bool ProcessSupervisor::all_exited() {
  std::lock_guard<std::mutex> lock(mutex_);
  for (const auto& child : children_) {
    if (!child.status) return false;
  }
  return true;
}

std::size_t ProcessSupervisor::size() {
  std::lock_guard<std::mutex> lock(mutex_);
  return children_.size();
}

}  // namespace cppfabric::detail
