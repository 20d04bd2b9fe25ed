// libFuzzer target: a whole torch.save file (zip + pickle + storages) through the reader.
// The reader must return a Value or throw std::runtime_error; anything else (a crash, a sanitizer
// report, another exception, a timeout, memory past -rss_limit_mb) is a finding.
#include <cppfabric/checkpoint/torch_pickle.hpp>
#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string_view>

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    cppfabric::checkpoint::from_torch_bytes(
        std::string_view(reinterpret_cast<const char*>(data), size), "<fuzz>");
  } catch (const std::runtime_error&) {
  }
  return 0;
}
