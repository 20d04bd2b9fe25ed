// libFuzzer target: the input is a CIFAR-10 batch file (test_batch.bin), read through the
// CIFAR10 dataset; every image is then fetched. Bad files must be std::runtime_error.
#include <unistd.h>

#include <cppfabric/data/datasets/cifar10.hpp>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <stdexcept>
#include <string>

namespace {
const std::string& root() {
  static const std::string dir = [] {
    const char* base = std::getenv("TMPDIR");
    std::string d =
        std::string(base ? base : "/tmp") + "/cppfabric_fuzz_cifar10_" + std::to_string(::getpid());
    std::system(("mkdir -p " + d + "/cifar-10-batches-bin").c_str());
    return d;
  }();
  return dir;
}
}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string path = root() + "/cifar-10-batches-bin/test_batch.bin";
  if (FILE* f = std::fopen(path.c_str(), "wb")) {
    if (size > 0) std::fwrite(data, 1, size, f);
    std::fclose(f);
  } else {
    std::abort();
  }
  try {
    cppfabric::data::datasets::CIFAR10 dataset(root(), /*train=*/false);
    for (std::size_t i = 0; i < dataset.size(); ++i) (void)dataset.get(i);
  } catch (const std::runtime_error&) {
  }
  return 0;
}
