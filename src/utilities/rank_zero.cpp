#include "cppfabric/utilities/rank_zero.hpp"

#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>

#include <atomic>
#include <mutex>

namespace cppfabric::utilities {
namespace {
std::atomic<int> g_rank{0};
std::atomic<int> g_world_size{1};

void apply_pattern(spdlog::logger& logger) {
  const int world = g_world_size.load();
  logger.set_pattern(world > 1 ? fmt::format("[rank: {}] [%l] %v", g_rank.load()) : "[%l] %v");
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
  g_rank = global_rank;
  g_world_size = world_size;
  apply_pattern(*console());
}

int current_rank() { return g_rank.load(); }

std::string rank_prefixed_message(const std::string& message, int rank) {
  return fmt::format("[rank: {}] {}", rank, message);
}

void rank_zero_info(const std::string& message) {
  if (current_rank() == 0) console()->info(message);
}
void rank_zero_warn(const std::string& message) {
  if (current_rank() == 0) console()->warn(message);
}
void rank_zero_debug(const std::string& message) {
  if (current_rank() == 0) console()->debug(message);
}

}  // namespace cppfabric::utilities
