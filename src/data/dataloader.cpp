#include "cppfabric/data/dataloader.hpp"

#include <ATen/CPUGeneratorImpl.h>
#include <torch/torch.h>

#include <atomic>
#include <condition_variable>
#include <exception>
#include <map>
#include <mutex>
#include <stdexcept>
#include <thread>

#include "cppfabric/data/transforms.hpp"
#include "cppfabric/detail/fmt.hpp"
#include "cppfabric/utilities/rank_zero.hpp"
#include "data/error_message.hpp"

namespace cppfabric::data {

namespace {

bool pinned_memory_available() {
  static const bool available = torch::cuda::is_available();
  return available;
}

at::Tensor stack_into(const std::vector<at::Tensor>& parts, bool pin) {
  if (!pin) return at::stack(parts);
  std::vector<int64_t> sizes{static_cast<int64_t>(parts.size())};
  for (auto s : parts.front().sizes()) sizes.push_back(s);
  auto out = at::empty(sizes, parts.front().options().pinned_memory(true));
  at::stack_out(out, parts);
  return out;
}

}  // namespace

Batch default_collate(std::vector<Example>& examples, bool pin_memory) {
  if (examples.empty()) return {};
  // Each part (data, target, fields) must be present in every example or in none.
  auto check_agree = [&](const char* part, auto has) {
    const bool first = has(examples.front());
    for (std::size_t i = 1; i < examples.size(); ++i) {
      if (has(examples[i]) != first) {
        throw std::invalid_argument(fmt::format(
            "default_collate: element {} of the batch {} `{}` but element {} {}; every example "
            "in a batch must agree",
            first ? 0 : i, "has", part, first ? i : 0, "does not"));
      }
    }
    return first;
  };
  const bool has_data = check_agree("data", [](const Example& e) { return e.data.defined(); });
  const bool has_target =
      check_agree("target", [](const Example& e) { return e.target.defined(); });
  const bool has_fields =
      check_agree("fields", [](const Example& e) { return !e.fields.is_none(); });
  if (!has_data && !has_target && !has_fields) {
    throw std::invalid_argument(
        "default_collate: the examples are empty (no data, target or fields)");
  }
  auto stack_part = [&](const char* part, at::Tensor Example::*member) {
    std::vector<at::Tensor> parts;
    parts.reserve(examples.size());
    for (std::size_t i = 0; i < examples.size(); ++i) {
      at::Tensor& t = examples[i].*member;
      if (i > 0 && t.sizes() != parts.front().sizes()) {
        throw std::invalid_argument(fmt::format(
            "default_collate: `{}` has shape {} in element 0 of the batch but {} in element {}; "
            "stacking needs equal shapes (resize the samples, or pass a collate_fn)",
            part, parts.front().sizes().vec(), t.sizes().vec(), i));
      }
      parts.push_back(std::move(t));
    }
    return stack_into(parts, pin_memory);
  };
  Batch batch;
  if (has_data) batch.data = stack_part("data", &Example::data);
  if (has_target) batch.target = stack_part("target", &Example::target);
  if (has_fields) {
    std::vector<Value> fields;
    fields.reserve(examples.size());
    for (auto& example : examples) fields.push_back(std::move(example.fields));
    batch.fields = collate_values(fields, pin_memory, "fields");
  }
  return batch;
}

// ---------------------------------------------------------------- one pass's shared state

/// What the workers and the consumer of one pass share.
struct PassState {
  std::shared_ptr<const Dataset> dataset;
  std::function<Batch(std::vector<Example>&)> collate;
  bool pin = false;
  uint64_t base_seed = 0;
  int64_t pass_number = 0;
  std::vector<std::vector<int64_t>> batches;
  std::size_t window = 1;  // batches in flight at most

  std::mutex mutex;
  std::condition_variable changed;
  std::size_t next_to_load = 0;
  std::size_t consumed = 0;
  bool cancelled = false;
  struct Result {
    Batch batch;
    std::exception_ptr error;
  };
  std::map<std::size_t, Result> ready;

  /// Loads and collates batch `b` (any thread).
  Batch load(std::size_t b, int worker) const {
    const auto& indices = batches[b];
    std::vector<Example> examples;
    examples.reserve(indices.size());
    const std::string who =
        worker < 0 ? std::string("DataLoader") : fmt::format("DataLoader worker {}", worker);
    for (int64_t index : indices) {
      transforms::SampleSeed seed(
          transforms::SampleSeed::for_sample(base_seed, pass_number, index));
      try {
        examples.push_back(dataset->get(static_cast<std::size_t>(index)));
      } catch (const std::exception& e) {
        throw std::runtime_error(fmt::format("{}: loading sample {} (batch {}) failed: {}", who,
                                             index, b, cppfabric::detail::error_message(e)));
      }
    }
    try {
      Batch batch = collate(examples);
      if (pin && !collate_is_default) {
        // Only host tensors can be pinned (a collate such as DeviceImages' returns device ones).
        auto pinnable = [](const at::Tensor& t) {
          return t.defined() && t.is_cpu() && !t.is_pinned();
        };
        if (pinnable(batch.data)) batch.data = batch.data.pin_memory();
        if (pinnable(batch.target)) batch.target = batch.target.pin_memory();
        if (!batch.fields.is_none()) batch.fields = pin_memory(batch.fields);
      }
      return batch;
    } catch (const std::exception& e) {
      throw std::runtime_error(fmt::format("{}: collating batch {} (samples {}) failed: {}", who, b,
                                           indices, cppfabric::detail::error_message(e)));
    }
  }
  bool collate_is_default = true;

  /// A worker's loop over this pass: returns when every batch is taken or the pass is cancelled.
  void work(int worker) {
    for (;;) {
      std::size_t b = 0;
      {
        std::unique_lock<std::mutex> lock(mutex);
        changed.wait(lock, [&] {
          return cancelled || next_to_load >= batches.size() || next_to_load < consumed + window;
        });
        if (cancelled || next_to_load >= batches.size()) return;
        b = next_to_load++;
      }
      Result result;
      try {
        result.batch = load(b, worker);
      } catch (...) {
        result.error = std::current_exception();
      }
      {
        std::lock_guard<std::mutex> lock(mutex);
        ready.emplace(b, std::move(result));
      }
      changed.notify_all();
    }
  }

  void cancel() {
    {
      std::lock_guard<std::mutex> lock(mutex);
      cancelled = true;
    }
    changed.notify_all();
  }
};

// ---------------------------------------------------------------- worker threads

/// Threads that serve one pass at a time (one pass per pool, or many with persistent workers).
class WorkerPool {
 public:
  explicit WorkerPool(int num_workers) {
    threads_.reserve(static_cast<std::size_t>(num_workers));
    for (int w = 0; w < num_workers; ++w) threads_.emplace_back([this, w] { run(w); });
  }
  ~WorkerPool() {
    std::shared_ptr<PassState> job;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      shutdown_ = true;
      job = job_;
    }
    if (job) job->cancel();
    wake_.notify_all();
    for (auto& thread : threads_) thread.join();
  }
  WorkerPool(const WorkerPool&) = delete;
  WorkerPool& operator=(const WorkerPool&) = delete;

  /// Hands the workers a new pass; a previous one still running is cancelled.
  void start(std::shared_ptr<PassState> job) {
    std::shared_ptr<PassState> previous;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      previous = std::move(job_);
      job_ = std::move(job);
      ++generation_;
    }
    if (previous) previous->cancel();
    wake_.notify_all();
  }

 private:
  void run(int worker) {
    uint64_t seen = 0;
    for (;;) {
      std::shared_ptr<PassState> job;
      {
        std::unique_lock<std::mutex> lock(mutex_);
        wake_.wait(lock, [&] { return shutdown_ || generation_ != seen; });
        if (shutdown_) return;
        seen = generation_;
        job = job_;
      }
      if (job) job->work(worker);
    }
  }

  std::vector<std::thread> threads_;
  std::mutex mutex_;
  std::condition_variable wake_;
  std::shared_ptr<PassState> job_;
  uint64_t generation_ = 0;
  bool shutdown_ = false;
};

// ---------------------------------------------------------------- the loader

struct DataLoader::Impl {
  std::shared_ptr<const Dataset> dataset;
  DataLoaderOptions options;
  std::shared_ptr<Sampler> sampler;
  std::unique_ptr<BatchSampler> batch_sampler;
  std::optional<at::Generator> generator;
  bool pin = false;
  std::mutex mutex;  // begin() from several threads
  int64_t passes = 0;
  std::optional<uint64_t> persistent_base_seed;
  std::shared_ptr<WorkerPool> persistent_pool;
};

/// Owns one pass: cancels it (and joins its own workers) when the last iterator copy goes.
struct DataLoader::Pass {
  std::shared_ptr<PassState> state;
  std::shared_ptr<WorkerPool> pool;  // null with num_workers == 0
  bool synchronous = false;
  ~Pass() {
    state->cancel();
    pool.reset();
  }
};

DataLoader::DataLoader(std::shared_ptr<const Dataset> dataset, DataLoaderOptions options)
    : impl_(std::make_shared<Impl>()) {
  if (!dataset) throw std::invalid_argument("DataLoader: dataset is null");
  if (options.num_workers < 0)
    throw std::invalid_argument(fmt::format(
        "DataLoader: num_workers option should be non-negative; use num_workers=0 to disable "
        "multiprocessing (got {})",
        options.num_workers));
  if (options.num_workers == 0 && options.prefetch_factor)
    throw std::invalid_argument(
        "DataLoader: prefetch_factor option could only be specified in multiprocessing. Let "
        "num_workers > 0 to enable multiprocessing, otherwise set prefetch_factor to None "
        "(std::nullopt).");
  if (options.prefetch_factor && *options.prefetch_factor < 1)
    throw std::invalid_argument(fmt::format(
        "DataLoader: prefetch_factor must be at least 1, got {}", *options.prefetch_factor));
  if (options.persistent_workers && options.num_workers == 0)
    throw std::invalid_argument("DataLoader: persistent_workers option needs num_workers > 0");
  if (options.batch_size == 0)
    throw std::invalid_argument(
        "DataLoader: batch_size should be a positive integer value, but got batch_size=0");
  if (options.sampler && options.shuffle)
    throw std::invalid_argument("DataLoader: sampler option is mutually exclusive with shuffle");

  impl_->dataset = std::move(dataset);
  if (options.generator) {
    impl_->generator = options.generator;
  } else if (options.seed) {
    impl_->generator = at::make_generator<at::CPUGeneratorImpl>(*options.seed);
  }
  if (options.sampler) {
    impl_->sampler = options.sampler;
  } else if (options.shuffle) {
    impl_->sampler = std::make_shared<RandomSampler>(
        impl_->dataset->size(), RandomSampler::Options{.generator = impl_->generator});
  } else {
    impl_->sampler = std::make_shared<SequentialSampler>(impl_->dataset->size());
  }
  impl_->batch_sampler =
      std::make_unique<BatchSampler>(impl_->sampler, options.batch_size, options.drop_last);
  if (options.pin_memory) {
    impl_->pin = pinned_memory_available();
    if (!impl_->pin)
      utilities::rank_zero_warn(
          "DataLoader: 'pin_memory' is set but no accelerator is found, so pinned memory won't be "
          "used.");
  }
  impl_->options = std::move(options);
}

std::size_t DataLoader::size() const { return impl_->batch_sampler->size(); }
const std::shared_ptr<const Dataset>& DataLoader::dataset() const { return impl_->dataset; }
const std::shared_ptr<Sampler>& DataLoader::sampler() const { return impl_->sampler; }
const BatchSampler& DataLoader::batch_sampler() const { return *impl_->batch_sampler; }
const DataLoaderOptions& DataLoader::options() const { return impl_->options; }
bool DataLoader::pin_memory() const { return impl_->pin; }

DataLoader::Iterator DataLoader::begin() {
  auto& impl = *impl_;
  std::lock_guard<std::mutex> lock(impl.mutex);
  const auto& options = impl.options;

  auto state = std::make_shared<PassState>();
  state->dataset = impl.dataset;
  state->pin = impl.pin;
  state->collate_is_default = !options.collate_fn;
  if (options.collate_fn) {
    state->collate = options.collate_fn;
  } else {
    const bool pin = impl.pin;
    state->collate = [pin](std::vector<Example>& examples) {
      return default_collate(examples, pin);
    };
  }
  // As Python: the pass's base seed comes from the loader's generator (or the default one) before
  // the sampler draws its permutation; persistent workers keep the first one.
  auto draw_seed = [&] {
    auto t = at::empty({}, at::kLong);
    if (impl.generator) {
      t.random_(*impl.generator);
    } else {
      t.random_();
    }
    return static_cast<uint64_t>(t.item<int64_t>());
  };
  if (options.persistent_workers) {
    if (!impl.persistent_base_seed) impl.persistent_base_seed = draw_seed();
    state->base_seed = *impl.persistent_base_seed;
  } else {
    state->base_seed = draw_seed();
  }
  state->pass_number = impl.passes++;
  state->batches = impl.batch_sampler->batches();
  const int workers = options.num_workers;
  state->window =
      static_cast<std::size_t>(std::max(1, workers) * options.prefetch_factor.value_or(2));

  auto pass = std::make_shared<Pass>();
  pass->state = state;
  if (workers == 0) {
    pass->synchronous = true;
  } else if (options.persistent_workers) {
    if (!impl.persistent_pool) impl.persistent_pool = std::make_shared<WorkerPool>(workers);
    pass->pool = impl.persistent_pool;
    pass->pool->start(state);
  } else {
    pass->pool = std::make_shared<WorkerPool>(workers);
    pass->pool->start(state);
  }
  return Iterator(std::move(pass));
}

DataLoader::Iterator::Iterator(std::shared_ptr<Pass> pass) : pass_(std::move(pass)), done_(false) {
  ++*this;
}

bool DataLoader::Iterator::pinned() const { return pass_ && pass_->state->pin; }

DataLoader::Iterator& DataLoader::Iterator::operator++() {
  if (done_ || !pass_) return *this;
  auto& state = *pass_->state;
  current_ = Batch{};
  const std::size_t b = state.consumed;
  if (b >= state.batches.size()) {
    done_ = true;
    pass_.reset();  // stops and joins this pass's own workers
    return *this;
  }
  if (pass_->synchronous) {
    try {
      current_ = state.load(b, -1);
    } catch (...) {
      done_ = true;
      pass_.reset();
      throw;
    }
    ++state.consumed;
    return *this;
  }
  PassState::Result result;
  {
    std::unique_lock<std::mutex> lock(state.mutex);
    state.changed.wait(lock, [&] { return state.cancelled || state.ready.count(b) > 0; });
    auto it = state.ready.find(b);
    if (it == state.ready.end()) {
      lock.unlock();
      done_ = true;
      pass_.reset();
      throw std::runtime_error(
          "DataLoader: this pass was cancelled because a new pass of the same loader started "
          "(persistent_workers reuse one set of workers); finish one loop before starting the "
          "next");
    }
    result = std::move(it->second);
    state.ready.erase(it);
    ++state.consumed;
  }
  state.changed.notify_all();
  if (result.error) {
    done_ = true;
    pass_.reset();
    std::rethrow_exception(result.error);
  }
  current_ = std::move(result.batch);
  return *this;
}

}  // namespace cppfabric::data
