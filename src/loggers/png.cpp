// PNG encoding for SummaryWriter::add_image: 8-bit RGB/RGBA, no filtering (filter type 0 on
// every row), the zlib stream deflated by zlib when available (CPPFABRIC_HAS_ZLIB) and otherwise
// made of stored blocks, which every PNG reader accepts. CRC-32 and Adler-32 are computed here
// so the stored form needs no library at all.
#include <array>
#include <cstdint>
#include <stdexcept>
#include <string>

#include "loggers/proto.hpp"

#if CPPFABRIC_HAS_ZLIB
#include <zlib.h>
#endif

namespace cppfabric::loggers::detail {
namespace {

const std::array<uint32_t, 256>& crc_table() {
  static const std::array<uint32_t, 256> table = [] {
    std::array<uint32_t, 256> t{};
    for (uint32_t n = 0; n < 256; ++n) {
      uint32_t c = n;
      for (int k = 0; k < 8; ++k) c = (c & 1) ? 0xEDB88320u ^ (c >> 1) : c >> 1;
      t[n] = c;
    }
    return t;
  }();
  return table;
}

uint32_t crc32(const std::string& bytes) {
  uint32_t c = 0xFFFFFFFFu;
  for (unsigned char b : bytes) c = crc_table()[(c ^ b) & 0xFF] ^ (c >> 8);
  return c ^ 0xFFFFFFFFu;
}

uint32_t adler32(const std::string& bytes) {
  uint32_t a = 1, b = 0;
  for (unsigned char byte : bytes) {
    a = (a + byte) % 65521u;
    b = (b + a) % 65521u;
  }
  return (b << 16) | a;
}

void put_be32(std::string& out, uint32_t value) {
  for (int shift = 24; shift >= 0; shift -= 8) out += static_cast<char>((value >> shift) & 0xFF);
}

void chunk(std::string& png, const char* type, const std::string& data) {
  put_be32(png, static_cast<uint32_t>(data.size()));
  std::string body(type, 4);
  body += data;
  png += body;
  put_be32(png, crc32(body));
}

/// A zlib stream (RFC 1950) of `raw` in stored deflate blocks (RFC 1951, BTYPE 00).
std::string zlib_stored(const std::string& raw) {
  std::string out = "\x78\x01";
  std::size_t pos = 0;
  do {
    const std::size_t n = std::min<std::size_t>(65535, raw.size() - pos);
    const bool last = pos + n == raw.size();
    out += static_cast<char>(last ? 1 : 0);
    const auto len = static_cast<uint16_t>(n);
    const auto nlen = static_cast<uint16_t>(~len);
    out += static_cast<char>(len & 0xFF);
    out += static_cast<char>(len >> 8);
    out += static_cast<char>(nlen & 0xFF);
    out += static_cast<char>(nlen >> 8);
    out.append(raw, pos, n);
    pos += n;
  } while (pos < raw.size());
  put_be32(out, adler32(raw));
  return out;
}

std::string zlib_stream(const std::string& raw) {
#if CPPFABRIC_HAS_ZLIB
  uLongf size = compressBound(static_cast<uLong>(raw.size()));
  std::string out(size, '\0');
  if (compress2(reinterpret_cast<Bytef*>(out.data()), &size,
                reinterpret_cast<const Bytef*>(raw.data()), static_cast<uLong>(raw.size()),
                6) == Z_OK) {
    out.resize(size);
    return out;
  }
#endif
  return zlib_stored(raw);
}

}  // namespace

std::string encode_png(const uint8_t* pixels, int height, int width, int channels) {
  if (height < 1 || width < 1 || (channels != 3 && channels != 4)) {
    throw std::invalid_argument("encode_png: expects height, width >= 1 and 3 or 4 channels");
  }
  const std::size_t row = static_cast<std::size_t>(width) * static_cast<std::size_t>(channels);
  std::string raw;
  raw.reserve((row + 1) * static_cast<std::size_t>(height));
  for (int y = 0; y < height; ++y) {
    raw += '\0';  // filter type None
    raw.append(reinterpret_cast<const char*>(pixels) + static_cast<std::size_t>(y) * row, row);
  }
  std::string header;
  put_be32(header, static_cast<uint32_t>(width));
  put_be32(header, static_cast<uint32_t>(height));
  header += '\x08';                                    // bit depth
  header += static_cast<char>(channels == 4 ? 6 : 2);  // colour type: RGBA or RGB
  header += std::string(3, '\0');                      // compression, filter, interlace
  std::string png = "\x89PNG\r\n\x1a\n";
  chunk(png, "IHDR", header);
  chunk(png, "IDAT", zlib_stream(raw));
  chunk(png, "IEND", "");
  return png;
}

}  // namespace cppfabric::loggers::detail
