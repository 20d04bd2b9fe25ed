// ProcessGroup on top of c10d: TCPStore (rank 0 hosts it) -> PrefixStore -> ProcessGroupGloo.
//
// This is the only translation unit that includes the c10d headers. ProcessGroupGloo.hpp needs
// gloo's headers, which the PyTorch wheel does not ship; the build supplies Debian's libgloo-dev
// headers (CPPFABRIC_HAS_GLOO) for declarations only. Those headers are older than the gloo
// LibTorch is built with and gloo::rendezvous::Store has a different virtual layout there, so
// this file must never construct, subclass or call virtual members of gloo classes: it only
// passes the shared_ptr<gloo::transport::Device> it gets from LibTorch back to LibTorch, and
// talks to the backend through c10d::Backend's (LibTorch-defined) interface.
#include "cppfabric/collectives/process_group.hpp"

#include <ATen/ATen.h>
#include <ATen/detail/CUDAHooksInterface.h>
#include <c10/util/Exception.h>

#include <torch/csrc/distributed/c10d/Backend.hpp>
#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#include <torch/csrc/distributed/c10d/Types.hpp>
#include <torch/csrc/distributed/c10d/Work.hpp>

#if defined(CPPFABRIC_HAS_GLOO) && defined(USE_C10D_GLOO)
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#define CPPFABRIC_GLOO_ENABLED 1
#endif

#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <limits>
#include <mutex>
#include <optional>
#include <sstream>
#include <stdexcept>
#include <utility>

#include "collectives/nccl_backend.hpp"
#include "cppfabric/utilities/errors.hpp"
#include "utilities/env.hpp"

namespace cppfabric::collectives {

namespace {

// Extra time a blocking wait allows beyond the group timeout, so that the backend's own timeout
// error (which says which peer and which operation) wins the race against ours.
constexpr std::chrono::milliseconds kWaitGrace{1000};

// The key prefix of the group create() makes; sub-groups append "~sub<N>" to their parent's.
constexpr const char* kDefaultPrefix = "cppfabric/default_pg";

std::string describe_duration(std::chrono::milliseconds timeout) {
  const auto ms = timeout.count();
  if (ms % 1000 == 0) {
    return std::to_string(ms / 1000) + " s";
  }
  return std::to_string(ms) + " ms";
}

// c10::Error's what() carries a C++ backtrace; keep only the message.
std::string error_text(const std::exception& e) {
  std::string text;
  if (const auto* c10_error = dynamic_cast<const c10::Error*>(&e)) {
    text = c10_error->what_without_backtrace();
  } else {
    text = e.what();
  }
  // Trailing blanks and full stops: our messages append their own sentence.
  while (!text.empty() &&
         (std::isspace(static_cast<unsigned char>(text.back())) || text.back() == '.')) {
    text.pop_back();
  }
  return text;
}

std::chrono::milliseconds wait_limit(std::chrono::milliseconds timeout) {
  if (timeout > std::chrono::milliseconds::max() - kWaitGrace) {
    return std::chrono::milliseconds::max();
  }
  return timeout + kWaitGrace;
}

c10d::ReduceOp to_c10d(ReduceKind op) {
  switch (op) {
    case ReduceKind::Sum:
    case ReduceKind::Avg:  // Gloo has no AVG: sum, then divide (see finish_average)
      return c10d::ReduceOp(c10d::ReduceOp::SUM);
    case ReduceKind::Max:
      return c10d::ReduceOp(c10d::ReduceOp::MAX);
    case ReduceKind::Min:
      return c10d::ReduceOp(c10d::ReduceOp::MIN);
    case ReduceKind::Product:
      return c10d::ReduceOp(c10d::ReduceOp::PRODUCT);
  }
  throw std::invalid_argument("cppfabric: unknown ReduceKind value " +
                              std::to_string(static_cast<int>(op)));
}

// Fabric divides a Gloo sum by the world size in place; integer tensors take the true quotient
// and truncate it toward zero when it is copied back.
void finish_average(at::Tensor& buffer, int64_t world_size) {
  if (world_size == 1) {
    return;
  }
  if (at::isFloatingType(buffer.scalar_type()) || at::isComplexType(buffer.scalar_type())) {
    buffer.div_(world_size);
  } else {
    buffer.copy_(buffer.div(world_size));
  }
}

// "Float[4, 2]": what the debug sequence check compares between ranks.
std::string tensor_signature(const at::Tensor& t) {
  std::string text = std::string(c10::toString(t.scalar_type())) + "[";
  for (int64_t d = 0; d < t.dim(); ++d) {
    text += (d ? ", " : "") + std::to_string(t.size(d));
  }
  return text + "]";
}

void check_defined(const at::Tensor& t, const char* op) {
  if (!t.defined()) {
    throw std::invalid_argument(std::string("cppfabric: ") + op +
                                " needs a defined tensor, got an undefined one");
  }
}

void validate(const ProcessGroupOptions& o) {
  if (o.backend != "gloo" && o.backend != "nccl") {
    throw std::invalid_argument("cppfabric: invalid process group backend '" + o.backend +
                                "'. Valid choices: 'gloo', 'nccl'.");
  }
  if (o.world_size < 1) {
    throw std::invalid_argument("cppfabric: process group world_size must be >= 1, got " +
                                std::to_string(o.world_size));
  }
  if (o.rank < 0 || o.rank >= o.world_size) {
    throw std::invalid_argument("cppfabric: process group rank must be in [0, " +
                                std::to_string(o.world_size) + ") for world_size " +
                                std::to_string(o.world_size) + ", got " + std::to_string(o.rank));
  }
  if (o.main_port < 1 || o.main_port > 65535) {
    throw std::invalid_argument("cppfabric: process group main_port must be in 1..65535, got " +
                                std::to_string(o.main_port));
  }
  if (o.main_address.empty()) {
    throw std::invalid_argument(
        "cppfabric: process group main_address is empty; give rank 0's host name or IP "
        "address (e.g. '127.0.0.1')");
  }
  if (o.timeout.count() <= 0) {
    throw std::invalid_argument("cppfabric: process group timeout must be positive, got " +
                                std::to_string(o.timeout.count()) + " ms");
  }
}

std::string group_text(const ProcessGroupOptions& o) {
  return "rank " + std::to_string(o.rank) + " of " + std::to_string(o.world_size) + " (" +
         o.backend + ", " + o.main_address + ":" + std::to_string(o.main_port) + ", timeout " +
         describe_duration(o.timeout) + ")";
}

// The loopback address `address` names, numerically: "localhost" is 127.0.0.1; any 127.x.y.z,
// ::1 and ::ffff:127.x.y.z stand for themselves. nullopt for every other address (those keep
// TCPStore's own socket, which listens on every interface, as in Python).
struct LoopbackAddress {
  sockaddr_storage address{};
  socklen_t length = 0;
  int family = AF_UNSPEC;
};

std::optional<LoopbackAddress> loopback_address(const std::string& address) {
  const std::string numeric = address == "localhost" ? "127.0.0.1" : address;
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_NUMERICHOST;
  addrinfo* found = nullptr;
  if (::getaddrinfo(numeric.c_str(), nullptr, &hints, &found) != 0 || !found) return std::nullopt;
  std::optional<LoopbackAddress> result;
  if (found->ai_family == AF_INET) {
    const auto* v4 = reinterpret_cast<const sockaddr_in*>(found->ai_addr);
    if ((ntohl(v4->sin_addr.s_addr) >> 24) == 127) result.emplace();
  } else if (found->ai_family == AF_INET6) {
    const auto* v6 = reinterpret_cast<const sockaddr_in6*>(found->ai_addr);
    if (IN6_IS_ADDR_LOOPBACK(&v6->sin6_addr) ||
        (IN6_IS_ADDR_V4MAPPED(&v6->sin6_addr) && v6->sin6_addr.s6_addr[12] == 127)) {
      result.emplace();
    }
  }
  if (result) {
    std::memcpy(&result->address, found->ai_addr, found->ai_addrlen);
    result->length = found->ai_addrlen;
    result->family = found->ai_family;
  }
  ::freeaddrinfo(found);
  return result;
}

// A listening socket on exactly the loopback address rank 0 was asked for (127.0.0.2, ::1, ...),
// so that the store is reachable at that address and from no other machine (TCPStore alone
// listens on every interface). -1 when it cannot be made; the store then binds as usual and
// reports its own error.
int loopback_listen_socket(const LoopbackAddress& loopback, int port) {
  const int fd = ::socket(loopback.family, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return -1;
  const int one = 1;
  ::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  sockaddr_storage address = loopback.address;
  if (loopback.family == AF_INET6) {
    ::setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one));
    reinterpret_cast<sockaddr_in6*>(&address)->sin6_port = htons(static_cast<std::uint16_t>(port));
  } else {
    reinterpret_cast<sockaddr_in*>(&address)->sin_port = htons(static_cast<std::uint16_t>(port));
  }
  if (::bind(fd, reinterpret_cast<sockaddr*>(&address), loopback.length) != 0 ||
      ::listen(fd, 2048) != 0) {
    ::close(fd);
    return -1;
  }
  return fd;
}

c10::intrusive_ptr<c10d::Store> make_store(const ProcessGroupOptions& o) {
  c10d::TCPStoreOptions store_options;
  if (o.rank == 0) {
    if (const auto loopback = loopback_address(o.main_address)) {
      if (const int fd = loopback_listen_socket(*loopback, o.main_port); fd >= 0) {
        store_options.masterListenFd = fd;
      }
    }
  }
  store_options.port = static_cast<std::uint16_t>(o.main_port);
  store_options.isServer = o.rank == 0;
  store_options.numWorkers = static_cast<std::size_t>(o.world_size);
  store_options.waitWorkers = true;
  store_options.timeout = o.timeout;
  try {
    return c10::make_intrusive<c10d::TCPStore>(o.main_address, store_options);
  } catch (const std::exception& e) {
    const std::string hint =
        o.rank == 0 ? "Rank 0 hosts the store: check that the port is free and that all " +
                          std::to_string(o.world_size) + " ranks start"
                    : "Check that rank 0 is running and that main_address/main_port are the "
                      "same on every rank";
    throw std::runtime_error("cppfabric: " + group_text(o) +
                             " could not set up the rendezvous store: " + error_text(e) + ". " +
                             hint + ".");
  }
}

// This host's IPv4 address on the route to `host` (a connected UDP socket sends nothing), or "".
std::string local_address_towards(const std::string& host, int port) {
  addrinfo hints{};
  hints.ai_family = AF_INET;
  hints.ai_socktype = SOCK_DGRAM;
  addrinfo* found = nullptr;
  if (::getaddrinfo(host.c_str(), std::to_string(port).c_str(), &hints, &found) != 0 || !found) {
    return "";
  }
  std::string local;
  const int fd = ::socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (fd >= 0) {
    sockaddr_in mine{};
    socklen_t length = sizeof(mine);
    char text[INET_ADDRSTRLEN] = {};
    if (::connect(fd, found->ai_addr, found->ai_addrlen) == 0 &&
        ::getsockname(fd, reinterpret_cast<sockaddr*>(&mine), &length) == 0 &&
        ::inet_ntop(AF_INET, &mine.sin_addr, text, sizeof(text)) != nullptr) {
      local = text;
    }
    ::close(fd);
  }
  ::freeaddrinfo(found);
  return local;
}

#ifdef CPPFABRIC_GLOO_ENABLED
std::vector<std::shared_ptr<::gloo::transport::Device>> make_gloo_devices(
    const ProcessGroupOptions& o) {
  std::vector<std::shared_ptr<::gloo::transport::Device>> devices;
  // Like torch.distributed: GLOO_SOCKET_IFNAME (comma-separated interfaces) wins.
  if (const char* ifnames = std::getenv("GLOO_SOCKET_IFNAME"); ifnames && *ifnames) {
    std::stringstream list(ifnames);
    std::string name;
    while (std::getline(list, name, ',')) {
      if (!name.empty()) {
        devices.push_back(c10d::ProcessGroupGloo::createDeviceForInterface(name));
      }
    }
    return devices;
  }
  try {
    // Binds to the address main_address resolves to: right on rank 0's host (and for loopback
    // jobs). On other hosts that address is not local: use this host's address on the route to
    // it, which the other ranks can reach; failing that, Gloo's default (the host name).
    devices.push_back(c10d::ProcessGroupGloo::createDeviceForHostname(o.main_address));
  } catch (const std::exception&) {
    const std::string local = local_address_towards(o.main_address, o.main_port);
    try {
      if (local.empty()) throw std::runtime_error("no route");
      devices.push_back(c10d::ProcessGroupGloo::createDeviceForHostname(local));
    } catch (const std::exception&) {
      devices.push_back(c10d::ProcessGroupGloo::createDefaultDevice());
    }
  }
  return devices;
}
#endif

c10::intrusive_ptr<c10d::Backend> make_gloo(const ProcessGroupOptions& o,
                                            const c10::intrusive_ptr<c10d::Store>& store) {
#ifdef CPPFABRIC_GLOO_ENABLED
  try {
    auto gloo_options = c10d::ProcessGroupGloo::Options::create(o.timeout);
    gloo_options->devices = make_gloo_devices(o);
    return c10::make_intrusive<c10d::ProcessGroupGloo>(store, o.rank, o.world_size, gloo_options);
  } catch (const std::exception& e) {
    throw std::runtime_error("cppfabric: " + group_text(o) +
                             " could not join the gloo process group: " + error_text(e) +
                             ". Check that every rank started with the same world_size and that "
                             "the hosts can reach each other.");
  }
#else
  (void)store;
  throw std::runtime_error(
      "cppfabric: process group backend 'gloo' is unavailable: cppfabric was built without "
      "gloo's headers (the PyTorch wheel does not ship them). Install them (e.g. `apt-get "
      "install libgloo-dev`) and rebuild cppfabric.");
#endif
}

}  // namespace

// ------------------------------------------------------------------ ReduceKind

std::string_view to_string(ReduceKind op) {
  switch (op) {
    case ReduceKind::Sum:
      return "sum";
    case ReduceKind::Max:
      return "max";
    case ReduceKind::Min:
      return "min";
    case ReduceKind::Product:
      return "product";
    case ReduceKind::Avg:
      return "avg";
  }
  return "unknown";
}

ReduceKind reduce_kind_from_string(std::string_view name) {
  std::string lower(name);
  std::transform(lower.begin(), lower.end(), lower.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  if (lower == "sum") return ReduceKind::Sum;
  if (lower == "mean" || lower == "avg") return ReduceKind::Avg;
  if (lower == "max") return ReduceKind::Max;
  if (lower == "min") return ReduceKind::Min;
  if (lower == "product") return ReduceKind::Product;
  throw std::invalid_argument("cppfabric: unsupported reduce operation '" + std::string(name) +
                              "'. Valid choices: 'sum', 'mean', 'avg', 'max', 'min', 'product'.");
}

// ------------------------------------------------------------------ CollectiveWork

struct CollectiveWork::Impl {
  c10::intrusive_ptr<c10d::Work> work;
  at::Tensor target;    // the caller's tensor
  at::Tensor buffer;    // what the backend reduces (target itself when contiguous)
  int64_t divisor = 1;  // world size for ReduceKind::Avg
  std::chrono::milliseconds timeout{0};
  std::string what;  // "all_reduce on rank 0 of 2 (...)", for errors
  at::Tensor input;  // kept alive until the collective is done (reduce_scatter, all_gather_into)
  bool done = false;
  std::string failure;          // set once a wait failed; later waits throw it again
  bool stream_ordered = false;  // NCCL: wait() orders streams instead of blocking

  void wait() {
    if (done) {
      if (!failure.empty()) throw std::runtime_error(failure);
      return;
    }
    done = true;
    try {
      if (stream_ordered) {
        // NCCL: make the current stream wait for the collective without blocking this thread;
        // the backend's watchdog enforces the group timeout. An explicit timeout here would
        // block the CPU until the GPU finishes (one sync per bucket, every step).
        work->wait();
      } else {
        work->wait(wait_limit(timeout));
      }
    } catch (const std::exception& e) {
      failure = "cppfabric: " + what + " failed: " + error_text(e) +
                ". Another rank may have exited, crashed or not reached this collective; check "
                "its output, or raise the timeout.";
      throw std::runtime_error(failure);
    }
    if (divisor > 1) finish_average(buffer, divisor);
    if (!buffer.is_same(target)) target.copy_(buffer);
  }
};

CollectiveWork::CollectiveWork(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
CollectiveWork::CollectiveWork(CollectiveWork&&) noexcept = default;
CollectiveWork& CollectiveWork::operator=(CollectiveWork&&) noexcept = default;
CollectiveWork::~CollectiveWork() = default;

void CollectiveWork::wait() {
  if (!impl_) throw std::logic_error("cppfabric: wait() on a moved-from CollectiveWork");
  impl_->wait();
}

bool CollectiveWork::is_completed() const {
  return !impl_ || impl_->done || impl_->work->isCompleted();
}

// ------------------------------------------------------------------ ProcessGroup

struct ProcessGroup::Impl {
  ProcessGroupOptions options;
  c10::intrusive_ptr<c10d::Store> root_store;  // the TCPStore (rank 0 serves it) every group shares
  std::string prefix;                          // this group's keys in it: "<prefix>/..."
  std::vector<int> global_ranks;               // members' ranks in the group create() made
  int subgroups_created = 0;                   // new_group calls so far (the same on every rank)
  c10::intrusive_ptr<c10d::Store> store;       // PrefixStore(prefix) over root_store
  c10::intrusive_ptr<c10d::Backend> backend;   // declared last: released first

  ~Impl() {
    if (backend && options.backend == "nccl") {
      try {
        backend->shutdown();  // the orderly exit NCCL expects (no "destroy_process_group" warning)
      } catch (const std::exception&) {
      }
    }
    backend.reset();  // drains its queue and joins its threads
    store.reset();    // then the store (rank 0 stops serving it once no group holds it)
    root_store.reset();
  }

  bool is_subgroup() const { return prefix != kDefaultPrefix; }

  // "rank 1 of 2 (gloo, ...)" and, for a sub-group, "in the sub-group of global ranks [2, 3]".
  std::string text() const {
    std::string out = group_text(options);
    if (!is_subgroup()) return out;
    out += " in the sub-group of global ranks [";
    for (std::size_t i = 0; i < global_ranks.size(); ++i) {
      out.append(i ? ", " : "").append(std::to_string(global_ranks[i]));
    }
    return out + "]";
  }

  std::string what(const char* op) const { return std::string(op) + " on " + text(); }

  // CPPFABRIC_DEBUG_COLLECTIVES=1: before each collective every rank publishes (sequence number,
  // operation, dtypes and shapes) in the store and reads everyone else's, so that ranks issuing
  // different collectives fail at once with both sides named instead of hanging or mixing data.
  bool debug_collectives = false;
  std::mutex debug_mutex;
  std::uint64_t sequence = 0;
  std::uint64_t store_barriers = 0;  // barrier(timeout) calls so far, the same count on every rank

  static std::string debug_key(std::uint64_t n, int rank) {
    return "debug_collectives/" + std::to_string(n) + "/" + std::to_string(rank);
  }

  void check_sequence(const char* op, const std::string& signature) {
    if (!debug_collectives || options.world_size == 1) return;
    std::lock_guard<std::mutex> lock(debug_mutex);
    const std::uint64_t n = ++sequence;
    const std::string mine = std::string(op) + "(" + signature + ")";
    std::vector<std::string> all(static_cast<std::size_t>(options.world_size));
    all[static_cast<std::size_t>(options.rank)] = mine;
    int waiting_for = -1;
    try {
      store->set(debug_key(n, options.rank), std::vector<std::uint8_t>(mine.begin(), mine.end()));
      for (int r = 0; r < options.world_size; ++r) {
        if (r == options.rank) continue;
        waiting_for = r;
        const auto bytes = store->get(debug_key(n, r));
        all[static_cast<std::size_t>(r)].assign(bytes.begin(), bytes.end());
      }
      waiting_for = -1;
      // Everyone has published n, so everyone has read what this rank published for n - 1.
      if (n > 1) store->deleteKey(debug_key(n - 1, options.rank));
    } catch (const std::exception& e) {
      throw std::runtime_error(
          "cppfabric: " + what(op) + " failed the collective sequence check " +
          "(CPPFABRIC_DEBUG_COLLECTIVES=1) at collective #" + std::to_string(n) + ", " + mine +
          (waiting_for >= 0 ? ": rank " + std::to_string(waiting_for) + " did not reach it"
                            : std::string()) +
          ": " + error_text(e) + ". That rank may have exited, crashed or stalled.");
    }
    bool same = true;
    for (const auto& other : all) same = same && other == mine;
    if (same) return;
    std::string ranks;
    for (int r = 0; r < options.world_size; ++r) {
      ranks += (r ? ", rank " : "rank ") + std::to_string(r) + " runs " +
               all[static_cast<std::size_t>(r)];
    }
    throw std::runtime_error("cppfabric: collective mismatch at collective #" + std::to_string(n) +
                             " of " + text() + ": " + ranks +
                             ". Every rank must run the same collectives, with the same shapes, "
                             "in the same order (found by CPPFABRIC_DEBUG_COLLECTIVES=1).");
  }

  // Runs a blocking collective: waits at most the group timeout, names `op` on failure.
  void run(const char* op, const c10::intrusive_ptr<c10d::Work>& work) const {
    CollectiveWork::Impl pending;
    pending.work = work;
    pending.stream_ordered = options.backend == "nccl";
    pending.timeout = options.timeout;
    pending.what = what(op);
    pending.wait();
  }

  template <typename Launch>
  c10::intrusive_ptr<c10d::Work> launch(const char* op, Launch&& fn) const {
    try {
      return fn();
    } catch (const std::invalid_argument&) {
      throw;
    } catch (const std::exception& e) {
      throw std::runtime_error("cppfabric: " + what(op) + " could not start: " + error_text(e));
    }
  }
};

ProcessGroup::ProcessGroup(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
ProcessGroup::~ProcessGroup() = default;

namespace {
// A peer that dies closes its sockets; the next write to one raises SIGPIPE, whose default
// action kills this process silently (exit 141) instead of letting the collective fail with an
// error. Python ignores SIGPIPE at start-up, so PyTorch never meets this; a C++ program must.
// A handler the program installed itself is left alone.
void ignore_sigpipe_unless_handled() {
  struct sigaction current {};
  if (::sigaction(SIGPIPE, nullptr, &current) == 0 && current.sa_handler == SIG_DFL) {
    ::signal(SIGPIPE, SIG_IGN);
  }
}
}  // namespace

std::shared_ptr<ProcessGroup> ProcessGroup::create(const ProcessGroupOptions& options) {
  validate(options);
  ignore_sigpipe_unless_handled();
  const bool nccl = options.backend == "nccl";
  if (nccl && !detail::nccl_available()) {
    throw NotYetAvailableError(
        "cppfabric: process group backend 'nccl' is unavailable: this cppfabric was built without "
        "CUDA/NCCL (a CPU-only LibTorch, or nccl.h not found). Use backend 'gloo' (CPU tensors).");
  }
  if (nccl && at::detail::getCUDAHooks().deviceCount() == 0) {
    throw std::runtime_error(
        "cppfabric: process group backend 'nccl' needs a CUDA device; none is visible. Use backend "
        "'gloo' for CPU tensors.");
  }
#ifndef CPPFABRIC_GLOO_ENABLED
  if (!nccl) make_gloo(options, {});  // throws the "built without gloo headers" error
#endif
  const auto debug = cppfabric::detail::env_int("CPPFABRIC_DEBUG_COLLECTIVES", "0 or 1");
  if (debug && *debug != 0 && *debug != 1) {
    throw std::invalid_argument("cppfabric: CPPFABRIC_DEBUG_COLLECTIVES='" +
                                std::to_string(*debug) +
                                "' is not a valid value. Valid choices: 0 (off), 1 (check that "
                                "every rank runs the same collectives in the same order).");
  }
  auto impl = std::make_unique<Impl>();
  impl->options = options;
  impl->debug_collectives = debug.value_or(0) == 1;
  impl->root_store = make_store(options);
  impl->prefix = kDefaultPrefix;
  impl->store = c10::make_intrusive<c10d::PrefixStore>(impl->prefix, impl->root_store);
  impl->global_ranks.resize(static_cast<std::size_t>(options.world_size));
  for (int r = 0; r < options.world_size; ++r) impl->global_ranks[static_cast<std::size_t>(r)] = r;
  make_backend(*impl);
  return std::shared_ptr<ProcessGroup>(new ProcessGroup(std::move(impl)));
}

void ProcessGroup::make_backend(Impl& impl) {
  const auto& options = impl.options;
  if (options.backend == "nccl") {
    try {
      impl.backend =
          detail::make_nccl_backend(impl.store, options.rank, options.world_size, options.timeout);
    } catch (const std::exception& e) {
      throw std::runtime_error("cppfabric: " + impl.text() +
                               " could not create the nccl process group: " + error_text(e) +
                               ". Is a CUDA device bound to this rank?");
    }
  } else {
    impl.backend = make_gloo(options, impl.store);
  }
}

std::shared_ptr<ProcessGroup> ProcessGroup::new_group(const std::vector<int>& ranks) {
  const int world = impl_->options.world_size;
  auto list_text = [&] {
    std::string out = "[";
    for (std::size_t i = 0; i < ranks.size(); ++i)
      out.append(i ? ", " : "").append(std::to_string(ranks[i]));
    return out + "]";
  };
  if (ranks.empty()) {
    throw std::invalid_argument(
        "cppfabric: new_group needs at least one rank, got an empty list. Valid ranks: 0 .. " +
        std::to_string(world - 1) + ".");
  }
  std::vector<int> sorted = ranks;
  std::sort(sorted.begin(), sorted.end());
  for (std::size_t i = 0; i < sorted.size(); ++i) {
    if (sorted[i] < 0 || sorted[i] >= world) {
      throw std::invalid_argument("cppfabric: new_group got rank " + std::to_string(sorted[i]) +
                                  " in " + list_text() + ", but the parent group has " +
                                  std::to_string(world) + " ranks (valid ranks: 0 .. " +
                                  std::to_string(world - 1) + ").");
    }
    if (i > 0 && sorted[i] == sorted[i - 1]) {
      throw std::invalid_argument("cppfabric: new_group got rank " + std::to_string(sorted[i]) +
                                  " twice in " + list_text() + "; each rank may appear once.");
    }
  }
  // Counted on every rank, members or not, so that all agree on the next sub-group's prefix.
  const int index = ++impl_->subgroups_created;
  const auto mine = std::find(sorted.begin(), sorted.end(), impl_->options.rank);
  if (mine == sorted.end()) return nullptr;
  auto impl = std::make_unique<Impl>();
  impl->options = impl_->options;
  impl->options.rank = static_cast<int>(mine - sorted.begin());
  impl->options.world_size = static_cast<int>(sorted.size());
  impl->debug_collectives = impl_->debug_collectives;
  impl->root_store = impl_->root_store;
  impl->prefix = impl_->prefix + "~sub" + std::to_string(index);
  impl->store = c10::make_intrusive<c10d::PrefixStore>(impl->prefix, impl->root_store);
  for (int r : sorted)
    impl->global_ranks.push_back(impl_->global_ranks[static_cast<std::size_t>(r)]);
  make_backend(*impl);
  return std::shared_ptr<ProcessGroup>(new ProcessGroup(std::move(impl)));
}

std::shared_ptr<ProcessGroup> ProcessGroup::new_subgroups(
    const std::vector<std::vector<int>>& groups) {
  std::vector<int> seen;
  for (const auto& g : groups) {
    for (int r : g) {
      if (r < 0 || r >= impl_->options.world_size) {
        throw std::invalid_argument(
            "cppfabric: new_subgroups got rank " + std::to_string(r) +
            ", but the parent group has " + std::to_string(impl_->options.world_size) +
            " ranks (valid ranks: 0 .. " + std::to_string(impl_->options.world_size - 1) + ").");
      }
      if (std::find(seen.begin(), seen.end(), r) != seen.end()) {
        throw std::invalid_argument("cppfabric: new_subgroups got rank " + std::to_string(r) +
                                    " in more than one group; the groups must be disjoint.");
      }
      seen.push_back(r);
    }
  }
  std::shared_ptr<ProcessGroup> out;
  for (const auto& g : groups) {
    auto group = new_group(g);
    if (group) out = std::move(group);
  }
  return out;
}

const std::vector<int>& ProcessGroup::global_ranks() const { return impl_->global_ranks; }

bool ProcessGroup::is_backend_available(const std::string& backend) {
  if (backend == "nccl") return detail::nccl_available();
#ifdef CPPFABRIC_GLOO_ENABLED
  if (backend == "gloo") return true;
#endif
  return false;
}

int ProcessGroup::rank() const { return impl_->options.rank; }
int ProcessGroup::world_size() const { return impl_->options.world_size; }
const std::string& ProcessGroup::backend() const { return impl_->options.backend; }
std::chrono::milliseconds ProcessGroup::timeout() const { return impl_->options.timeout; }

CollectiveWork ProcessGroup::all_reduce_async(at::Tensor& t, ReduceKind op) {
  check_defined(t, "all_reduce");
  impl_->check_sequence("all_reduce", std::string(to_string(op)) + ", " + tensor_signature(t));
  auto pending = std::make_unique<CollectiveWork::Impl>();
  pending->target = t;
  pending->buffer = t.is_contiguous() ? t : t.contiguous();
  pending->divisor = op == ReduceKind::Avg ? impl_->options.world_size : 1;
  pending->timeout = impl_->options.timeout;
  pending->what = impl_->what("all_reduce");
  pending->stream_ordered = impl_->options.backend == "nccl";
  c10d::AllreduceOptions opts;
  opts.reduceOp = to_c10d(op);
  opts.timeout = impl_->options.timeout;
  std::vector<at::Tensor> tensors{pending->buffer};
  pending->work =
      impl_->launch("all_reduce", [&] { return impl_->backend->allreduce(tensors, opts); });
  return CollectiveWork(std::move(pending));
}

void ProcessGroup::all_reduce(at::Tensor& t, ReduceKind op) { all_reduce_async(t, op).wait(); }

void ProcessGroup::broadcast(at::Tensor& t, int src) {
  check_defined(t, "broadcast");
  if (src < 0 || src >= impl_->options.world_size) {
    throw std::invalid_argument("cppfabric: broadcast source rank must be in [0, " +
                                std::to_string(impl_->options.world_size) + "), got " +
                                std::to_string(src));
  }
  impl_->check_sequence("broadcast", "src " + std::to_string(src) + ", " + tensor_signature(t));
  at::Tensor buffer = t.is_contiguous() ? t : t.contiguous();
  c10d::BroadcastOptions opts;
  opts.rootRank = src;
  opts.rootTensor = 0;
  opts.timeout = impl_->options.timeout;
  std::vector<at::Tensor> tensors{buffer};
  impl_->run("broadcast",
             impl_->launch("broadcast", [&] { return impl_->backend->broadcast(tensors, opts); }));
  if (!buffer.is_same(t)) t.copy_(buffer);
}

std::vector<at::Tensor> ProcessGroup::all_gather(const at::Tensor& t) {
  check_defined(t, "all_gather");
  impl_->check_sequence("all_gather", tensor_signature(t));
  std::vector<at::Tensor> inputs{t.contiguous()};
  std::vector<std::vector<at::Tensor>> outputs(1);
  outputs[0].reserve(impl_->options.world_size);
  for (int r = 0; r < impl_->options.world_size; ++r) {
    outputs[0].push_back(at::empty_like(inputs[0], at::MemoryFormat::Contiguous));
  }
  c10d::AllgatherOptions opts;
  opts.timeout = impl_->options.timeout;
  impl_->run("all_gather", impl_->launch("all_gather", [&] {
    return impl_->backend->allgather(outputs, inputs, opts);
  }));
  return std::move(outputs[0]);
}

void ProcessGroup::barrier() {
  impl_->check_sequence("barrier", "");
  c10d::BarrierOptions opts;
  opts.timeout = impl_->options.timeout;
  impl_->run("barrier", impl_->launch("barrier", [&] { return impl_->backend->barrier(opts); }));
}

void ProcessGroup::barrier(std::chrono::milliseconds timeout) {
  if (timeout <= std::chrono::milliseconds::zero()) {
    throw std::invalid_argument("cppfabric: barrier timeout must be positive, got " +
                                std::to_string(timeout.count()) + " ms");
  }
  const int world = impl_->options.world_size;
  if (world == 1) return;
  // Each rank counts itself in; the last to arrive publishes "done", which everyone waits for.
  const std::string key = "store_barrier/" + std::to_string(++impl_->store_barriers);
  try {
    if (impl_->store->add(key + "/arrived", 1) == world)
      impl_->store->set(key + "/done", std::vector<std::uint8_t>{1});
    impl_->store->wait({key + "/done"}, timeout);
  } catch (const std::exception& e) {
    throw std::runtime_error(std::string("cppfabric: ")
                                 .append(impl_->what("barrier"))
                                 .append(" did not complete within ")
                                 .append(std::to_string(timeout.count()))
                                 .append(" ms: ")
                                 .append(error_text(e))
                                 .append(". Another rank may have exited, crashed or stalled."));
  }
}

namespace {
// Checks the shapes of a flat-tensor collective: `full` has world * shard.numel() elements.
void check_flat_pair(const at::Tensor& shard, const at::Tensor& full, int world, const char* op) {
  check_defined(shard, op);
  check_defined(full, op);
  if (!shard.is_contiguous() || !full.is_contiguous()) {
    throw std::invalid_argument(std::string("cppfabric: ") + op +
                                " needs contiguous tensors (got shard " + tensor_signature(shard) +
                                ", full " + tensor_signature(full) + ")");
  }
  if (full.numel() != shard.numel() * world || full.scalar_type() != shard.scalar_type() ||
      full.device() != shard.device()) {
    throw std::invalid_argument(std::string("cppfabric: ") + op + ": the full tensor (" +
                                tensor_signature(full) + ") must hold world_size (" +
                                std::to_string(world) + ") times the shard's elements (" +
                                tensor_signature(shard) + "), with the same dtype and device");
  }
}
}  // namespace

CollectiveWork ProcessGroup::reduce_scatter_async(at::Tensor& shard, const at::Tensor& full,
                                                  ReduceKind op) {
  check_flat_pair(shard, full, impl_->options.world_size, "reduce_scatter");
  impl_->check_sequence("reduce_scatter", std::string(to_string(op)) + ", " +
                                              tensor_signature(full) + " -> " +
                                              tensor_signature(shard));
  auto pending = std::make_unique<CollectiveWork::Impl>();
  pending->target = shard;
  pending->buffer = shard;
  pending->input = full;
  pending->divisor = op == ReduceKind::Avg ? impl_->options.world_size : 1;
  pending->timeout = impl_->options.timeout;
  pending->what = impl_->what("reduce_scatter");
  pending->stream_ordered = impl_->options.backend == "nccl";
  c10d::ReduceScatterOptions opts;
  opts.reduceOp = to_c10d(op);
  opts.timeout = impl_->options.timeout;
  at::Tensor output = shard;
  at::Tensor input = full;
  pending->work = impl_->launch(
      "reduce_scatter", [&] { return impl_->backend->_reduce_scatter_base(output, input, opts); });
  return CollectiveWork(std::move(pending));
}

void ProcessGroup::reduce_scatter(at::Tensor& shard, const at::Tensor& full, ReduceKind op) {
  reduce_scatter_async(shard, full, op).wait();
}

CollectiveWork ProcessGroup::all_gather_into_async(at::Tensor& full, const at::Tensor& shard) {
  check_flat_pair(shard, full, impl_->options.world_size, "all_gather_into");
  impl_->check_sequence("all_gather_into",
                        tensor_signature(shard) + " -> " + tensor_signature(full));
  auto pending = std::make_unique<CollectiveWork::Impl>();
  pending->target = full;
  pending->buffer = full;
  pending->input = shard;
  pending->timeout = impl_->options.timeout;
  pending->what = impl_->what("all_gather_into");
  pending->stream_ordered = impl_->options.backend == "nccl";
  c10d::AllgatherOptions opts;
  opts.timeout = impl_->options.timeout;
  at::Tensor output = full;
  at::Tensor input = shard;
  pending->work = impl_->launch(
      "all_gather_into", [&] { return impl_->backend->_allgather_base(output, input, opts); });
  return CollectiveWork(std::move(pending));
}

void ProcessGroup::all_gather_into(at::Tensor& full, const at::Tensor& shard) {
  all_gather_into_async(full, shard).wait();
}

}  // namespace cppfabric::collectives
