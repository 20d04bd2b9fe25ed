// The pickle side of torch.save files, reading: an interpreter for the pickle opcodes torch.save
// emits that builds Values and never runs code (only a fixed list of globals is accepted; see
// cppfabric/checkpoint/torch_pickle.hpp). Private.
//
//   Value v = detail::unpickle(zip.read_small("data.pkl", max), zip, limits);
#pragma once

#include <string_view>

#include "checkpoint/zip_archive.hpp"
#include "cppfabric/checkpoint/torch_pickle.hpp"
#include "cppfabric/state.hpp"

namespace cppfabric::checkpoint::detail {

/// Unpickles `pickle` (the data.pkl record of `zip`); storages are read from `zip`'s data/<key>
/// records. std::runtime_error (through zip.fail) for anything malformed or over `limits`.
Value unpickle(std::string_view pickle, const ZipReader& zip, const ReadLimits& limits);

}  // namespace cppfabric::checkpoint::detail
