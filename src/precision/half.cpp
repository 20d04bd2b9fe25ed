#include "cppfabric/precision/half.hpp"

#include "cppfabric/detail/fmt.hpp"

namespace cppfabric::precision {
namespace {
c10::ScalarType half_dtype(const std::string& precision) {
  if (precision == "16-true") return c10::kHalf;
  if (precision == "bf16-true") return c10::kBFloat16;
  throw std::invalid_argument(fmt::format(
      "Passed `HalfPrecision(precision='{}')`. Precision must be '16-true' or 'bf16-true'.",
      precision));
}
}  // namespace

HalfPrecision::HalfPrecision(const std::string& precision)
    : DtypePrecision(half_dtype(precision), precision) {}

}  // namespace cppfabric::precision
