#include "cppfabric/utilities/rank_zero.hpp"

#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>

#include <atomic>
#include <mutex>
#include <set>

#include "utilities/env.hpp"

namespace cppfabric::utilities {
namespace {

/// Python's rank_zero_only.rank at import (_get_rank): the first of these that is set. A launched
/// child learns its rank here before its Fabric exists, so rank-zero messages it prints while the
/// Fabric is being built (the precision lines) stay on rank 0.
int rank_from_environment() {
  for (const char* name : {"RANK", "LOCAL_RANK", "SLURM_PROCID", "JSM_NAMESPACE_RANK"}) {
    if (const auto text = detail::env_string(name)) {
      const auto rank = detail::parse_int(*text);
      return rank && *rank >= 0 ? static_cast<int>(*rank) : 0;
    }
  }
  return 0;
}

int world_size_from_environment() {
  const auto text = detail::env_string("WORLD_SIZE");
  const auto size = text ? detail::parse_int(*text) : std::nullopt;
  return size && *size > 1 ? static_cast<int>(*size) : 1;
}

std::atomic<int>& rank_slot() {
  static std::atomic<int> rank{rank_from_environment()};
  return rank;
}
std::atomic<int>& world_slot() {
  static std::atomic<int> world{world_size_from_environment()};
  return world;
}

// Read when the library is loaded, as Python reads it at import: a program that changes RANK later
// (a test, or a user script) does not change what the rank-zero helpers believe until Fabric says.
[[maybe_unused]] const bool environment_read_at_load = (rank_slot(), world_slot(), true);

void apply_pattern(spdlog::logger& logger) {
  const int world = world_slot().load();
  logger.set_pattern(world > 1 ? fmt::format("[rank: {}] [%l] %v", rank_slot().load()) : "[%l] %v");
}
}  // namespace

std::shared_ptr<spdlog::logger> console() {
  static std::once_flag once;
  static std::shared_ptr<spdlog::logger> logger;
  std::call_once(once, [] {
    logger = spdlog::get("cppfabric");
    if (!logger) logger = spdlog::stderr_color_mt("cppfabric");
    logger->set_level(spdlog::level::info);
    apply_pattern(*logger);
  });
  return logger;
}

void set_rank(int global_rank, int world_size) {
  rank_slot() = global_rank;
  world_slot() = world_size;
  apply_pattern(*console());
}

int current_rank() { return rank_slot().load(); }

int current_world_size() { return world_slot().load(); }

std::string rank_prefixed_message(const std::string& message, int rank) {
  return fmt::format("[rank: {}] {}", rank, message);
}

void rank_zero_info(const std::string& message) {
  if (current_rank() == 0) console()->info(message);
}
namespace {
std::mutex g_shown_mutex;
std::set<std::string>& shown_warnings() {
  static std::set<std::string> shown;
  return shown;
}
}  // namespace

void rank_zero_warn(const std::string& message) {
  if (current_rank() != 0) return;
  {
    std::lock_guard lock(g_shown_mutex);
    if (!shown_warnings().insert(message).second) return;
  }
  console()->warn(message);
}

void clear_shown_warnings() {
  std::lock_guard lock(g_shown_mutex);
  shown_warnings().clear();
}
void rank_zero_debug(const std::string& message) {
  if (current_rank() == 0) console()->debug(message);
}

}  // namespace cppfabric::utilities
