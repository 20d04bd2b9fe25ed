// A process group: the ranks of a job and the collectives they run together (c10d underneath).
//
//   using namespace cppfabric::collectives;
//   auto pg = ProcessGroup::create({.backend = "gloo", .main_address = "127.0.0.1",
//                                   .main_port = 29500, .rank = rank, .world_size = 2});
//   at::Tensor t = at::ones({4});
//   pg->all_reduce(t, ReduceKind::Sum);            // in place, blocking
//   pg->broadcast(t, /*src=*/0);                   // in place
//   std::vector<at::Tensor> parts = pg->all_gather(t);
//   pg->barrier();
//   CollectiveWork w = pg->all_reduce_async(t, ReduceKind::Avg);  // ... overlap work ...
//   w.wait();                                      // t now holds the average
//
//   // Sub-groups (torch.distributed.new_group / new_subgroups_by_enumeration): every rank
//   // calls it; each gets the group it belongs to (nullptr where it belongs to none).
//   auto node = pg->new_subgroups({{0, 1}, {2, 3}});  // rank 2 gets a group of 2, its rank 0
//   node->all_reduce(t);                           // sums over ranks {2, 3} only
//
// `create()` also sets SIGPIPE to "ignore" when it still has its default action, so that a
// peer that dies shows up as an error from the next collective instead of killing this
// process (Python does the same at start-up). `create()` is collective: every rank calls it with
// the same address, port and world size. Rank 0 hosts the rendezvous store. Every collective must
// be issued in the same order on all ranks, from one thread. Each one waits at most the group's
// timeout; a timeout or a dead peer becomes a std::runtime_error naming the operation, the rank and
// the timeout.
#pragma once

#include <ATen/core/Tensor.h>

#include <chrono>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace cppfabric::collectives {

/// The reduction an all-reduce applies. Gloo has no native average: `Avg` runs a sum and
/// divides by the world size afterwards (integer tensors truncate toward zero, as Fabric does).
enum class ReduceKind { Sum, Max, Min, Product, Avg };

/// "sum", "max", "min", "product", "avg".
std::string_view to_string(ReduceKind op);

/// Parses Fabric's `reduce_op` strings (case-insensitive): "sum", "mean" or "avg", "max",
/// "min", "product". Throws std::invalid_argument naming the value and the valid ones.
ReduceKind reduce_kind_from_string(std::string_view name);

/// How to form (or join) a process group. Defaults follow Lightning Fabric.
struct ProcessGroupOptions {
  std::string backend = "gloo";            ///< "gloo" (CPU tensors) or "nccl" (CUDA tensors)
  std::string main_address = "127.0.0.1";  ///< where rank 0 hosts the rendezvous store
  int main_port = 29500;                   ///< 1..65535
  int rank = 0;                            ///< 0 <= rank < world_size
  int world_size = 1;                      ///< >= 1
  std::chrono::milliseconds timeout = std::chrono::minutes(30);  ///< Fabric's default
};

/// A collective in flight. Move-only; `wait()` blocks until it is done (at most the group's
/// timeout) and finishes any post-processing (the division of `ReduceKind::Avg`, the copy
/// back into a non-contiguous tensor). Dropping it without `wait()` lets the collective
/// finish in the background, but the tensor's final value is then unspecified.
class CollectiveWork {
 public:
  CollectiveWork(CollectiveWork&&) noexcept;
  CollectiveWork& operator=(CollectiveWork&&) noexcept;
  CollectiveWork(const CollectiveWork&) = delete;
  CollectiveWork& operator=(const CollectiveWork&) = delete;
  ~CollectiveWork();

  /// Blocks until done; throws std::runtime_error on timeout or peer failure. A second call
  /// returns at once.
  void wait();
  /// True once the underlying collective has finished (successfully or not).
  bool is_completed() const;

  struct Impl;  // private; defined in process_group.cpp

 private:
  friend class ProcessGroup;
  explicit CollectiveWork(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

/// A group of `world_size` processes joined through a TCP store. Not copyable; shared through
/// std::shared_ptr so strategies and reducers can hold it. The destructor releases the
/// backend (joins its threads) and, on rank 0, the store.
class ProcessGroup {
 public:
  /// Validates `options`, then joins the group (blocks until every rank has joined or the
  /// timeout passes). Throws std::invalid_argument for bad options (cppfabric::
  /// NotYetAvailableError for "nccl" in a build without CUDA), std::runtime_error when the group
  /// cannot be formed. For "nccl", bind this rank's CUDA device first (the strategy does).
  /// Rank 0 of a job whose main_address is a loopback address (any 127.x.y.z, ::1; localhost is
  /// 127.0.0.1) listens on exactly that address. CPPFABRIC_DEBUG_COLLECTIVES=1 makes every
  /// collective first check, through the store, that all ranks run the same one (docs/failures.md).
  static std::shared_ptr<ProcessGroup> create(const ProcessGroupOptions& options);
  /// Whether this build of cppfabric can create groups of `backend` ("gloo", "nccl"), like
  /// torch.distributed.is_gloo_available() / is_nccl_available().
  static bool is_backend_available(const std::string& backend);

  ProcessGroup(const ProcessGroup&) = delete;
  ProcessGroup& operator=(const ProcessGroup&) = delete;
  ~ProcessGroup();

  int rank() const;
  int world_size() const;
  const std::string& backend() const;
  std::chrono::milliseconds timeout() const;

  /// Reduces `t` across ranks, in place. Every rank passes a tensor of the same shape/dtype.
  void all_reduce(at::Tensor& t, ReduceKind op = ReduceKind::Sum);
  /// The same, without waiting: call `wait()` on the result before reading `t`.
  CollectiveWork all_reduce_async(at::Tensor& t, ReduceKind op = ReduceKind::Sum);
  /// Overwrites `t` on every rank with rank `src`'s `t`.
  void broadcast(at::Tensor& t, int src = 0);
  /// Every rank's `t` (same shape on every rank), indexed by rank.
  std::vector<at::Tensor> all_gather(const at::Tensor& t);
  /// Returns once every rank has reached the barrier.
  void barrier();
  /// A barrier that waits up to `timeout` instead of the group's timeout (Fabric's
  /// rank_zero_first uses it, as Python uses a barrier without a limit there). It meets through
  /// the rendezvous store, not the backend, so it costs no device work under NCCL; a rank that
  /// dies while the others wait still ends the wait with an error (its store connection closes, or
  /// rank 0's store goes away). Throws std::runtime_error naming the rank and the timeout.
  void barrier(std::chrono::milliseconds timeout);

  // Flat-tensor collectives for sharding (FSDP, ZeRO). `input`/`output` must be contiguous, of
  // one dtype and device; `full` holds world_size() * shard.numel() elements and rank r's chunk
  // is elements [r * n, (r + 1) * n). Both map to the backend's native tensor collectives
  // (c10d _reduce_scatter_base / _allgather_base, which Gloo implements since PyTorch 2.x and
  // NCCL natively): no all_reduce-then-slice fallback is needed.

  /// Reduces `full` across ranks and writes this rank's chunk of the result into `shard`.
  void reduce_scatter(at::Tensor& shard, const at::Tensor& full, ReduceKind op = ReduceKind::Sum);
  /// The same, without waiting: call `wait()` before reading `shard` or touching `full`.
  CollectiveWork reduce_scatter_async(at::Tensor& shard, const at::Tensor& full,
                                      ReduceKind op = ReduceKind::Sum);
  /// Concatenates every rank's `shard` into `full`, in rank order.
  void all_gather_into(at::Tensor& full, const at::Tensor& shard);
  /// The same, without waiting: call `wait()` before reading `full` or touching `shard`.
  CollectiveWork all_gather_into_async(at::Tensor& full, const at::Tensor& shard);

  // Sub-groups, as torch.distributed.new_group. A sub-group has this group's backend, timeout and
  // address, and meets through the same rendezvous store under a key prefix of its own (no new
  // port). Creating one is collective over this group: every rank calls it, with the same
  // arguments, in the same order relative to this group's collectives and other sub-group
  // creations (ranks outside the new group only count it). Its members join it (blocking until
  // all have, at most the timeout). Ranks are numbered in ascending order of their rank here.
  // A sub-group may outlive this object; rank 0's store serves until the last group using it is
  // gone. Collectives of different groups must not be in flight at once from different threads.

  /// The group of `ranks` (this group's ranks: distinct, in [0, world_size()), any order), or
  /// nullptr on a rank that is not among them. Throws std::invalid_argument naming a bad list.
  std::shared_ptr<ProcessGroup> new_group(const std::vector<int>& ranks);
  /// One sub-group per list (new_group for each, in order; the lists must be disjoint) and returns
  /// the one this rank belongs to, or nullptr. E.g. {{0, 1}, {2, 3}}: two groups of 2.
  std::shared_ptr<ProcessGroup> new_subgroups(const std::vector<std::vector<int>>& groups);
  /// For a sub-group: the ranks of the group create() made (the job's global ranks) of its
  /// members, in this group's rank order; for a group create() made: 0 .. world_size() - 1.
  const std::vector<int>& global_ranks() const;

  struct Impl;  // private; defined in process_group.cpp

 private:
  explicit ProcessGroup(std::unique_ptr<Impl> impl);
  static void make_backend(Impl& impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace cppfabric::collectives
