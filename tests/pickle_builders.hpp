#pragma once
// Hand-written pickles and torch.save zips for the checkpoint reader's tests (explicit bytes, no
// string-literal escapes). Pieces are appended, never `"literal" + std::string&&`: GCC 12 warns on
// that (-Wstringop-overflow), and the tests build with -Werror.
#include <caffe2/serialize/inline_container.h>

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace cppfabric::testing::pickle {

/// A zip laid out exactly as torch.save writes it, around `pickle` (as data.pkl) and `records`.
inline std::string wrap_pickle(
    const std::string& pickle,
    const std::vector<std::pair<std::string, std::string>>& records = {}) {
  std::string out;
  caffe2::serialize::PyTorchStreamWriter writer([&](const void* d, size_t n) {
    out.append(static_cast<const char*>(d), n);
    return n;
  });
  writer.writeRecord("data.pkl", pickle.data(), pickle.size());
  for (const auto& [name, data] : records) writer.writeRecord(name, data.data(), data.size());
  writer.writeEndOfFile();
  return out;
}

inline std::string byte(int b) { return std::string(1, static_cast<char>(b)); }
inline std::string u32le(uint32_t v) {
  std::string out;
  for (int i = 0; i < 4; ++i) out += byte((v >> (8 * i)) & 0xff);
  return out;
}
inline std::string u64le(uint64_t v) {
  std::string out;
  for (int i = 0; i < 8; ++i) out += byte((v >> (8 * i)) & 0xff);
  return out;
}
/// BINUNICODE
inline std::string unicode(const std::string& s) {
  std::string out = "X";
  return out.append(u32le(static_cast<uint32_t>(s.size()))).append(s);
}
/// GLOBAL module.name
inline std::string global(const std::string& module, const std::string& name) {
  return std::string("c").append(module).append("\n").append(name).append("\n");
}
/// LONG1 of 8 bytes
inline std::string long1(int64_t v) {
  return byte(0x8a).append(byte(8)).append(u64le(static_cast<uint64_t>(v)));
}
/// PROTO 2
inline const std::string kProto = byte(0x80) + byte(2);

}  // namespace cppfabric::testing::pickle
