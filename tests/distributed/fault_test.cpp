// Failure behaviour with real processes (docs/failures.md): the rendezvous address, launching from a
// thread, the fault matrix (a rank killed, stopped or throwing at forward, backward, optimizer step
// and save), the debug check of the collective order, and `cppfabric run --max-restarts`.
//
// The training program is programs/ddp_program.cpp; CPPFABRIC_TEST_FAULT* in its environment say
// where it faults. Every process runs under a deadline: a hang fails the test instead of hanging it.
#include <arpa/inet.h>
#include <dirent.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <torch/torch.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cppfabric/collectives/process_group.hpp>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iterator>
#include <map>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "distributed/multiprocess.hpp"

extern char** environ;

namespace {

using cppfabric::collectives::ProcessGroup;
using cppfabric::collectives::ProcessGroupOptions;
using cppfabric::collectives::ReduceKind;
using cppfabric::testing::find_free_port;
using cppfabric::testing::run_ranks;
using namespace std::chrono_literals;

const std::string kProgram = CPPFABRIC_DDP_PROGRAM;

::testing::AssertionResult Contains(const std::string& text, const std::string& part) {
  if (text.find(part) != std::string::npos) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << "\"" << part << "\" not found in:\n" << text;
}

using cppfabric::testing::read_params;

std::string temp_dir() { return cppfabric::testing::temp_dir("fault"); }

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

std::vector<std::string> list_dir(const std::string& dir) {
  std::vector<std::string> names;
  if (DIR* d = ::opendir(dir.c_str())) {
    while (const dirent* e = ::readdir(d)) {
      const std::string name = e->d_name;
      if (name != "." && name != "..") names.push_back(name);
    }
    ::closedir(d);
  }
  std::sort(names.begin(), names.end());
  return names;
}

// ------------------------------------------------------------ processes under a deadline

struct Command {
  std::vector<std::string> argv;
  std::map<std::string, std::string> env;  // overrides; "" removes the variable
};

struct Exit {
  int code = -1;       // exit code, 128 + signal, or 124 when killed at the deadline
  double seconds = 0;  // from the start of the job to this process's exit
  std::string output;  // stdout and stderr
};

// Variables of the outer environment that would change what the program does.
const std::map<std::string, std::string> kClean = {{"LT_CLI_USED", ""},
                                                   {"LT_ACCELERATOR", ""},
                                                   {"LT_STRATEGY", ""},
                                                   {"LT_DEVICES", ""},
                                                   {"LT_NUM_NODES", ""},
                                                   {"LT_PRECISION", ""},
                                                   {"RANK", ""},
                                                   {"LOCAL_RANK", ""},
                                                   {"WORLD_SIZE", ""},
                                                   {"MASTER_ADDR", ""},
                                                   {"MASTER_PORT", ""},
                                                   {"TORCHELASTIC_RUN_ID", ""},
                                                   {"SLURM_NTASKS", ""},
                                                   {"OMPI_COMM_WORLD_SIZE", ""},
                                                   {"CPPFABRIC_TEST_FAULT", ""},
                                                   {"CPPFABRIC_DEBUG_COLLECTIVES", ""},
                                                   {"OMP_NUM_THREADS", "1"}};

// Starts every command with its output in a file, waits for them (at most `deadline`), and kills
// what is still running then. Commands listed in `abandon` are not waited for: they are killed
// once the others have exited (a stopped rank).
std::vector<Exit> run_processes(const std::vector<Command>& commands,
                                std::chrono::milliseconds deadline,
                                const std::set<std::size_t>& abandon = {}) {
  const std::string logs = temp_dir();
  const auto start = std::chrono::steady_clock::now();
  std::vector<pid_t> pids;
  std::vector<std::string> log_paths;
  for (std::size_t i = 0; i < commands.size(); ++i) {
    std::map<std::string, std::string> env;
    for (char** e = environ; e && *e; ++e) {
      const std::string entry = *e;
      const auto eq = entry.find('=');
      if (eq != std::string::npos) env[entry.substr(0, eq)] = entry.substr(eq + 1);
    }
    for (const auto& [k, v] : kClean) v.empty() ? (void)env.erase(k) : (void)(env[k] = v);
    for (const auto& [k, v] : commands[i].env) v.empty() ? (void)env.erase(k) : (void)(env[k] = v);
    std::vector<std::string> env_strings, args = commands[i].argv;
    for (const auto& [k, v] : env) env_strings.push_back(k + "=" + v);
    std::vector<char*> envp, argv;
    for (auto& s : env_strings) envp.push_back(s.data());
    envp.push_back(nullptr);
    for (auto& s : args) argv.push_back(s.data());
    argv.push_back(nullptr);
    log_paths.push_back(logs + "/" + std::to_string(i) + ".log");
    const int fd = ::open(log_paths.back().c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) throw std::runtime_error("cannot create " + log_paths.back());
    const pid_t parent = ::getpid();
    const pid_t pid = ::fork();
    if (pid == 0) {
      ::dup2(fd, 1);
      ::dup2(fd, 2);
      ::prctl(PR_SET_PDEATHSIG, SIGKILL);
      if (::getppid() != parent) ::_exit(127);
      ::execve(argv[0], argv.data(), envp.data());
      ::_exit(127);
    }
    ::close(fd);
    if (pid < 0) throw std::runtime_error("fork failed");
    pids.push_back(pid);
  }
  std::vector<Exit> exits(commands.size());
  std::vector<bool> done(commands.size(), false);
  const auto elapsed = [&] {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  };
  while (true) {
    bool waiting = false;
    for (std::size_t i = 0; i < pids.size(); ++i) {
      if (done[i]) continue;
      int status = 0;
      if (::waitpid(pids[i], &status, WNOHANG) == pids[i]) {
        done[i] = true;
        exits[i].code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
        exits[i].seconds = elapsed();
      } else if (!abandon.count(i)) {
        waiting = true;
      }
    }
    if (!waiting || std::chrono::steady_clock::now() - start > deadline) break;
    std::this_thread::sleep_for(20ms);
  }
  for (std::size_t i = 0; i < pids.size(); ++i) {
    if (done[i]) continue;
    ::kill(pids[i], SIGKILL);
    ::waitpid(pids[i], nullptr, 0);
    exits[i].code = cppfabric::testing::kDeadlineExceeded;
    exits[i].seconds = elapsed();
  }
  for (std::size_t i = 0; i < pids.size(); ++i) exits[i].output = read_file(log_paths[i]);
  return exits;
}

Exit run_one(const Command& command, std::chrono::milliseconds deadline = 120s) {
  return run_processes({command}, deadline).front();
}

// `world` ranks started separately, as torchrun would (no launcher watches them: each survivor
// must notice a fault by itself).
std::vector<Command> torchrun_ranks(int world, const std::vector<std::string>& flags,
                                    const std::map<std::string, std::string>& env = {}) {
  const int port = find_free_port();
  std::vector<Command> commands;
  for (int rank = 0; rank < world; ++rank) {
    Command c;
    c.argv = {kProgram, "--devices", std::to_string(world)};
    c.argv.insert(c.argv.end(), flags.begin(), flags.end());
    c.env = {{"TORCHELASTIC_RUN_ID", "fault_test"},
             {"RANK", std::to_string(rank)},
             {"LOCAL_RANK", std::to_string(rank)},
             {"GROUP_RANK", "0"},
             {"LOCAL_WORLD_SIZE", std::to_string(world)},
             {"WORLD_SIZE", std::to_string(world)},
             {"MASTER_ADDR", "127.0.0.1"},
             {"MASTER_PORT", std::to_string(port)}};
    for (const auto& [k, v] : env) c.env[k] = v;
    commands.push_back(std::move(c));
  }
  return commands;
}

// The whole job through fabric.launch(): one process that starts the other ranks itself.
Command launched(int world, const std::vector<std::string>& flags,
                 const std::map<std::string, std::string>& env = {}) {
  Command c;
  c.argv = {kProgram, "--devices", std::to_string(world)};
  c.argv.insert(c.argv.end(), flags.begin(), flags.end());
  c.env = env;
  c.env["MASTER_PORT"] = std::to_string(find_free_port());
  return c;
}

std::map<std::string, std::string> fault(const std::string& spec, int rank, int step) {
  return {{"CPPFABRIC_TEST_FAULT", spec},
          {"CPPFABRIC_TEST_FAULT_RANK", std::to_string(rank)},
          {"CPPFABRIC_TEST_FAULT_STEP", std::to_string(step)}};
}

// The single-process reference: `world` ranks' worth of rows for `steps` steps.
std::vector<double> reference(int world, int steps) {
  const std::string dir = temp_dir();
  const auto r = run_one({{kProgram, "--reference", "--world", std::to_string(world), "--steps",
                           std::to_string(steps), "--out", dir},
                          {}});
  EXPECT_EQ(r.code, 0) << r.output;
  return read_params(dir + "/params_rank0.bin");
}

void expect_params(const std::vector<double>& expected, const std::string& dir, int world) {
  for (int rank = 0; rank < world; ++rank) {
    const auto actual = read_params(dir + "/params_rank" + std::to_string(rank) + ".bin");
    ASSERT_EQ(actual.size(), expected.size()) << "rank " << rank;
    ASSERT_FALSE(expected.empty());
    double worst = 0;
    for (std::size_t i = 0; i < expected.size(); ++i) {
      worst = std::max(worst, std::abs(expected[i] - actual[i]));
    }
    EXPECT_LE(worst, 1e-6) << "rank " << rank;
  }
}

// Processes whose command line mentions `marker` (a test's unique folder): none may outlive a run.
std::vector<int> processes_mentioning(const std::string& marker) {
  std::vector<int> found;
  for (const auto& name : list_dir("/proc")) {
    if (name.find_first_not_of("0123456789") != std::string::npos) continue;
    std::string cmdline = read_file("/proc/" + name + "/cmdline");
    std::replace(cmdline.begin(), cmdline.end(), '\0', ' ');
    if (cmdline.find(marker) != std::string::npos) found.push_back(std::stoi(name));
  }
  return found;
}

// ------------------------------------------------------------ rendezvous address (#15 item 2)

// The addresses listening on TCP `port`, from /proc/net/tcp and /proc/net/tcp6 (this network
// namespace), as text ("127.0.0.2", "::1").
std::vector<std::string> listeners_on(int port) {
  std::vector<std::string> found;
  for (const bool v6 : {false, true}) {
    std::istringstream table(read_file(v6 ? "/proc/net/tcp6" : "/proc/net/tcp"));
    std::string line;
    std::getline(table, line);  // header
    while (std::getline(table, line)) {
      std::istringstream fields(line);
      std::string slot, local, remote, state;
      fields >> slot >> local >> remote >> state;
      if (state != "0A") continue;  // TCP_LISTEN
      const auto colon = local.find(':');
      if (std::stoi(local.substr(colon + 1), nullptr, 16) != port) continue;
      // The kernel prints the address as 32-bit words in host order.
      unsigned char bytes[16] = {};
      const std::string hex = local.substr(0, colon);
      for (std::size_t w = 0; w * 8 < hex.size(); ++w) {
        const auto word = static_cast<std::uint32_t>(std::stoul(hex.substr(w * 8, 8), nullptr, 16));
        std::memcpy(bytes + 4 * w, &word, 4);
      }
      char text[INET6_ADDRSTRLEN] = {};
      ::inet_ntop(v6 ? AF_INET6 : AF_INET, bytes, text, sizeof(text));
      found.push_back(text);
    }
  }
  return found;
}

bool ipv6_loopback_available() {
  const int fd = ::socket(AF_INET6, SOCK_STREAM, 0);
  if (fd < 0) return false;
  sockaddr_in6 address{};
  address.sin6_family = AF_INET6;
  address.sin6_addr = in6addr_loopback;
  const bool ok = ::bind(fd, reinterpret_cast<sockaddr*>(&address), sizeof(address)) == 0;
  ::close(fd);
  return ok;
}

// Two ranks rendezvous at `address`; rank 0's store must listen there and nowhere else.
void expect_rendezvous_binds_only(const std::string& address) {
  const auto codes = run_ranks(
      2,
      [&](int rank, int port) {
        ProcessGroupOptions o;
        o.main_address = address;
        o.main_port = port;
        o.rank = rank;
        o.world_size = 2;
        o.timeout = 10s;
        auto pg = ProcessGroup::create(o);
        if (rank == 0) {
          EXPECT_EQ(listeners_on(port), std::vector<std::string>{address})
              << "the store must listen on " << address << " only";
        }
        auto t = torch::full({2}, rank + 1.0);
        pg->all_reduce(t, ReduceKind::Sum);
        EXPECT_TRUE(torch::equal(t, torch::full({2}, 3.0))) << t;
        pg->barrier();
        return ::testing::Test::HasFailure() ? 1 : 0;
      },
      40s);
  EXPECT_EQ(codes, std::vector<int>(2, 0));
}

TEST(RendezvousAddress, AnyLoopbackAddressIsBoundExactly) {
  expect_rendezvous_binds_only("127.0.0.2");
}

TEST(RendezvousAddress, Ipv6LoopbackIsBoundExactly) {
  if (!ipv6_loopback_available()) GTEST_SKIP() << "IPv6 loopback (::1) is not available here";
  expect_rendezvous_binds_only("::1");
}

TEST(RendezvousAddress, DebugCollectivesRejectsAnUnknownValue) {
  const auto codes = run_ranks(1, [](int, int port) {
    ::setenv("CPPFABRIC_DEBUG_COLLECTIVES", "2", 1);
    ProcessGroupOptions o;
    o.main_port = port;
    try {
      ProcessGroup::create(o);
      ADD_FAILURE() << "CPPFABRIC_DEBUG_COLLECTIVES=2 was accepted";
    } catch (const std::invalid_argument& e) {
      EXPECT_TRUE(Contains(e.what(), "CPPFABRIC_DEBUG_COLLECTIVES='2'"));
      EXPECT_TRUE(Contains(e.what(), "Valid choices: 0"));
    }
    return ::testing::Test::HasFailure() ? 1 : 0;
  });
  EXPECT_EQ(codes, std::vector<int>{0});
}

// ------------------------------------------------------------ launch from a thread (#15 item 5)

TEST(LaunchFromThread, RanksOutliveTheThreadThatLaunchedThem) {
  const auto expected = reference(2, 4);
  const std::string dir = temp_dir();
  const auto r = run_one(launched(2, {"--launch-thread", "--steps", "4", "--out", dir}));
  ASSERT_EQ(r.code, 0) << r.output;
  expect_params(expected, dir, 2);
}

// ------------------------------------------------------------ fault matrix, ranks on their own

// Rank 1 is killed at `where`; rank 0, with nobody to stop it, must fail by itself, fast (well
// before the 60 s timeout), naming the operation and itself.
void expect_survivor_fails_fast(const std::string& where) {
  const std::string dir = temp_dir();
  const auto exits =
      run_processes(torchrun_ranks(2, {"--steps", "6", "--timeout-s", "60", "--out", dir},
                                   fault("kill@" + where, 1, 2)),
                    90s);
  EXPECT_EQ(exits[1].code, 128 + SIGKILL) << exits[1].output;
  EXPECT_TRUE(Contains(exits[1].output, "fault: kill at " + where));
  EXPECT_NE(exits[0].code, 0) << exits[0].output;
  EXPECT_NE(exits[0].code, cppfabric::testing::kDeadlineExceeded) << exits[0].output;
  EXPECT_LT(exits[0].seconds - exits[1].seconds, 15) << exits[0].output;
  EXPECT_TRUE(Contains(exits[0].output, "all_reduce on rank 0 of 2"));
  EXPECT_TRUE(Contains(exits[0].output, "Another rank may have exited"));
}

TEST(FaultMatrix, KillAtForward) { expect_survivor_fails_fast("forward"); }
TEST(FaultMatrix, KillDuringBackward) { expect_survivor_fails_fast("backward"); }
TEST(FaultMatrix, KillAtOptimizerStep) { expect_survivor_fails_fast("step"); }

// Rank 0 (which writes checkpoints and hosts the store) is killed inside fabric.save: the other
// rank fails fast, the last complete checkpoint stays, and a new run resumes from it and ends with
// the parameters of a run that never failed.
TEST(FaultMatrix, KillDuringSaveKeepsTheLastCheckpoint) {
  const std::string ckpt = temp_dir(), dir = temp_dir();
  const std::vector<std::string> flags = {"--steps",    "5",  "--timeout-s", "60",
                                          "--ckpt-dir", ckpt, "--out",       dir};
  const auto exits = run_processes(torchrun_ranks(2, flags, fault("kill@save", 0, 2)), 90s);
  EXPECT_EQ(exits[0].code, 128 + SIGKILL) << exits[0].output;
  EXPECT_NE(exits[1].code, 0) << exits[1].output;
  EXPECT_NE(exits[1].code, cppfabric::testing::kDeadlineExceeded) << exits[1].output;
  EXPECT_LT(exits[1].seconds - exits[0].seconds, 15) << exits[1].output;
  EXPECT_EQ(list_dir(ckpt), std::vector<std::string>{"last.ckpt"}) << "no partial file may stay";

  const auto resumed = run_processes(torchrun_ranks(2, flags), 90s);
  ASSERT_EQ(resumed[0].code, 0) << resumed[0].output;
  ASSERT_EQ(resumed[1].code, 0) << resumed[1].output;
  EXPECT_TRUE(Contains(resumed[0].output, "at step 2"));  // saved after steps 0 and 1
  expect_params(reference(2, 5), dir, 2);
}

// Rank 0's disk fills up inside fabric.save (a file-size limit makes the write fail as a full
// disk does): rank 0 raises its own error naming the file, the other rank learns that rank 0
// failed instead of waiting at a barrier, the previous checkpoint stays whole and no temporary
// file is left; a new run resumes from it.
TEST(FaultMatrix, FailedSaveOnRankZeroFailsEveryRankCleanly) {
  const std::string ckpt = temp_dir(), dir = temp_dir();
  const std::vector<std::string> flags = {"--steps",    "5",  "--timeout-s", "60",
                                          "--ckpt-dir", ckpt, "--out",       dir};
  const auto exits = run_processes(torchrun_ranks(2, flags, fault("fsize@save", 0, 2)), 90s);
  for (int rank = 0; rank < 2; ++rank) {
    EXPECT_NE(exits[rank].code, 0) << exits[rank].output;
    EXPECT_NE(exits[rank].code, cppfabric::testing::kDeadlineExceeded) << exits[rank].output;
    EXPECT_LT(exits[rank].seconds, 30.0) << exits[rank].output;
  }
  EXPECT_TRUE(Contains(exits[0].output, "last.ckpt")) << exits[0].output;
  EXPECT_TRUE(Contains(exits[0].output, "File too large")) << exits[0].output;
  EXPECT_TRUE(Contains(exits[1].output, "failed on global rank 0")) << exits[1].output;
  EXPECT_EQ(list_dir(ckpt), std::vector<std::string>{"last.ckpt"}) << "no partial file may stay";
  // The limit (1 KiB) is below a whole checkpoint, so the previous one is what stays.
  std::ifstream previous(ckpt + "/last.ckpt", std::ios::binary | std::ios::ate);
  EXPECT_GT(static_cast<long long>(previous.tellg()), 1024);

  const auto resumed = run_processes(torchrun_ranks(2, flags), 90s);
  ASSERT_EQ(resumed[0].code, 0) << resumed[0].output;
  ASSERT_EQ(resumed[1].code, 0) << resumed[1].output;
  EXPECT_TRUE(Contains(resumed[0].output, "at step 2"));  // saved after steps 0 and 1
  expect_params(reference(2, 5), dir, 2);
}

// A stalled rank (SIGSTOP: alive, sockets open) makes the other fail at the configured timeout,
// naming the operation, the rank and the timeout.
TEST(FaultMatrix, StoppedRankMakesTheOthersFailAtTheTimeout) {
  const std::string dir = temp_dir();
  const auto exits =
      run_processes(torchrun_ranks(2, {"--steps", "6", "--timeout-s", "3", "--out", dir},
                                   fault("stop@forward", 1, 2)),
                    90s, /*abandon=*/{1});
  EXPECT_NE(exits[0].code, 0) << exits[0].output;
  EXPECT_NE(exits[0].code, cppfabric::testing::kDeadlineExceeded) << exits[0].output;
  EXPECT_TRUE(Contains(exits[1].output, "fault: stop at forward"));
  EXPECT_TRUE(Contains(exits[0].output, "all_reduce on rank 0 of 2"));
  EXPECT_TRUE(Contains(exits[0].output, "timeout 3 s"));
  EXPECT_GE(exits[0].seconds, 3.0) << exits[0].output;
  EXPECT_LT(exits[0].seconds, 30.0) << exits[0].output;
}

// An exception on one rank: that rank exits non-zero, and the other does too, quickly.
TEST(FaultMatrix, ExceptionOnOneRankEndsEveryRankQuickly) {
  const std::string dir = temp_dir();
  const auto exits =
      run_processes(torchrun_ranks(2, {"--steps", "6", "--timeout-s", "60", "--out", dir},
                                   fault("throw@backward", 1, 2)),
                    90s);
  EXPECT_EQ(exits[1].code, 1) << exits[1].output;
  EXPECT_TRUE(Contains(exits[1].output, "injected fault at backward, step 2"));
  EXPECT_NE(exits[0].code, 0) << exits[0].output;
  EXPECT_NE(exits[0].code, cppfabric::testing::kDeadlineExceeded) << exits[0].output;
  EXPECT_LT(exits[0].seconds - exits[1].seconds, 15) << exits[0].output;
}

// CPPFABRIC_DEBUG_COLLECTIVES=1: one rank runs an extra barrier; both fail at once, naming the
// collective each rank ran, instead of hanging until the timeout or mixing data.
TEST(FaultMatrix, DebugCollectivesReportsAMismatchedOrder) {
  const std::string dir = temp_dir();
  auto env = fault("barrier@order", 1, 2);
  env["CPPFABRIC_DEBUG_COLLECTIVES"] = "1";
  const auto exits = run_processes(
      torchrun_ranks(2, {"--steps", "6", "--timeout-s", "60", "--out", dir}, env), 90s);
  for (int rank = 0; rank < 2; ++rank) {
    EXPECT_NE(exits[rank].code, 0) << exits[rank].output;
    EXPECT_LT(exits[rank].seconds, 30) << exits[rank].output;
    EXPECT_TRUE(Contains(exits[rank].output, "collective mismatch at collective #"));
    EXPECT_TRUE(Contains(exits[rank].output, "rank 1 runs barrier()"));
    EXPECT_TRUE(Contains(exits[rank].output, "rank 0 runs all_reduce(sum, Float["));
  }
}

// The check itself must not disturb a correct run.
TEST(FaultMatrix, DebugCollectivesLeavesACorrectRunAlone) {
  const auto expected = reference(2, 3);
  const std::string dir = temp_dir();
  const auto r =
      run_one(launched(2, {"--steps", "3", "--out", dir}, {{"CPPFABRIC_DEBUG_COLLECTIVES", "1"}}));
  ASSERT_EQ(r.code, 0) << r.output;
  expect_params(expected, dir, 2);
}

// ------------------------------------------------------------ fault matrix under fabric.launch()

TEST(FaultMatrixLaunch, ExceptionInAChildStopsTheRun) {
  const std::string dir = temp_dir();
  const auto r = run_one(
      launched(2, {"--steps", "6", "--timeout-s", "60", "--out", dir}, fault("throw@step", 1, 2)),
      90s);
  EXPECT_EQ(r.code, 1) << r.output;
  EXPECT_LT(r.seconds, 30) << r.output;
  EXPECT_TRUE(Contains(r.output, "rank 1 (local rank 1)"));
  EXPECT_TRUE(Contains(r.output, "exit code 1"));
  EXPECT_TRUE(processes_mentioning(dir).empty());
}

// Rank 0 fails at the timeout; at exit it must not wait forever for the stopped child.
TEST(FaultMatrixLaunch, StoppedChildDoesNotHangRankZero) {
  const std::string dir = temp_dir();
  const auto r = run_one(
      launched(2, {"--steps", "6", "--timeout-s", "3", "--out", dir}, fault("stop@backward", 1, 2)),
      90s);
  EXPECT_NE(r.code, 0) << r.output;
  EXPECT_NE(r.code, cppfabric::testing::kDeadlineExceeded) << r.output;
  EXPECT_LT(r.seconds, 30) << r.output;
  EXPECT_TRUE(Contains(r.output, "timeout 3 s"));
  EXPECT_TRUE(Contains(r.output, "rank 1 (local rank 1)"));
  std::this_thread::sleep_for(200ms);
  EXPECT_TRUE(processes_mentioning(dir).empty()) << "a rank outlived the run";
}

// Rank 0 killed: its children die with it (no orphans left running).
TEST(FaultMatrixLaunch, KilledRankZeroTakesItsChildrenAlong) {
  const std::string dir = temp_dir();
  const auto r = run_one(
      launched(2, {"--steps", "6", "--timeout-s", "60", "--out", dir}, fault("kill@forward", 0, 2)),
      90s);
  EXPECT_EQ(r.code, 128 + SIGKILL) << r.output;
  bool gone = false;
  for (int i = 0; i < 50 && !gone; ++i) {
    gone = processes_mentioning(dir).empty();
    if (!gone) std::this_thread::sleep_for(100ms);
  }
  EXPECT_TRUE(gone) << "a child outlived rank 0";
}

// ------------------------------------------------------------ cppfabric run --max-restarts

#ifdef CPPFABRIC_CLI
Command cli_run(const std::vector<std::string>& run_flags, const std::vector<std::string>& program,
                const std::map<std::string, std::string>& env = {}) {
  Command c;
  c.argv = {CPPFABRIC_CLI, "run", "--accelerator", "cpu",
            "--devices",   "2",   "--main-port",   std::to_string(find_free_port())};
  c.argv.insert(c.argv.end(), run_flags.begin(), run_flags.end());
  c.argv.push_back(kProgram);
  c.argv.insert(c.argv.end(), program.begin(), program.end());
  c.env = env;
  return c;
}

// A rank killed in the first attempt: every process restarts, resumes from the last complete
// checkpoint, and the run ends with the parameters of a run that never failed.
TEST(ElasticRestart, RestartedRunMatchesAnUninterruptedOne) {
  const std::string ckpt = temp_dir(), dir = temp_dir();
  auto env = fault("kill@forward", 1, 3);
  env["CPPFABRIC_TEST_FAULT_RESTART"] = "0";  // only in the first attempt
  const auto r =
      run_one(cli_run({"--max-restarts", "2"},
                      {"--steps", "6", "--timeout-s", "60", "--ckpt-dir", ckpt, "--out", dir}, env),
              120s);
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_TRUE(Contains(r.output, "restarting all 2 processes (restart 1 of 2"));
  EXPECT_TRUE(Contains(r.output, "resumed from " + ckpt + "/last.ckpt at step 3"));
  expect_params(reference(2, 6), dir, 2);
}

TEST(ElasticRestart, GivesUpAfterMaxRestarts) {
  const std::string dir = temp_dir();
  const auto r =
      run_one(cli_run({"--max-restarts", "1"}, {"--steps", "4", "--timeout-s", "60", "--out", dir},
                      fault("throw@forward", 1, 1)),
              120s);
  EXPECT_EQ(r.code, 1) << r.output;
  EXPECT_TRUE(Contains(r.output, "restart 1 of 1"));
  EXPECT_TRUE(Contains(r.output, "giving up after 1 restart (--max-restarts 1)"));
}

TEST(ElasticRestart, RejectsANegativeCount) {
  const auto r = run_one(cli_run({"--max-restarts=-1"}, {"--steps", "1"}), 30s);
  EXPECT_EQ(r.code, 2) << r.output;
  EXPECT_TRUE(Contains(r.output, "Invalid value for '--max-restarts': -1"));
}
#endif

}  // namespace
