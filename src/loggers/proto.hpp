// The few protobuf encodings TensorBoard's Event, Summary, HistogramProto, TensorProto and hparams
// messages need, written by hand (no protobuf library). Private.
//
//   detail::Proto value;
//   value.string(1, "loss").float_value(2, 0.25f);       // Summary.Value{tag, simple_value}
//   std::string summary = detail::Proto().message(1, value).str();
//
// Wire types: 0 varint, 1 fixed64, 2 length-delimited, 5 fixed32. Fields at their default value
// (0, "") are left out, as proto3 serialisers do; fields inside a oneof are always written.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "loggers/tfrecord.hpp"

namespace cppfabric::loggers::detail {

class Proto {
 public:
  Proto& varint(int field, uint64_t value) {
    key(field, 0);
    put_varint(value);
    return *this;
  }
  Proto& int64(int field, int64_t value) {
    return value == 0 ? *this : varint(field, static_cast<uint64_t>(value));
  }
  Proto& enum_value(int field, int value) {
    return value == 0 ? *this : varint(field, static_cast<uint64_t>(value));
  }
  Proto& double_value(int field, double value) {  // always written (oneof or non-zero)
    key(field, 1);
    uint64_t bits;
    std::memcpy(&bits, &value, sizeof(bits));
    put_fixed64(bytes_, bits);
    return *this;
  }
  /// A proto3 double that is left out at 0.0 (as HistogramProto's min/max/sum).
  Proto& double_field(int field, double value) {
    return value == 0.0 && !std::signbit(value) ? *this : double_value(field, value);
  }
  Proto& float_value(int field, float value) {
    key(field, 5);
    uint32_t bits;
    std::memcpy(&bits, &value, sizeof(bits));
    put_fixed32(bytes_, bits);
    return *this;
  }
  /// A packed `repeated double` (left out when empty).
  Proto& packed_doubles(int field, const std::vector<double>& values) {
    if (values.empty()) return *this;
    std::string packed;
    for (double v : values) {
      uint64_t bits;
      std::memcpy(&bits, &v, sizeof(bits));
      put_fixed64(packed, bits);
    }
    return bytes(field, packed);
  }
  Proto& bytes(int field, const std::string& value) {
    key(field, 2);
    put_varint(value.size());
    bytes_ += value;
    return *this;
  }
  Proto& string(int field, const std::string& value) {
    return value.empty() ? *this : bytes(field, value);
  }
  Proto& message(int field, const Proto& value) { return bytes(field, value.bytes_); }
  const std::string& str() const { return bytes_; }

 private:
  void key(int field, int wire_type) {
    put_varint((static_cast<uint64_t>(field) << 3) | static_cast<uint64_t>(wire_type));
  }
  void put_varint(uint64_t value) {
    while (value >= 0x80) {
      bytes_ += static_cast<char>((value & 0x7F) | 0x80);
      value >>= 7;
    }
    bytes_ += static_cast<char>(value);
  }
  std::string bytes_;
};

/// A PNG file of 8-bit pixels, rows top to bottom, `channels` interleaved (3 RGB or 4 RGBA).
/// Deflated with zlib when cppfabric was built with it, else stored in uncompressed blocks.
std::string encode_png(const uint8_t* pixels, int height, int width, int channels);

}  // namespace cppfabric::loggers::detail
