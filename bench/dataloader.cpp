// Images per second of the CIFAR-10 training pipeline from memory (flip, crop, to-tensor,
// normalize, collate), cppfabric's DataLoader against torchvision's with the same transforms,
// batch size and worker count, in one run.
//
//   bench_dataloader [--images 20000] [--workers 4] [--batch 128] [--passes 2] [--python PATH]
//
// Both loaders keep their workers between passes and time `passes` passes after a warm-up pass.
// The torchvision side runs bench/dataloader_torchvision.py with the bootstrapped venv's python
// (or --python); it is skipped with a message when torchvision cannot be imported.
#include <sys/stat.h>
#include <torch/torch.h>

#include <chrono>
#include <cppfabric/cppfabric.hpp>
#include <cstdio>
#include <cstdlib>
#include <string>

#include "../tests/flags.hpp"

namespace data = cppfabric::data;
namespace T = cppfabric::data::transforms;

namespace {

std::string default_python() {
  std::string root;
  if (const char* cache = std::getenv("CPPFABRIC_CACHE")) {
    root = cache;
  } else if (const char* home = std::getenv("HOME")) {
    root = std::string(home) + "/.cache/cppfabric";
  }
  const std::string python = root + "/venv/bin/python";
  struct stat info {};
  return ::stat(python.c_str(), &info) == 0 ? python : "python3";
}

/// CIFAR-10-shaped uint8 images in memory, transformed per sample (like torchvision's CIFAR10).
struct InMemoryCIFAR : data::Dataset {
  InMemoryCIFAR(int64_t n, T::Transform transform) : transform(std::move(transform)) {
    images = torch::randint(0, 256, {n, 32, 32, 3}, torch::kByte);
    labels = torch::randint(0, 10, {n}, torch::kLong);
  }
  std::size_t size() const override { return static_cast<std::size_t>(images.size(0)); }
  data::Example get(std::size_t i) const override {
    const auto index = static_cast<int64_t>(i);
    return {transform(images[index]), labels[index]};
  }
  torch::Tensor images, labels;
  T::Transform transform;
};

}  // namespace

int main(int argc, char** argv) {
  int64_t images = 20000;
  int workers = 4, passes = 2;
  int64_t batch_flag = 128;
  std::string python = default_python();
  if (!cppfabric::testing::Flags()
           .add("--images", &images)
           .add("--workers", &workers)
           .add("--batch", &batch_flag)
           .add("--passes", &passes)
           .add("--python", &python)
           .parse(argc, argv)) {
    return 2;
  }
  if (batch_flag < 1) {
    std::fprintf(stderr, "--batch %lld: must be >= 1\n", static_cast<long long>(batch_flag));
    return 2;
  }
  const auto batch = static_cast<std::size_t>(batch_flag);
  torch::manual_seed(0);
  auto dataset = std::make_shared<InMemoryCIFAR>(
      images, T::Compose({T::RandomHorizontalFlip(), T::RandomCrop(32, 4), T::ToTensor(),
                          T::Normalize({0.4914, 0.4822, 0.4465}, {0.2470, 0.2435, 0.2616})}));
  data::DataLoader loader(dataset, {.batch_size = batch,
                                    .shuffle = true,
                                    .num_workers = workers,
                                    .persistent_workers = workers > 0});
  for (auto& b : loader) (void)b;  // warm-up
  const auto start = std::chrono::steady_clock::now();
  int64_t seen = 0;
  for (int p = 0; p < passes; ++p)
    for (auto& b : loader) seen += b.data.size(0);
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  const double ours = static_cast<double>(seen) / seconds;
  std::printf("images %lld, batch %zu, workers %d, passes %d (after one warm-up pass)\n",
              static_cast<long long>(images), batch, workers, passes);
  std::printf("cppfabric    %10.1f images/s\n", ours);
  std::fflush(stdout);

  const std::string script = std::string(CPPFABRIC_SOURCE_DIR) + "/bench/dataloader_torchvision.py";
  const std::string command = python + " -W ignore " + script + " " + std::to_string(images) + " " +
                              std::to_string(workers) + " " + std::to_string(batch) + " " +
                              std::to_string(passes) + " 2>&1";
  std::string output;
  if (FILE* pipe = ::popen(command.c_str(), "r")) {
    char buffer[4096];
    while (std::size_t n = std::fread(buffer, 1, sizeof(buffer), pipe)) output.append(buffer, n);
    ::pclose(pipe);
  }
  const auto at = output.find("torchvision images_per_s ");
  if (at == std::string::npos) {
    std::printf("torchvision  skipped: %s\n", output.empty() ? "no output" : output.c_str());
    return 0;
  }
  const double theirs =
      std::stod(output.substr(at + std::string("torchvision images_per_s ").size()));
  std::printf("torchvision  %10.1f images/s\n", theirs);
  std::printf("ratio cppfabric/torchvision: %.2fx\n", ours / theirs);
  return 0;
}
