// The `.metadata` file of PyTorch's distributed checkpoint (DCP) layout: a plain pickle of
// torch.distributed.checkpoint.metadata.Metadata. Private.
//
//   std::string bytes = detail::write_dcp_metadata(md);          // what Python's pickle.load reads
//   detail::DcpMetadata back = detail::read_dcp_metadata(bytes, "ckpt/.metadata");
//
// The reader never runs code: it interprets the opcodes Python's pickler emits for Metadata
// (protocols 2-5) and accepts only these globals: the DCP metadata classes (Metadata,
// TensorStorageMetadata, BytesStorageMetadata, TensorProperties, ChunkStorageMetadata,
// MetadataIndex, StorageMeta, _MEM_FORMAT_ENCODING), filesystem._StorageInfo, torch.Size,
// torch.serialization._get_layout, the torch dtypes and pathlib.PosixPath. Anything else, and
// any size, count or nesting that does not fit, is a std::runtime_error naming the file.
#pragma once

#include <c10/core/ScalarType.h>

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace cppfabric::checkpoint::detail {

/// One element of a DCP object path: a dict key, or a list position (`index` set).
struct DcpPathElement {
  std::string key;
  std::optional<int64_t> index;
  bool operator==(const DcpPathElement& o) const { return key == o.key && index == o.index; }
};

/// Where an item's bytes are: a byte range of one data file in the checkpoint folder.
struct DcpStorage {
  std::string relative_path;
  int64_t offset = 0;
  int64_t length = 0;
};

struct DcpChunk {
  std::vector<int64_t> offsets;
  std::vector<int64_t> sizes;
  DcpStorage storage;
};

/// One flattened key: a tensor (its chunks) or a bytes item (a pickled non-tensor value).
struct DcpEntry {
  std::string key;                   ///< flattened fqn ("model.fc.weight")
  std::vector<DcpPathElement> path;  ///< planner_data; empty when the file has none for the key
  bool is_tensor = false;
  c10::ScalarType dtype = c10::ScalarType::Float;
  bool requires_grad = false;
  std::vector<int64_t> size;
  std::vector<DcpChunk> chunks;  ///< tensors
  DcpStorage storage;            ///< bytes items
};

struct DcpMetadata {
  std::vector<DcpEntry> entries;  ///< in the file's order
  std::string version = "1.0.0";
  std::string save_id;  ///< StorageMeta.save_id (written; empty: none)
};

/// torch's name of a dtype ("float32", "bfloat16", ...); std::invalid_argument for dtypes DCP
/// checkpoints here cannot hold.
const char* dcp_dtype_name(c10::ScalarType dtype);

/// The pickle Python's `pickle.load` turns into the equal Metadata object.
std::string write_dcp_metadata(const DcpMetadata& metadata);

/// Parses and validates a `.metadata` pickle: every chunk lies inside its tensor and chunks of
/// one tensor do not overlap; every item has storage (relative paths are plain file names).
/// `what` names the file in errors.
DcpMetadata read_dcp_metadata(std::string_view bytes, const std::string& what);

}  // namespace cppfabric::checkpoint::detail
