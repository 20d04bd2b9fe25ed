// Whether a fabric.backward() is running (the FabricModule output hooks check it). Private.
#pragma once

#include <atomic>

namespace cppfabric::detail {

std::atomic<int>& fabric_backward_depth();

/// Marks a fabric.backward() for its lifetime.
class FabricBackwardScope {
 public:
  FabricBackwardScope() { ++fabric_backward_depth(); }
  ~FabricBackwardScope() { --fabric_backward_depth(); }
  FabricBackwardScope(const FabricBackwardScope&) = delete;
  FabricBackwardScope& operator=(const FabricBackwardScope&) = delete;
};

}  // namespace cppfabric::detail
