#include "cppfabric/callbacks.hpp"

#include "cppfabric/detail/fmt.hpp"

namespace cppfabric {

void HookArgs::check_index(std::size_t i) const {
  if (i >= args_.size()) {
    throw std::invalid_argument(fmt::format(
        "fabric.call(...) passed {} argument(s); argument {} does not exist", args_.size(), i));
  }
}

void HookArgs::throw_bad_type(std::size_t i, const std::type_info& wanted) const {
  throw std::invalid_argument(
      fmt::format("fabric.call(...) argument {} has type {}, not the {} asked for", i,
                  args_[i].type().name(), wanted.name()));
}

}  // namespace cppfabric
