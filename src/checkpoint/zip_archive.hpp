// The zip side of torch.save files. Reading: a small bounded reader of stored (uncompressed) zip
// archives that checks every offset, size and CRC against the bytes present. Writing: the bytes
// LibTorch's PyTorchStreamWriter (the writer Python itself uses) writes, produced here straight
// from the tensors' memory with a fast CRC-32. Private.
//
//   detail::ZipReader zip(std::make_unique<detail::MemorySource>(bytes), "<memory>", limits);
//   const std::string pickle = zip.read_small("data.pkl", uint64_t(1) << 32);  // "archive/data.pkl"
#pragma once

#include <ATen/core/Tensor.h>

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "cppfabric/checkpoint/torch_pickle.hpp"

namespace cppfabric::checkpoint::detail {

/// CRC-32 (zip's) of `n` bytes continuing `crc` (0 to start): carry-less multiplication where the
/// CPU has it (memory speed), slicing-by-8 tables otherwise.
uint32_t crc32(uint32_t crc, const void* data, std::size_t n);

/// The bytes the reader reads: a file (pread) or memory.
class ByteSource {
 public:
  virtual ~ByteSource() = default;
  virtual uint64_t size() const = 0;
  virtual void read(uint64_t offset, void* dst, uint64_t n) const = 0;
  /// The whole source in memory that may back tensors directly (a file mapping), and what keeps
  /// it alive; nullptr where reads must copy.
  virtual const char* mapped() const { return nullptr; }
  virtual std::shared_ptr<const void> keep_alive() const { return nullptr; }
};

class MemorySource final : public ByteSource {
 public:
  explicit MemorySource(std::string_view data) : data_(data) {}
  uint64_t size() const override { return data_.size(); }
  void read(uint64_t offset, void* dst, uint64_t n) const override {
    if (n > 0) std::memcpy(dst, data_.data() + offset, n);
  }

 private:
  std::string_view data_;
};

/// Reads an open file with pread; owns `fd` and closes it.
class FileSource final : public ByteSource {
 public:
  FileSource(int fd, uint64_t size, std::string what)
      : fd_(fd), size_(size), what_(std::move(what)) {}
  ~FileSource() override;
  uint64_t size() const override { return size_; }
  void read(uint64_t offset, void* dst, uint64_t n) const override;

 private:
  int fd_;
  uint64_t size_;
  std::string what_;
};

/// A file mapped read-only and private (mmap); storages aligned in the file become tensors over
/// the mapping without a copy. The mapping lives while any such tensor does.
class MappedSource final : public ByteSource {
 public:
  /// Maps `fd` and closes it; std::runtime_error naming `what` when mmap fails (`fd` stays
  /// open then).
  MappedSource(int fd, uint64_t size, const std::string& what);
  uint64_t size() const override { return size_; }
  void read(uint64_t offset, void* dst, uint64_t n) const override {
    if (n > 0) std::memcpy(dst, base_ + offset, n);
  }
  const char* mapped() const override { return base_; }
  std::shared_ptr<const void> keep_alive() const override { return mapping_; }

 private:
  std::shared_ptr<const void> mapping_;
  const char* base_ = nullptr;
  uint64_t size_;
};

/// One stored record of the archive.
struct Record {
  uint64_t data_offset = 0;
  uint64_t size = 0;
  uint32_t crc = 0;
};

/// The records of a torch.save zip archive (names relative to its one top-level folder). Every
/// failure is a std::runtime_error naming `what` ("Cannot read checkpoint <what>: ...").
class ZipReader {
 public:
  ZipReader(std::unique_ptr<ByteSource> src, std::string what, const ReadLimits& limits);

  /// The archive folder, with its '/' ("archive/").
  const std::string& prefix() const { return prefix_; }
  /// The record `name` inside the archive folder, or nullptr.
  const Record* find(const std::string& name) const;
  /// The whole record `name` (CRC checked); fails when missing or larger than `max_size`.
  std::string read_small(const std::string& name, uint64_t max_size) const;
  /// Reads record `r` into `dst` (r.size bytes) and checks its CRC.
  void read_into(const Record& r, void* dst, const std::string& name) const;
  /// Whether the source is a file mapping (map_record works).
  bool mapped() const { return src_->mapped() != nullptr; }
  /// Record `r` in place in the mapped source (CRC checked), and what keeps it alive.
  const void* map_record(const Record& r, const std::string& name,
                         std::shared_ptr<const void>* keep) const;
  [[noreturn]] void fail(const std::string& why) const;

 private:
  uint64_t u16(const unsigned char* p) const { return p[0] | (uint64_t(p[1]) << 8); }
  uint64_t u32(const unsigned char* p) const { return u16(p) | (u16(p + 2) << 16); }
  uint64_t u64(const unsigned char* p) const { return u32(p) | (u32(p + 4) << 32); }

  void read_at(uint64_t offset, void* dst, uint64_t n, const char* what) const;
  void parse(const ReadLimits& limits);

  std::unique_ptr<ByteSource> src_;
  std::string what_;
  std::string prefix_;
  std::map<std::string, Record> records_;
};

/// Receives the archive's bytes in order; returns how many it took (fewer means failure). It may
/// also throw. Large records arrive in 1 MiB pieces straight from the tensors' memory.
using ZipSink = std::function<size_t(const void*, size_t)>;
/// Writes torch.save's archive (folder "archive"), byte for byte what PyTorchStreamWriter writes:
/// data.pkl, .format_version, .storage_alignment, byteorder, one data/<key> record per storage,
/// version, .data/serialization_id. std::runtime_error when the sink takes fewer bytes.
void write_zip_archive(const std::string& pickle,
                       const std::vector<std::pair<std::string, at::Tensor>>& storages,
                       const ZipSink& sink);

}  // namespace cppfabric::checkpoint::detail
