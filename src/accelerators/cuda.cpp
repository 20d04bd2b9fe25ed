#include "cppfabric/accelerators/cuda.hpp"

#include <ATen/Context.h>
#include <torch/cuda.h>
#ifdef CPPFABRIC_WITH_CUDA
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDACachingAllocator.h>
#include <c10/cuda/CUDAFunctions.h>
#endif

#include <algorithm>
#include <atomic>
#include <set>
#include <sstream>

#include "cppfabric/detail/fmt.hpp"
#include "cppfabric/utilities/errors.hpp"
#include "cppfabric/utilities/rank_zero.hpp"

namespace cppfabric::accelerators {
namespace {
std::string ids_repr(const std::vector<int>& ids) {
  return fmt::format("[{}]", fmt::join(ids, ", "));
}

std::string trim(std::string s) {
  s.erase(0, s.find_first_not_of(" \t"));
  s.erase(s.find_last_not_of(" \t") + 1);
  return s;
}

int parse_index(const std::string& text, const DevicesArg& devices) {
  const std::string t = trim(text);
  try {
    std::size_t used = 0;
    const int value = std::stoi(t, &used);
    if (used == t.size()) return value;
  } catch (const std::exception&) {
  }
  throw std::invalid_argument(
      fmt::format("`devices={}` is not a valid GPU selection: '{}' is not an integer. Use a count "
                  "(2), -1 for all "
                  "GPUs, or comma-separated indices (\"0,2\").",
                  devices.repr(), t));
}
}  // namespace

int CUDAAccelerator::device_count() { return static_cast<int>(torch::cuda::device_count()); }

bool CUDAAccelerator::is_available() const { return device_count() > 0; }

int CUDAAccelerator::auto_device_count() const { return device_count(); }

std::vector<int> CUDAAccelerator::parse_gpu_ids(const DevicesArg& devices, int available) {
  // Normalise every accepted form into either a count, -1, or an explicit list.
  std::optional<int> count;
  std::vector<int> ids;
  bool explicit_list = false;
  const auto& value = devices.value();
  if (const auto* n = std::get_if<int>(&value)) {
    count = *n;
  } else if (const auto* list = std::get_if<std::vector<int>>(&value)) {
    ids = *list;
    explicit_list = true;
  } else {
    const std::string s = trim(std::get<std::string>(value));
    if (s == "0" || s == "[]") return {};
    if (s.find(',') != std::string::npos) {
      std::stringstream stream(s);
      for (std::string item; std::getline(stream, item, ',');) {
        if (!item.empty()) ids.push_back(parse_index(item, devices));
      }
      explicit_list = true;
    } else {
      count = parse_index(s, devices);
    }
  }
  if (!explicit_list) {
    if (*count == 0) return {};
    if (*count == -1) {
      for (int i = 0; i < available; ++i) ids.push_back(i);
    } else if (*count < -1) {
      throw std::invalid_argument(fmt::format(
          "`devices={}` is not a valid GPU selection: use a positive count, -1 for all GPUs, or a "
          "list of indices.",
          devices.repr()));
    } else {
      for (int i = 0; i < *count; ++i) ids.push_back(i);
    }
  }
  if (ids.empty()) {
    throw MisconfigurationError(
        fmt::format("GPUs requested (`devices={}`) but none are available.", devices.repr()));
  }
  if (std::set<int>(ids.begin(), ids.end()).size() != ids.size()) {
    throw MisconfigurationError(fmt::format(
        "Device IDs (GPU) must be unique: `devices={}` repeats an index.", devices.repr()));
  }
  for (int id : ids) {
    if (id < 0 || id >= available) {
      std::vector<int> all(available);
      for (int i = 0; i < available; ++i) all[i] = i;
      throw MisconfigurationError(fmt::format(
          "You requested gpu: {}\n But your machine only has: {}", ids_repr(ids), ids_repr(all)));
    }
  }
  return ids;
}

std::vector<c10::Device> CUDAAccelerator::parse_devices(const DevicesArg& devices) const {
  std::vector<c10::Device> out;
  for (int id : parse_gpu_ids(devices, device_count())) {
    out.emplace_back(c10::kCUDA, static_cast<c10::DeviceIndex>(id));
  }
  return out;
}

bool CUDAAccelerator::needs_matmul_precision_hint(int major, const std::string& precision) {
  if (precision != "highest" && precision != "high" && precision != "medium") {
    throw std::invalid_argument(fmt::format(
        "Unknown float32 matmul precision '{}': use one of 'highest', 'high', 'medium'.",
        precision));
  }
  // Ampere (8.x) and later have tensor cores that run float32 matmuls as TF32; the hint is only
  // for users who have not chosen a precision yet (torch's default is "highest").
  return major >= 8 && precision == "highest";
}

std::string CUDAAccelerator::matmul_precision_hint(const std::string& device_name) {
  return fmt::format(
      "'{}' has tensor cores, but float32 matrix multiplications run at full float32 precision "
      "(\"highest\"). Allowing TF32 runs them on the tensor cores, trading a little "
      "precision for speed: call at::globalContext().setFloat32MatmulPrecision(\"high\") (or "
      "\"medium\"), "
      "torch.set_float32_matmul_precision in Python, before training. See docs/precision.md.",
      device_name);
}

std::string CUDAAccelerator::float32_matmul_precision() {
  switch (at::globalContext().float32MatmulPrecision()) {
    case at::Float32MatmulPrecision::HIGHEST:
      return "highest";
    case at::Float32MatmulPrecision::HIGH:
      return "high";
    case at::Float32MatmulPrecision::MEDIUM:
      return "medium";
  }
  return "highest";
}

void CUDAAccelerator::setup_device(const c10::Device& device) {
  if (device.type() != c10::kCUDA) {
    throw std::invalid_argument(
        fmt::format("Device should be CUDA, got {} instead.", device.str()));
  }
#ifdef CPPFABRIC_WITH_CUDA
  // Python's _check_cuda_matmul_precision: shown only ever once (rank 0, as rank_zero_info).
  static std::atomic<bool> hint_checked{false};
  if (device_count() > 0 && !hint_checked.exchange(true)) {
    const auto* props = at::cuda::getDeviceProperties(
        device.has_index() ? device.index() : c10::cuda::current_device());
    if (needs_matmul_precision_hint(props->major, float32_matmul_precision())) {
      utilities::rank_zero_info(matmul_precision_hint(props->name));
    }
  }
  c10::cuda::set_device(device.index());
#endif
}

void CUDAAccelerator::teardown() {
#ifdef CPPFABRIC_WITH_CUDA
  if (device_count() > 0) c10::cuda::CUDACachingAllocator::emptyCache();
#endif
}

}  // namespace cppfabric::accelerators
