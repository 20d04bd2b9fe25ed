// DoublePrecision (`64-true`): the module in float64, inputs cast to float64, outputs cast back
// to the default dtype, and float64 as the default dtype inside init and forward contexts.
//
//   Fabric fabric({.precision = "64-true"});
#pragma once

#include "cppfabric/precision/precision.hpp"

namespace cppfabric::precision {

class DoublePrecision : public DtypePrecision {
 public:
  DoublePrecision();
};

}  // namespace cppfabric::precision
