// The one place cppfabric's headers include {fmt}. LibTorch's wheel ships its own (newer) fmt
// headers; cppfabric and spdlog are built against the system fmt, which the cppfabric target puts
// first on the include path. Private: not part of the API.
#pragma once

#include <fmt/format.h>
#include <fmt/ranges.h>

#if defined(CPPFABRIC_FMT_VERSION) && FMT_VERSION != CPPFABRIC_FMT_VERSION
#error \
    "cppfabric: a different {fmt} was found first on the include path (LibTorch ships one). Link cppfabric::cppfabric before torch so its fmt include directory comes first."
#endif
