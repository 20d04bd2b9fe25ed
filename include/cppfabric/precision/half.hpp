// HalfPrecision (`16-true`, `bf16-true`): the module, its inputs and the default dtype inside
// Fabric's contexts are float16 or bfloat16; outputs come back in the default dtype.
//
//   Fabric fabric({.precision = "bf16-true"});
#pragma once

#include "cppfabric/precision/precision.hpp"

namespace cppfabric::precision {

class HalfPrecision : public DtypePrecision {
 public:
  /// "16-true" or "bf16-true"; std::invalid_argument otherwise.
  explicit HalfPrecision(const std::string& precision = "16-true");
};

}  // namespace cppfabric::precision
