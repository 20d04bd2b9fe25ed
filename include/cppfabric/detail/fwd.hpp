// Forward declarations of the LibTorch types cppfabric's public headers mention, so that those
// headers stay light (no <torch/torch.h>). Private: not part of the API.
#pragma once

namespace torch {
namespace nn {
class Module;
template <typename Contained>
class ModuleHolder;
}  // namespace nn
namespace optim {
class Optimizer;
class OptimizerParamGroup;
}  // namespace optim
}  // namespace torch
