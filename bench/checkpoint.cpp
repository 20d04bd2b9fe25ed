// Checkpoint write/read speed: cppfabric's torch.save-compatible writer and reader against
// Python's torch.save / torch.load(weights_only=True) on the same state, side by side, and the
// peak memory a load adds.
//
//   bench_checkpoint [--mib 256,2048] [--rounds 5] [--python /path/to/venv/bin/python]
//
// For each size: a model-like dict of 16 float tensors. Python runs as one long-lived child
// that takes commands on a pipe, so each round times both sides back to back on the same
// machine state (who goes first alternates); a ratio is taken per round (> 1: cppfabric is
// faster) and printed as min / median / max over the rounds, with each side's median MiB/s.
//   write, durable:  save_torch_file (temp file, fsync, rename, folder fsync)
//                    vs torch.save(sd, path) + os.fsync of the file
//   write, no fsync: save_torch_file with SaveOptions::durable = false (temp file, rename)
//                    vs torch.save(sd, path)
//   read:            load_torch_file (default: the file mapped, every record CRC-checked)
//                    vs torch.load(path, weights_only=True); load_torch_file with map_file =
//                    false (copies) and torch.load(..., mmap=True) are printed too.
// Reads are from the page cache on both sides (the file was just written).
// Memory: a fresh child process that only loads the file (this binary with --load-child, or
// Python) reads /proc/self/status before and after the load, with the peak reset just before it
// (echo 5 > /proc/self/clear_refs); it reports the peak RSS growth (VmHWM - VmRSS before) as a
// percentage of the file size, split into private (anonymous) memory and file-backed pages
// (the page cache's own pages, mapped, not copied: RssFile after - before; the private part is
// the peak growth minus that, exact when the mapped pages stay mapped to the end, as they do).
#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <torch/torch.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cppfabric/checkpoint/torch_pickle.hpp>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <map>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "run_child.hpp"

namespace {

namespace ck = cppfabric::checkpoint;
using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

struct Spread {
  double min, median, max;
};
Spread spread(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return {v.front(), v[v.size() / 2], v.back()};
}

// /proc/self/status fields in KiB.
std::map<std::string, long> status() {
  std::map<std::string, long> out;
  std::ifstream in("/proc/self/status");
  std::string line;
  while (std::getline(in, line)) {
    const auto colon = line.find(':');
    if (colon == std::string::npos) continue;
    const std::string key = line.substr(0, colon);
    if (key == "VmRSS" || key == "VmHWM" || key == "RssAnon" || key == "RssFile")
      out[key] = std::atol(line.c_str() + colon + 1);
  }
  return out;
}

// The child that only loads: prints "mem <rss before> <hwm> <rss after> <anon before> <anon
// after> <file before> <file after>" (KiB).
int load_child(const std::string& path, bool map) {
  { (void)torch::ones({16}).sum(); }  // the allocator and ATen's kernels, before the baseline
  ck::ReadLimits limits;
  limits.map_file = map;
  const auto before = status();
  { std::ofstream("/proc/self/clear_refs") << "5"; }
  const cppfabric::Value state = ck::load_torch_file(path, limits);
  const auto after = status();
  std::printf("mem %ld %ld %ld %ld %ld %ld %ld\n", before.at("VmRSS"), after.at("VmHWM"),
              after.at("VmRSS"), before.at("RssAnon"), after.at("RssAnon"), before.at("RssFile"),
              after.at("RssFile"));
  return 0;
}

// Python's side, one process for the whole run: commands on stdin, one line of seconds each.
const char* kPythonServer = R"(
import os, sys, time, torch
sd = None
for line in sys.stdin:
    cmd, path = line.split()
    t = time.perf_counter()
    if cmd == "state":
        sd = torch.load(path, weights_only=True)
    elif cmd == "save_fsync" or cmd == "save":
        torch.save(sd, path)
        if cmd == "save_fsync":
            fd = os.open(path, os.O_RDONLY)
            os.fsync(fd)
            os.close(fd)
    elif cmd == "load":
        x = torch.load(path, weights_only=True)
        del x
    elif cmd == "load_mmap":
        x = torch.load(path, weights_only=True, mmap=True)
        del x
    elif cmd == "drop":
        sd = None
    print(time.perf_counter() - t, flush=True)
)";

// Python's load-only child: the same "mem ..." line as load_child.
const char* kPythonLoadChild = R"(
import sys, torch
def status():
    out = {}
    for line in open("/proc/self/status"):
        k, _, v = line.partition(":")
        if k in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
            out[k] = int(v.split()[0])
    return out
torch.ones(16).sum()
torch.load(sys.argv[2], weights_only=True)  # a tiny file first: the unpickler loads its modules
before = status()
open("/proc/self/clear_refs", "w").write("5")
x = torch.load(sys.argv[1], weights_only=True)
after = status()
print("mem", before["VmRSS"], after["VmHWM"], after["VmRSS"], before["RssAnon"],
      after["RssAnon"], before["RssFile"], after["RssFile"])
)";

class PythonServer {
 public:
  explicit PythonServer(const std::string& python) {
    int in[2], out[2];
    if (::pipe(in) != 0 || ::pipe(out) != 0) throw std::runtime_error("pipe failed");
    pid_ = ::fork();
    if (pid_ == 0) {
      ::dup2(in[0], 0);
      ::dup2(out[1], 1);
      ::close(in[1]);
      ::close(out[0]);
      ::execl(python.c_str(), python.c_str(), "-c", kPythonServer, static_cast<char*>(nullptr));
      std::_Exit(127);
    }
    ::close(in[0]);
    ::close(out[1]);
    to_ = ::fdopen(in[1], "w");
    from_ = ::fdopen(out[0], "r");
  }
  ~PythonServer() {
    if (to_ != nullptr) std::fclose(to_);
    if (from_ != nullptr) std::fclose(from_);
    if (pid_ > 0) ::waitpid(pid_, nullptr, 0);
  }
  double run(const std::string& cmd, const std::string& path) {
    std::fprintf(to_, "%s %s\n", cmd.c_str(), path.c_str());
    std::fflush(to_);
    double seconds = -1;
    if (std::fscanf(from_, "%lf", &seconds) != 1)
      throw std::runtime_error("python did not answer '" + cmd + "' (is torch installed?)");
    return seconds;
  }

 private:
  pid_t pid_ = -1;
  FILE* to_ = nullptr;
  FILE* from_ = nullptr;
};

std::string run_capture(const std::string& command) {
  FILE* pipe = ::popen(command.c_str(), "r");
  if (pipe == nullptr) throw std::runtime_error("cannot run " + command);
  std::string output;
  char buffer[512];
  while (std::fgets(buffer, sizeof(buffer), pipe) != nullptr) output += buffer;
  ::pclose(pipe);
  return output;
}

// "mem ..." from a load-only child -> a printed line.
void print_memory(const char* who, const std::string& output, double file_kib) {
  const auto at = output.find("mem ");
  if (at == std::string::npos) {
    std::printf("  %-38s failed: %s\n", who, output.c_str());
    return;
  }
  long rss0, hwm, rss1, anon0, anon1, file0, file1;
  std::istringstream in(output.substr(at + 4));
  in >> rss0 >> hwm >> rss1 >> anon0 >> anon1 >> file0 >> file1;
  const double peak = static_cast<double>(hwm - rss0);
  const double file_backed = static_cast<double>(std::max(0L, file1 - file0));
  std::printf(
      "  %-38s peak +%6.1f%% of the file: private %6.1f%%, file pages (page cache) %6.1f%%; "
      "above what the result keeps: %5.1f%%\n",
      who, 100 * peak / file_kib, 100 * (peak - file_backed) / file_kib,
      100 * file_backed / file_kib, 100 * static_cast<double>(hwm - rss1) / file_kib);
}

void print_ratio(const char* what, const std::vector<double>& ours, const std::vector<double>& py,
                 int mib) {
  std::vector<double> ratios;
  for (std::size_t i = 0; i < ours.size(); ++i) ratios.push_back(py[i] / ours[i]);
  const Spread r = spread(ratios), a = spread(ours), b = spread(py);
  std::printf("  %-34s %5.2fx / %5.2fx / %5.2fx   (median %7.0f vs %7.0f MiB/s)\n", what, r.min,
              r.median, r.max, mib / a.median, mib / b.median);
}

void bench_size(int mib, int rounds, const std::string& python, const std::string& self) {
  const std::string dir = "/tmp/cppfabric_bench_ckpt_" + std::to_string(::getpid());
  const std::string path = dir + "/cpp.pt", py_path = dir + "/py.pt", tiny = dir + "/tiny.pt";
  ::mkdir(dir.c_str(), 0755);
  cppfabric::Value state = cppfabric::Value::dict({}, true);
  const int64_t per = static_cast<int64_t>(mib) * (1 << 20) / 4 / 16;
  for (int i = 0; i < 16; ++i)
    state.set("layer" + std::to_string(i) + ".weight", torch::randn({per}));
  const cppfabric::Value root = cppfabric::Value::dict({{cppfabric::Value("model"), state}});
  ck::save_torch_file(root, path);
  ck::save_torch_file(cppfabric::Value::dict({{cppfabric::Value("t"), torch::ones({4})}}), tiny);

  PythonServer py(python);
  py.run("state", path);
  ck::SaveOptions fast;
  fast.durable = false;
  ck::ReadLimits copies;
  copies.map_file = false;
  std::vector<double> w_sync, w_fast, r_map, r_copy, pw_sync, pw_fast, pr, pr_mmap;
  for (int r = 0; r < rounds; ++r) {
    const auto ours = [&] {
      auto t = Clock::now();
      ck::save_torch_file(root, path);
      w_sync.push_back(seconds_since(t));
      t = Clock::now();
      ck::save_torch_file(root, path, fast);
      w_fast.push_back(seconds_since(t));
      t = Clock::now();
      cppfabric::Value back = ck::load_torch_file(path);
      r_map.push_back(seconds_since(t));
      back = cppfabric::Value();
      t = Clock::now();
      back = ck::load_torch_file(path, copies);
      r_copy.push_back(seconds_since(t));
    };
    const auto theirs = [&] {
      pw_sync.push_back(py.run("save_fsync", py_path));
      pw_fast.push_back(py.run("save", py_path));
      pr.push_back(py.run("load", py_path));
      pr_mmap.push_back(py.run("load_mmap", py_path));
    };
    if (r % 2 == 0) {
      ours();
      theirs();
    } else {
      theirs();
      ours();
    }
  }
  py.run("drop", path);
  std::printf(
      "%d MiB state (16 float32 tensors), %d rounds; ratio = Python's time / ours, "
      "min / median / max over rounds\n",
      mib, rounds);
  print_ratio("write, fsync (vs torch.save+fsync)", w_sync, pw_sync, mib);
  print_ratio("write, no fsync (vs torch.save)", w_fast, pw_fast, mib);
  print_ratio("write, ours fsync vs torch.save", w_sync, pw_fast, mib);
  print_ratio("read (vs torch.load weights_only)", r_map, pr, mib);
  print_ratio("read, copies (vs torch.load)", r_copy, pr, mib);
  // torch.load(mmap=True) reads no data while loading (no CRC check either): not like with like.
  print_ratio("read (vs torch.load mmap=True, lazy)", r_map, pr_mmap, mib);

  // Peak memory of a load, in fresh processes.
  std::ifstream f(path, std::ios::binary | std::ios::ate);
  const double file_kib = static_cast<double>(f.tellg()) / 1024;
  std::printf("  peak memory of a load (fresh process that only loads; VmHWM - VmRSS before):\n");
  print_memory("load_torch_file (default, mapped)",
               run_capture(self + " --load-child " + path + " map"), file_kib);
  print_memory("load_torch_file (map_file = false)",
               run_capture(self + " --load-child " + path + " copy"), file_kib);
  const std::string script = dir + "/load_child.py";
  std::ofstream(script) << kPythonLoadChild;
  print_memory("torch.load(weights_only=True)",
               run_capture(python + " " + script + " " + path + " " + tiny), file_kib);
  std::remove(script.c_str());
  std::remove(path.c_str());
  std::remove(py_path.c_str());
  std::remove(tiny.c_str());
  ::rmdir(dir.c_str());
}

}  // namespace

int main(int argc, char** argv) {
  if (argc == 4 && std::string(argv[1]) == "--load-child")
    return load_child(argv[2], std::string(argv[3]) == "map");
  std::setvbuf(stdout, nullptr, _IOLBF, 0);  // lines as they come, also into a file
  std::vector<int> sizes{256, 2048};
  int rounds = 5;
  std::string python;
  if (const char* home = std::getenv("HOME"))
    python = std::string(home) + "/.cache/cppfabric/venv/bin/python";
  if (!cppfabric::testing::Flags()
           .add("--mib", &sizes)
           .add("--rounds", &rounds)
           .add("--python", &python)
           .parse(argc, argv)) {
    return 2;
  }
  if (rounds < 1 || sizes.empty() ||
      std::any_of(sizes.begin(), sizes.end(), [](int m) { return m < 16; })) {
    std::fprintf(stderr, "--rounds must be >= 1 and each --mib size >= 16\n");
    return 2;
  }
  if (::access(python.c_str(), X_OK) != 0) {
    std::fprintf(stderr, "no Python at %s (run scripts/bootstrap or pass --python)\n",
                 python.c_str());
    return 2;
  }
  const std::string self = cppfabric::bench::self_path();
  for (int mib : sizes) bench_size(mib, rounds, python, self);
  return 0;
}
