#include "cppfabric/precision/double.hpp"

namespace cppfabric::precision {

DoublePrecision::DoublePrecision() : DtypePrecision(c10::kDouble, "64-true") {}

}  // namespace cppfabric::precision
