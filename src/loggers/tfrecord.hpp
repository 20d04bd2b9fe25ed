// TFRecord framing, the container of TensorBoard's event files. Private.
//
//   std::string record = detail::tfrecord(event_bytes);  // what an events.out.tfevents file holds
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

namespace cppfabric::loggers::detail {

/// CRC-32C (Castagnoli) of `size` bytes, and TensorFlow's masked form used by TFRecord files.
uint32_t crc32c(const void* data, std::size_t size);
uint32_t masked_crc32c(const void* data, std::size_t size);
/// One TFRecord: uint64 length, masked CRC of the length, the data, masked CRC of the data.
std::string tfrecord(const std::string& data);

/// Little-endian fixed-width integers, as TFRecord and protobuf's fixed32/fixed64 write them.
inline void put_fixed32(std::string& out, uint32_t value) {
  for (int i = 0; i < 4; ++i) out += static_cast<char>((value >> (8 * i)) & 0xFF);
}
inline void put_fixed64(std::string& out, uint64_t value) {
  for (int i = 0; i < 8; ++i) out += static_cast<char>((value >> (8 * i)) & 0xFF);
}

}  // namespace cppfabric::loggers::detail
