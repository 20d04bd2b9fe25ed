// Sharded checkpoints in PyTorch's distributed-checkpoint (DCP) layout: a directory with
// `.metadata` and one `__<rank>_0.distcp` data file per rank (plus Lightning's `meta.pt` for the
// values that are neither modules nor optimizers), so that Python's torch.distributed.checkpoint
// and `fabric consolidate` read what cppfabric writes, and cppfabric reads what Python writes.
//
//   using namespace cppfabric::checkpoint;
//   std::vector<ShardedItem> items;
//   // rank r holds rows [r*2, r*2+2) of a 4x3 weight:
//   items.push_back({.path = {"model", "fc.weight"},
//                    .tensor = TensorShard{.local = my_rows, .offsets = {2 * r, 0},
//                                          .global_shape = {4, 3}}});
//   Value meta = Value::dict();  meta.set("epoch", 3);
//   save_sharded("ckpt/step-100", items, &meta, group.get());   // collective
//   ...
//   load_sharded("ckpt/step-100", items);   // fills each item's `local` (any world size)
//   Value everything = load_sharded_full("ckpt/step-100");   // one process, full tensors
//
// Strategies that shard (FSDP, ZeRO) build the items; users mostly meet this through
// fabric.save/fabric.load and `cppfabric consolidate DIR -o FILE`.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/ScalarType.h>

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "cppfabric/value.hpp"

namespace cppfabric::collectives {
class ProcessGroup;
}

namespace cppfabric::checkpoint {

/// One rectangular piece of a global tensor held by this rank.
struct TensorShard {
  at::Tensor local;              ///< the piece (any strides, CPU or CUDA)
  std::vector<int64_t> offsets;  ///< where `local` starts in each dimension of the global tensor
  std::vector<int64_t> global_shape;  ///< the whole tensor's shape
};

/// One entry of a flattened state. `path` is the chain of dict keys from the top
/// ({"model", "fc.weight"}); DCP's flattened key joins it with '.' ("model.fc.weight").
/// Exactly one of `tensor` and `value` is set.
struct ShardedItem {
  std::vector<std::string> path;
  std::optional<TensorShard> tensor;  ///< a tensor piece
  std::optional<Value> value;         ///< a non-tensor value (saved as a bytes item)
  /// Which elements of `path` are list positions ("0" in {"optimizer", "param_groups", "0",
  /// "lr"}): DCP records those as ints and rebuilds a list there. Empty: none are.
  std::vector<bool> list_index = {};
};

/// What `.metadata` says about one tensor.
struct ShardedTensorInfo {
  std::vector<std::string> path;
  std::vector<int64_t> global_shape;
  c10::ScalarType dtype;
};

/// The index of a sharded checkpoint directory.
struct ShardedMetadata {
  std::vector<ShardedTensorInfo> tensors;
  std::vector<std::vector<std::string>> values;  ///< paths of the non-tensor items
  bool has_meta = false;                         ///< a `meta.pt` is present
};

/// Writes `items` (this rank's part) into the directory `dir`. Collective over `group` (nullptr:
/// one process). Each piece of a tensor is passed by exactly one rank (a replicated tensor by
/// rank 0 only); the pieces of one key must tile its global shape without overlap, and a value
/// item is passed by one rank. Every rank writes `__<rank>_0.distcp`; rank 0 writes `.metadata`
/// and, when `meta` is given, `meta.pt`. Everything is written into a temporary sibling folder
/// and committed by rename once every rank has finished, so a crash never leaves a partial
/// checkpoint under `dir`; an existing `dir` is replaced when it is a sharded checkpoint, an empty
/// folder or a file (another folder is refused). Every rank must pass the same `dir`. Errors on
/// any rank fail every rank (the failing rank rethrows its own error; the others throw
/// std::runtime_error naming that rank and its message).
void save_sharded(const std::string& dir, const std::vector<ShardedItem>& items, const Value* meta,
                  collectives::ProcessGroup* group);

/// Reads into `items`: each tensor item's `local` is filled with its region of the saved global
/// tensor, from whichever saved pieces overlap it (so any world size can read what another
/// wrote), converting dtype if needed; each value item's `value` is replaced by the saved one.
/// A key absent from the checkpoint or a global shape that differs throws std::runtime_error
/// naming the key and the directory. Not collective.
void load_sharded(const std::string& dir, std::vector<ShardedItem>& items);

/// Reads only `.metadata` (std::runtime_error naming the directory if it is not a checkpoint).
ShardedMetadata read_sharded_metadata(const std::string& dir);

/// The whole checkpoint as one nested Value with full tensors on the CPU, plus `meta.pt`'s
/// entries at the top level (what `cppfabric consolidate` writes).
Value load_sharded_full(const std::string& dir);

/// Only the part of the checkpoint under `prefix` (path elements, list positions as decimal
/// strings), nested as load_sharded_full nests it, without `meta.pt`: e.g. {"optimizer",
/// "param_groups"} gives the list of param groups that DCP flattened to
/// "optimizer.param_groups.0.lr" ... std::runtime_error naming the prefix when nothing is there.
Value load_sharded_full(const std::string& dir, const std::vector<std::string>& prefix);

/// True when `path` is a directory holding a `.metadata` file.
bool is_sharded_checkpoint(const std::string& path);

/// Splits a nested state (a dict) into items the way torch.distributed.checkpoint flattens a
/// state dict: dicts are walked (keys become strings: str(key)), a list is walked only when it
/// holds a tensor or a dict (its positions become list_index elements), tuples and everything
/// else are leaves; a leaf tensor becomes a whole-tensor item (offsets 0), any other leaf a value
/// item. Empty dicts disappear, as in Python. std::invalid_argument when `state` is not a dict
/// or two paths flatten to the same key.
std::vector<ShardedItem> flatten_state(const Value& state);

/// The pieces of a tensor of `global_shape` (row-major) whose elements [begin, begin +
/// flat.numel()) are held by `flat` (a 1-D contiguous tensor, e.g. one parameter's part of an
/// FSDP/ZeRO flat shard): at most 2 * dims - 1 rectangles, in order, whose `local`s are views of
/// `flat`. save_sharded writes them, and load_sharded fills `flat` in place through them.
/// std::invalid_argument when `flat` is not 1-D contiguous or the range does not fit.
std::vector<TensorShard> shard_flat_range(const at::Tensor& flat, int64_t begin,
                                          const std::vector<int64_t>& global_shape);

/// DCP's flattened key of an item: its path joined with '.'.
std::string flattened_key(const ShardedItem& item);

/// `cppfabric consolidate`: load_sharded_full(dir), written atomically as one torch.save file
/// that `torch.load(out, weights_only=True)` opens.
void consolidate(const std::string& dir, const std::string& out);

}  // namespace cppfabric::checkpoint
