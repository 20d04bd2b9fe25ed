// The pickle side of torch.save files, writing: a Value tree as pickle protocol 2, the way
// torch.save lays it out (tensors as _rebuild_tensor_v2 calls on persistent-id storages). Private.
//
//   detail::PickledValue p = detail::pickle_value(value);  // p.pickle -> data.pkl,
//                                                           // p.storages -> data/<key>
#pragma once

#include <ATen/core/Tensor.h>

#include <array>
#include <string>
#include <utility>
#include <vector>

#include "cppfabric/state.hpp"

namespace cppfabric::checkpoint::detail {

/// torch's typed storage classes (torch.FloatStorage, ...) and their dtypes, as both the pickler
/// and the unpickler name them.
struct StorageType {
  const char* name;
  at::ScalarType dtype;
};
inline constexpr std::array<StorageType, 12> kStorageTypes{{
    {"FloatStorage", at::kFloat},
    {"DoubleStorage", at::kDouble},
    {"HalfStorage", at::kHalf},
    {"BFloat16Storage", at::kBFloat16},
    {"LongStorage", at::kLong},
    {"IntStorage", at::kInt},
    {"ShortStorage", at::kShort},
    {"CharStorage", at::kChar},
    {"ByteStorage", at::kByte},
    {"BoolStorage", at::kBool},
    {"ComplexFloatStorage", at::kComplexFloat},
    {"ComplexDoubleStorage", at::kComplexDouble},
}};

struct PickledValue {
  std::string pickle;  // the data.pkl record
  /// Storage records to write: key -> the whole storage, CPU and contiguous.
  std::vector<std::pair<std::string, at::Tensor>> storages;
};

/// Pickles `value` (std::invalid_argument for tensors torch.save files cannot hold here).
PickledValue pickle_value(const Value& value);

}  // namespace cppfabric::checkpoint::detail
