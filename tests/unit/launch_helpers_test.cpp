// The private helpers behind launching: environment variables (src/utilities/env.hpp), the default
// thread count (src/launchers/num_threads.hpp) and stopping child processes
// (src/launchers/process_supervisor.hpp).
#include <gtest/gtest.h>
#include <sched.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <string>
#include <thread>

#include "launchers/num_threads.hpp"
#include "launchers/process_supervisor.hpp"
#include "test_utils.hpp"
#include "utilities/env.hpp"

namespace {

using cppfabric::testing::ScopedEnv;

TEST(EnvHelpers, ParseIntFollowsPythonInt) {
  using cppfabric::detail::parse_int;
  EXPECT_EQ(parse_int("42"), 42);
  EXPECT_EQ(parse_int(" 7\n"), 7);
  EXPECT_EQ(parse_int("+3"), 3);
  EXPECT_EQ(parse_int("-12"), -12);
  EXPECT_EQ(parse_int("9223372036854775807"), INT64_MAX);
  for (const char* bad :
       {"", " ", "abc", "4x", "1.5", "+", "-", "+-1", "0x10", "1 2", "9223372036854775808"}) {
    EXPECT_EQ(parse_int(bad), std::nullopt) << "'" << bad << "'";
  }
}

TEST(EnvHelpers, StringDistinguishesUnsetFromEmpty) {
  using cppfabric::detail::env_string;
  {
    ScopedEnv unset("CPPFABRIC_TEST_VAR", std::nullopt);
    EXPECT_EQ(env_string("CPPFABRIC_TEST_VAR"), std::nullopt);
  }
  {
    ScopedEnv empty("CPPFABRIC_TEST_VAR", "");
    EXPECT_EQ(env_string("CPPFABRIC_TEST_VAR"), std::string());
  }
  ScopedEnv set("CPPFABRIC_TEST_VAR", "a b");
  EXPECT_EQ(env_string("CPPFABRIC_TEST_VAR"), "a b");
}

TEST(EnvHelpers, IntTreatsEmptyAsUnsetAndNamesABadValue) {
  using cppfabric::detail::env_int;
  {
    ScopedEnv unset("CPPFABRIC_TEST_VAR", std::nullopt);
    EXPECT_EQ(env_int("CPPFABRIC_TEST_VAR", "0 or 1"), std::nullopt);
  }
  {
    ScopedEnv empty("CPPFABRIC_TEST_VAR", "");
    EXPECT_EQ(env_int("CPPFABRIC_TEST_VAR", "0 or 1"), std::nullopt);
  }
  {
    ScopedEnv set("CPPFABRIC_TEST_VAR", " 17 ");
    EXPECT_EQ(env_int("CPPFABRIC_TEST_VAR", "0 or 1"), 17);
  }
  ScopedEnv bad("CPPFABRIC_TEST_VAR", "yes");
  EXPECT_THROW_WITH(env_int("CPPFABRIC_TEST_VAR", "0 or 1"), std::invalid_argument,
                    "CPPFABRIC_TEST_VAR='yes' is not an integer; it must be 0 or 1.");
}

int affinity_count() {
  cpu_set_t set;
  CPU_ZERO(&set);
  EXPECT_EQ(::sched_getaffinity(0, sizeof(set), &set), 0);
  return CPU_COUNT(&set);
}

TEST(SuggestedThreads, DividesTheCoresOfThisProcessAmongProcesses) {
  using cppfabric::detail::num_cpus_available;
  using cppfabric::detail::suggested_max_num_threads;
  const int cpus = affinity_count();
  EXPECT_EQ(num_cpus_available(), cpus);
  EXPECT_EQ(suggested_max_num_threads(1), cpus);
  EXPECT_EQ(suggested_max_num_threads(2), std::max(1, cpus / 2));
  EXPECT_EQ(suggested_max_num_threads(cpus + 1), 1);  // never 0
  EXPECT_THROW_WITH(suggested_max_num_threads(0), std::invalid_argument, "num_processes", "0");
  EXPECT_THROW(suggested_max_num_threads(-2), std::invalid_argument);
}

TEST(SuggestedThreads, FollowsCpuAffinityNotTheMachine) {
  // The mask is per thread: restrict a fresh thread to one core and ask from there.
  int cpus = -1;
  int suggested = -1;
  std::thread([&] {
    cpu_set_t set;
    ASSERT_EQ(::sched_getaffinity(0, sizeof(set), &set), 0);
    int first = 0;
    while (!CPU_ISSET(first, &set)) ++first;
    CPU_ZERO(&set);
    CPU_SET(first, &set);
    ASSERT_EQ(::sched_setaffinity(0, sizeof(set), &set), 0);
    cpus = cppfabric::detail::num_cpus_available();
    suggested = cppfabric::detail::suggested_max_num_threads(1);
  }).join();
  EXPECT_EQ(cpus, 1);
  EXPECT_EQ(suggested, 1);
}

bool file_exists(const std::string& path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0;
}

TEST(ProcessSupervisor, StopAllTermsThenKillsWhatIgnoresTerm) {
  char dir_template[] = "/tmp/cppfabric_supervisor_XXXXXX";
  ASSERT_NE(::mkdtemp(dir_template), nullptr);
  const std::string dir = dir_template;
  cppfabric::detail::ProcessSupervisor children;
  // One exits on SIGTERM (leaving a mark); one notes SIGTERM and carries on, so needs SIGKILL.
  children.spawn({"sh", "-c",
                  "trap 'touch " + dir + "/polite; exit 0' TERM; touch " + dir +
                      "/ready1; while :; do sleep 0.1; done"},
                 {}, "polite");
  children.spawn({"sh", "-c",
                  "trap 'touch " + dir + "/stubborn' TERM; touch " + dir +
                      "/ready2; while :; do sleep 0.1; done"},
                 {}, "stubborn");
  for (int i = 0; i < 100 && !(file_exists(dir + "/ready1") && file_exists(dir + "/ready2")); ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  EXPECT_FALSE(children.all_exited());
  const auto start = std::chrono::steady_clock::now();
  children.stop_all(std::chrono::milliseconds(1500));
  const auto seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  EXPECT_TRUE(children.all_exited());
  EXPECT_TRUE(file_exists(dir + "/polite"));
  EXPECT_TRUE(file_exists(dir + "/stubborn"));
  EXPECT_GE(seconds, 1.4);                   // the stubborn one had its grace period...
  EXPECT_LT(seconds, 5.0);                   // ...and then SIGKILL
  EXPECT_EQ(children.poll(), std::nullopt);  // stopping is not a failure to report
  int status = 0;
  cppfabric::testing::run_command("rm -rf '" + dir + "'", &status);
}

TEST(ProcessSupervisor, StopAllWithoutGraceKillsAtOnce) {
  cppfabric::detail::ProcessSupervisor children;
  children.spawn({"sh", "-c", "trap '' TERM; while :; do sleep 0.1; done"}, {}, "stubborn");
  const auto start = std::chrono::steady_clock::now();
  children.stop_all(std::chrono::milliseconds(0));
  EXPECT_TRUE(children.all_exited());
  EXPECT_LT(std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count(), 2.0);
}

// PR_SET_PDEATHSIG follows the thread that forked: children asked for by a thread that then ends
// must live on (fabric.launch() from a std::thread, #15).
TEST(ProcessSupervisor, ChildrenOutliveTheThreadThatSpawnedThem) {
  cppfabric::detail::ProcessSupervisor children;
  pid_t pid = -1;
  std::thread([&] { pid = children.spawn({"sleep", "30"}, {}, "sleeper"); }).join();
  ASSERT_GT(pid, 0);
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  EXPECT_EQ(children.poll(), std::nullopt) << "the child died with the spawning thread";
  EXPECT_FALSE(children.all_exited());
  children.stop_all(std::chrono::milliseconds(0));
  EXPECT_TRUE(children.all_exited());
}

// A process forked (without exec) after this one has spawned children has no spawner thread of its
// own yet: spawning there must still work, not wait forever.
TEST(ProcessSupervisor, SpawnsInAForkedChildToo) {
  cppfabric::detail::ProcessSupervisor parent_children;
  parent_children.spawn({"true"}, {}, "first");
  EXPECT_EQ(parent_children.wait(std::chrono::milliseconds(5000)), std::nullopt);
  const pid_t child = ::fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    ::alarm(20);  // a hang ends this child with SIGALRM
    cppfabric::detail::ProcessSupervisor children;
    children.spawn({"true"}, {}, "grandchild");
    const bool ok = !children.wait(std::chrono::milliseconds(5000)) && children.all_exited();
    ::_exit(ok ? 0 : 1);
  }
  int status = 0;
  ASSERT_EQ(::waitpid(child, &status, 0), child);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0)
      << cppfabric::detail::describe_wait_status(status);
}

// A stopped child is a failure only when asked (rank 0's wait at exit), and it stays stoppable.
TEST(ProcessSupervisor, StoppedChildIsAFailureOnlyWhenAsked) {
  cppfabric::detail::ProcessSupervisor children;
  const pid_t pid = children.spawn({"sleep", "30"}, {}, "rank 1");
  ASSERT_EQ(::kill(pid, SIGSTOP), 0);
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  EXPECT_EQ(children.poll(), std::nullopt);
  const auto failure = children.wait(std::chrono::milliseconds(2000), /*stopped_is_failure=*/true);
  ASSERT_TRUE(failure.has_value());
  EXPECT_EQ(failure->pid, pid);
  EXPECT_NE(failure->describe().find("rank 1 (PID " + std::to_string(pid) +
                                     ") failed with a stop by signal 19"),
            std::string::npos)
      << failure->describe();
  EXPECT_EQ(failure->exit_code(), 128 + SIGSTOP);
  EXPECT_FALSE(children.all_exited());
  children.stop_all(std::chrono::milliseconds(0));  // SIGKILL ends a stopped process too
  EXPECT_TRUE(children.all_exited());
}

}  // namespace
