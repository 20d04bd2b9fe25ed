#include "cppfabric/accelerators/cpu.hpp"

#include <algorithm>
#include <cctype>

#include "cppfabric/detail/fmt.hpp"
#include "cppfabric/utilities/errors.hpp"

namespace cppfabric::accelerators {

int CPUAccelerator::parse_cpu_cores(const DevicesArg& devices) {
  int cores = 0;
  if (const auto* n = std::get_if<int>(&devices.value())) {
    cores = *n;
  } else if (const auto* s = std::get_if<std::string>(&devices.value())) {
    std::string trimmed = *s;
    trimmed.erase(0, trimmed.find_first_not_of(" \t"));
    trimmed.erase(trimmed.find_last_not_of(" \t") + 1);
    const bool digits = !trimmed.empty() && trimmed.size() < 9 &&
                        std::all_of(trimmed.begin(), trimmed.end(),
                                    [](unsigned char c) { return std::isdigit(c) != 0; });
    if (digits) cores = std::stoi(trimmed);
  }
  if (cores <= 0) {
    throw TypeError(fmt::format(
        "`devices={}` is not valid with the CPUAccelerator: `devices` must be an int > 0 (the "
        "number "
        "of processes), e.g. 1 or 4. Lists, -1 and index strings such as \"0,1\" select GPUs.",
        devices.repr()));
  }
  return cores;
}

std::vector<c10::Device> CPUAccelerator::parse_devices(const DevicesArg& devices) const {
  return std::vector<c10::Device>(parse_cpu_cores(devices), c10::Device(c10::kCPU));
}

void CPUAccelerator::setup_device(const c10::Device& device) {
  if (device.type() != c10::kCPU) {
    throw std::invalid_argument(fmt::format("Device should be CPU, got {} instead.", device.str()));
  }
}

}  // namespace cppfabric::accelerators
