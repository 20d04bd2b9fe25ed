#include "checkpoint/zip_archive.hpp"

#include <c10/util/Exception.h>
#include <c10/util/hash.h>
#include <sys/mman.h>
#include <unistd.h>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include <algorithm>
#include <array>
#include <cerrno>
#include <stdexcept>
#include <unordered_set>

#include "cppfabric/detail/fmt.hpp"

namespace cppfabric::checkpoint::detail {
namespace {

// CRC-32 (zip's polynomial, reflected 0xEDB88320). Bulk data by carry-less multiplication where
// the CPU has it (VPCLMULQDQ on 512-bit registers, 256 bytes per step; else PCLMULQDQ, 64 bytes
// per step), otherwise and for
// short tails eight bytes per step from tables ("slicing-by-8").
const std::array<std::array<uint32_t, 256>, 8>& crc_tables() {
  static const auto tables = [] {
    std::array<std::array<uint32_t, 256>, 8> t{};
    for (uint32_t i = 0; i < 256; ++i) {
      uint32_t c = i;
      for (int k = 0; k < 8; ++k) c = (c & 1) ? 0xEDB88320u ^ (c >> 1) : c >> 1;
      t[0][i] = c;
    }
    for (uint32_t i = 0; i < 256; ++i)
      for (int s = 1; s < 8; ++s) t[s][i] = (t[s - 1][i] >> 8) ^ t[0][t[s - 1][i] & 0xff];
    return t;
  }();
  return tables;
}

#if defined(__x86_64__)
#define CPPFABRIC_CRC_TARGET __attribute__((target("pclmul,sse4.1")))
CPPFABRIC_CRC_TARGET inline __m128i load(const unsigned char* q) {
  return _mm_loadu_si128(reinterpret_cast<const __m128i*>(q));
}
// x * k (both halves, folded 128 bits further) ^ next.
CPPFABRIC_CRC_TARGET inline __m128i fold(__m128i x, __m128i k, __m128i next) {
  return _mm_xor_si128(
      _mm_xor_si128(_mm_clmulepi64_si128(x, k, 0x11), _mm_clmulepi64_si128(x, k, 0x00)), next);
}
CPPFABRIC_CRC_TARGET uint32_t crc32_fold_finish(__m128i x1, const unsigned char* p, std::size_t n);
// `state` is the inverted running CRC; processes n bytes (n >= 64, a multiple of 16).
CPPFABRIC_CRC_TARGET uint32_t crc32_fold(uint32_t state, const unsigned char* p, std::size_t n) {
  // Folding constants x^k mod P for the reflected polynomial (Intel's "Fast CRC Computation
  // for Generic Polynomials Using PCLMULQDQ"), and Barrett's mu and P.
  const __m128i k1k2 = _mm_set_epi64x(0x00000001c6e41596ll, 0x0000000154442bd4ll);
  const __m128i k3k4 = _mm_set_epi64x(0x00000000ccaa009ell, 0x00000001751997d0ll);
  __m128i x1 = _mm_xor_si128(load(p), _mm_cvtsi32_si128(static_cast<int>(state)));
  __m128i x2 = load(p + 16), x3 = load(p + 32), x4 = load(p + 48);
  p += 64;
  n -= 64;
  for (; n >= 64; p += 64, n -= 64) {
    x1 = fold(x1, k1k2, load(p));
    x2 = fold(x2, k1k2, load(p + 16));
    x3 = fold(x3, k1k2, load(p + 32));
    x4 = fold(x4, k1k2, load(p + 48));
  }
  x1 = fold(fold(fold(x1, k3k4, x2), k3k4, x3), k3k4, x4);
  return crc32_fold_finish(x1, p, n);
}
// Folds the remaining n bytes (a multiple of 16) into x1 and reduces it to the CRC.
CPPFABRIC_CRC_TARGET uint32_t crc32_fold_finish(__m128i x1, const unsigned char* p, std::size_t n) {
  const __m128i k3k4 = _mm_set_epi64x(0x00000000ccaa009ell, 0x00000001751997d0ll);
  const __m128i k5 = _mm_set_epi64x(0, 0x0000000163cd6124ll);
  const __m128i poly = _mm_set_epi64x(0x00000001f7011641ll, 0x00000001db710641ll);
  for (; n >= 16; p += 16, n -= 16) x1 = fold(x1, k3k4, load(p));
  // 128 -> 64 -> 32 bits.
  const __m128i mask32 = _mm_setr_epi32(~0, 0, ~0, 0);
  x1 = _mm_xor_si128(_mm_srli_si128(x1, 8), _mm_clmulepi64_si128(x1, k3k4, 0x10));
  __m128i x2b = _mm_srli_si128(x1, 4);
  x1 = _mm_xor_si128(_mm_clmulepi64_si128(_mm_and_si128(x1, mask32), k5, 0x00), x2b);
  __m128i t = _mm_and_si128(_mm_clmulepi64_si128(_mm_and_si128(x1, mask32), poly, 0x10), mask32);
  x1 = _mm_xor_si128(x1, _mm_clmulepi64_si128(t, poly, 0x00));
  return static_cast<uint32_t>(_mm_extract_epi32(x1, 1));
}
// The same folding with 512-bit registers (VPCLMULQDQ, AVX-512): four registers of four 128-bit
// lanes, 256 bytes per step, then folded down to one 128-bit lane and finished as above. n >= 256,
// a multiple of 16.
#define CPPFABRIC_CRC512_TARGET __attribute__((target("avx512f,avx512vl,vpclmulqdq,pclmul,sse4.1")))
CPPFABRIC_CRC512_TARGET inline __m512i fold512(__m512i x, __m512i k, __m512i next) {
  return _mm512_ternarylogic_epi64(_mm512_clmulepi64_epi128(x, k, 0x11),
                                   _mm512_clmulepi64_epi128(x, k, 0x00), next, 0x96);
}
CPPFABRIC_CRC512_TARGET uint32_t crc32_fold_avx512(uint32_t state, const unsigned char* p,
                                                   std::size_t n) {
  // Per 128-bit lane: x^(2048+32), x^(2048-32) mod P (folding across 256 bytes) and the 512-bit
  // pair of crc32_fold.
  const __m512i k2048 =
      _mm512_set_epi64(0x1322d1430ll, 0x11542778all, 0x1322d1430ll, 0x11542778all, 0x1322d1430ll,
                       0x11542778all, 0x1322d1430ll, 0x11542778all);
  const __m512i k512 = _mm512_set_epi64(0x1c6e41596ll, 0x154442bd4ll, 0x1c6e41596ll, 0x154442bd4ll,
                                        0x1c6e41596ll, 0x154442bd4ll, 0x1c6e41596ll, 0x154442bd4ll);
  __m512i x1 = _mm512_xor_si512(_mm512_loadu_si512(p),
                                _mm512_zextsi128_si512(_mm_cvtsi32_si128(static_cast<int>(state))));
  __m512i x2 = _mm512_loadu_si512(p + 64), x3 = _mm512_loadu_si512(p + 128),
          x4 = _mm512_loadu_si512(p + 192);
  p += 256;
  n -= 256;
  for (; n >= 256; p += 256, n -= 256) {
    x1 = fold512(x1, k2048, _mm512_loadu_si512(p));
    x2 = fold512(x2, k2048, _mm512_loadu_si512(p + 64));
    x3 = fold512(x3, k2048, _mm512_loadu_si512(p + 128));
    x4 = fold512(x4, k2048, _mm512_loadu_si512(p + 192));
  }
  x1 = fold512(fold512(fold512(x1, k512, x2), k512, x3), k512, x4);
  // Four 128-bit lanes, 128 bits apart: fold them into the last and finish as crc32_fold does.
  const __m128i k3k4 = _mm_set_epi64x(0x00000000ccaa009ell, 0x00000001751997d0ll);
  __m128i a = _mm512_maskz_extracti32x4_epi32(0xf, x1, 0);
  a = fold(a, k3k4, _mm512_maskz_extracti32x4_epi32(0xf, x1, 1));
  a = fold(a, k3k4, _mm512_maskz_extracti32x4_epi32(0xf, x1, 2));
  a = fold(a, k3k4, _mm512_maskz_extracti32x4_epi32(0xf, x1, 3));
  return crc32_fold_finish(a, p, n);
}
bool have_avx512_clmul() {
  static const bool yes = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
                          __builtin_cpu_supports("vpclmulqdq") && __builtin_cpu_supports("pclmul");
  return yes;
}
bool have_pclmul() {
  static const bool yes = __builtin_cpu_supports("pclmul") && __builtin_cpu_supports("sse4.1");
  return yes;
}
#endif

uint32_t crc32_update(uint32_t crc, const unsigned char* data, std::size_t n) {
  const auto& tables = crc_tables();
  crc = ~crc;
#if defined(__x86_64__)
  if (n >= 256 && have_avx512_clmul()) {
    const std::size_t bulk = n & ~std::size_t(15);
    crc = crc32_fold_avx512(crc, data, bulk);
    data += bulk;
    n -= bulk;
  } else if (n >= 64 && have_pclmul()) {
    const std::size_t bulk = n & ~std::size_t(15);
    crc = crc32_fold(crc, data, bulk);
    data += bulk;
    n -= bulk;
  }
#endif
  while (n >= 8) {
    uint32_t lo, hi;
    std::memcpy(&lo, data, 4);
    std::memcpy(&hi, data + 4, 4);
    lo ^= crc;  // little-endian hosts only, as the format itself
    crc = tables[7][lo & 0xff] ^ tables[6][(lo >> 8) & 0xff] ^ tables[5][(lo >> 16) & 0xff] ^
          tables[4][lo >> 24] ^ tables[3][hi & 0xff] ^ tables[2][(hi >> 8) & 0xff] ^
          tables[1][(hi >> 16) & 0xff] ^ tables[0][hi >> 24];
    data += 8;
    n -= 8;
  }
  while (n-- > 0) crc = tables[0][(crc ^ *data++) & 0xff] ^ (crc >> 8);
  return ~crc;
}

}  // namespace

uint32_t crc32(uint32_t crc, const void* data, std::size_t n) {
  return crc32_update(crc, static_cast<const unsigned char*>(data), n);
}

// ------------------------------------------------------------------------------ byte sources

FileSource::~FileSource() { ::close(fd_); }

MappedSource::MappedSource(int fd, uint64_t size, const std::string& what) : size_(size) {
  // Private and writable: reading maps the page cache's pages (no copy); a write to a tensor
  // copies just the page it writes, never touching the file. Not populated up front: the
  // loader's CRC pass faults the pages in many at a time (fault-around), measured 3-5x faster
  // than MAP_POPULATE for files just written; MADV_WILLNEED starts reading a file that is not
  // in the page cache.
  void* p = ::mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
  if (p != MAP_FAILED) ::madvise(p, size, MADV_WILLNEED);
  if (p == MAP_FAILED) {
    throw std::runtime_error(
        fmt::format("Cannot map the checkpoint {}: {}", what, std::strerror(errno)));
  }
  ::close(fd);
  base_ = static_cast<const char*>(p);
  mapping_ = std::shared_ptr<const void>(p, [size](const void* q) {
    if (q != nullptr) ::munmap(const_cast<void*>(q), size);
  });
}

void FileSource::read(uint64_t offset, void* dst, uint64_t n) const {
  auto* out = static_cast<char*>(dst);
  while (n > 0) {
    const ssize_t got = ::pread(fd_, out, n, static_cast<off_t>(offset));
    if (got < 0 && errno == EINTR) continue;
    if (got <= 0) {
      throw std::runtime_error(
          fmt::format("Reading {} failed at byte {}: {}", what_, offset,
                      got < 0 ? std::strerror(errno) : "unexpected end of file"));
    }
    out += got;
    offset += static_cast<uint64_t>(got);
    n -= static_cast<uint64_t>(got);
  }
}

// ------------------------------------------------------------------------------ zip reader

ZipReader::ZipReader(std::unique_ptr<ByteSource> src, std::string what, const ReadLimits& limits)
    : src_(std::move(src)), what_(std::move(what)) {
  parse(limits);
}

const Record* ZipReader::find(const std::string& name) const {
  auto it = records_.find(prefix_ + name);
  return it == records_.end() ? nullptr : &it->second;
}

std::string ZipReader::read_small(const std::string& name, uint64_t max_size) const {
  const Record* r = find(name);
  if (r == nullptr) fail(fmt::format("the record '{}' is missing", name));
  if (r->size > max_size)
    fail(fmt::format("the record '{}' is too large ({} bytes)", name, r->size));
  std::string out(r->size, '\0');
  read_into(*r, out.data(), name);
  return out;
}

void ZipReader::read_into(const Record& r, void* dst, const std::string& name) const {
  // In 4 MiB pieces, each CRC-checked right after it is read, while it is still in the cache.
  // (Spreading the pieces over ATen's threads measured slower on the shared 2-core machine: the
  // work is memory-bound and the second core is rarely free.)
  constexpr uint64_t kPiece = uint64_t(4) << 20;
  auto* out = static_cast<unsigned char*>(dst);
  uint32_t crc = 0;
  for (uint64_t offset = 0; offset < r.size; offset += kPiece) {
    const uint64_t n = std::min(kPiece, r.size - offset);
    src_->read(r.data_offset + offset, out + offset, n);
    crc = crc32_update(crc, out + offset, n);
  }
  if (crc != r.crc) fail(fmt::format("the record '{}' fails its CRC check (corrupt file)", name));
}

const void* ZipReader::map_record(const Record& r, const std::string& name,
                                  std::shared_ptr<const void>* keep) const {
  const char* base = src_->mapped();
  if (base == nullptr) fail("map_record on a source that is not mapped");
  const auto* p = reinterpret_cast<const unsigned char*>(base + r.data_offset);
  if (crc32_update(0, p, r.size) != r.crc)
    fail(fmt::format("the record '{}' fails its CRC check (corrupt file)", name));
  *keep = src_->keep_alive();
  return p;
}

void ZipReader::fail(const std::string& why) const {
  throw std::runtime_error(fmt::format(
      "Cannot read checkpoint {}: {}. It is not a valid torch.save file (truncated, corrupt, or "
      "another format).",
      what_, why));
}

void ZipReader::read_at(uint64_t offset, void* dst, uint64_t n, const char* what) const {
  if (offset > src_->size() || n > src_->size() - offset)
    fail(fmt::format("{} lies outside the file", what));
  src_->read(offset, dst, n);
}

void ZipReader::parse(const ReadLimits& limits) {
  const uint64_t size = src_->size();
  if (size < 22) fail("the file is too small to be a zip archive");
  unsigned char magic[2];
  read_at(0, magic, 2, "the file header");
  if (magic[0] == 0x80 && magic[1] <= 5) {
    fail(
        "it is a bare pickle, as torch's legacy format (torch.save with "
        "_use_new_zipfile_serialization=False) writes; re-save it with a plain torch.save");
  }
  const uint64_t tail = std::min<uint64_t>(size, 22 + 65535);
  std::string buf(tail, '\0');
  read_at(size - tail, buf.data(), tail, "the end record");
  const auto* b = reinterpret_cast<const unsigned char*>(buf.data());
  int64_t eocd = -1;
  for (int64_t i = static_cast<int64_t>(tail) - 22; i >= 0; --i) {
    if (u32(b + i) == 0x06054b50) {
      eocd = i;
      break;
    }
  }
  if (eocd < 0) fail("no zip end-of-central-directory record");
  uint64_t entries = u16(b + eocd + 10);
  uint64_t cd_size = u32(b + eocd + 12);
  uint64_t cd_offset = u32(b + eocd + 16);
  const uint64_t eocd_abs = size - tail + static_cast<uint64_t>(eocd);
  if (entries == 0xffff || cd_size == 0xffffffff || cd_offset == 0xffffffff) {
    // zip64: locator right before the end record.
    if (eocd_abs < 20) fail("zip64 locator missing");
    unsigned char loc[20];
    read_at(eocd_abs - 20, loc, 20, "the zip64 locator");
    if (u32(loc) != 0x07064b50) fail("zip64 locator missing");
    unsigned char z[56];
    read_at(u64(loc + 8), z, 56, "the zip64 end record");
    if (u32(z) != 0x06064b50) fail("bad zip64 end record");
    entries = u64(z + 32);
    cd_size = u64(z + 40);
    cd_offset = u64(z + 48);
  }
  if (entries > static_cast<uint64_t>(limits.max_records)) fail("too many zip entries");
  if (cd_offset > size || cd_size > size - cd_offset)
    fail("the central directory lies outside the file");
  std::string cd(cd_size, '\0');
  read_at(cd_offset, cd.data(), cd_size, "the central directory");
  const auto* c = reinterpret_cast<const unsigned char*>(cd.data());
  uint64_t pos = 0;
  for (uint64_t n = 0; n < entries; ++n) {
    if (cd_size - pos < 46 || u32(c + pos) != 0x02014b50) fail("a broken central directory entry");
    const uint64_t method = u16(c + pos + 10);
    const uint32_t crc = static_cast<uint32_t>(u32(c + pos + 16));
    uint64_t csize = u32(c + pos + 20);
    uint64_t usize = u32(c + pos + 24);
    const uint64_t name_len = u16(c + pos + 28);
    const uint64_t extra_len = u16(c + pos + 30);
    const uint64_t comment_len = u16(c + pos + 32);
    uint64_t local = u32(c + pos + 42);
    if (cd_size - pos - 46 < name_len + extra_len + comment_len)
      fail("a central directory entry overruns");
    std::string name(reinterpret_cast<const char*>(c + pos + 46), name_len);
    // zip64 extra field: the 0xffffffff fields, in order usize, csize, offset.
    const unsigned char* e = c + pos + 46 + name_len;
    for (uint64_t ep = 0; ep + 4 <= extra_len;) {
      const uint64_t id = u16(e + ep), len = u16(e + ep + 2);
      if (ep + 4 + len > extra_len) fail("a broken zip extra field");
      if (id == 0x0001) {
        uint64_t q = ep + 4;
        auto take = [&](uint64_t& field) {
          if (field != 0xffffffff) return;
          if (q + 8 > ep + 4 + len) fail("a short zip64 extra field");
          field = u64(e + q);
          q += 8;
        };
        take(usize);
        take(csize);
        take(local);
      }
      ep += 4 + len;
    }
    pos += 46 + name_len + extra_len + comment_len;
    if (method != 0 || csize != usize) {
      fail(fmt::format("the record '{}' is compressed; torch.save files store records uncompressed",
                       name));
    }
    unsigned char lh[30];
    read_at(local, lh, 30, "a local file header");
    if (u32(lh) != 0x04034b50) fail(fmt::format("the record '{}' has a broken local header", name));
    const uint64_t data = local + 30 + u16(lh + 26) + u16(lh + 28);
    if (data > size || usize > size - data)
      fail(fmt::format("the record '{}' lies outside the file", name));
    if (n == 0) {
      const auto slash = name.find('/');
      if (slash == std::string::npos) fail("the first record has no archive folder");
      prefix_ = name.substr(0, slash + 1);
    }
    records_[name] = Record{data, usize, crc};
  }
  if (prefix_.empty()) fail("the archive is empty");
}

// ------------------------------------------------------------------------------ zip writer
//
// The bytes LibTorch's PyTorchStreamWriter (torch.save's writer, miniz underneath, zip64 mode)
// produces, written straight from the tensors' memory: every record is a local header with
// zero CRC and sizes (flag bit 3: a data descriptor follows the data), its name, a zip64 extra
// field when the record or its offset reaches 4 GiB, and an "FB" extra field padding the data
// to a multiple of 64 bytes; then the data; then the data descriptor (CRC and sizes; none for an
// empty record). The CRC is computed chunk by chunk just before each chunk goes to the sink,
// while it is in the cache. The end: the "version" record, ".data/serialization_id" (computed
// as LibTorch computes it), the central directory, the zip64 end record and locator, the end
// record. tests/unit/checkpoint_writer_test.cpp compares the bytes with PyTorchStreamWriter's.

namespace {

constexpr uint64_t kMax32 = 0xffffffffu;
constexpr std::size_t kChunk = std::size_t(1) << 20;  // CRC, then write, 1 MiB at a time

void put16(std::string& s, uint64_t v) {
  s.push_back(static_cast<char>(v & 0xff));
  s.push_back(static_cast<char>((v >> 8) & 0xff));
}
void put32(std::string& s, uint64_t v) {
  put16(s, v & 0xffff);
  put16(s, (v >> 16) & 0xffff);
}
void put64(std::string& s, uint64_t v) {
  put32(s, v & 0xffffffffu);
  put32(s, v >> 32);
}

class ArchiveWriter {
 public:
  explicit ArchiveWriter(const ZipSink& sink) : sink_(sink) {}

  void add(const std::string& name, const void* data, uint64_t size) {
    const std::string full = "archive/" + name;
    const uint64_t header_offset = offset_;
    const bool zip64 = size >= kMax32 || header_offset >= kMax32;
    const uint64_t zip64_len =
        zip64 ? 4 + (size >= kMax32 ? 16 : 0) + (header_offset >= kMax32 ? 8 : 0) : 0;
    const uint64_t unpadded = header_offset + 30 + full.size() + zip64_len + 4;
    const uint64_t padding = (64 - unpadded % 64) % 64;
    const uint64_t flags = size > 0 ? 0x0808 : 0x0800;  // UTF-8 names; data descriptor
    std::string header;
    header.reserve(30 + full.size() + zip64_len + 4 + padding);
    put32(header, 0x04034b50);
    put16(header, 0);  // version needed
    put16(header, flags);
    put16(header, 0);  // stored
    put32(header, 0);  // time, date
    put32(header, 0);  // CRC, sizes: in the data descriptor
    put32(header, 0);
    put32(header, 0);
    put16(header, full.size());
    put16(header, zip64_len + 4 + padding);
    header += full;
    std::string zip64_extra;
    if (zip64) {
      put16(zip64_extra, 0x0001);
      put16(zip64_extra, zip64_len - 4);
      if (size >= kMax32) {
        put64(zip64_extra, size);
        put64(zip64_extra, 0);  // LibTorch writes the compressed size before it is known
      }
      if (header_offset >= kMax32) put64(zip64_extra, header_offset);
    }
    header += zip64_extra;
    header += "FB";
    put16(header, padding);
    header.append(padding, 'Z');
    emit(header.data(), header.size());

    const auto* p = static_cast<const unsigned char*>(data);
    if (size >= 8) {
      // LibTorch folds into the serialization id the CRC of every write it takes for a data
      // descriptor, including a record whose data starts like one.
      uint32_t head[2];
      std::memcpy(head, p, 8);
      if (head[0] == 0x08074b50) combined_crc_ = c10::hash_combine(combined_crc_, head[1]);
    }
    uint32_t crc = 0;
    for (uint64_t done = 0; done < size;) {
      const std::size_t n = static_cast<std::size_t>(std::min<uint64_t>(kChunk, size - done));
      crc = crc32(crc, p + done, n);
      emit(p + done, n);
      done += n;
    }
    if (size > 0) {
      std::string descriptor;
      put32(descriptor, 0x08074b50);
      put32(descriptor, crc);
      if (zip64) {
        put64(descriptor, size);
        put64(descriptor, size);
      } else {
        put32(descriptor, size);
        put32(descriptor, size);
      }
      emit(descriptor.data(), descriptor.size());
      combined_crc_ = c10::hash_combine(combined_crc_, crc);
    }

    std::string cd_extra;
    if (zip64) {
      put16(cd_extra, 0x0001);
      put16(cd_extra, zip64_len - 4);
      if (size >= kMax32) {
        put64(cd_extra, size);
        put64(cd_extra, size);
      }
      if (header_offset >= kMax32) put64(cd_extra, header_offset);
    }
    put32(central_, 0x02014b50);
    put16(central_, 0);  // version made by
    put16(central_, 0);  // version needed
    put16(central_, flags);
    put16(central_, 0);  // stored
    put32(central_, 0);  // time, date
    put32(central_, crc);
    put32(central_, std::min(size, kMax32));
    put32(central_, std::min(size, kMax32));
    put16(central_, full.size());
    put16(central_, cd_extra.size());
    put16(central_, 0);  // comment
    put16(central_, 0);  // disk
    put16(central_, 0);  // internal attributes
    put32(central_, 0);  // external attributes
    put32(central_, std::min(header_offset, kMax32));
    central_ += full;
    central_ += cd_extra;
    ++entries_;
    names_.insert(name);
  }

  void finish() {
    // As LibTorch's writer: version (kMinProducedFileFormatVersion; torch.save's files have no
    // operators), then the serialization id over the records written so far.
    add("version", "3\n", 2);
    uint64_t name_hash = 0;
    for (const std::string& name : names_)
      name_hash = c10::hash_combine(name_hash, c10::hash<std::string>{}(name));
    const std::string id = fmt::format("{:020}{:020}", name_hash, combined_crc_);
    add(".data/serialization_id", id.data(), id.size());

    const uint64_t cd_offset = offset_;
    const uint64_t cd_size = central_.size();
    std::string end;
    put32(end, 0x06064b50);  // zip64 end of central directory
    put64(end, 44);
    put16(end, 0x031e);
    put16(end, 0x002d);
    put32(end, 0);
    put32(end, 0);
    put64(end, entries_);
    put64(end, entries_);
    put64(end, cd_size);
    put64(end, cd_offset);
    put32(end, 0x07064b50);  // its locator
    put32(end, 0);
    put64(end, cd_offset + cd_size);
    put32(end, 1);
    put32(end, 0x06054b50);  // end of central directory
    put16(end, 0);
    put16(end, 0);
    put16(end, std::min<uint64_t>(entries_, 0xffff));
    put16(end, std::min<uint64_t>(entries_, 0xffff));
    put32(end, std::min(cd_size, kMax32));
    put32(end, std::min(cd_offset, kMax32));
    put16(end, 0);
    emit(central_.data(), central_.size());
    emit(end.data(), end.size());
  }

 private:
  void emit(const void* p, std::size_t n) {
    if (n == 0) return;
    if (sink_(p, n) != n) throw std::runtime_error("Writing the checkpoint failed: short write");
    offset_ += n;
  }

  const ZipSink& sink_;
  uint64_t offset_ = 0;
  std::string central_;
  uint64_t entries_ = 0;
  // The record names in the set LibTorch's writer keeps: its iteration order feeds the
  // serialization id.
  std::unordered_set<std::string> names_;
  uint64_t combined_crc_ = 0;
};

}  // namespace

void write_zip_archive(const std::string& pickle,
                       const std::vector<std::pair<std::string, at::Tensor>>& storages,
                       const ZipSink& sink) {
  ArchiveWriter writer(sink);
  writer.add("data.pkl", pickle.data(), pickle.size());
  writer.add(".format_version", "1", 1);
  writer.add(".storage_alignment", "64", 2);
  writer.add("byteorder", "little", 6);
  for (const auto& [key, tensor] : storages) {
    writer.add("data/" + key, tensor.data_ptr(), tensor.nbytes());
  }
  writer.finish();
}

}  // namespace cppfabric::checkpoint::detail
