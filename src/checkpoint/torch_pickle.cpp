// torch.save's format: a zip archive (stored entries) with <name>/data.pkl (pickle protocol 2),
// one <name>/data/<key> record per storage, and a few small metadata records.
// Here: the public functions and the atomic file replace. The parts: pickler.cpp (Value -> pickle),
// zip_archive.cpp (the bounded zip reader; the writer of PyTorchStreamWriter's bytes),
// unpickler.cpp (pickle -> Value, never executing anything).
#include "cppfabric/checkpoint/torch_pickle.hpp"

#include <c10/util/Exception.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <memory>
#include <random>
#include <system_error>
#include <thread>

#include "checkpoint/pickler.hpp"
#include "checkpoint/unpickler.hpp"
#include "checkpoint/zip_archive.hpp"
#include "cppfabric/checkpoint/checkpoint_io.hpp"
#include "cppfabric/detail/fmt.hpp"
#include "utilities/filesystem.hpp"

namespace cppfabric::checkpoint {
namespace {

void write_archive(const Value& value, const detail::ZipSink& sink) {
  const detail::PickledValue pickled = detail::pickle_value(value);
  detail::write_zip_archive(pickled.pickle, pickled.storages, sink);
}

Value read_archive_unchecked(std::unique_ptr<detail::ByteSource> src, const std::string& what,
                             const ReadLimits& limits) {
  detail::ZipReader zip(std::move(src), what, limits);
  if (zip.find("byteorder") != nullptr) {
    const std::string order = zip.read_small("byteorder", 16);
    if (order != "little") zip.fail(fmt::format("byte order '{}' is not supported", order));
  }
  const detail::Record* pkl = zip.find("data.pkl");
  if (pkl == nullptr) zip.fail("there is no data.pkl record");
  const std::string pickle = zip.read_small("data.pkl", uint64_t(1) << 32);
  return detail::unpickle(pickle, zip, limits);
}

// The reader's boundary: whatever LibTorch or the standard library raises on hostile input
// becomes a std::runtime_error naming the file, with LibTorch's message but not its backtrace.
Value read_archive(std::unique_ptr<detail::ByteSource> src, const std::string& what,
                   const ReadLimits& limits) {
  const auto error = [&](const std::string& why) {
    return std::runtime_error(fmt::format("Cannot read checkpoint {}: {}", what, why));
  };
  try {
    return read_archive_unchecked(std::move(src), what, limits);
  } catch (const c10::Error& e) {
    throw error(e.what_without_backtrace());
  } catch (const std::bad_alloc&) {
    throw error("out of memory while building its contents");
  } catch (const std::logic_error& e) {
    throw error(e.what());
  }
}

std::string errno_text() { return std::strerror(errno); }

std::string parent_dir(const std::string& path) {
  const auto slash = path.find_last_of('/');
  if (slash == std::string::npos) return ".";
  if (slash == 0) return "/";
  return path.substr(0, slash);
}

void make_directories(const std::string& path) {
  std::string failed;
  if (const int error = cppfabric::detail::make_directories(path, &failed)) {
    throw std::runtime_error(fmt::format("Cannot create the folder {}: {}", failed,
                                         cppfabric::detail::make_directories_error_text(error)));
  }
}

// Closes `fd` on a detached thread (inline when no thread can be started).
void release_in_background(int fd) {
  try {
    std::thread([fd] { ::close(fd); }).detach();
  } catch (const std::system_error&) {
    ::close(fd);
  }
}

}  // namespace

std::string to_torch_bytes(const Value& value) {
  std::string out;
  write_archive(value, [&](const void* data, size_t n) {
    out.append(static_cast<const char*>(data), n);
    return n;
  });
  return out;
}

Value from_torch_bytes(std::string_view bytes, const std::string& what, const ReadLimits& limits) {
  return read_archive(std::make_unique<detail::MemorySource>(bytes), what, limits);
}

void save_torch_file(const Value& value, const std::string& path) {
  save_torch_file(value, path, SaveOptions{});
}

void save_torch_file(const Value& value, const std::string& path, const SaveOptions& options) {
  // Pickle first: a value that cannot be saved fails before any file is touched.
  const detail::PickledValue pickled = detail::pickle_value(value);
  const std::string dir = parent_dir(path);
  make_directories(dir);
  const auto slash = path.find_last_of('/');
  const std::string base = slash == std::string::npos ? path : path.substr(slash + 1);
  std::random_device rd;
  const std::string tmp = fmt::format("{}/.{}.tmp.{}.{:08x}", dir, base, ::getpid(), rd());
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
  if (fd < 0) {
    throw std::runtime_error(fmt::format("Cannot write the checkpoint {}: creating {} failed: {}",
                                         path, tmp, errno_text()));
  }
  const auto fail = [&](const std::string& why) {
    ::close(fd);
    ::unlink(tmp.c_str());
    throw std::runtime_error(fmt::format("Cannot write the checkpoint {}: {}", path, why));
  };
  // Durable saves start the write-back of every 16 MiB as soon as it is written, so the disk
  // works while the rest is copied and the final fsync waits only for the tail.
  constexpr uint64_t kWritebackStep = uint64_t(16) << 20;
  uint64_t written = 0, started = 0;
  std::string error;
  try {
    detail::write_zip_archive(
        pickled.pickle, pickled.storages, [&](const void* data, size_t n) -> size_t {
          const char* p = static_cast<const char*>(data);
          size_t left = n;
          while (left > 0) {
            const ssize_t w = ::write(fd, p, left);
            if (w < 0 && errno == EINTR) continue;
            if (w <= 0) {
              error = w < 0 ? errno_text() : "the write made no progress";
              return n - left;
            }
            p += w;
            left -= static_cast<size_t>(w);
          }
          written += n;
          if (options.durable && written - started >= kWritebackStep) {
            ::sync_file_range(fd, static_cast<off64_t>(started),
                              static_cast<off64_t>(written - started), SYNC_FILE_RANGE_WRITE);
            started = written;
          }
          return n;
        });
  } catch (const std::exception& e) {
    fail(error.empty() ? std::string(e.what()) : error);
  }
  if (options.durable && ::fsync(fd) != 0) fail(fmt::format("fsync failed: {}", errno_text()));
  if (::close(fd) != 0) {
    const std::string why = errno_text();
    ::unlink(tmp.c_str());
    throw std::runtime_error(fmt::format("Cannot write the checkpoint {}: {}", path, why));
  }
  // The file being replaced: held open across the rename, so that freeing its blocks (0.5-1 s
  // for 2 GiB on ext4, in the rename otherwise) happens when this descriptor closes, on a
  // background thread, not while the caller waits.
  const int old_fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK);
  if (::rename(tmp.c_str(), path.c_str()) != 0) {
    const std::string why = errno_text();
    if (old_fd >= 0) ::close(old_fd);
    ::unlink(tmp.c_str());
    throw std::runtime_error(
        fmt::format("Cannot move the checkpoint into place at {}: {}", path, why));
  }
  if (options.durable) {
    // Make the rename itself durable.
    const int dfd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd >= 0) {
      ::fsync(dfd);
      ::close(dfd);
    }
  }
  if (old_fd >= 0) release_in_background(old_fd);
}

Value load_torch_file(const std::string& path, const ReadLimits& limits) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    if (errno == ENOENT)
      throw std::runtime_error(fmt::format("Checkpoint file not found: {}", path));
    throw std::runtime_error(fmt::format("Cannot open the checkpoint {}: {}", path, errno_text()));
  }
  struct stat st {};
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    throw std::runtime_error(fmt::format("The checkpoint {} is not a regular file", path));
  }
  const auto size = static_cast<uint64_t>(st.st_size);
  if (limits.map_file && size > 0 && size >= static_cast<uint64_t>(limits.map_min_file_bytes)) {
    std::unique_ptr<detail::MappedSource> mapped;
    try {
      mapped = std::make_unique<detail::MappedSource>(fd, size, path);
    } catch (const std::runtime_error&) {
      // No mapping (address space, strict overcommit): read with copies instead.
    }
    if (mapped) return read_archive(std::move(mapped), path, limits);
  }
  return read_archive(std::make_unique<detail::FileSource>(fd, size, path), path, limits);
}

// ------------------------------------------------------------------------------ CheckpointIO

void CheckpointIO::save_checkpoint(const Value&, const std::string&) {
  throw std::logic_error(describe() + " does not implement save_checkpoint");
}
Value CheckpointIO::load_checkpoint(const std::string&) {
  throw std::logic_error(describe() + " does not implement load_checkpoint");
}

void TorchCheckpointIO::save_checkpoint(const Value& checkpoint, const std::string& path) {
  save_torch_file(checkpoint, path);
}
Value TorchCheckpointIO::load_checkpoint(const std::string& path) { return load_torch_file(path); }
void TorchCheckpointIO::remove_checkpoint(const std::string& path) {
  if (::unlink(path.c_str()) != 0 && errno != ENOENT) {
    throw std::runtime_error(
        fmt::format("Cannot remove the checkpoint {}: {}", path, errno_text()));
  }
}

}  // namespace cppfabric::checkpoint
