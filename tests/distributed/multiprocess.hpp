// Runs a test body as N real processes (fork) that rendezvous on loopback.
//
//   auto codes = cppfabric::testing::run_ranks(2, [](int rank, int port) {
//     auto pg = ProcessGroup::create({.main_port = port, .rank = rank, .world_size = 2});
//     ...
//     EXPECT_EQ(...);                                  // gtest checks work in the children
//     return ::testing::Test::HasFailure() ? 1 : 0;   // the child's exit code
//   });
//   EXPECT_THAT(codes, ::testing::Each(0));
//
// Every rank runs in a forked child; the parent only waits (up to a deadline, then kills the
// children) so a stuck collective never hangs the test binary. An exception escaping the body
// is printed and becomes exit code kUncaughtException.
//
// fork() without exec copies only the calling thread: the test process must not have started
// process groups or other threads before calling run_ranks (LibTorch's OpenMP pool included:
// keep tensors in distributed tests small, or run such work inside the children).
#pragma once

#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <fstream>
#include <functional>
#include <iostream>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

namespace cppfabric::testing {

/// A fresh folder /tmp/cppfabric_<name>_XXXXXX.
inline std::string temp_dir(const std::string& name) {
  std::string pattern = "/tmp/cppfabric_" + name + "_XXXXXX";
  if (::mkdtemp(pattern.data()) == nullptr) throw std::runtime_error("mkdtemp failed");
  return pattern;
}

/// The doubles a test program wrote with fwrite (its final parameters).
inline std::vector<double> read_params(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::vector<double> values;
  double v;
  while (in.read(reinterpret_cast<char*>(&v), sizeof(v))) values.push_back(v);
  return values;
}

/// Exit code of a rank the parent killed at the deadline (like timeout(1)).
inline constexpr int kDeadlineExceeded = 124;
/// Exit code of a rank whose body threw.
inline constexpr int kUncaughtException = 125;
/// A rank killed by signal S reports 128 + S (like a shell).

/// A TCP port on 127.0.0.1 that was free a moment ago (bind to port 0, read it, close).
inline int find_free_port() {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) throw std::runtime_error(std::string("socket(): ") + std::strerror(errno));
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = 0;
  socklen_t len = sizeof(addr);
  if (::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0 ||
      ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) != 0) {
    const std::string err = std::strerror(errno);
    ::close(fd);
    throw std::runtime_error("bind/getsockname on 127.0.0.1:0: " + err);
  }
  ::close(fd);
  return ntohs(addr.sin_port);
}

/// Forks `world_size` children; child r runs `body(r, port)` and exits with its return value.
/// Returns each rank's exit code, indexed by rank (see kDeadlineExceeded, kUncaughtException).
/// Children still running at `deadline` are killed with SIGKILL.
inline std::vector<int> run_ranks(int world_size,
                                  const std::function<int(int rank, int port)>& body,
                                  std::chrono::milliseconds deadline = std::chrono::seconds(60)) {
  if (world_size < 1) throw std::invalid_argument("run_ranks: world_size must be >= 1");
  const int port = find_free_port();
  const pid_t parent = ::getpid();
  std::cout.flush();
  std::cerr.flush();
  std::fflush(nullptr);  // or the children would print the parent's buffered output again

  std::vector<pid_t> pids(world_size, -1);
  for (int rank = 0; rank < world_size; ++rank) {
    const pid_t pid = ::fork();
    if (pid < 0) {
      const std::string err = std::strerror(errno);
      for (int r = 0; r < rank; ++r) ::kill(pids[r], SIGKILL);
      for (int r = 0; r < rank; ++r) ::waitpid(pids[r], nullptr, 0);
      throw std::runtime_error("run_ranks: fork() failed: " + err);
    }
    if (pid == 0) {
      // Child: die with the parent; never return into the test framework.
      ::prctl(PR_SET_PDEATHSIG, SIGKILL);
      if (::getppid() != parent) ::_exit(kDeadlineExceeded);
      int code = kUncaughtException;
      try {
        code = body(rank, port);
      } catch (const std::exception& e) {
        std::fprintf(stderr, "[rank %d] uncaught exception: %s\n", rank, e.what());
      } catch (...) {
        std::fprintf(stderr, "[rank %d] uncaught non-standard exception\n", rank);
      }
      std::cout.flush();
      std::cerr.flush();
      std::fflush(nullptr);
      ::_exit(code);
    }
    pids[rank] = pid;
  }

  std::vector<int> codes(world_size, -1);
  int remaining = world_size;
  const auto until = std::chrono::steady_clock::now() + deadline;
  while (remaining > 0) {
    for (int rank = 0; rank < world_size; ++rank) {
      if (codes[rank] != -1) continue;
      int status = 0;
      const pid_t done = ::waitpid(pids[rank], &status, WNOHANG);
      if (done == pids[rank]) {
        codes[rank] = WIFEXITED(status)     ? WEXITSTATUS(status)
                      : WIFSIGNALED(status) ? 128 + WTERMSIG(status)
                                            : 255;
        --remaining;
      }
    }
    if (remaining == 0) break;
    if (std::chrono::steady_clock::now() >= until) {
      for (int rank = 0; rank < world_size; ++rank) {
        if (codes[rank] != -1) continue;
        std::fprintf(stderr,
                     "run_ranks: rank %d (pid %d) still running after %lld ms; killing it\n", rank,
                     static_cast<int>(pids[rank]), static_cast<long long>(deadline.count()));
        ::kill(pids[rank], SIGKILL);
        ::waitpid(pids[rank], nullptr, 0);
        codes[rank] = kDeadlineExceeded;
      }
      break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  return codes;
}

}  // namespace cppfabric::testing
