// What TensorBoardLogger needs from its SummaryWriter beyond the public calls: writing a ready
// Summary (the hparams plugin's) and creating the event file. Private.
#pragma once

#include <cstdint>
#include <optional>
#include <string_view>

#include "cppfabric/loggers/summary_writer.hpp"
#include "loggers/proto.hpp"

namespace cppfabric::loggers::detail {

/// Checks the event-file options both SummaryWriter and TensorBoardLogger take (`owner` names the
/// class in the message): max_queue >= 1, flush_secs > 0.
void validate_queue_options(std::string_view owner, int max_queue, double flush_secs);

struct SummaryWriterAccess {
  static void add_summary(SummaryWriter& writer, const Proto& summary, std::optional<int64_t> step);
  static void create_file(SummaryWriter& writer);
};

}  // namespace cppfabric::loggers::detail
