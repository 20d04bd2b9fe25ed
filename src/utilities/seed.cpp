#include "cppfabric/utilities/seed.hpp"

#include <spdlog/spdlog.h>
#include <torch/torch.h>

#include <cstdlib>
#include <stdexcept>
#include <string>

#include "cppfabric/detail/fmt.hpp"
#include "cppfabric/utilities/rank_zero.hpp"

namespace cppfabric::utilities {
namespace {
std::optional<int64_t> parse_int(const std::string& text) {
  try {
    std::size_t used = 0;
    const int64_t value = std::stoll(text, &used);
    while (used < text.size() && std::isspace(static_cast<unsigned char>(text[used]))) ++used;
    if (used == text.size()) return value;
  } catch (const std::exception&) {
  }
  return std::nullopt;
}
}  // namespace

uint64_t seed_everything(std::optional<int64_t> seed, bool workers, bool verbose) {
  if (!seed) {
    const char* env = std::getenv("PL_GLOBAL_SEED");
    if (env == nullptr) {
      seed = 0;
      if (verbose) rank_zero_warn("No seed found, seed set to 0");
    } else {
      seed = parse_int(env);
      if (!seed) {
        throw std::invalid_argument(
            fmt::format("Invalid seed specified via PL_GLOBAL_SEED: '{}'. Set it to an integer "
                        "between 0 and {}.",
                        env, kMaxSeed));
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
    console()->info(rank_prefixed_message(fmt::format("Seed set to {}", *seed), current_rank()));
  }
  torch::manual_seed(static_cast<uint64_t>(*seed));
  ::setenv("PL_GLOBAL_SEED", std::to_string(*seed).c_str(), 1);
  ::setenv("PL_SEED_WORKERS", workers ? "1" : "0", 1);
  return static_cast<uint64_t>(*seed);
}

void reset_seed() {
  const char* seed = std::getenv("PL_GLOBAL_SEED");
  if (seed == nullptr) return;
  const char* workers = std::getenv("PL_SEED_WORKERS");
  seed_everything(parse_int(seed), workers != nullptr && std::string(workers) == "1",
                  /*verbose=*/false);
}

}  // namespace cppfabric::utilities
