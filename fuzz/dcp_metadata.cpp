// libFuzzer target: the input is the `.metadata` file of a sharded (torch.distributed.checkpoint)
// checkpoint. Contract: a DcpMetadata or std::runtime_error; and what parses writes back
// (write_dcp_metadata) into bytes that parse to the same entries.
#include "checkpoint/dcp_metadata.hpp"

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <stdexcept>
#include <string>
#include <string_view>

namespace d = cppfabric::checkpoint::detail;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  d::DcpMetadata md;
  try {
    md =
        d::read_dcp_metadata(std::string_view(reinterpret_cast<const char*>(data), size), "<fuzz>");
  } catch (const std::runtime_error&) {
    return 0;
  }
  const d::DcpMetadata back = d::read_dcp_metadata(d::write_dcp_metadata(md), "<rewritten>");
  if (back.entries.size() != md.entries.size()) std::abort();
  for (std::size_t k = 0; k < md.entries.size(); ++k) {
    const auto& a = md.entries[k];
    const auto& b = back.entries[k];
    if (a.key != b.key || a.is_tensor != b.is_tensor || a.size != b.size ||
        a.chunks.size() != b.chunks.size() || a.storage.offset != b.storage.offset)
      std::abort();
  }
  return 0;
}
