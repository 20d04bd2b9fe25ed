// Checkpoint write/read speed: cppfabric's torch.save-compatible writer and reader against
// Python's torch.save / torch.load(weights_only=True) on the same state, side by side.
//
//   bench_checkpoint [--mib 256] [--repeats 5] [--python /path/to/venv/bin/python]
//
// Prints MiB/s as min / median / max over the repeats, and ratios of medians (> 1: cppfabric is
// faster). Like with like: cppfabric's save always fsyncs (atomic replace), so it is compared
// with torch.save + os.fsync; torch.save without fsync is printed too. Reads are from the page
// cache on both sides; cppfabric checks every record's CRC-32, torch.load does too.
#include <torch/torch.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cppfabric/checkpoint/torch_pickle.hpp>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

namespace {

double seconds_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

// min / median / max of `seconds`, as MiB/s (the fastest first).
struct Spread {
  double min_s, median_s, max_s;
};
Spread spread(std::vector<double> seconds) {
  std::sort(seconds.begin(), seconds.end());
  return {seconds.front(), seconds[seconds.size() / 2], seconds.back()};
}
void print_rate(const char* what, int mib, const Spread& s) {
  std::printf("%-34s %8.1f / %8.1f / %8.1f MiB/s (max / median / min)\n", what, mib / s.min_s,
              mib / s.median_s, mib / s.max_s);
}

}  // namespace

int main(int argc, char** argv) {
  int mib = 256, repeats = 5;
  std::string python;
  if (const char* home = std::getenv("HOME"))
    python = std::string(home) + "/.cache/cppfabric/venv/bin/python";
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string flag = argv[i];
    if (flag == "--mib") mib = std::atoi(argv[i + 1]);
    if (flag == "--repeats") repeats = std::atoi(argv[i + 1]);
    if (flag == "--python") python = argv[i + 1];
  }
  const std::string dir = "/tmp/cppfabric_bench_ckpt_" + std::to_string(::getpid());
  const std::string path = dir + "/bench.ckpt";
  // A model-like dict: 16 tensors sharing the size.
  cppfabric::Value state = cppfabric::Value::dict({}, true);
  const int64_t per = static_cast<int64_t>(mib) * (1 << 20) / 4 / 16;
  for (int i = 0; i < 16; ++i)
    state.set("layer" + std::to_string(i) + ".weight", torch::randn({per}));
  cppfabric::Value root = cppfabric::Value::dict({{cppfabric::Value("model"), state}});

  std::vector<double> writes, reads, mapped_reads;
  cppfabric::checkpoint::ReadLimits mapped;
  mapped.map_file = true;
  for (int r = 0; r < repeats; ++r) {
    auto start = std::chrono::steady_clock::now();
    cppfabric::checkpoint::save_torch_file(root, path);
    writes.push_back(seconds_since(start));
    start = std::chrono::steady_clock::now();
    auto back = cppfabric::checkpoint::load_torch_file(path);
    reads.push_back(seconds_since(start));
    back = cppfabric::Value();
    start = std::chrono::steady_clock::now();
    back = cppfabric::checkpoint::load_torch_file(path, mapped);
    mapped_reads.push_back(seconds_since(start));
  }
  const Spread write = spread(writes), read = spread(reads), mapped_read = spread(mapped_reads);
  std::printf("%d MiB state (16 float tensors), %d repeats\n", mib, repeats);
  print_rate("cppfabric save (fsync, rename)", mib, write);
  print_rate("cppfabric load (copy, CRC checked)", mib, read);
  print_rate("cppfabric load (map_file, CRC)", mib, mapped_read);

  // Python: torch.save with and without fsync, torch.load(weights_only=True); one line of
  // seconds per repeat: save_fsync save load.
  const std::string script =
      "import os,sys,time,torch\n"
      "p=sys.argv[1]; r=int(sys.argv[2]); q=p+'.py'\n"
      "sd=torch.load(p,weights_only=True)\n"
      "def save(sync):\n"
      "  t=time.perf_counter()\n"
      "  with open(q,'wb') as f:\n"
      "    torch.save(sd,f); f.flush()\n"
      "    if sync: os.fsync(f.fileno())\n"
      "  return time.perf_counter()-t\n"
      "def load():\n"
      "  t=time.perf_counter(); torch.load(q,weights_only=True); return time.perf_counter()-t\n"
      "for _ in range(r): print(save(True),save(False),load())\n";
  const std::string cmd = python + " -c \"" + script + "\" " + path + " " + std::to_string(repeats);
  FILE* pipe = ::popen(cmd.c_str(), "r");
  std::vector<double> py_save_sync, py_save, py_load;
  double a = 0, b = 0, c = 0;
  while (pipe != nullptr && std::fscanf(pipe, "%lf %lf %lf", &a, &b, &c) == 3) {
    py_save_sync.push_back(a);
    py_save.push_back(b);
    py_load.push_back(c);
  }
  if (static_cast<int>(py_load.size()) == repeats) {
    const Spread ps = spread(py_save_sync), pn = spread(py_save), pl = spread(py_load);
    print_rate("torch.save + fsync", mib, ps);
    print_rate("torch.save (no fsync)", mib, pn);
    print_rate("torch.load(weights_only=True)", mib, pl);
    std::printf(
        "ratio (medians, >1 = cppfabric faster): write vs torch.save+fsync %.2f, vs "
        "torch.save without fsync %.2f; read vs torch.load(weights_only=True) %.2f (copy), "
        "%.2f (map_file)\n",
        ps.median_s / write.median_s, pn.median_s / write.median_s, pl.median_s / read.median_s,
        pl.median_s / mapped_read.median_s);
  } else {
    std::printf("python: not run (no venv at %s)\n", python.c_str());
  }
  if (pipe != nullptr) ::pclose(pipe);
  std::remove((path + ".py").c_str());
  std::remove(path.c_str());
  ::rmdir(dir.c_str());
  return 0;
}
