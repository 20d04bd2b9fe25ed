#include "cppfabric/data/sampler.hpp"

#include <ATen/CPUGeneratorImpl.h>
#include <torch/torch.h>

#include <stdexcept>

#include "cppfabric/detail/fmt.hpp"

namespace cppfabric::data {

namespace {
std::vector<int64_t> to_vector(const at::Tensor& tensor) {
  const auto t = tensor.contiguous();
  const int64_t* p = t.data_ptr<int64_t>();
  return {p, p + t.numel()};
}

std::vector<int64_t> randperm(std::size_t n, at::Generator& generator) {
  return to_vector(at::randperm(static_cast<int64_t>(n), generator, at::TensorOptions(at::kLong)));
}

at::Generator seeded_generator(uint64_t seed) {
  auto generator = at::make_generator<at::CPUGeneratorImpl>(seed);
  return generator;
}
}  // namespace

Sampler::~Sampler() = default;

std::vector<int64_t> SequentialSampler::indices() {
  std::vector<int64_t> out(n_);
  for (std::size_t i = 0; i < n_; ++i) out[i] = static_cast<int64_t>(i);
  return out;
}

// ---------------------------------------------------------------- RandomSampler

RandomSampler::RandomSampler(std::size_t n, Options options) : n_(n), options_(std::move(options)) {
  if (options_.num_samples && *options_.num_samples == 0)
    throw std::invalid_argument("RandomSampler: num_samples should be a positive integer, got 0");
  if (!options_.replacement && options_.num_samples == std::nullopt && n_ == 0) {
    // Python allows an empty dataset; size() is 0 and a pass is empty.
  }
}

RandomSampler::RandomSampler(std::size_t n, uint64_t seed)
    : RandomSampler(n, Options{.generator = seeded_generator(seed)}) {}

std::size_t RandomSampler::size() const { return options_.num_samples.value_or(n_); }

std::vector<int64_t> RandomSampler::indices() {
  at::Generator generator;
  if (options_.generator) {
    generator = *options_.generator;
  } else {
    // Python draws a seed from the default generator for a private one, every pass.
    const int64_t seed = at::empty({}, at::kLong).random_().item<int64_t>();
    generator = seeded_generator(static_cast<uint64_t>(seed));
  }
  const std::size_t total = size();
  std::vector<int64_t> out;
  out.reserve(total);
  if (n_ == 0) return out;
  if (options_.replacement) {
    auto draw = [&](int64_t count) {
      auto part = to_vector(
          at::randint(static_cast<int64_t>(n_), {count}, generator, at::TensorOptions(at::kLong)));
      out.insert(out.end(), part.begin(), part.end());
    };
    for (std::size_t i = 0; i < total / 32; ++i) draw(32);
    draw(static_cast<int64_t>(total % 32));
  } else {
    for (std::size_t i = 0; i < total / n_; ++i) {
      auto part = randperm(n_, generator);
      out.insert(out.end(), part.begin(), part.end());
    }
    auto last = randperm(n_, generator);
    out.insert(out.end(), last.begin(), last.begin() + static_cast<std::ptrdiff_t>(total % n_));
  }
  return out;
}

// ---------------------------------------------------------------- DistributedSampler

DistributedSampler::DistributedSampler(std::size_t n, Options options) : n_(n), options_(options) {
  if (options_.num_replicas < 1)
    throw std::invalid_argument(fmt::format(
        "DistributedSampler: num_replicas must be at least 1, got {}", options_.num_replicas));
  if (options_.rank < 0 || options_.rank >= options_.num_replicas)
    throw std::invalid_argument(
        fmt::format("DistributedSampler: invalid rank {}, rank should be in the interval [0, {}]",
                    options_.rank, options_.num_replicas - 1));
  const auto replicas = static_cast<std::size_t>(options_.num_replicas);
  if (options_.drop_last && n_ % replicas != 0) {
    // Drop the tail so that every rank gets the same amount of data: ceil((n - r) / r).
    num_samples_ = n_ < replicas ? 0 : (n_ - replicas + replicas - 1) / replicas;
  } else {
    num_samples_ = (n_ + replicas - 1) / replicas;
  }
}

std::vector<int64_t> DistributedSampler::indices() {
  std::vector<int64_t> order;
  if (options_.shuffle) {
    auto generator = seeded_generator(options_.seed + static_cast<uint64_t>(epoch_));
    order = randperm(n_, generator);
  } else {
    order.resize(n_);
    for (std::size_t i = 0; i < n_; ++i) order[i] = static_cast<int64_t>(i);
  }
  const std::size_t total = total_size();
  if (!options_.drop_last) {
    // Pad by repeating the order from its start (as many times as needed) up to total.
    if (!order.empty()) {
      const std::size_t original = order.size();
      for (std::size_t i = 0; order.size() < total; ++i) order.push_back(order[i % original]);
    }
  } else {
    order.resize(std::min(order.size(), total));
  }
  std::vector<int64_t> out;
  out.reserve(num_samples_);
  for (std::size_t i = static_cast<std::size_t>(options_.rank); i < order.size() && i < total;
       i += static_cast<std::size_t>(options_.num_replicas))
    out.push_back(order[i]);
  return out;
}

// ---------------------------------------------------------------- DistributedSamplerWrapper

namespace {
const std::shared_ptr<Sampler>& non_null(const std::shared_ptr<Sampler>& sampler) {
  if (!sampler) throw std::invalid_argument("DistributedSamplerWrapper: sampler is null");
  return sampler;
}
}  // namespace

DistributedSamplerWrapper::DistributedSamplerWrapper(std::shared_ptr<Sampler> sampler,
                                                     DistributedSampler::Options options)
    : sampler_(std::move(sampler)), positions_(non_null(sampler_)->size(), options) {}

std::vector<int64_t> DistributedSamplerWrapper::indices() {
  const auto inner = sampler_->indices();
  std::vector<int64_t> out;
  for (int64_t position : positions_.indices()) {
    if (position >= static_cast<int64_t>(inner.size()))
      throw std::runtime_error(fmt::format(
          "DistributedSamplerWrapper: the wrapped {} gave {} indices, fewer than its size() {}",
          sampler_->name(), inner.size(), sampler_->size()));
    out.push_back(inner[static_cast<std::size_t>(position)]);
  }
  return out;
}

void DistributedSamplerWrapper::set_epoch(int64_t epoch) {
  positions_.set_epoch(epoch);
  if (sampler_->has_set_epoch()) sampler_->set_epoch(epoch);
}

// ---------------------------------------------------------------- BatchSampler

BatchSampler::BatchSampler(std::shared_ptr<Sampler> sampler, std::size_t batch_size, bool drop_last)
    : sampler_(std::move(sampler)), batch_size_(batch_size), drop_last_(drop_last) {
  if (!sampler_) throw std::invalid_argument("BatchSampler: sampler is null");
  if (batch_size_ == 0)
    throw std::invalid_argument(
        "BatchSampler: batch_size should be a positive integer value, but got batch_size=0");
}

std::size_t BatchSampler::size() const {
  const std::size_t n = sampler_->size();
  return drop_last_ ? n / batch_size_ : (n + batch_size_ - 1) / batch_size_;
}

std::vector<std::vector<int64_t>> BatchSampler::batches() {
  const auto indices = sampler_->indices();
  std::vector<std::vector<int64_t>> out;
  out.reserve(indices.size() / batch_size_ + 1);
  for (std::size_t start = 0; start < indices.size(); start += batch_size_) {
    const std::size_t end = std::min(start + batch_size_, indices.size());
    if (drop_last_ && end - start < batch_size_) break;
    out.emplace_back(indices.begin() + static_cast<std::ptrdiff_t>(start),
                     indices.begin() + static_cast<std::ptrdiff_t>(end));
  }
  return out;
}

}  // namespace cppfabric::data
