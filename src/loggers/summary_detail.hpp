// What TensorBoardLogger needs from its SummaryWriter beyond the public calls: writing a ready
// Summary (the hparams plugin's) and creating the event file. Private.
#pragma once

#include <cstdint>
#include <optional>

#include "cppfabric/loggers/summary_writer.hpp"
#include "loggers/proto.hpp"

namespace cppfabric::loggers::detail {

struct SummaryWriterAccess {
  static void add_summary(SummaryWriter& writer, const Proto& summary, std::optional<int64_t> step);
  static void create_file(SummaryWriter& writer);
};

}  // namespace cppfabric::loggers::detail
