// CapturedStep: one training step (forward, backward, optimizer step) recorded once in a CUDA graph
// and replayed for every later batch of the same shape, so the host launches one graph instead of
// hundreds of kernels per step. Opt-in; not in Python Fabric (PyTorch's "whole network capture").
//
//   auto optimizer = std::make_shared<cppfabric::optim::AdamW>(model->parameters(), options);
//   auto [net, opt] = fabric.setup(model, optimizer);       // one device: "single_device"
//   cppfabric::CapturedStep step(fabric, opt, [&](const std::vector<at::Tensor>& in) {
//     opt.zero_grad();
//     auto out = net(in[0]);
//     auto loss = torch::nn::functional::cross_entropy(out, in[1]);
//     fabric.backward(loss);
//     opt.step();
//     return std::vector<at::Tensor>{loss.detach(), out.detach()};
//   });
//   for (auto& batch : train) {
//     auto results = step({batch.data, batch.target});     // results[0]: this batch's loss
//   }
//   scheduler.step();                                      // the next replay uses the new lr
//
// How it runs, on a CUDA device:
//   - The first `warmup_steps` calls run the function eagerly on a side stream (cuBLAS, autocast
//     and the optimizer create their state there), each followed by a device synchronize.
//   - The next call copies its inputs into static buffers and records the function in a CUDA graph
//     on that stream, then replays it. Every later call whose inputs have the same sizes, strides,
//     dtypes and devices copies them into the buffers and replays (no host sync, no host reads: the
//     GradScaler's scale and inf check, the learning rate and the step counts are device tensors).
//   - A call with other shapes (the ragged last batch of an epoch) runs the function eagerly.
//   - The learning rate is read from the optimizer before each replay. Its other options (betas,
//     eps, weight decay, momentum) and its param groups are fixed in a recording: when they
//     change, the call records again (a scheduler that cycles the momentum every step, such as
//     OneCycleLR with cycle_momentum, therefore records every step: use eager steps there).
//   - What the function returns is copied out of the graph's buffers, so results stay valid
//     after the next replay.
// On any other device every call runs eagerly (eager_reason() says why), so the same program runs
// on CPU.
//
// Rules, as for any CUDA graph: the function must do the same device work on every call and no
// host work that should repeat (host code, callbacks and logging inside it run only during the
// warm-up and the recording); no host reads (`.item()`) inside it; one device and the
// "single_device" strategy; inputs on that device (the first call throws otherwise); an
// optimizer whose step can be recorded (cppfabric::optim::AdamW,
// Adam or SGD with fused = true: optim::GraphSafeStep). The random numbers of dropout come from
// the default CUDA generator, advanced per replay as an eager step would. After fabric.load()
// into the optimizer (its state tensors are replaced) call reset(): the next same-shaped call
// records again. Checkpoints read the device step counts themselves.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "cppfabric/wrappers.hpp"

namespace cppfabric {

class Fabric;

struct CapturedStepOptions {
  /// Eager calls before the recording (at least 1; PyTorch's docs use 3, and 11 under DDP).
  int64_t warmup_steps = 3;
  /// false: every call runs eagerly (for side-by-side comparisons), through the same code.
  bool enabled = true;
  /// Python's `torch.cuda.graph(capture_error_mode=...)`: which threads may not make
  /// CUDA calls that are unsafe during a recording: "global" (every thread; PyTorch's default),
  /// "thread_local" (only the recording thread: for a DataLoader that pins memory in its own
  /// threads meanwhile) or "relaxed" (none).
  std::string capture_error_mode = "global";
};

class CapturedStep {
 public:
  using Function = std::function<std::vector<at::Tensor>(const std::vector<at::Tensor>&)>;

  /// Throws std::invalid_argument when the strategy is not "single_device", the optimizer's step
  /// cannot be recorded, `step` is empty, warmup_steps < 1 or capture_error_mode is not one of
  /// the three (each message names the value).
  CapturedStep(Fabric& fabric, FabricOptimizer optimizer, Function step,
               CapturedStepOptions options = {});
  ~CapturedStep();
  CapturedStep(const CapturedStep&) = delete;
  CapturedStep& operator=(const CapturedStep&) = delete;

  /// Runs one step on `inputs` (eagerly, or by replaying the recorded graph) and returns what the
  /// function returned for them.
  std::vector<at::Tensor> operator()(const std::vector<at::Tensor>& inputs);

  /// Drops the recorded graph and its buffers; the next call with the recorded shapes records
  /// again (after fabric.load into the optimizer, or to change shapes for good).
  void reset();

  bool captured() const;
  int64_t replays() const;      // calls served by the graph
  int64_t eager_steps() const;  // calls run eagerly (warm-up and other shapes included)
  /// Why calls run eagerly for good (e.g. "the device is cpu ..."); empty on a CUDA device.
  const std::string& eager_reason() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace cppfabric
