// torch.save-compatible files: write a Value tree in the zip + pickle format that Python's
// `torch.load(path, weights_only=True)` reads, and read back what Python's torch.save writes.
//
//   cppfabric::Value checkpoint = cppfabric::Value::dict();
//   checkpoint.set("weights", torch::ones({2, 2}));
//   cppfabric::checkpoint::save_torch_file(checkpoint, "weights.pt");     // atomic replace
//   cppfabric::Value back = cppfabric::checkpoint::load_torch_file("weights.pt");
//
// The reader never runs code: it interprets the pickle opcodes torch.save emits (protocol 2, and
// the protocol 3-5 forms of the same things) and accepts only these globals:
// collections.OrderedDict, collections.Counter, torch._utils._rebuild_tensor_v2,
// torch._utils._rebuild_parameter, torch.Size, torch.device and the typed storage classes
// (torch.FloatStorage, ...). Every size it reads is checked against the bytes present, and
// nesting depth, the number of values built and their size relative to the file (shared
// references copied) are bounded. Anything else is a
// std::runtime_error that names the file and what was wrong; nothing aborts.
// Tensors come back on the CPU; views that shared a storage in the file share it again.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "cppfabric/state.hpp"

namespace cppfabric::checkpoint {

/// Limits the reader enforces (defaults suit any real checkpoint).
struct ReadLimits {
  int max_depth = 512;               // nesting of containers
  int64_t max_values = 50'000'000;   // values built while unpickling
  int64_t max_records = 10'000'000;  // zip entries
  /// The Values (plus string bytes) a pickle may expand to, as a multiple of its size (plus
  /// 65536). Without shared references a pickle expands to at most its own size; Python shares
  /// memoized objects, Values are trees and copy them, so a small file of repeated references
  /// could otherwise build gigabytes.
  int64_t max_expansion = 64;
  /// load_torch_file only: map the file (mmap, private) and let tensors whose records are
  /// aligned in it (torch.save aligns them to 64 bytes) use the mapping instead of a copy; the
  /// mapping lives as long as any such tensor. Records are still CRC-checked. Off by default:
  /// as with torch.load(mmap=True), truncating the file in place while those tensors live
  /// (Python's torch.save over the same path does; cppfabric's save replaces the file) raises
  /// SIGBUS.
  bool map_file = false;
};

/// The bytes of a torch.save file holding `value` (archive folder "archive").
std::string to_torch_bytes(const Value& value);
/// Parses a torch.save file held in memory. `what` names it in error messages.
Value from_torch_bytes(std::string_view bytes, const std::string& what = "<memory>",
                       const ReadLimits& limits = {});

/// Writes `value` to `path` atomically: a temporary file in the same folder, fsync, rename,
/// fsync of the folder. Creates missing parent folders. A crash at any point leaves either the
/// previous file or the new one, never a torn file.
void save_torch_file(const Value& value, const std::string& path);
/// Reads a torch.save file (std::runtime_error for missing, truncated, corrupt or foreign files).
Value load_torch_file(const std::string& path, const ReadLimits& limits = {});

}  // namespace cppfabric::checkpoint
