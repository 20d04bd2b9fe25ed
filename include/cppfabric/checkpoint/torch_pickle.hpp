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
  /// load_torch_file only: map the file (mmap, MAP_PRIVATE) and let each tensor whose record is
  /// aligned in it (torch.save and cppfabric align records to 64 bytes) and at least
  /// `map_min_record_bytes` long use the mapping instead of a copy; the mapping lives as long as
  /// any such tensor. Every record is still CRC-checked while loading (a CRC-32 at memory speed,
  /// VPCLMULQDQ or PCLMULQDQ), and a tensor written to gets private copies of the pages it
  /// writes (the file never changes). When the file cannot be mapped (address space, strict
  /// overcommit), it is read with copies.
  ///
  /// On by default: loading costs no copy and no private memory (the pages are the page
  /// cache's), which is what makes load_torch_file several times faster than
  /// torch.load(weights_only=True); Fabric::load copies into the model and optimizer and drops
  /// the mapping with the loaded Value. The one hazard is the file changing IN PLACE while such a
  /// tensor lives: Python's torch.save(obj, same_path) truncates and rewrites the file it
  /// replaces, after which the tensor's pages not yet written to show the new bytes, or raise
  /// SIGBUS (a crash) past the new end of the file; as with torch.load(mmap=True). cppfabric's
  /// own save_torch_file never does that (it writes a new file and renames it over the old one,
  /// which the mapping keeps alive). When something may rewrite the file in place while the
  /// loaded tensors are kept, set map_file = false: every tensor then owns a copy.
  bool map_file = true;
  /// Files smaller than this are read with copies even when map_file is set (a mapping buys
  /// nothing there).
  int64_t map_min_file_bytes = int64_t{1} << 20;
  /// Records smaller than this are copied out of the mapping, so small tensors kept after a load
  /// (a step counter, a batch) do not pin the whole file's mapping.
  int64_t map_min_record_bytes = int64_t{64} << 10;
};

/// The bytes of a torch.save file holding `value` (archive folder "archive").
std::string to_torch_bytes(const Value& value);
/// Parses a torch.save file held in memory. `what` names it in error messages.
Value from_torch_bytes(std::string_view bytes, const std::string& what = "<memory>",
                       const ReadLimits& limits = {});

/// How save_torch_file writes.
struct SaveOptions {
  /// fsync the file before renaming it into place and the folder after: a crash or power loss
  /// at any point leaves either the previous file or the new one. false skips both fsyncs
  /// (readers still see the old file or the whole new one, never a torn one, but after a power
  /// loss the new file may be empty or missing); like torch.save without an fsync.
  bool durable = true;
};

/// Writes `value` to `path` atomically: a temporary file in the same folder, fsync, rename,
/// fsync of the folder. Creates missing parent folders. A crash at any point leaves either the
/// previous file or the new one, never a torn file. The zip layout is byte for byte what
/// LibTorch's PyTorchStreamWriter (torch.save's writer) makes of the same records.
void save_torch_file(const Value& value, const std::string& path);
/// The same with `options` (SaveOptions::durable = false: no fsync).
void save_torch_file(const Value& value, const std::string& path, const SaveOptions& options);
/// Reads a torch.save file (std::runtime_error for missing, truncated, corrupt or foreign files).
Value load_torch_file(const std::string& path, const ReadLimits& limits = {});

}  // namespace cppfabric::checkpoint
