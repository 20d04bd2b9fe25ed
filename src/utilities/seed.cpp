#include "cppfabric/utilities/seed.hpp"

#include <spdlog/spdlog.h>
#include <torch/torch.h>

#include <cstdlib>
#include <stdexcept>
#include <string>

#include "cppfabric/detail/fmt.hpp"
#include "cppfabric/utilities/rank_zero.hpp"
#include "utilities/env.hpp"

namespace cppfabric::utilities {

uint64_t seed_everything(std::optional<int64_t> seed, bool workers, bool verbose) {
  if (!seed) {
    // Python's rule: set means it must parse, even when empty (setup_dataloaders takes "" as 0).
    const auto env = detail::env_string("PL_GLOBAL_SEED");
    if (!env) {
      seed = 0;
      if (verbose) rank_zero_warn("No seed found, seed set to 0");
    } else {
      seed = detail::parse_int(*env);
      if (!seed) {
        throw std::invalid_argument(
            fmt::format("Invalid seed specified via PL_GLOBAL_SEED: '{}'. Set it to an integer "
                        "between 0 and {}.",
                        *env, kMaxSeed));
      }
    }
  }
  if (*seed < 0 || *seed > kMaxSeed) {
    throw std::invalid_argument(fmt::format(
        "Seed {} is not in bounds: seeds must be between 0 and {} (numpy's range, kept for parity "
        "with Python).",
        *seed, kMaxSeed));
  }
  if (verbose) {
    // Python's "[rank: N] Seed set to S"; with several processes the console pattern already
    // starts with "[rank: N]".
    const std::string message = fmt::format("Seed set to {}", *seed);
    console()->info(current_world_size() > 1 ? message
                                             : rank_prefixed_message(message, current_rank()));
  }
  torch::manual_seed(static_cast<uint64_t>(*seed));
  ::setenv("PL_GLOBAL_SEED", std::to_string(*seed).c_str(), 1);
  ::setenv("PL_SEED_WORKERS", workers ? "1" : "0", 1);
  return static_cast<uint64_t>(*seed);
}

void reset_seed() {
  if (!detail::env_string("PL_GLOBAL_SEED")) return;
  // seed unset: seed_everything reads PL_GLOBAL_SEED itself, with its error for a bad value.
  seed_everything(std::nullopt, detail::env_string("PL_SEED_WORKERS") == "1", /*verbose=*/false);
}

}  // namespace cppfabric::utilities
