// AdamW, Adam and SGD (with momentum) whose step runs ATen's fused kernels (`_fused_adamw_`,
// `_fused_adam_`, `_fused_sgd_`, on CPU and CUDA): one pass over each parameter instead of
// LibTorch's ~10 tensor operations per parameter. Python's `torch.optim.AdamW(..., fused=True)`;
// `{.fused = false, .foreach = true}` is Python's foreach=True (ATen's `_foreach_*` operations).
//
//   #include <cppfabric/optim/fused.hpp>
//   auto optimizer = std::make_shared<cppfabric::optim::AdamW>(
//       model->parameters(), torch::optim::AdamWOptions(3e-4).weight_decay(1e-2));
//   auto [net, opt] = fabric.setup(model, optimizer);   // as any LibTorch optimizer
//
//   // Python's foreach=True, and fused=False: LibTorch's own per-parameter step (the base class's).
//   cppfabric::optim::Adam adam(params, {}, {.fused = false, .foreach = true});
//   cppfabric::optim::SGD sgd(params, torch::optim::SGDOptions(0.1).momentum(0.9), {.fused = false});
//
// Each class derives from its LibTorch counterpart and keeps its options (AdamWOptions, ...), its
// param groups and its per-parameter state (AdamWParamState: step, exp_avg, exp_avg_sq,
// max_exp_avg_sq; SGDParamState: momentum_buffer). So everything that takes a LibTorch optimizer
// takes these: fabric.setup, the learning-rate schedulers, checkpoints (saved in Python's
// optimizer layout, loadable by torch.optim.AdamW and back), GradScaler.
//
// The step's result equals LibTorch's within float rounding (tests: 1e-6 over hundreds of steps).
// Supported: dense floating-point parameters and gradients (float, double, half, bfloat16) on CPU
// or CUDA, contiguous or in another dense layout such as channels_last (gradients and state are
// kept in the parameter's strides); anything else throws std::invalid_argument naming the
// parameter.
//
// With a GradScaler (precision "16-mixed"), GradScaler::step hands the scale and the inf flag to
// step_scaled(): the kernel unscales the gradients and skips the update when a gradient was
// inf/NaN, on the device, without the host reading the flag (Python's `_step_supports_amp_scaling`).
// The per-parameter step count then lives in a device tensor. On the CPU `state().step()` is exact
// at once; on a GPU it counts the skipped steps too until it is brought up to date, which reads
// the device: by sync_steps() (fabric.save and fabric.load call it), or every 64 steps.
//
// The fused steps are CUDA-graph safe (optim::GraphSafeStep; cppfabric::CapturedStep records them):
// the learning rate reaches the kernel as a device tensor, the step counts live on the device, and
// while the current CUDA stream is capturing the step neither reads from nor writes to the host.
//
// This header includes LibTorch's optimizer headers (<torch/optim/adamw.h>, ...; not the umbrella
// <torch/torch.h>), because the classes derive from LibTorch's; cppfabric.hpp does not include it.
#pragma once

#include <torch/optim/adam.h>
#include <torch/optim/adamw.h>
#include <torch/optim/sgd.h>

#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace cppfabric::optim {

/// How the optimizer steps, as Python's `fused=` and `foreach=` flags. `fused = true`: ATen's
/// fused kernel (one pass per parameter). Otherwise `foreach = true`: ATen's multi-tensor
/// `_foreach_*` operations over all parameters of a param group and device (Python's
/// foreach=True: fewer kernel launches than a loop, more passes over memory than fused; the
/// GradScaler then unscales on the host as for the loop). On the CPU, where ATen's `_foreach_*`
/// operations are loops themselves, foreach is slower than LibTorch's loop (bench_optimizers:
/// 2.5x for AdamW here; Python's foreach=True is 2.0x its own loop on the same machine), as in
/// Python, whose foreach default is for CUDA only: use fused on the CPU. Both false: LibTorch's
/// per-parameter loop (the base class's step()).
struct StepOptions {
  bool fused = true;
  bool foreach = false;
};

/// Optimizers that take a GradScaler's scale and inf flag on the device (no host sync).
class AmpScalingStep {
 public:
  virtual ~AmpScalingStep() = default;
  /// One step on the gradients divided by `grad_scale` (undefined: already unscaled), skipped
  /// where `found_inf` (a float32 scalar tensor on the parameters' device; undefined: none) is
  /// non-zero. The step count of a skipped step is not advanced.
  virtual void step_scaled(const at::Tensor& grad_scale, const at::Tensor& found_inf) = 0;
};

/// Optimizers whose step a CUDA graph can record (cppfabric::CapturedStep): AdamW, Adam and SGD
/// below with `fused = true` (Python's `capturable=True` with a tensor learning rate).
class GraphSafeStep {
 public:
  virtual ~GraphSafeStep() = default;
  /// Empty when step() can be recorded in a CUDA graph; otherwise why not (e.g. fused = false).
  virtual std::string graph_safe_error() const = 0;
  /// Writes each param group's lr() into the device tensor the kernels read. An eager step does
  /// this itself; a recorded step reads the tensor, so call this before each replay (CapturedStep
  /// does) to pick up a scheduler's change.
  virtual void prepare_replay() = 0;
  /// Reads the device-side step counts into `state()` (one host read per device): after replays
  /// of a recorded step the host's counts are behind. Checkpoints call it before saving and loading.
  virtual void sync_steps() = 0;
  /// What a recorded step holds fixed: per param group its parameter count and every option the
  /// kernels take by value (betas, eps, weight decay, momentum, ...; not lr). CapturedStep
  /// records again when this changes (a scheduler cycling the momentum, an added param group).
  virtual std::vector<double> graph_constants() const = 0;
};

namespace detail {
struct FusedStepState;

/// AdamW and Adam: LibTorch's optimizer `Base` (torch::optim::AdamW or torch::optim::Adam, with
/// its `Options`) stepping through ATen's fused or foreach kernels. Instantiated for those two only
/// (in fused.cpp); use the classes below.
template <typename Base, typename Options>
class AdamFamily : public Base, public AmpScalingStep, public GraphSafeStep {
 public:
  explicit AdamFamily(std::vector<at::Tensor> params, Options defaults = {},
                      StepOptions step_options = {});
  explicit AdamFamily(std::vector<torch::optim::OptimizerParamGroup> param_groups,
                      Options defaults = {}, StepOptions step_options = {});
  ~AdamFamily() override;

  at::Tensor step(torch::optim::Optimizer::LossClosure closure = nullptr) override;
  void step_scaled(const at::Tensor& grad_scale, const at::Tensor& found_inf) override;
  std::string graph_safe_error() const override;
  void prepare_replay() override;
  void sync_steps() override;
  std::vector<double> graph_constants() const override;
  const StepOptions& step_options() const { return step_options_; }

 private:
  StepOptions step_options_;
  std::unique_ptr<FusedStepState> fused_;
};

extern template class AdamFamily<torch::optim::AdamW, torch::optim::AdamWOptions>;
extern template class AdamFamily<torch::optim::Adam, torch::optim::AdamOptions>;

}  // namespace detail

/// AdamW (decoupled weight decay): `_fused_adamw_`.
class AdamW : public detail::AdamFamily<torch::optim::AdamW, torch::optim::AdamWOptions> {
 public:
  using AdamFamily::AdamFamily;
};

/// Adam (L2 weight decay on the gradient): `_fused_adam_`.
class Adam : public detail::AdamFamily<torch::optim::Adam, torch::optim::AdamOptions> {
 public:
  using AdamFamily::AdamFamily;
};

/// SGD with optional momentum, dampening, Nesterov and weight decay (LibTorch's SGDOptions).
class SGD : public torch::optim::SGD, public AmpScalingStep, public GraphSafeStep {
 public:
  explicit SGD(std::vector<at::Tensor> params, torch::optim::SGDOptions defaults,
               StepOptions step_options = {});
  explicit SGD(std::vector<torch::optim::OptimizerParamGroup> param_groups,
               torch::optim::SGDOptions defaults, StepOptions step_options = {});
  ~SGD() override;

  at::Tensor step(LossClosure closure = nullptr) override;
  void step_scaled(const at::Tensor& grad_scale, const at::Tensor& found_inf) override;
  std::string graph_safe_error() const override;
  void prepare_replay() override;
  void sync_steps() override {}  // no step counts
  std::vector<double> graph_constants() const override;
  const StepOptions& step_options() const { return step_options_; }

 private:
  StepOptions step_options_;
  std::unique_ptr<detail::FusedStepState> fused_;
};

}  // namespace cppfabric::optim
