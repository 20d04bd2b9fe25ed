// Seeding, as Python's lightning.fabric.utilities.seed.
//
//   cppfabric::utilities::seed_everything(42);     // torch CPU + CUDA generators
//   // PL_GLOBAL_SEED=42 and PL_SEED_WORKERS=0 are now set for child processes and samplers.
#pragma once

#include <cstdint>
#include <optional>

namespace cppfabric::utilities {

inline constexpr int64_t kMaxSeed = 4294967295;  // numpy's bound, kept for parity

/// Seeds LibTorch's CPU and CUDA generators. `seed` unset reads PL_GLOBAL_SEED (0 with a warning
/// when that is unset too). Throws std::invalid_argument for an unparsable PL_GLOBAL_SEED or a
/// seed outside [0, 4294967295]. Sets PL_GLOBAL_SEED and PL_SEED_WORKERS. Returns the seed.
uint64_t seed_everything(std::optional<int64_t> seed = std::nullopt, bool workers = false,
                         bool verbose = true);
/// Re-applies PL_GLOBAL_SEED if set (what spawned processes do); no-op otherwise.
void reset_seed();

}  // namespace cppfabric::utilities
