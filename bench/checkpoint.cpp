// Checkpoint write/read speed: cppfabric's torch.save-compatible writer and reader against
// Python's torch.save / torch.load(weights_only=True) on the same file size, side by side.
//
//   bench_checkpoint [--mib 256] [--repeats 3] [--python /path/to/venv/bin/python]
//
// Prints MiB/s for each and the ratio cppfabric / Python. Writes include fsync + rename on the
// C++ side (atomic save); Python's torch.save does not sync, so the write ratio is conservative.
#include <torch/torch.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cppfabric/checkpoint/torch_pickle.hpp>
#include <cstdio>
#include <cstdlib>
#include <string>

namespace {

double seconds_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

}  // namespace

int main(int argc, char** argv) {
  int mib = 256, repeats = 3;
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

  double best_write = 1e30, best_read = 1e30;
  for (int r = 0; r < repeats; ++r) {
    auto start = std::chrono::steady_clock::now();
    cppfabric::checkpoint::save_torch_file(root, path);
    best_write = std::min(best_write, seconds_since(start));
    start = std::chrono::steady_clock::now();
    auto back = cppfabric::checkpoint::load_torch_file(path);
    best_read = std::min(best_read, seconds_since(start));
  }
  std::printf("cppfabric  write %8.1f MiB/s  read %8.1f MiB/s  (%d MiB, best of %d)\n",
              mib / best_write, mib / best_read, mib, repeats);

  const std::string script =
      "import torch,time,sys\n"
      "p=sys.argv[1]; r=int(sys.argv[2])\n"
      "sd=torch.load(p,weights_only=True)\n"
      "w=min((lambda t:(torch.save(sd,p+'.py'),time.perf_counter()-t)[1])(time.perf_counter()) for "
      "_ in range(r))\n"
      "l=min((lambda "
      "t:(torch.load(p+'.py',weights_only=True),time.perf_counter()-t)[1])(time.perf_counter()) "
      "for _ in range(r))\n"
      "print(w,l)\n";
  const std::string cmd = python + " -c \"" + script + "\" " + path + " " + std::to_string(repeats);
  FILE* pipe = ::popen(cmd.c_str(), "r");
  double py_write = 0, py_read = 0;
  if (pipe != nullptr && std::fscanf(pipe, "%lf %lf", &py_write, &py_read) == 2) {
    std::printf("python     write %8.1f MiB/s  read %8.1f MiB/s\n", mib / py_write, mib / py_read);
    std::printf("ratio cppfabric/python: write %.2f  read %.2f\n", py_write / best_write,
                py_read / best_read);
  } else {
    std::printf("python: not run (no venv at %s)\n", python.c_str());
  }
  if (pipe != nullptr) ::pclose(pipe);
  std::remove((path + ".py").c_str());
  std::remove(path.c_str());
  ::rmdir(dir.c_str());
  return 0;
}
