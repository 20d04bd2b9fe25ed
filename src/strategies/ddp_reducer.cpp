#include "strategies/ddp_reducer.hpp"

#include <c10/util/strides.h>
#include <spdlog/spdlog.h>
#include <torch/csrc/autograd/engine.h>
#include <torch/csrc/autograd/function.h>
#include <torch/csrc/autograd/function_hook.h>
#include <torch/csrc/autograd/variable.h>
#include <torch/torch.h>

#include <map>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <tuple>

#include "cppfabric/detail/fmt.hpp"
#include "cppfabric/utilities/rank_zero.hpp"

namespace cppfabric::detail {

namespace {
struct Bucket {
  std::vector<int64_t> params;
  at::Tensor flat;
  int64_t pending = 0;
  std::optional<collectives::CollectiveWork> work;
};
}  // namespace

struct Reducer::State {
  std::mutex mutex;
  std::vector<at::Tensor> params;
  std::vector<std::string> names;
  std::shared_ptr<collectives::ProcessGroup> group;
  ReducerOptions options;
  std::vector<Bucket> buckets;
  std::vector<int64_t> param_bucket;
  std::vector<int64_t> param_offset;
  std::vector<char> ready;
  std::vector<char> used;
  std::size_t next_launch = 0;
  bool callback_queued = false;
  // Lives as long as the backward pass that queued the finalize callback: the autograd engine
  // drops its queued callbacks (and this token with them) when a pass ends, whether it finished or
  // threw. Expired while `callback_queued` is still set means the pass was interrupted.
  std::weak_ptr<void> pass_token;
  bool require_sync = true;
  std::vector<std::shared_ptr<torch::autograd::Node>> accumulators;
  std::vector<uintptr_t> hook_keys;

  // Per parameter: its stretch of the bucket, flat and in the parameter's shape, and whether
  // `.grad` is that view (gradient_as_bucket_view, for contiguous parameters).
  std::vector<at::Tensor> flat_slices;
  std::vector<at::Tensor> views;
  std::vector<char> as_view;

  const at::Tensor& slice(int64_t i) const { return flat_slices[i]; }

  bool grad_is_view(int64_t i) const {
    const auto& grad = params[i].grad();
    return grad.defined() && grad.data_ptr() == views[i].data_ptr() &&
           grad.sizes() == views[i].sizes() && grad.strides() == views[i].strides();
  }

  void fill(int64_t i) {
    const auto& grad = params[i].grad();
    if (as_view[i] && grad_is_view(i)) {
      // Accumulated straight into the bucket: nothing to copy.
    } else if (grad.defined()) {
      if (as_view[i]) {
        views[i].copy_(grad);
        params[i].mutable_grad() = views[i];  // from now on autograd accumulates in the bucket
      } else {
        flat_slices[i].copy_(grad.reshape({-1}));
      }
    } else {
      flat_slices[i].zero_();
    }
    ready[i] = 1;
    --buckets[param_bucket[i]].pending;
  }

  void launch_ready_buckets() {
    const int world = group->world_size();
    while (next_launch < buckets.size() && buckets[next_launch].pending == 0) {
      auto& bucket = buckets[next_launch++];
      if (world == 1) continue;  // the average over one rank is the gradient itself
      bucket.flat.div_(world);
      bucket.work.emplace(group->all_reduce_async(bucket.flat, collectives::ReduceKind::Sum));
    }
  }

  void reset() {
    for (auto& bucket : buckets) {
      bucket.pending = static_cast<int64_t>(bucket.params.size());
      bucket.work.reset();
    }
    std::fill(ready.begin(), ready.end(), 0);
    std::fill(used.begin(), used.end(), 0);
    next_launch = 0;
    callback_queued = false;
    pass_token.reset();
  }

  // A backward pass that threw midway (an exception in a backward function, a hook, a failed
  // collective) never runs the finalize callback: its marks, counts and launched all-reduces
  // remain. Python's DDP raises "Expected to have finished reduction in the prior iteration" on
  // the next step; we recover instead: wait for the all-reduces already launched (they write into
  // the buckets, and every rank that threw at the same point launched the same ones), then forget
  // the pass, so the next backward reduces from scratch. Gradients the interrupted pass had
  // accumulated into `.grad` stay there, as in plain LibTorch: zero them before the next step.
  bool interrupted() const { return callback_queued && pass_token.expired(); }

  void recover_if_interrupted() {
    if (!interrupted()) return;
    std::size_t launched = next_launch;
    for (std::size_t b = 0; b < launched; ++b) {
      if (!buckets[b].work) continue;
      try {
        buckets[b].work->wait();
      } catch (const std::exception& e) {
        reset();
        throw std::runtime_error(fmt::format(
            "DDP on rank {}: the previous backward pass was interrupted, and waiting for the "
            "gradient all-reduce it had already started (bucket {} of {}) failed: {}",
            group->rank(), b, buckets.size(), e.what()));
      }
    }
    reset();
    utilities::console()->warn(
        "DDP on rank {}: the previous backward pass did not finish (it threw after {} of {} "
        "gradient buckets were sent); its partial gradient reduction was discarded. Zero the "
        "gradients before the next backward.",
        group->rank(), launched, buckets.size());
  }

  void prepare_for_forward() {
    std::lock_guard<std::mutex> lock(mutex);
    recover_if_interrupted();
  }

  void on_grad_ready(int64_t i, const std::weak_ptr<State>& self) {
    std::lock_guard<std::mutex> lock(mutex);
    recover_if_interrupted();
    if (!require_sync || ready[i]) return;
    used[i] = 1;
    fill(i);
    if (!callback_queued) {
      callback_queued = true;
      auto token = std::make_shared<char>(0);
      pass_token = token;
      torch::autograd::Engine::get_default_engine().queue_callback([self, token] {
        if (auto state = self.lock()) state->finalize();
      });
    }
    launch_ready_buckets();
  }

  void finalize() {
    std::lock_guard<std::mutex> lock(mutex);
    try {
      finalize_locked();
    } catch (...) {
      reset();
      throw;
    }
    reset();
  }

  void finalize_locked() {
    std::vector<std::string> missing;
    for (std::size_t i = 0; i < params.size(); ++i) {
      if (!ready[i]) missing.push_back(fmt::format("{} (index {})", names[i], i));
    }
    if (!missing.empty() && !options.find_unused_parameters) {
      throw std::runtime_error(fmt::format(
          "DDP on rank {}: these parameters received no gradient in this backward pass, so their "
          "gradients cannot be averaged across ranks: {}. Your module has parameters that were not "
          "used in producing the loss. Use strategy=\"ddp_find_unused_parameters_true\" (or "
          "DDPStrategy with find_unused_parameters = true), or make sure every parameter takes "
          "part "
          "in the loss.",
          group->rank(), fmt::join(missing, ", ")));
    }
    for (std::size_t i = 0; i < params.size(); ++i) {
      if (!ready[i]) fill(static_cast<int64_t>(i));
    }
    launch_ready_buckets();
    at::Tensor globally_used;
    if (options.find_unused_parameters) {
      globally_used = torch::tensor(std::vector<int32_t>(used.begin(), used.end()),
                                    torch::TensorOptions().dtype(torch::kInt32));
      if (!params.empty() && params.front().is_cuda()) {
        globally_used = globally_used.to(params.front().device());
      }
      group->all_reduce(globally_used, collectives::ReduceKind::Sum);
      globally_used = globally_used.cpu();
    }
    for (auto& bucket : buckets) {
      if (bucket.work) bucket.work->wait();
    }
    torch::NoGradGuard no_grad;
    for (std::size_t i = 0; i < params.size(); ++i) {
      const auto index = static_cast<int64_t>(i);
      auto& param = params[i];
      const auto& averaged = views[i];
      if (param.grad().defined()) {
        if (!(as_view[i] && grad_is_view(index))) param.mutable_grad().copy_(averaged);
      } else if (!options.find_unused_parameters || globally_used[index].item<int32_t>() > 0) {
        param.mutable_grad() = as_view[i] ? averaged : averaged.clone();
      }
    }
  }
};

namespace {
class GradReadyHook : public torch::autograd::FunctionPostHook {
 public:
  GradReadyHook(std::weak_ptr<Reducer::State> state, int64_t index)
      : state_(std::move(state)), index_(index) {}
  torch::autograd::variable_list operator()(const torch::autograd::variable_list& outputs,
                                            const torch::autograd::variable_list&) override {
    if (auto state = state_.lock()) state->on_grad_ready(index_, state_);
    return outputs;
  }

 private:
  std::weak_ptr<Reducer::State> state_;
  int64_t index_;
};
}  // namespace

Reducer::Reducer(std::vector<at::Tensor> params, std::vector<std::string> names,
                 std::shared_ptr<collectives::ProcessGroup> group, ReducerOptions options)
    : state_(std::make_shared<State>()) {
  auto& s = *state_;
  s.params = std::move(params);
  s.names = std::move(names);
  s.group = std::move(group);
  s.options = options;
  const auto n = static_cast<int64_t>(s.params.size());
  s.param_bucket.assign(n, -1);
  s.param_offset.assign(n, 0);
  s.ready.assign(n, 0);
  s.used.assign(n, 0);
  s.flat_slices.resize(n);
  s.views.resize(n);
  s.as_view.assign(n, 0);

  // Reverse order; one open bucket per (dtype, device); the first bucket closed gets the small cap.
  std::map<std::tuple<int, int, int>, std::pair<std::vector<int64_t>, int64_t>> open;
  std::vector<std::vector<int64_t>> assignment;
  auto close = [&](std::vector<int64_t>& members) {
    if (!members.empty()) assignment.push_back(std::move(members));
    members.clear();
  };
  for (int64_t i = n - 1; i >= 0; --i) {
    const auto& p = s.params[i];
    const auto key =
        std::make_tuple(static_cast<int>(p.scalar_type()), static_cast<int>(p.device().type()),
                        static_cast<int>(p.device().index()));
    auto& [members, bytes] = open[key];
    members.push_back(i);
    bytes += p.numel() * static_cast<int64_t>(p.element_size());
    const int64_t cap =
        assignment.empty() ? s.options.first_bucket_cap_bytes : s.options.bucket_cap_bytes;
    if (bytes >= cap) {
      close(members);
      bytes = 0;
    }
  }
  for (auto& [key, entry] : open) close(entry.first);

  for (auto& members : assignment) {
    Bucket bucket;
    int64_t numel = 0;
    for (int64_t i : members) {
      s.param_bucket[i] = static_cast<int64_t>(s.buckets.size());
      s.param_offset[i] = numel;
      numel += s.params[i].numel();
    }
    const auto& first = s.params[members.front()];
    bucket.flat = torch::zeros({numel}, first.options().requires_grad(false));
    for (int64_t i : members) {
      s.flat_slices[i] = bucket.flat.narrow(0, s.param_offset[i], s.params[i].numel());
      // Shares the bucket's storage without being an autograd view: LibTorch's
      // Optimizer::zero_grad calls detach_() on every gradient, which views refuse.
      s.views[i] = torch::empty({0}, bucket.flat.options())
                       .set_(bucket.flat.storage(), s.param_offset[i], s.params[i].sizes(),
                             c10::contiguous_strides(s.params[i].sizes()));
      s.as_view[i] = s.options.gradient_as_bucket_view && s.params[i].is_contiguous() ? 1 : 0;
    }
    bucket.params = std::move(members);
    bucket.pending = static_cast<int64_t>(bucket.params.size());
    s.buckets.push_back(std::move(bucket));
  }

  std::weak_ptr<State> weak = state_;
  for (int64_t i = 0; i < n; ++i) {
    auto accumulator = torch::autograd::impl::grad_accumulator(s.params[i]);
    if (!accumulator) {
      throw std::invalid_argument(fmt::format(
          "DDP: parameter '{}' is not a leaf tensor that requires grad; it cannot be reduced.",
          s.names[i]));
    }
    s.hook_keys.push_back(accumulator->add_post_hook(std::make_unique<GradReadyHook>(weak, i)));
    s.accumulators.push_back(std::move(accumulator));
  }
}

Reducer::~Reducer() {
  for (std::size_t i = 0; i < state_->accumulators.size(); ++i) {
    state_->accumulators[i]->del_post_hook(state_->hook_keys[i]);
  }
}

void Reducer::set_require_sync(bool require) {
  std::lock_guard<std::mutex> lock(state_->mutex);
  state_->require_sync = require;
}

bool Reducer::require_sync() const {
  std::lock_guard<std::mutex> lock(state_->mutex);
  return state_->require_sync;
}

void Reducer::prepare_for_forward() { state_->prepare_for_forward(); }

std::vector<std::vector<int64_t>> Reducer::bucket_indices() const {
  std::vector<std::vector<int64_t>> out;
  for (const auto& bucket : state_->buckets) out.push_back(bucket.params);
  return out;
}

}  // namespace cppfabric::detail
