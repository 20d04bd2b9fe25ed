#include "cppfabric/captured_step.hpp"

#include <torch/torch.h>
#ifdef CPPFABRIC_WITH_CUDA
#include <ATen/autocast_mode.h>
#include <ATen/cuda/CUDAEvent.h>
#include <ATen/cuda/CUDAGraph.h>
#include <c10/cuda/CUDACachingAllocator.h>
#include <c10/cuda/CUDAFunctions.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#endif

#include <optional>
#include <stdexcept>

#include "cppfabric/detail/fmt.hpp"
#include "cppfabric/fabric.hpp"
#include "cppfabric/optim/fused.hpp"
#include "cppfabric/strategies/strategy.hpp"

namespace cppfabric {

namespace {

// What a recorded graph's inputs must match: sizes, strides (the memory format), dtype, device.
struct Signature {
  std::vector<int64_t> sizes, strides;
  c10::ScalarType dtype;
  c10::Device device;

  static Signature of(const at::Tensor& t) {
    return {t.sizes().vec(), t.strides().vec(), t.scalar_type(), t.device()};
  }
  bool operator==(const Signature&) const = default;
};

std::vector<Signature> signature_of(const std::vector<at::Tensor>& inputs) {
  std::vector<Signature> out;
  out.reserve(inputs.size());
  for (std::size_t i = 0; i < inputs.size(); ++i) {
    if (!inputs[i].defined()) {
      throw std::invalid_argument(
          fmt::format("CapturedStep: input {} of {} is an undefined tensor.", i, inputs.size()));
    }
    out.push_back(Signature::of(inputs[i]));
  }
  return out;
}

std::string eager_reason_for(const c10::Device& device) {
  if (device.is_cuda()) return {};
  return fmt::format("the device is {} and CUDA graphs need a CUDA device: every step runs eagerly",
                     device.str());
}

}  // namespace

struct CapturedStep::Impl {
  FabricOptimizer optimizer;  // keeps the optimizer `graph_safe` points into alive
  optim::GraphSafeStep* graph_safe;
  Function step;
  CapturedStepOptions options;
  c10::Device device;
  std::string eager_reason;

  std::optional<std::vector<Signature>> signature;  // of the first call: what gets recorded
  std::vector<double> constants;  // the optimizer's graph_constants() when it was recorded
  // The gradients the recording left on the parameters (replays write into them). An eager call
  // in between (the ragged batch) sets others; each replay puts these back, so that code reading
  // p.grad() after a step sees that step's gradients.
  std::vector<std::pair<at::Tensor, at::Tensor>> recorded_grads;
  int64_t warmups = 0, replays = 0, eager = 0;
  std::vector<at::Tensor> static_inputs, static_outputs;
#ifdef CPPFABRIC_WITH_CUDA
  std::optional<c10::cuda::CUDAStream> side;
  std::unique_ptr<at::cuda::CUDAGraph> graph;
#endif

  Impl(Fabric& f, FabricOptimizer opt, Function fn, CapturedStepOptions o)
      : optimizer(std::move(opt)),
        graph_safe(dynamic_cast<optim::GraphSafeStep*>(&optimizer.optimizer())),
        step(std::move(fn)),
        options(o),
        device(f.device()),
        eager_reason(eager_reason_for(device)) {}

  std::vector<at::Tensor> eager_call(const std::vector<at::Tensor>& inputs) {
    ++eager;
    return step(inputs);
  }

  bool recorded() const {
#ifdef CPPFABRIC_WITH_CUDA
    return graph != nullptr;
#else
    return false;
#endif
  }

  std::vector<at::Tensor> call(const std::vector<at::Tensor>& inputs) {
    auto shapes = signature_of(inputs);  // also rejects undefined inputs, on every device
    if (!options.enabled || !eager_reason.empty()) return eager_call(inputs);
    if (!signature) {
      // A host input would be copied to the device inside the step: a copy from pageable host
      // memory cannot be recorded (and would fail in the middle of the recording).
      for (std::size_t i = 0; i < shapes.size(); ++i) {
        if (shapes[i].device != device) {
          throw std::invalid_argument(fmt::format(
              "CapturedStep: input {} is on {}, but the step is recorded on {}. Move the batch "
              "to the device first (setup_dataloaders moves it by default; or fabric.to_device).",
              i, shapes[i].device.str(), device.str()));
        }
      }
      signature = shapes;
    }
    if (shapes != *signature) return eager_call(inputs);  // e.g. the ragged last batch
#ifdef CPPFABRIC_WITH_CUDA
    if (warmups < options.warmup_steps) return warmup(inputs);
    // The kernels' by-value options are frozen in a recording: record again when they changed.
    if (graph && graph_safe->graph_constants() != constants) graph.reset();
    if (!graph) record(inputs);
    return replay(inputs);
#else
    return eager_call(inputs);
#endif
  }

#ifdef CPPFABRIC_WITH_CUDA
  c10::cuda::CUDAStream side_stream() {
    if (!side) side = c10::cuda::getStreamFromPool(/*isHighPriority=*/false, device.index());
    return *side;
  }

  // An eager step on the stream the recording will use, then a device synchronize: whatever it
  // allocated is safe to use and free on any stream afterwards.
  std::vector<at::Tensor> warmup(const std::vector<at::Tensor>& inputs) {
    c10::cuda::CUDAGuard device_guard(device);
    auto stream = side_stream();
    at::cuda::CUDAEvent queued;  // the side stream starts after what the current one has queued
    queued.record(at::cuda::getCurrentCUDAStream());
    queued.block(stream);
    std::vector<at::Tensor> results;
    {
      c10::cuda::CUDAStreamGuard on_side(stream);
      results = eager_call(inputs);
    }
    c10::cuda::device_synchronize();
    ++warmups;
    return results;
  }

  void record(const std::vector<at::Tensor>& inputs) {
    c10::cuda::CUDAGuard device_guard(device);
    // Nothing may read the device while recording: the step counts and the learning rates are
    // made current now.
    graph_safe->sync_steps();
    graph_safe->prepare_replay();
    constants = graph_safe->graph_constants();
    static_inputs.clear();
    for (const auto& input : inputs) static_inputs.push_back(input.clone());
    c10::cuda::device_synchronize();
    c10::cuda::CUDACachingAllocator::emptyCache();
    auto stream = side_stream();
    auto fresh = std::make_unique<at::cuda::CUDAGraph>();
    // A weight cast cached by an autocast region entered outside the step (its cache lives
    // across calls) would be a constant of the recording: no cache while recording.
    const bool autocast_cache = at::autocast::is_autocast_cache_enabled();
    at::autocast::set_autocast_cache_enabled(false);
    struct RestoreCache {
      bool enabled;
      ~RestoreCache() { at::autocast::set_autocast_cache_enabled(enabled); }
    } restore_cache{autocast_cache};
    {
      c10::cuda::CUDAStreamGuard on_side(stream);
      const auto& mode = options.capture_error_mode;
      fresh->capture_begin({0, 0}, mode == "global"         ? cudaStreamCaptureModeGlobal
                                   : mode == "thread_local" ? cudaStreamCaptureModeThreadLocal
                                                            : cudaStreamCaptureModeRelaxed);
      try {
        static_outputs = step(static_inputs);
      } catch (...) {
        try {
          fresh->capture_end();
        } catch (...) {  // the capture is invalid already; the first error is the one to report
        }
        static_outputs.clear();
        throw;
      }
      fresh->capture_end();
    }
    c10::cuda::device_synchronize();
    for (std::size_t i = 0; i < static_outputs.size(); ++i) {
      if (static_outputs[i].defined() && !static_outputs[i].is_cuda()) {
        throw std::invalid_argument(fmt::format(
            "CapturedStep: the step returned result {} on {}; a recorded step returns tensors on "
            "{} (a host copy cannot be replayed).",
            i, static_outputs[i].device().str(), device.str()));
      }
    }
    graph = std::move(fresh);
    recorded_grads.clear();
    for (auto& group : optimizer.optimizer().param_groups()) {
      for (auto& p : group.params()) {
        if (p.grad().defined()) recorded_grads.emplace_back(p, p.grad());
      }
    }
  }

  std::vector<at::Tensor> replay(const std::vector<at::Tensor>& inputs) {
    c10::cuda::CUDAGuard device_guard(device);
    for (std::size_t i = 0; i < inputs.size(); ++i) {
      static_inputs[i].copy_(inputs[i], /*non_blocking=*/true);
    }
    graph_safe->prepare_replay();  // a scheduler may have changed lr() since the last step
    for (auto& [param, grad] : recorded_grads) {
      if (!param.grad().is_same(grad)) param.mutable_grad() = grad;
    }
    graph->replay();
    ++replays;
    std::vector<at::Tensor> results;
    results.reserve(static_outputs.size());
    for (const auto& output : static_outputs) {
      results.push_back(output.defined() ? output.clone() : output);
    }
    return results;
  }
#endif
};

CapturedStep::CapturedStep(Fabric& fabric, FabricOptimizer optimizer, Function step,
                           CapturedStepOptions options) {
  if (!step) throw std::invalid_argument("CapturedStep: the step function is empty.");
  if (options.capture_error_mode != "global" && options.capture_error_mode != "thread_local" &&
      options.capture_error_mode != "relaxed") {
    throw std::invalid_argument(fmt::format(
        "CapturedStepOptions::capture_error_mode='{}' is invalid: use 'global', 'thread_local' or "
        "'relaxed'.",
        options.capture_error_mode));
  }
  if (options.warmup_steps < 1) {
    throw std::invalid_argument(fmt::format(
        "CapturedStepOptions::warmup_steps={} is invalid: at least 1 eager step must run before "
        "the recording (it creates the optimizer state the graph writes into).",
        options.warmup_steps));
  }
  const auto strategy = fabric.strategy()->name();
  if (strategy != "single_device") {
    throw std::invalid_argument(fmt::format(
        "CapturedStep needs the \"single_device\" strategy (one process, one device); the Fabric "
        "uses \"{}\". Gradient synchronisation of DDP, FSDP and ZeRO is not recorded.",
        strategy));
  }
  auto* graph_safe = dynamic_cast<optim::GraphSafeStep*>(&optimizer.optimizer());
  if (graph_safe == nullptr) {
    throw std::invalid_argument(
        "CapturedStep: this optimizer's step cannot be recorded in a CUDA graph (LibTorch's own "
        "optimizers compute with host-side step counts and learning rates). Use "
        "cppfabric::optim::AdamW, Adam or SGD (<cppfabric/optim/fused.hpp>).");
  }
  if (auto why = graph_safe->graph_safe_error(); !why.empty()) {
    throw std::invalid_argument(fmt::format("CapturedStep: {}.", why));
  }
  impl_ = std::make_unique<Impl>(fabric, std::move(optimizer), std::move(step), options);
}

CapturedStep::~CapturedStep() = default;

std::vector<at::Tensor> CapturedStep::operator()(const std::vector<at::Tensor>& inputs) {
  return impl_->call(inputs);
}

void CapturedStep::reset() {
#ifdef CPPFABRIC_WITH_CUDA
  if (impl_->graph) {
    c10::cuda::device_synchronize();
    impl_->graph_safe->sync_steps();
    impl_->graph.reset();
  }
#endif
  impl_->static_inputs.clear();
  impl_->static_outputs.clear();
  impl_->signature.reset();
  impl_->warmups = 0;  // eager steps again first: they put loaded step counts on the device
}

bool CapturedStep::captured() const { return impl_->recorded(); }
int64_t CapturedStep::replays() const { return impl_->replays; }
int64_t CapturedStep::eager_steps() const { return impl_->eager; }
const std::string& CapturedStep::eager_reason() const { return impl_->eager_reason; }

}  // namespace cppfabric
