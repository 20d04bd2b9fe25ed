// Console output: one spdlog logger ("cppfabric"), prefixed with the rank when world size > 1,
// and the rank-zero helpers Python Fabric uses for its messages.
//
//   cppfabric::utilities::rank_zero_warn("this runs on rank 0 only");
//   cppfabric::utilities::console()->info("every rank says this");
#pragma once

#include <memory>
#include <string>

namespace spdlog {
class logger;
}

namespace cppfabric::utilities {

/// The process-wide console logger.
std::shared_ptr<spdlog::logger> console();
/// Records this process's rank (for rank-zero filtering and the "[rank: N]" prefix).
void set_rank(int global_rank, int world_size);
int current_rank();
std::string rank_prefixed_message(const std::string& message, int rank);

void rank_zero_info(const std::string& message);
void rank_zero_warn(const std::string& message);
void rank_zero_debug(const std::string& message);

}  // namespace cppfabric::utilities
