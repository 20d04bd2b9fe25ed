// MD5 (RFC 1321), for checking downloaded archives. Private.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

namespace cppfabric::detail {

class Md5 {
 public:
  Md5();
  void update(const void* data, std::size_t size);
  /// Lower-case hex digest; the object must not be updated afterwards.
  std::string hex_digest();

 private:
  void block(const uint8_t* chunk);
  uint32_t state_[4];
  uint64_t length_ = 0;
  uint8_t buffer_[64];
  std::size_t buffered_ = 0;
};

/// MD5 of a whole file (hex); throws std::runtime_error when it cannot be read.
std::string md5_file(const std::string& path);

}  // namespace cppfabric::detail
