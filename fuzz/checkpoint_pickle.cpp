// libFuzzer target: the input is a data.pkl, unpickled against a fixed, valid archive that holds
// the storage records data/0 .. data/15 (64 bytes each), so mutations reach the unpickler past
// the zip layer and its CRC checks. Same contract as checkpoint_file.cpp.
#include <caffe2/serialize/inline_container.h>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <stdexcept>
#include <string>
#include <string_view>

#include "checkpoint/unpickler.hpp"
#include "checkpoint/zip_archive.hpp"

namespace ck = cppfabric::checkpoint;

namespace {
const ck::detail::ZipReader& archive() {
  static const std::string bytes = [] {
    std::string out;
    caffe2::serialize::PyTorchStreamWriter writer([&](const void* d, size_t n) {
      out.append(static_cast<const char*>(d), n);
      return n;
    });
    writer.writeRecord("data.pkl", "N.", 2);
    std::string storage(64, '\0');
    for (int i = 0; i < 64; ++i) storage[i] = static_cast<char>(i * 7 + 1);
    for (int k = 0; k < 16; ++k)
      writer.writeRecord("data/" + std::to_string(k), storage.data(), storage.size());
    writer.writeEndOfFile();
    return out;
  }();
  static const ck::detail::ZipReader zip(std::make_unique<ck::detail::MemorySource>(bytes),
                                         "<fuzz>", ck::ReadLimits{});
  return zip;
}
}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    ck::detail::unpickle(std::string_view(reinterpret_cast<const char*>(data), size), archive(),
                         ck::ReadLimits{});
  } catch (const std::runtime_error&) {
  }
  return 0;
}
