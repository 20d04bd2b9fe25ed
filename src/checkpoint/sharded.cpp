// Sharded checkpoints in PyTorch's distributed-checkpoint (DCP) layout (see
// cppfabric/checkpoint/sharded.hpp). The `.metadata` pickle is written and read by
// dcp_metadata.cpp; every item in a `__<rank>_0.distcp` file is a whole torch.save archive
// (to_torch_bytes / from_torch_bytes), items simply concatenated, as Python's FileSystemWriter
// lays them out.
//
// A collective save runs in three steps, each ended by an exchange of every rank's status (so a
// failure on any rank fails every rank, naming the rank and its error):
//   1. every rank writes its data file into a temporary sibling folder and fsyncs it;
//   2. the ranks exchange what they wrote (key, piece, byte range), and each checks the same way
//      that the pieces of every key tile its global shape;
//   3. rank 0 writes `.metadata` (and `meta.pt`), fsyncs, and swaps the folder into place
//      (renameat2 RENAME_EXCHANGE, or two renames where the file system lacks it).
#include "cppfabric/checkpoint/sharded.hpp"

#include <ATen/ATen.h>
#include <c10/core/GradMode.h>
#include <dirent.h>
#include <fcntl.h>
#include <ftw.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <exception>
#include <functional>
#include <map>
#include <memory>
#include <random>
#include <stdexcept>
#include <unordered_map>
#include <utility>

#include "checkpoint/dcp_metadata.hpp"
#include "checkpoint/pickler.hpp"
#include "checkpoint/zip_archive.hpp"
#include "cppfabric/checkpoint/torch_pickle.hpp"
#include "cppfabric/collectives/process_group.hpp"
#include "cppfabric/detail/fmt.hpp"
#include "utilities/filesystem.hpp"

#ifndef RENAME_EXCHANGE
#define RENAME_EXCHANGE (1 << 1)
#endif

namespace cppfabric::checkpoint {
namespace {

constexpr const char* kMetadataFile = ".metadata";
constexpr const char* kMetaFile = "meta.pt";
// The largest `.metadata` read (a model with millions of parameter chunks stays far below).
constexpr uint64_t kMaxMetadataBytes = uint64_t(1) << 31;

using detail::DcpChunk;
using detail::DcpEntry;
using detail::DcpMetadata;
using detail::DcpPathElement;
using detail::DcpStorage;

std::string errno_text(int error = errno) { return std::strerror(error); }

std::string strip_slashes(const std::string& path) {
  std::string p = path;
  while (p.size() > 1 && p.back() == '/') p.pop_back();
  return p;
}
std::string parent_of(const std::string& path) {
  const auto slash = path.find_last_of('/');
  if (slash == std::string::npos) return ".";
  if (slash == 0) return "/";
  return path.substr(0, slash);
}
std::string base_of(const std::string& path) {
  const auto slash = path.find_last_of('/');
  return slash == std::string::npos ? path : path.substr(slash + 1);
}

bool exists(const std::string& path) {
  struct stat st {};
  return ::lstat(path.c_str(), &st) == 0;
}

int remove_entry(const char* path, const struct stat*, int type, struct FTW*) {
  return type == FTW_DP ? ::rmdir(path) : ::unlink(path);
}
// rm -rf (best effort; std::filesystem is off limits next to LibTorch, see filesystem.hpp).
void remove_all(const std::string& path) {
  struct stat st {};
  if (::lstat(path.c_str(), &st) != 0) return;
  if (!S_ISDIR(st.st_mode)) {
    ::unlink(path.c_str());
    return;
  }
  ::nftw(path.c_str(), remove_entry, 16, FTW_DEPTH | FTW_PHYS);
}

void fsync_path(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) throw std::runtime_error(fmt::format("Cannot open {}: {}", path, errno_text()));
  const int rc = ::fsync(fd);
  const int error = errno;
  ::close(fd);
  if (rc != 0 && error != EINVAL)
    throw std::runtime_error(fmt::format("fsync of {} failed: {}", path, errno_text(error)));
}

void write_all(int fd, const char* p, size_t n, const std::string& file) {
  while (n > 0) {
    const ssize_t w = ::write(fd, p, n);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0)
      throw std::runtime_error(fmt::format("Cannot write {}: {}", file,
                                           w < 0 ? errno_text() : "the write made no progress"));
    p += w;
    n -= static_cast<size_t>(w);
  }
}

// Writes `bytes` to `path` through `path`.tmp, fsync and rename.
void write_file_atomic(const std::string& path, const std::string& bytes) {
  const std::string tmp = path + ".tmp";
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) throw std::runtime_error(fmt::format("Cannot create {}: {}", tmp, errno_text()));
  try {
    write_all(fd, bytes.data(), bytes.size(), tmp);
    if (::fsync(fd) != 0) throw std::runtime_error(fmt::format("fsync of {} failed", tmp));
  } catch (...) {
    ::close(fd);
    throw;
  }
  if (::close(fd) != 0)
    throw std::runtime_error(fmt::format("Cannot write {}: {}", tmp, errno_text()));
  if (::rename(tmp.c_str(), path.c_str()) != 0)
    throw std::runtime_error(fmt::format("Cannot rename {} to {}: {}", tmp, path, errno_text()));
}

std::string join_key(const std::vector<std::string>& path) {
  std::string key;
  for (std::size_t k = 0; k < path.size(); ++k) {
    if (k > 0) key += '.';
    key += path[k];
  }
  return key;
}

int64_t volume(const std::vector<int64_t>& sizes) {
  int64_t v = 1;
  for (auto s : sizes) v *= s;
  return v;
}

// ------------------------------------------------------------------------------ collectives

c10::Device group_device(collectives::ProcessGroup& group) {
  return group.backend() == "nccl" ? c10::Device(c10::kCUDA) : c10::Device(c10::kCPU);
}

// Every rank's `mine`, indexed by rank (variable lengths: the lengths first, then padded bytes).
std::vector<std::string> exchange_bytes(collectives::ProcessGroup* group, const std::string& mine) {
  if (group == nullptr || group->world_size() == 1) return {mine};
  const auto device = group_device(*group);
  at::Tensor length =
      at::full({1}, static_cast<int64_t>(mine.size()), at::TensorOptions().dtype(at::kLong))
          .to(device);
  const std::vector<at::Tensor> lengths = group->all_gather(length);
  std::vector<int64_t> sizes;
  int64_t longest = 1;
  for (const auto& l : lengths) {
    sizes.push_back(l.to(at::kCPU).item<int64_t>());
    longest = std::max(longest, sizes.back());
  }
  at::Tensor buffer = at::zeros({longest}, at::TensorOptions().dtype(at::kByte));
  if (!mine.empty()) std::memcpy(buffer.data_ptr(), mine.data(), mine.size());
  const std::vector<at::Tensor> all = group->all_gather(buffer.to(device));
  std::vector<std::string> out;
  for (std::size_t r = 0; r < all.size(); ++r) {
    const at::Tensor cpu = all[r].to(at::kCPU).contiguous();
    out.emplace_back(static_cast<const char*>(cpu.data_ptr()), static_cast<size_t>(sizes[r]));
  }
  return out;
}

// A step's status: "" when it went well, else the error message. Every rank learns every rank's.
// Throws on every rank when any failed: the failing rank rethrows its own exception.
void agree(collectives::ProcessGroup* group, const std::exception_ptr& error,
           const std::string& dir, const std::function<void()>& cleanup) {
  std::string message;
  if (error) {
    try {
      std::rethrow_exception(error);
    } catch (const std::exception& e) {
      message = std::string("E") + e.what();
    } catch (...) {
      message = "Ean unknown exception";
    }
  }
  const std::vector<std::string> statuses = exchange_bytes(group, message);
  int failed = -1;
  for (std::size_t r = 0; r < statuses.size(); ++r) {
    if (!statuses[r].empty()) {
      failed = static_cast<int>(r);
      break;
    }
  }
  if (failed < 0) return;
  cleanup();
  if (error) std::rethrow_exception(error);
  throw std::runtime_error(fmt::format("Saving the sharded checkpoint {} failed on rank {}: {}",
                                       dir, failed, statuses[failed].substr(1)));
}

// ------------------------------------------------------------------------------ saving

void check_item(const ShardedItem& item, std::size_t position) {
  const auto where = [&] {
    return fmt::format("save_sharded: item {} ('{}')", position, join_key(item.path));
  };
  if (item.path.empty()) throw std::invalid_argument(where() + " has an empty path");
  if (item.tensor.has_value() == item.value.has_value())
    throw std::invalid_argument(where() + " must set exactly one of `tensor` and `value`");
  if (!item.list_index.empty()) {
    if (item.list_index.size() != item.path.size())
      throw std::invalid_argument(fmt::format("{} has {} list_index flags for {} path elements",
                                              where(), item.list_index.size(), item.path.size()));
    if (item.list_index[0])
      throw std::invalid_argument(where() + ": the first path element cannot be a list position");
    for (std::size_t k = 0; k < item.path.size(); ++k) {
      const auto& e = item.path[k];
      if (item.list_index[k] &&
          (e.empty() || e.size() > 9 || e.find_first_not_of("0123456789") != std::string::npos))
        throw std::invalid_argument(fmt::format(
            "{}: path element '{}' is marked as a list position but is not one", where(), e));
    }
  }
  if (!item.tensor) return;
  const TensorShard& t = *item.tensor;
  if (!t.local.defined()) throw std::invalid_argument(where() + ": `local` is an undefined tensor");
  detail::dcp_dtype_name(t.local.scalar_type());
  const auto dims = static_cast<std::size_t>(t.local.dim());
  if (t.offsets.size() != dims || t.global_shape.size() != dims)
    throw std::invalid_argument(fmt::format(
        "{}: `local` has {} dimensions, `offsets` {} and `global_shape` {} (they must agree)",
        where(), dims, t.offsets.size(), t.global_shape.size()));
  for (std::size_t d = 0; d < dims; ++d) {
    const int64_t size = t.local.size(static_cast<int64_t>(d));
    if (t.offsets[d] < 0 || t.global_shape[d] < 0 || t.offsets[d] > t.global_shape[d] - size)
      throw std::invalid_argument(fmt::format(
          "{}: the piece at offsets [{}] with sizes [{}] does not fit the global shape [{}]",
          where(), fmt::join(t.offsets, ", "), fmt::join(t.local.sizes(), ", "),
          fmt::join(t.global_shape, ", ")));
  }
}

// A tensor whose torch.save archive holds exactly its elements.
at::Tensor compact(const at::Tensor& t) {
  at::Tensor c = t.detach().to(at::kCPU);
  const auto bytes = static_cast<size_t>(c.numel()) * c.element_size();
  if (!c.is_contiguous() || c.storage_offset() != 0 || c.storage().nbytes() != bytes)
    c = c.contiguous().clone();
  return c;
}

// Writes this rank's data file; returns what it wrote, as a Value list of records.
Value write_rank_file(const std::string& tmp, int rank, const std::vector<ShardedItem>& items) {
  const std::string name = fmt::format("__{}_0.distcp", rank);
  const std::string file = tmp + "/" + name;
  const int fd = ::open(file.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) throw std::runtime_error(fmt::format("Cannot create {}: {}", file, errno_text()));
  Value::List records;
  try {
    int64_t offset = 0;
    for (const auto& item : items) {
      // A whole torch.save archive, streamed into the file (no copy of the item in memory).
      const detail::PickledValue pickled =
          detail::pickle_value(item.tensor ? Value(compact(item.tensor->local)) : *item.value);
      int64_t length = 0;
      std::string error;  // the sink never reports a short write; the error is raised after
      detail::write_zip_archive(pickled.pickle, pickled.storages,
                                [&](const void* data, size_t n) -> size_t {
                                  if (!error.empty()) return n;
                                  try {
                                    write_all(fd, static_cast<const char*>(data), n, file);
                                  } catch (const std::exception& e) {
                                    error = e.what();
                                  }
                                  length += static_cast<int64_t>(n);
                                  return n;
                                });
      if (!error.empty()) throw std::runtime_error(error);
      Value::List path, index;
      for (std::size_t k = 0; k < item.path.size(); ++k) {
        path.emplace_back(item.path[k]);
        index.emplace_back(!item.list_index.empty() && item.list_index[k]);
      }
      Value r = Value::dict();
      r.set("path", Value::list(std::move(path)));
      r.set("index", Value::list(std::move(index)));
      r.set("file", name);
      r.set("offset", offset);
      r.set("length", length);
      if (item.tensor) {
        const TensorShard& t = *item.tensor;
        r.set("dtype", static_cast<int64_t>(t.local.scalar_type()));
        r.set("requires_grad", t.local.requires_grad());
        Value::List global, offsets, sizes;
        for (auto v : t.global_shape) global.emplace_back(v);
        for (auto v : t.offsets) offsets.emplace_back(v);
        for (auto v : t.local.sizes()) sizes.emplace_back(v);
        r.set("global", Value::list(std::move(global)));
        r.set("offsets", Value::list(std::move(offsets)));
        r.set("sizes", Value::list(std::move(sizes)));
      }
      records.push_back(std::move(r));
      offset += length;
    }
    if (::fsync(fd) != 0)
      throw std::runtime_error(fmt::format("fsync of {} failed: {}", file, errno_text()));
  } catch (...) {
    ::close(fd);
    throw;
  }
  if (::close(fd) != 0)
    throw std::runtime_error(fmt::format("Cannot write {}: {}", file, errno_text()));
  fsync_path(tmp);
  return Value::list(std::move(records));
}

std::vector<int64_t> ints_of(const Value& list) {
  std::vector<int64_t> out;
  for (const auto& v : list.elements()) out.push_back(v.to_int());
  return out;
}

bool overlaps(const DcpChunk& a, const DcpChunk& b) {
  for (std::size_t d = 0; d < a.offsets.size(); ++d) {
    if (a.sizes[d] == 0 || b.sizes[d] == 0) return false;
    if (a.offsets[d] + a.sizes[d] <= b.offsets[d] || b.offsets[d] + b.sizes[d] <= a.offsets[d])
      return false;
  }
  return true;
}

// Every rank's records -> the checkpoint's metadata; the same checks on every rank.
DcpMetadata merge(const std::vector<std::string>& blobs, const std::string& dir) {
  DcpMetadata md;
  std::unordered_map<std::string, std::size_t> by_key;
  std::vector<std::vector<int>> chunk_ranks;  // per entry: the rank of each chunk
  std::vector<int> value_rank;
  for (std::size_t rank = 0; rank < blobs.size(); ++rank) {
    const Value records = from_torch_bytes(blobs[rank], fmt::format("rank {}'s records", rank));
    for (const auto& r : records.elements()) {
      DcpEntry e;
      for (std::size_t k = 0; k < r.at("path").elements().size(); ++k) {
        const std::string& name = r.at("path").elements()[k].to_string();
        DcpPathElement p{name, std::nullopt};
        if (r.at("index").elements()[k].to_bool()) p.index = std::stoll(name);
        e.path.push_back(std::move(p));
      }
      for (std::size_t k = 0; k < e.path.size(); ++k) {
        if (k > 0) e.key.append(".");
        e.key.append(e.path[k].key);
      }
      const DcpStorage storage{r.at("file").to_string(), r.at("offset").to_int(),
                               r.at("length").to_int()};
      e.is_tensor = r.find("dtype") != nullptr;
      if (e.is_tensor) {
        e.dtype = static_cast<c10::ScalarType>(r.at("dtype").to_int());
        e.requires_grad = r.at("requires_grad").to_bool();
        e.size = ints_of(r.at("global"));
      }
      auto [it, inserted] = by_key.try_emplace(e.key, md.entries.size());
      if (inserted) {
        md.entries.push_back(e);
        chunk_ranks.emplace_back();
        value_rank.push_back(-1);
      }
      DcpEntry& entry = md.entries[it->second];
      if (!(entry.path == e.path))
        throw std::invalid_argument(fmt::format(
            "save_sharded: two different paths flatten to the key '{}' (keys join with '.')",
            e.key));
      if (entry.is_tensor != e.is_tensor)
        throw std::invalid_argument(fmt::format(
            "save_sharded: '{}' is a tensor on one rank and a value on another (rank {} passes a "
            "{})",
            e.key, rank, e.is_tensor ? "tensor" : "value"));
      if (!e.is_tensor) {
        if (value_rank[it->second] >= 0)
          throw std::invalid_argument(fmt::format(
              "save_sharded: the value '{}' is passed by rank {} and by rank {} (pass a value on "
              "one rank only)",
              e.key, value_rank[it->second], rank));
        value_rank[it->second] = static_cast<int>(rank);
        entry.storage = storage;
        continue;
      }
      if (entry.dtype != e.dtype || entry.size != e.size)
        throw std::invalid_argument(fmt::format(
            "save_sharded: the pieces of '{}' disagree: {} of global shape [{}] on one rank, {} "
            "of global shape [{}] on rank {}",
            e.key, c10::toString(entry.dtype), fmt::join(entry.size, ", "), c10::toString(e.dtype),
            fmt::join(e.size, ", "), rank));
      entry.chunks.push_back(DcpChunk{ints_of(r.at("offsets")), ints_of(r.at("sizes")), storage});
      chunk_ranks[it->second].push_back(static_cast<int>(rank));
    }
  }
  for (std::size_t k = 0; k < md.entries.size(); ++k) {
    const DcpEntry& e = md.entries[k];
    if (!e.is_tensor) continue;
    int64_t covered = 0;
    for (std::size_t a = 0; a < e.chunks.size(); ++a) {
      covered += volume(e.chunks[a].sizes);
      for (std::size_t b = a + 1; b < e.chunks.size(); ++b) {
        if (overlaps(e.chunks[a], e.chunks[b]))
          throw std::invalid_argument(fmt::format(
              "save_sharded: two pieces of '{}' overlap: offsets [{}] sizes [{}] from rank {} and "
              "offsets [{}] sizes [{}] from rank {} (pass a replicated tensor on one rank only)",
              e.key, fmt::join(e.chunks[a].offsets, ", "), fmt::join(e.chunks[a].sizes, ", "),
              chunk_ranks[k][a], fmt::join(e.chunks[b].offsets, ", "),
              fmt::join(e.chunks[b].sizes, ", "), chunk_ranks[k][b]));
      }
    }
    if (covered != volume(e.size))
      throw std::invalid_argument(fmt::format(
          "save_sharded: the pieces of '{}' cover {} of the {} elements of its global shape [{}]; "
          "together they must tile it",
          e.key, covered, volume(e.size), fmt::join(e.size, ", ")));
  }
  (void)dir;
  return md;
}

// Rank 0: checks that `dir` may be replaced (nothing, a file, an empty folder or a checkpoint).
void check_replaceable(const std::string& dir) {
  struct stat st {};
  if (::lstat(dir.c_str(), &st) != 0 || !S_ISDIR(st.st_mode)) return;
  if (is_sharded_checkpoint(dir)) return;
  DIR* d = ::opendir(dir.c_str());
  if (d == nullptr) return;
  bool empty = true;
  while (dirent* e = ::readdir(d)) {
    if (std::strcmp(e->d_name, ".") != 0 && std::strcmp(e->d_name, "..") != 0) {
      empty = false;
      break;
    }
  }
  ::closedir(d);
  if (!empty)
    throw std::runtime_error(fmt::format(
        "Cannot save the sharded checkpoint {}: that folder exists and is not a sharded "
        "checkpoint (it has no {}); refusing to replace it. Remove it or choose another path",
        dir, kMetadataFile));
}

// Rank 0: swaps the finished folder `tmp` into place at `dir` and removes what was there.
void commit(const std::string& tmp, const std::string& dir, const std::string& old) {
  check_replaceable(dir);
  if (!exists(dir)) {
    if (::rename(tmp.c_str(), dir.c_str()) != 0)
      throw std::runtime_error(
          fmt::format("Cannot move {} into place at {}: {}", tmp, dir, errno_text()));
  } else if (::syscall(SYS_renameat2, AT_FDCWD, tmp.c_str(), AT_FDCWD, dir.c_str(),
                       RENAME_EXCHANGE) == 0) {
    remove_all(tmp);  // now the previous checkpoint
  } else {
    // No atomic exchange here: the previous checkpoint moves aside, then the new one in.
    if (::rename(dir.c_str(), old.c_str()) != 0)
      throw std::runtime_error(
          fmt::format("Cannot move the previous checkpoint {} aside: {}", dir, errno_text()));
    if (::rename(tmp.c_str(), dir.c_str()) != 0) {
      const std::string why = errno_text();
      ::rename(old.c_str(), dir.c_str());
      throw std::runtime_error(fmt::format("Cannot move {} into place at {}: {}", tmp, dir, why));
    }
    remove_all(old);
  }
  fsync_path(parent_of(dir));
}

// ------------------------------------------------------------------------------ loading

class Reader {
 public:
  explicit Reader(const std::string& dir) : dir_(strip_slashes(dir)) {
    const std::string path = dir_ + "/" + kMetadataFile;
    if (!cppfabric::detail::is_directory(dir_))
      throw std::runtime_error(
          fmt::format("Sharded checkpoint not found: {} is not a folder", dir_));
    const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0)
      throw std::runtime_error(fmt::format("{} is not a sharded checkpoint: it has no {} file ({})",
                                           dir_, kMetadataFile, errno_text()));
    struct stat st {};
    ::fstat(fd, &st);
    const auto size = static_cast<uint64_t>(st.st_size);
    if (size > kMaxMetadataBytes) {
      ::close(fd);
      throw std::runtime_error(
          fmt::format("{} is {} bytes, more than the {} allowed", path, size, kMaxMetadataBytes));
    }
    std::string bytes(size, '\0');
    const bool ok = read_at(fd, 0, bytes.data(), size);
    ::close(fd);
    if (!ok) throw std::runtime_error(fmt::format("Cannot read {}: {}", path, errno_text()));
    md_ = detail::read_dcp_metadata(bytes, path);
    for (std::size_t k = 0; k < md_.entries.size(); ++k) by_key_[md_.entries[k].key] = k;
  }
  ~Reader() {
    for (auto& [name, f] : files_) ::close(f.first);
  }
  Reader(const Reader&) = delete;
  Reader& operator=(const Reader&) = delete;

  const std::string& dir() const { return dir_; }
  const DcpMetadata& metadata() const { return md_; }
  const DcpEntry* find(const std::string& key) const {
    auto it = by_key_.find(key);
    return it == by_key_.end() ? nullptr : &md_.entries[it->second];
  }

  Value read_item(const DcpStorage& s, const std::string& key) {
    auto it = files_.find(s.relative_path);
    const std::string file = dir_ + "/" + s.relative_path;
    if (it == files_.end()) {
      const int fd = ::open(file.c_str(), O_RDONLY | O_CLOEXEC);
      if (fd < 0)
        throw std::runtime_error(fmt::format("Cannot open {} (it holds '{}' of the checkpoint): {}",
                                             file, key, errno_text()));
      struct stat st {};
      ::fstat(fd, &st);
      it = files_.emplace(s.relative_path, std::make_pair(fd, static_cast<int64_t>(st.st_size)))
               .first;
    }
    const auto [fd, size] = it->second;
    if (s.offset > size || s.length > size - s.offset)
      throw std::runtime_error(fmt::format(
          "Cannot read '{}' from the sharded checkpoint {}: its bytes [{}, {}) lie beyond the end "
          "of {} ({} bytes; truncated?)",
          key, dir_, s.offset, s.offset + s.length, s.relative_path, size));
    // Not a std::string: its zero fill would be one more pass over every byte.
    const auto length = static_cast<size_t>(s.length);
    std::unique_ptr<char[]> bytes(new char[std::max<size_t>(length, 1)]);
    if (!read_at(fd, static_cast<uint64_t>(s.offset), bytes.get(), length))
      throw std::runtime_error(fmt::format("Cannot read {}: {}", file, errno_text()));
    return from_torch_bytes(std::string_view(bytes.get(), length),
                            fmt::format("{} (item '{}')", file, key));
  }

  at::Tensor read_chunk(const DcpEntry& e, std::size_t c) {
    if (cached_entry_ == &e && cached_chunk_ == c) return cached_;
    const Value v = read_item(e.chunks[c].storage, e.key);
    if (v.kind() != Value::Kind::Tensor)
      throw std::runtime_error(
          fmt::format("The sharded checkpoint {}: chunk {} of '{}' holds a {}, "
                      "not a tensor",
                      dir_, c, e.key, v.type_name()));
    const at::Tensor& t = v.to_tensor();
    if (t.scalar_type() != e.dtype || t.sizes().vec() != e.chunks[c].sizes)
      throw std::runtime_error(fmt::format(
          "The sharded checkpoint {}: chunk {} of '{}' holds a {} tensor of size [{}] where its "
          "metadata says {} [{}]",
          dir_, c, e.key, c10::toString(t.scalar_type()), fmt::join(t.sizes(), ", "),
          c10::toString(e.dtype), fmt::join(e.chunks[c].sizes, ", ")));
    cached_entry_ = &e;
    cached_chunk_ = c;
    cached_ = t;
    return t;
  }

  // Fills `dest`, the region of `e` starting at `offsets`, from the chunks that overlap it.
  void fill(const DcpEntry& e, at::Tensor& dest, const std::vector<int64_t>& offsets) {
    const std::vector<int64_t> sizes = dest.sizes().vec();
    const int64_t want = volume(sizes);
    if (want == 0) return;
    int64_t covered = 0;
    for (std::size_t c = 0; c < e.chunks.size(); ++c) {
      const DcpChunk& chunk = e.chunks[c];
      std::vector<int64_t> lo(sizes.size()), len(sizes.size());
      bool empty = false;
      for (std::size_t d = 0; d < sizes.size(); ++d) {
        lo[d] = std::max(offsets[d], chunk.offsets[d]);
        const int64_t hi = std::min(offsets[d] + sizes[d], chunk.offsets[d] + chunk.sizes[d]);
        len[d] = hi - lo[d];
        if (len[d] <= 0) empty = true;
      }
      if (empty) continue;
      at::Tensor src = read_chunk(e, c);
      at::Tensor dst = dest;
      for (std::size_t d = 0; d < sizes.size(); ++d) {
        const auto dim = static_cast<int64_t>(d);
        src = src.narrow(dim, lo[d] - chunk.offsets[d], len[d]);
        dst = dst.narrow(dim, lo[d] - offsets[d], len[d]);
      }
      c10::NoGradGuard no_grad;
      dst.copy_(src);
      covered += volume(len);
    }
    if (covered != want)
      throw std::runtime_error(fmt::format(
          "The sharded checkpoint {} lacks part of '{}': its chunks cover {} of the {} elements of "
          "the region at offsets [{}] with sizes [{}]",
          dir_, e.key, covered, want, fmt::join(offsets, ", "), fmt::join(sizes, ", ")));
  }

 private:
  static bool read_at(int fd, uint64_t offset, char* dst, uint64_t n) {
    while (n > 0) {
      const ssize_t r = ::pread(fd, dst, n, static_cast<off_t>(offset));
      if (r < 0 && errno == EINTR) continue;
      if (r <= 0) {
        if (r == 0) errno = EIO;
        return false;
      }
      dst += r;
      offset += static_cast<uint64_t>(r);
      n -= static_cast<uint64_t>(r);
    }
    return true;
  }

  std::string dir_;
  DcpMetadata md_;
  std::unordered_map<std::string, std::size_t> by_key_;
  std::map<std::string, std::pair<int, int64_t>> files_;
  const DcpEntry* cached_entry_ = nullptr;
  std::size_t cached_chunk_ = 0;
  at::Tensor cached_;
};

// One entry, whole: a tensor on the CPU (its only chunk as read, when that chunk is all of it) or
// the saved value.
Value read_entry(Reader& reader, const DcpEntry& e) {
  if (!e.is_tensor) return reader.read_item(e.storage, e.key);
  if (e.chunks.size() == 1 && e.chunks[0].sizes == e.size) return Value(reader.read_chunk(e, 0));
  at::Tensor full = at::empty(e.size, at::TensorOptions().dtype(e.dtype));
  reader.fill(e, full, std::vector<int64_t>(e.size.size(), 0));
  return Value(full);
}

// DCP's set_element: puts `value` at `path` in `root`, making dicts (string keys) and lists
// (list positions, padded with None) on the way.
void set_element(Value& root, const std::vector<DcpPathElement>& path, Value value,
                 const std::string& key) {
  const auto conflict = [&] {
    return std::runtime_error(
        fmt::format("The sharded checkpoint's paths conflict at '{}' (another key holds a value "
                    "where this one needs a container)",
                    key));
  };
  const auto child = [&](Value* container, const DcpPathElement& at, bool make_list) -> Value* {
    const auto fresh = [&] { return make_list ? Value::list() : Value::dict(); };
    if (container->is_dict()) {
      const Value k = at.index ? Value(*at.index) : Value(at.key);
      if (container->find(k) == nullptr) container->set(k, fresh());
      return container->find(k);
    }
    if (container->kind() != Value::Kind::List || !at.index) throw conflict();
    auto& elements = container->elements();
    while (static_cast<int64_t>(elements.size()) <= *at.index) elements.emplace_back();
    Value& slot = elements[static_cast<size_t>(*at.index)];
    if (slot.is_none()) slot = fresh();
    return &slot;
  };
  Value* cur = &root;
  for (std::size_t k = 1; k < path.size(); ++k) {
    cur = child(cur, path[k - 1], path[k].index.has_value());
    if (!cur->is_dict() && cur->kind() != Value::Kind::List) throw conflict();
  }
  const DcpPathElement& last = path.back();
  if (cur->is_dict()) {
    cur->set(last.index ? Value(*last.index) : Value(last.key), std::move(value));
    return;
  }
  if (!last.index) throw conflict();
  auto& elements = cur->elements();
  while (static_cast<int64_t>(elements.size()) <= *last.index) elements.emplace_back();
  elements[static_cast<size_t>(*last.index)] = std::move(value);
}

std::vector<std::string> path_strings(const DcpEntry& e) {
  if (e.path.empty()) return {e.key};
  std::vector<std::string> out;
  for (const auto& p : e.path) out.push_back(p.key);
  return out;
}

// DCP's traversal (torch/distributed/checkpoint/_traverse.py, traverse_state_dict).
bool is_terminal(const Value& v) {
  if (v.is_dict()) return false;
  if (v.kind() != Value::Kind::List) return true;
  for (const auto& e : v.elements()) {
    if ((e.is_dict() || e.kind() == Value::Kind::List) && !is_terminal(e)) return false;
    if (e.kind() == Value::Kind::Tensor) return false;
  }
  return true;
}

std::string key_string(const Value& k) {
  switch (k.kind()) {
    case Value::Kind::String:
      return k.to_string();
    case Value::Kind::Int:
      return std::to_string(k.to_int());
    case Value::Kind::Bool:
      return k.to_bool() ? "True" : "False";
    case Value::Kind::None:
      return "None";
    case Value::Kind::Double:
      return fmt::format("{}", k.to_double());
    default:
      throw std::invalid_argument(
          fmt::format("flatten_state: a dict key of type {} ({})", k.type_name(), k.repr()));
  }
}

void traverse(const Value& v, std::vector<std::string>& path, std::vector<bool>& index,
              std::vector<ShardedItem>& out) {
  if (v.is_dict()) {
    for (const auto& [k, item] : v.items()) {
      path.push_back(key_string(k));
      index.push_back(false);
      traverse(item, path, index, out);
      path.pop_back();
      index.pop_back();
    }
    return;
  }
  if (is_terminal(v)) {
    ShardedItem item;
    item.path = path;
    bool any = false;
    for (bool b : index) any = any || b;
    if (any) item.list_index = index;
    if (v.kind() == Value::Kind::Tensor) {
      const at::Tensor& t = v.to_tensor();
      item.tensor =
          TensorShard{t, std::vector<int64_t>(static_cast<size_t>(t.dim()), 0), t.sizes().vec()};
    } else {
      item.value = v;
    }
    out.push_back(std::move(item));
    return;
  }
  const auto& elements = v.elements();
  for (std::size_t k = 0; k < elements.size(); ++k) {
    path.push_back(std::to_string(k));
    index.push_back(true);
    traverse(elements[k], path, index, out);
    path.pop_back();
    index.pop_back();
  }
}

// The rectangles of the row-major range [b, e) of `shape` (dims from `dim` on), each as
// (offsets, sizes) with `prefix` fixed in the leading dimensions.
void split_range(const std::vector<int64_t>& shape, std::size_t dim, int64_t b, int64_t e,
                 std::vector<int64_t>& prefix,
                 std::vector<std::pair<std::vector<int64_t>, std::vector<int64_t>>>& out) {
  if (b >= e) return;
  const auto emit = [&](int64_t first, int64_t count) {
    std::vector<int64_t> offsets = prefix, sizes(prefix.size(), 1);
    offsets.push_back(first);
    sizes.push_back(count);
    for (std::size_t d = dim + 1; d < shape.size(); ++d) {
      offsets.push_back(0);
      sizes.push_back(shape[d]);
    }
    out.emplace_back(std::move(offsets), std::move(sizes));
  };
  if (dim + 1 == shape.size()) {
    emit(b, e - b);
    return;
  }
  int64_t inner = 1;
  for (std::size_t d = dim + 1; d < shape.size(); ++d) inner *= shape[d];
  int64_t row_b = b / inner;
  const int64_t row_e = e / inner;
  const auto recurse = [&](int64_t row, int64_t lo, int64_t hi) {
    prefix.push_back(row);
    split_range(shape, dim + 1, lo, hi, prefix, out);
    prefix.pop_back();
  };
  if (row_b == row_e) {
    recurse(row_b, b - row_b * inner, e - row_b * inner);
    return;
  }
  if (b % inner != 0) {
    recurse(row_b, b % inner, inner);
    ++row_b;
  }
  if (row_e > row_b) emit(row_b, row_e - row_b);
  if (e % inner != 0) recurse(row_e, 0, e % inner);
}

}  // namespace

// ------------------------------------------------------------------------------ public

std::vector<TensorShard> shard_flat_range(const at::Tensor& flat, int64_t begin,
                                          const std::vector<int64_t>& global_shape) {
  if (!flat.defined() || flat.dim() != 1 || !flat.is_contiguous())
    throw std::invalid_argument("shard_flat_range: `flat` must be a 1-D contiguous tensor");
  int64_t numel = 1;
  for (auto s : global_shape) {
    if (s < 0) throw std::invalid_argument("shard_flat_range: a negative size in global_shape");
    numel *= s;
  }
  const int64_t count = flat.numel();
  if (begin < 0 || begin > numel - count)
    throw std::invalid_argument(fmt::format(
        "shard_flat_range: elements [{}, {}) do not fit a tensor of shape [{}] ({} elements)",
        begin, begin + count, fmt::join(global_shape, ", "), numel));
  std::vector<TensorShard> out;
  if (count == 0) return out;
  if (global_shape.empty()) {
    out.push_back({flat.view({}), {}, {}});
    return out;
  }
  std::vector<std::pair<std::vector<int64_t>, std::vector<int64_t>>> pieces;
  std::vector<int64_t> prefix;
  split_range(global_shape, 0, begin, begin + count, prefix, pieces);
  int64_t at = 0;
  for (auto& [offsets, sizes] : pieces) {
    const int64_t n = volume(sizes);
    out.push_back({flat.narrow(0, at, n).view(sizes), std::move(offsets), global_shape});
    at += n;
  }
  return out;
}

std::string flattened_key(const ShardedItem& item) { return join_key(item.path); }

std::vector<ShardedItem> flatten_state(const Value& state) {
  if (!state.is_dict())
    throw std::invalid_argument(
        fmt::format("flatten_state: the state must be a dict, not a {}", state.type_name()));
  std::vector<ShardedItem> out;
  std::vector<std::string> path;
  std::vector<bool> index;
  traverse(state, path, index, out);
  std::unordered_map<std::string, std::size_t> seen;
  for (std::size_t k = 0; k < out.size(); ++k) {
    const std::string key = join_key(out[k].path);
    if (!seen.emplace(key, k).second)
      throw std::invalid_argument(fmt::format(
          "flatten_state: two entries flatten to the key '{}' (keys join with '.')", key));
  }
  return out;
}

void save_sharded(const std::string& dir_in, const std::vector<ShardedItem>& items,
                  const Value* meta, collectives::ProcessGroup* group) {
  const std::string dir = strip_slashes(dir_in);
  if (dir.empty()) throw std::invalid_argument("save_sharded: the checkpoint path is empty");
  const int rank = group != nullptr ? group->rank() : 0;

  // One random name for the temporary folder, chosen by rank 0; every rank must pass the same
  // path (Lightning broadcasts rank 0's): exchanged and compared, a mismatch fails every rank.
  std::random_device rd;
  uint64_t token = (static_cast<uint64_t>(rd()) << 32) ^ rd();
  {
    std::string mine(8, '\0');
    std::memcpy(mine.data(), &token, 8);
    mine += dir;
    const std::vector<std::string> all = exchange_bytes(group, mine);
    std::memcpy(&token, all[0].data(), 8);
    for (std::size_t r = 1; r < all.size(); ++r) {
      if (all[r].compare(8, std::string::npos, all[0], 8, std::string::npos) != 0)
        throw std::invalid_argument(fmt::format(
            "save_sharded: the ranks passed different paths: rank 0 '{}', rank {} '{}' (every "
            "rank must pass the same folder)",
            all[0].substr(8), r, all[r].substr(8)));
    }
  }
  const std::string parent = parent_of(dir);
  const std::string base = base_of(dir);
  const std::string tmp = fmt::format("{}/.{}.sharded-tmp-{:016x}", parent, base, token);
  const std::string old = fmt::format("{}/.{}.sharded-old-{:016x}", parent, base, token);
  const auto cleanup = [&] {
    if (rank == 0) remove_all(tmp);
  };

  // 1. every rank writes its file
  std::exception_ptr error;
  std::string records;
  try {
    for (std::size_t k = 0; k < items.size(); ++k) check_item(items[k], k);
    if (rank == 0) {
      if (meta != nullptr && !meta->is_dict())
        throw std::invalid_argument(
            fmt::format("save_sharded: `meta` must be a dict (it becomes meta.pt), not a {}",
                        meta->type_name()));
      check_replaceable(dir);
    }
    std::string failed;
    if (const int e = cppfabric::detail::make_directories(tmp, &failed))
      throw std::runtime_error(fmt::format("Cannot create the folder {}: {}", failed,
                                           cppfabric::detail::make_directories_error_text(e)));
    records = to_torch_bytes(write_rank_file(tmp, rank, items));
  } catch (...) {
    error = std::current_exception();
  }
  agree(group, error, dir, cleanup);

  // 2. every rank learns what every rank wrote and checks it
  const std::vector<std::string> all = exchange_bytes(group, records);
  DcpMetadata md;
  try {
    md = merge(all, dir);
  } catch (...) {
    cleanup();
    throw;
  }

  // 3. rank 0 writes the index and commits
  error = nullptr;
  if (rank == 0) {
    try {
      md.save_id = fmt::format("cppfabric-{:016x}", token);
      if (meta != nullptr) save_torch_file(*meta, tmp + "/" + kMetaFile);
      write_file_atomic(tmp + "/" + kMetadataFile, detail::write_dcp_metadata(md));
      fsync_path(tmp);
      commit(tmp, dir, old);
    } catch (...) {
      error = std::current_exception();
    }
  }
  agree(group, error, dir, cleanup);
}

void load_sharded(const std::string& dir, std::vector<ShardedItem>& items) {
  Reader reader(dir);
  for (auto& item : items) {
    const std::string key = join_key(item.path);
    const DcpEntry* e = reader.find(key);
    if (e == nullptr)
      throw std::runtime_error(
          fmt::format("The sharded checkpoint {} has no entry '{}'", reader.dir(), key));
    if (item.tensor.has_value() != e->is_tensor)
      throw std::runtime_error(fmt::format(
          "The sharded checkpoint {} holds '{}' as a {}, but a {} was requested", reader.dir(), key,
          e->is_tensor ? "tensor" : "value", item.tensor ? "tensor" : "value"));
    if (!item.tensor) {
      item.value = reader.read_item(e->storage, key);
      continue;
    }
    TensorShard& t = *item.tensor;
    if (t.global_shape != e->size)
      throw std::runtime_error(fmt::format(
          "The sharded checkpoint {} holds '{}' with global shape [{}], but [{}] was requested",
          reader.dir(), key, fmt::join(e->size, ", "), fmt::join(t.global_shape, ", ")));
    if (!t.local.defined() || t.offsets.size() != e->size.size() ||
        t.local.dim() != static_cast<int64_t>(e->size.size()))
      throw std::invalid_argument(fmt::format(
          "load_sharded: the request for '{}' needs a defined `local` and `offsets` with {} "
          "dimensions",
          key, e->size.size()));
    for (std::size_t d = 0; d < e->size.size(); ++d) {
      if (t.offsets[d] < 0 || t.offsets[d] > e->size[d] - t.local.size(static_cast<int64_t>(d)))
        throw std::invalid_argument(fmt::format(
            "load_sharded: the region at offsets [{}] with sizes [{}] lies outside '{}' [{}]",
            fmt::join(t.offsets, ", "), fmt::join(t.local.sizes(), ", "), key,
            fmt::join(e->size, ", ")));
    }
    reader.fill(*e, t.local, t.offsets);
  }
}

ShardedMetadata read_sharded_metadata(const std::string& dir) {
  Reader reader(dir);
  ShardedMetadata out;
  for (const auto& e : reader.metadata().entries) {
    if (e.is_tensor) {
      out.tensors.push_back({path_strings(e), e.size, e.dtype});
    } else {
      out.values.push_back(path_strings(e));
    }
  }
  out.has_meta = cppfabric::detail::is_regular_file(reader.dir() + "/" + kMetaFile);
  return out;
}

Value load_sharded_full(const std::string& dir) {
  Reader reader(dir);
  Value root = Value::dict();
  for (const auto& e : reader.metadata().entries) {
    Value v = read_entry(reader, e);
    if (e.path.empty()) {
      root.set(e.key, std::move(v));
    } else {
      set_element(root, e.path, std::move(v), e.key);
    }
  }
  const std::string meta = reader.dir() + "/" + kMetaFile;
  if (cppfabric::detail::is_regular_file(meta)) {
    const Value extra = load_torch_file(meta);
    if (!extra.is_dict())
      throw std::runtime_error(
          fmt::format("{} holds a {}, not a dict of values", meta, extra.type_name()));
    for (const auto& [k, v] : extra.items()) root.set(k, v);
  }
  return root;
}

Value load_sharded_full(const std::string& dir, const std::vector<std::string>& prefix) {
  Reader reader(dir);
  Value root = Value::dict();
  bool any = false;
  for (const auto& e : reader.metadata().entries) {
    const std::vector<std::string> names = path_strings(e);
    if (names.size() < prefix.size() || !std::equal(prefix.begin(), prefix.end(), names.begin()))
      continue;
    any = true;
    Value v = read_entry(reader, e);
    if (e.path.empty()) {
      root.set(e.key, std::move(v));
    } else {
      set_element(root, e.path, std::move(v), e.key);
    }
  }
  if (!any)
    throw std::runtime_error(fmt::format("The sharded checkpoint {} has nothing under '{}'",
                                         reader.dir(), join_key(prefix)));
  const Value* node = &root;
  for (const auto& name : prefix) {
    const Value* next = nullptr;
    if (node->is_dict()) {
      next = node->find(Value(name));
    } else if (node->kind() == Value::Kind::List &&
               name.find_first_not_of("0123456789") == std::string::npos && !name.empty() &&
               std::stoull(name) < node->elements().size()) {
      next = &node->elements()[std::stoull(name)];
    }
    if (next == nullptr)
      throw std::runtime_error(fmt::format("The sharded checkpoint {} has nothing under '{}'",
                                           reader.dir(), join_key(prefix)));
    node = next;
  }
  return *node;
}

bool is_sharded_checkpoint(const std::string& path) {
  return cppfabric::detail::is_directory(path) &&
         cppfabric::detail::is_regular_file(strip_slashes(path) + "/" + kMetadataFile);
}

void consolidate(const std::string& dir, const std::string& out) {
  save_torch_file(load_sharded_full(dir), out);
}

}  // namespace cppfabric::checkpoint
