#include "cppfabric/strategies/ddp.hpp"

#include <spdlog/spdlog.h>
#include <torch/torch.h>

#include <map>
#include <stdexcept>

#include "cppfabric/accelerators/accelerator.hpp"
#include "cppfabric/detail/fmt.hpp"
#include "cppfabric/environments/cluster_environment.hpp"
#include "cppfabric/launchers/subprocess_script.hpp"
#include "cppfabric/strategies/registry.hpp"
#include "cppfabric/utilities/errors.hpp"
#include "cppfabric/utilities/rank_zero.hpp"
#include "strategies/ddp_reducer.hpp"

namespace cppfabric::detail {

// Broadcasts `tensors` from `src` in place, packed into one flat buffer per dtype and device.
void broadcast_coalesced(collectives::ProcessGroup& group, const std::vector<at::Tensor>& tensors,
                         int src, std::optional<c10::Device> via) {
  // Staged buffers are bounded: the host-resident model may not fit on the device at once.
  constexpr int64_t kStagingBytes = int64_t{256} << 20;
  torch::NoGradGuard no_grad;
  std::map<std::tuple<int, int, int>, std::vector<at::Tensor>> groups;
  for (const auto& t : tensors) {
    if (!t.defined() || t.numel() == 0) continue;
    groups[{static_cast<int>(t.scalar_type()), static_cast<int>(t.device().type()),
            static_cast<int>(t.device().index())}]
        .push_back(t);
  }
  auto send = [&](const std::vector<at::Tensor>& members) {
    std::vector<at::Tensor> flat_parts;
    flat_parts.reserve(members.size());
    for (const auto& t : members) flat_parts.push_back(t.reshape({-1}));
    auto flat = torch::cat(flat_parts);
    if (via && flat.device() != *via) flat = flat.to(*via);
    group.broadcast(flat, src);
    int64_t offset = 0;
    for (const auto& t : members) {
      at::Tensor(t).copy_(flat.narrow(0, offset, t.numel()).view(t.sizes()));
      offset += t.numel();
    }
  };
  for (auto& [key, members] : groups) {
    if (!via || members.front().device() == *via) {
      send(members);
      continue;
    }
    std::vector<at::Tensor> bucket;
    int64_t bytes = 0;
    for (const auto& t : members) {
      const auto size = static_cast<int64_t>(t.nbytes());
      if (!bucket.empty() && bytes + size > kStagingBytes) {
        send(bucket);
        bucket.clear();
        bytes = 0;
      }
      bucket.push_back(t);
      bytes += size;
    }
    if (!bucket.empty()) send(bucket);
  }
}

std::vector<at::Tensor> module_states(torch::nn::Module& module) {
  std::vector<at::Tensor> states;
  for (const auto& p : module.parameters()) states.push_back(p);
  for (const auto& b : module.buffers()) states.push_back(b);
  return states;
}

}  // namespace cppfabric::detail

namespace cppfabric::strategies {

struct DDPStrategy::Wrapped {
  std::shared_ptr<torch::nn::Module> module;
  std::unique_ptr<detail::Reducer> reducer;
};

namespace {

// all_gather that lets gradients flow back: each rank's gradient is the sum, over ranks, of the
// gradient arriving at its own slice (torch.distributed.nn.functional.all_gather).
class AllGatherWithGrad : public torch::autograd::Function<AllGatherWithGrad> {
 public:
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& input,
                            collectives::ProcessGroup* group) {
    ctx->saved_data["group"] = reinterpret_cast<int64_t>(group);
    return torch::stack(group->all_gather(input.contiguous()));
  }
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    auto* group = reinterpret_cast<collectives::ProcessGroup*>(ctx->saved_data["group"].toInt());
    auto summed = grads[0].contiguous().clone();
    group->all_reduce(summed, collectives::ReduceKind::Sum);
    return {summed.select(0, group->rank()), at::Tensor()};
  }
};

}  // namespace

DDPStrategy::DDPStrategy(DDPOptions options) : options_(std::move(options)) {
  if (options_.bucket_cap_mb <= 0 || options_.first_bucket_cap_mb <= 0) {
    throw std::invalid_argument(
        fmt::format("DDPOptions: bucket_cap_mb ({}) and first_bucket_cap_mb ({}) must be positive.",
                    options_.bucket_cap_mb, options_.first_bucket_cap_mb));
  }
  if (options_.timeout.count() <= 0) {
    throw std::invalid_argument(
        fmt::format("DDPOptions: timeout must be positive, got {} ms.", options_.timeout.count()));
  }
  const auto& b = options_.process_group_backend;
  if (!b.empty() && b != "gloo" && b != "nccl") {
    throw std::invalid_argument(fmt::format(
        "DDPOptions: process_group_backend '{}' is not supported. Valid choices: '' (automatic), "
        "'gloo', 'nccl'.",
        b));
  }
}

DDPStrategy::~DDPStrategy() = default;

void DDPStrategy::register_strategies(StrategyRegistry& registry) {
  registry.register_strategy(
      "ddp", [] { return std::make_shared<DDPStrategy>(); },
      "DDP: one process per device, gradients all-reduced during backward");
  registry.register_strategy(
      "ddp_find_unused_parameters_true",
      [] { return std::make_shared<DDPStrategy>(DDPOptions{.find_unused_parameters = true}); },
      "DDP with find_unused_parameters=true");
}

std::string DDPStrategy::name() const {
  return options_.find_unused_parameters ? "ddp_find_unused_parameters_true" : "ddp";
}

std::string DDPStrategy::process_group_backend() const {
  if (!options_.process_group_backend.empty()) return options_.process_group_backend;
  return root_device().is_cuda() ? "nccl" : "gloo";
}

c10::Device DDPStrategy::root_device() const {
  const int rank = local_rank();
  if (parallel_devices_.empty()) return c10::Device(c10::kCPU);
  if (rank < 0 || rank >= num_processes()) {
    throw std::runtime_error(fmt::format(
        "Local rank {} has no device: this node was configured with {} device(s) ({} processes "
        "per node). The launcher (torchrun --nproc-per-node, srun --ntasks-per-node) must start "
        "as many processes per node as `devices`.",
        rank, num_processes(), num_processes()));
  }
  return parallel_devices_[rank];
}

int DDPStrategy::global_rank() const {
  return cluster_environment_ ? cluster_environment_->global_rank() : 0;
}
int DDPStrategy::local_rank() const {
  return cluster_environment_ ? cluster_environment_->local_rank() : 0;
}
int DDPStrategy::node_rank() const {
  return cluster_environment_ ? cluster_environment_->node_rank() : 0;
}
int DDPStrategy::world_size() const {
  return cluster_environment_ ? cluster_environment_->world_size() : 1;
}

std::optional<DistributedSamplerArgs> DDPStrategy::distributed_sampler_kwargs() const {
  return DistributedSamplerArgs{num_nodes_ * num_processes(), global_rank()};
}

void DDPStrategy::set_world_ranks() {
  if (!cluster_environment_) return;
  cluster_environment_->set_global_rank(node_rank() * num_processes() + local_rank());
  cluster_environment_->set_world_size(num_nodes_ * num_processes());
}

std::shared_ptr<launchers::Launcher> DDPStrategy::launcher() {
  if (!launcher_ && cluster_environment_) {
    launcher_ = std::make_shared<launchers::SubprocessScriptLauncher>(cluster_environment_,
                                                                      num_processes(), num_nodes_);
  }
  return launcher_;
}

void DDPStrategy::setup_environment() {
  Strategy::setup_environment();  // binds the device
  set_world_ranks();
  utilities::set_rank(global_rank(), world_size());
  if (group_) return;
  collectives::ProcessGroupOptions options;
  options.backend = process_group_backend();
  options.main_address = cluster_environment_->main_address();
  options.main_port = cluster_environment_->main_port();
  options.rank = global_rank();
  options.world_size = world_size();
  options.timeout = options_.timeout;
  utilities::console()->info("Initializing distributed: GLOBAL_RANK: {}, MEMBER: {}/{}",
                             options.rank, options.rank + 1, options.world_size);
  group_ = collectives::ProcessGroup::create(options);
  if (global_rank() == 0) {
    utilities::console()->info(
        "Distributed backend={}: all {} processes registered, main address {}:{}.", options.backend,
        options.world_size, options.main_address, options.main_port);
  }
}

std::shared_ptr<torch::nn::Module> DDPStrategy::setup_module(
    std::shared_ptr<torch::nn::Module> module) {
  if (!group_) {
    throw std::runtime_error(
        "DDPStrategy::setup_module needs the process group: call `fabric.launch()` first.");
  }
  if (find(*module)) {
    throw std::invalid_argument("This module is already set up with the DDP strategy.");
  }
  if (distributed()) detail::broadcast_coalesced(*group_, detail::module_states(*module), 0);
  std::vector<at::Tensor> params;
  std::vector<std::string> names;
  for (const auto& item : module->named_parameters()) {
    if (!item.value().requires_grad()) continue;
    params.push_back(item.value());
    names.push_back(item.key());
  }
  auto wrapped = std::make_unique<Wrapped>();
  wrapped->module = module;
  {  // also at world size 1, as Python's DDP: the same code path on one device
    detail::ReducerOptions reducer_options;
    reducer_options.bucket_cap_bytes = static_cast<int64_t>(options_.bucket_cap_mb * 1024 * 1024);
    reducer_options.first_bucket_cap_bytes =
        static_cast<int64_t>(options_.first_bucket_cap_mb * 1024 * 1024);
    reducer_options.find_unused_parameters = options_.find_unused_parameters;
    reducer_options.gradient_as_bucket_view = options_.gradient_as_bucket_view;
    wrapped->reducer = std::make_unique<detail::Reducer>(std::move(params), std::move(names),
                                                         group_, reducer_options);
  }
  wrapped_.push_back(std::move(wrapped));
  return module;
}

DDPStrategy::Wrapped* DDPStrategy::find(const torch::nn::Module& module) const {
  for (const auto& w : wrapped_) {
    if (w->module.get() == &module) return w.get();
  }
  return nullptr;
}

Guard DDPStrategy::forward_context(torch::nn::Module& module) {
  Wrapped* wrapped = find(module);
  if (wrapped && wrapped->reducer) wrapped->reducer->prepare_for_forward();
  if (options_.broadcast_buffers && distributed() && wrapped) {
    const auto buffers = module.buffers();
    if (!buffers.empty()) detail::broadcast_coalesced(*group_, buffers, 0);
  }
  return {};
}

Guard DDPStrategy::no_backward_sync(torch::nn::Module& module, bool enabled) {
  Wrapped* wrapped = find(module);
  if (!wrapped) {
    throw TypeError(fmt::format(
        "Blocking backward sync is only possible if the module passed to "
        "`DDPStrategy.no_backward_sync` was set up with this DDP strategy. Got a {} that was not "
        "passed through `fabric.setup()`.",
        module.name()));
  }
  if (!enabled || !wrapped->reducer) return {};
  auto* reducer = wrapped->reducer.get();
  const bool previous = reducer->require_sync();
  reducer->set_require_sync(false);
  return Guard([reducer, previous] { reducer->set_require_sync(previous); });
}

void DDPStrategy::barrier(const std::string& name) {
  if (distributed()) group_->barrier();
}

void DDPStrategy::barrier_with_timeout(const std::string& name, std::chrono::milliseconds timeout) {
  if (distributed()) group_->barrier(timeout);
}

at::Tensor DDPStrategy::broadcast(const at::Tensor& tensor, int src) {
  if (!distributed()) return tensor;
  // Shapes and dtypes may differ between ranks (Python broadcasts any object): send them first.
  const auto device = cppfabric::detail::collective_device(root_device());
  const auto meta_options = torch::TensorOptions().dtype(torch::kInt64).device(device);
  auto header = torch::zeros({2}, meta_options);
  if (global_rank() == src) {
    if (!tensor.defined()) {
      throw std::invalid_argument(
          "fabric.broadcast(): the source rank passed an undefined tensor.");
    }
    header[0] = static_cast<int64_t>(tensor.scalar_type());
    header[1] = tensor.dim();
  }
  group_->broadcast(header, src);
  const auto dtype = static_cast<c10::ScalarType>(header[0].item<int64_t>());
  const auto dim = header[1].item<int64_t>();
  auto sizes = torch::zeros({std::max<int64_t>(dim, 1)}, meta_options);
  if (global_rank() == src && dim > 0) {
    sizes.narrow(0, 0, dim).copy_(torch::tensor(tensor.sizes().vec(), torch::kInt64));
  }
  group_->broadcast(sizes, src);
  const auto shape_tensor = sizes.cpu();
  std::vector<int64_t> shape(shape_tensor.data_ptr<int64_t>(),
                             shape_tensor.data_ptr<int64_t>() + dim);
  at::Tensor result = global_rank() == src
                          ? tensor.detach().to(device).contiguous().clone()
                          : torch::empty(shape, torch::TensorOptions().dtype(dtype).device(device));
  group_->broadcast(result, src);
  return tensor.defined() ? result.to(tensor.device()) : result;
}

at::Tensor DDPStrategy::all_gather(const at::Tensor& tensor, bool sync_grads) {
  if (!distributed()) return tensor;
  if (sync_grads) return AllGatherWithGrad::apply(tensor, group_.get());
  torch::NoGradGuard no_grad;
  return torch::stack(group_->all_gather(tensor.contiguous()));
}

at::Tensor DDPStrategy::all_reduce(const at::Tensor& tensor, collectives::ReduceKind op) {
  if (!distributed()) return tensor;
  at::Tensor result = tensor;
  group_->barrier();
  group_->all_reduce(result, op);  // in place, as Python's _sync_ddp
  return result;
}

void DDPStrategy::teardown() {
  wrapped_.clear();
  group_.reset();
  if (cluster_environment_) cluster_environment_->teardown();
  Strategy::teardown();
}

}  // namespace cppfabric::strategies
