#include "loggers/tfrecord.hpp"

#include <array>

namespace cppfabric::loggers::detail {
namespace {
std::array<uint32_t, 256> make_crc32c_table() {
  std::array<uint32_t, 256> table{};
  for (uint32_t i = 0; i < 256; ++i) {
    uint32_t crc = i;
    for (int k = 0; k < 8; ++k) crc = (crc & 1) ? (crc >> 1) ^ 0x82F63B78u : crc >> 1;
    table[i] = crc;
  }
  return table;
}
}  // namespace

uint32_t crc32c(const void* data, std::size_t size) {
  static const auto table = make_crc32c_table();
  const auto* bytes = static_cast<const unsigned char*>(data);
  uint32_t crc = 0xFFFFFFFFu;
  for (std::size_t i = 0; i < size; ++i) crc = table[(crc ^ bytes[i]) & 0xFF] ^ (crc >> 8);
  return crc ^ 0xFFFFFFFFu;
}

uint32_t masked_crc32c(const void* data, std::size_t size) {
  const uint32_t crc = crc32c(data, size);
  return ((crc >> 15) | (crc << 17)) + 0xA282EAD8u;
}

std::string tfrecord(const std::string& data) {
  std::string header;
  put_fixed64(header, data.size());
  std::string record = header;
  put_fixed32(record, masked_crc32c(header.data(), header.size()));
  record += data;
  put_fixed32(record, masked_crc32c(data.data(), data.size()));
  return record;
}

}  // namespace cppfabric::loggers::detail
