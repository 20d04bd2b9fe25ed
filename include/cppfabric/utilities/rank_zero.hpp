// Console output: one spdlog logger ("cppfabric"), prefixed with the rank when world size > 1,
// and the rank-zero helpers Python Fabric uses for its messages.
//
//   cppfabric::utilities::rank_zero_warn("this runs on rank 0 only, once per message");
//   cppfabric::utilities::console()->info("every rank says this");
//
//   // Python's @rank_zero_only: a callable that runs on global rank 0 only. The rank is known
//   // before any Fabric exists, from the environment the launcher set (RANK, LOCAL_RANK,
//   // SLURM_PROCID, JSM_NAMESPACE_RANK -- Python reads the same at import), and from the Fabric
//   // once it is set up.
//   auto save_config = cppfabric::utilities::rank_zero_only([&](const std::string& path) {
//     write_yaml(path);
//     return true;
//   });
//   std::optional<bool> done = save_config("config.yaml");  // nullopt on other ranks
#pragma once

#include <memory>
#include <optional>
#include <string>
#include <type_traits>
#include <utility>

namespace spdlog {
class logger;
}

namespace cppfabric::utilities {

/// The process-wide console logger.
std::shared_ptr<spdlog::logger> console();
/// Records this process's rank (for rank-zero filtering and the "[rank: N]" prefix).
void set_rank(int global_rank, int world_size);
/// This process's global rank: the last set_rank(), else the environment's (RANK, LOCAL_RANK,
/// SLURM_PROCID, JSM_NAMESPACE_RANK, the first one set, as Python's rank_zero_only.rank), else 0.
int current_rank();
/// The world size: the last set_rank(), else WORLD_SIZE from the environment, else 1.
int current_world_size();
std::string rank_prefixed_message(const std::string& message, int rank);

/// On rank 0 only. rank_zero_warn shows each distinct message once per process, as Python's
/// warnings do.
void rank_zero_info(const std::string& message);
void rank_zero_warn(const std::string& message);
void rank_zero_debug(const std::string& message);
/// Forgets which warnings rank_zero_warn showed, so each shows once more (for tests, as clearing
/// Python's warning registry).
void clear_shown_warnings();

/// Python's `rank_zero_only(fn)`: returns a callable that calls `fn` on global rank 0 and does
/// nothing elsewhere. It returns what `fn` returns as a std::optional (nullopt on other ranks),
/// or nothing for a void `fn`.
template <typename F>
auto rank_zero_only(F fn) {
  return [fn = std::move(fn)](auto&&... args) {
    using R = std::invoke_result_t<const F&, decltype(args)...>;
    if constexpr (std::is_void_v<R>) {
      if (current_rank() == 0) fn(std::forward<decltype(args)>(args)...);
    } else {
      return current_rank() == 0 ? std::optional<R>(fn(std::forward<decltype(args)>(args)...))
                                 : std::optional<R>();
    }
  };
}

}  // namespace cppfabric::utilities
