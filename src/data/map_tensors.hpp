#pragma once
// One walk over a Value tree's tensors, shared by the loaders (device moves, pinning) and Fabric's
// collectives on collections (Python's apply_to_collection).

#include <utility>

#include "cppfabric/value.hpp"

namespace cppfabric::detail {

/// Applies `fn` to every tensor of `value`, keeping the structure.
template <typename F>
Value map_tensors(const Value& value, const F& fn) {
  switch (value.kind()) {
    case Value::Kind::Tensor:
      return Value(fn(value.to_tensor()));
    case Value::Kind::List:
    case Value::Kind::Tuple: {
      Value::List items;
      items.reserve(value.elements().size());
      for (const auto& item : value.elements()) items.push_back(map_tensors(item, fn));
      return value.kind() == Value::Kind::List ? Value::list(std::move(items))
                                               : Value::tuple(std::move(items));
    }
    case Value::Kind::Dict: {
      Value::Items items;
      items.reserve(value.items().size());
      for (const auto& [key, item] : value.items()) items.emplace_back(key, map_tensors(item, fn));
      return Value::dict(std::move(items), value.is_ordered_dict());
    }
    default:
      return value;
  }
}

}  // namespace cppfabric::detail
