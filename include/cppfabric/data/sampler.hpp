// Samplers: the order in which a DataLoader visits a dataset, with Python's index math.
//
//   cppfabric::data::SequentialSampler seq(n);                 // 0, 1, ..., n-1
//   cppfabric::data::RandomSampler rnd(n, /*seed=*/42);        // torch.randperm, as in Python
//   cppfabric::data::DistributedSampler dist(n, {.num_replicas = 2, .rank = 1, .shuffle = true});
//   dist.set_epoch(epoch);                                     // a new permutation each epoch
//   for (int64_t i : dist.indices()) ...                       // one pass
//
// Every sampler hands out one pass at a time through indices(); the same seed (and epoch) gives
// the same indices as Python's torch.utils.data sampler of the same name.
#pragma once

#include <ATen/core/Generator.h>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace cppfabric::data {

class Sampler {
 public:
  virtual ~Sampler();
  /// Number of indices per pass (Python's __len__).
  virtual std::size_t size() const = 0;
  /// The indices of the next pass (Python's iter(sampler) run to its end).
  virtual std::vector<int64_t> indices() = 0;
  /// Samplers that depend on the epoch override this; the others ignore it.
  virtual void set_epoch(int64_t epoch) {}
  virtual bool has_set_epoch() const { return false; }
  /// Class name, as in Python ("RandomSampler", ...), for messages and type checks.
  virtual std::string name() const = 0;
};

/// 0, 1, ..., n-1.
class SequentialSampler : public Sampler {
 public:
  explicit SequentialSampler(std::size_t n) : n_(n) {}
  std::size_t size() const override { return n_; }
  std::vector<int64_t> indices() override;
  std::string name() const override { return "SequentialSampler"; }

 private:
  std::size_t n_;
};

/// Python's RandomSampler. With a generator (or a seed, which makes one), successive passes
/// continue that generator's stream; without, each pass seeds a fresh generator from LibTorch's
/// default one (so Fabric::seed_everything makes it reproducible).
class RandomSampler : public Sampler {
 public:
  struct Options {
    bool replacement = false;
    std::optional<std::size_t> num_samples = std::nullopt;
    std::optional<at::Generator> generator = std::nullopt;
  };
  explicit RandomSampler(std::size_t n, Options options);
  explicit RandomSampler(std::size_t n) : RandomSampler(n, Options{}) {}
  /// A generator seeded with `seed` (Python: generator=torch.Generator().manual_seed(seed)).
  RandomSampler(std::size_t n, uint64_t seed);
  std::size_t size() const override;
  std::vector<int64_t> indices() override;
  std::string name() const override { return "RandomSampler"; }
  const std::optional<at::Generator>& generator() const { return options_.generator; }

 private:
  std::size_t n_;
  Options options_;
};

/// Python's torch.utils.data.DistributedSampler: each of `num_replicas` ranks sees its own
/// `size()` indices; with shuffle the permutation comes from a generator seeded seed + epoch.
class DistributedSampler : public Sampler {
 public:
  struct Options {
    int num_replicas = 1;
    int rank = 0;
    bool shuffle = true;
    uint64_t seed = 0;
    bool drop_last = false;
  };
  /// Throws std::invalid_argument for a rank outside [0, num_replicas) or num_replicas < 1.
  DistributedSampler(std::size_t n, Options options);
  std::size_t size() const override { return num_samples_; }
  std::vector<int64_t> indices() override;
  void set_epoch(int64_t epoch) override { epoch_ = epoch; }
  bool has_set_epoch() const override { return true; }
  int64_t epoch() const { return epoch_; }
  std::string name() const override { return "DistributedSampler"; }
  const Options& options() const { return options_; }
  std::size_t total_size() const {
    return num_samples_ * static_cast<std::size_t>(options_.num_replicas);
  }

 private:
  std::size_t n_;
  Options options_;
  std::size_t num_samples_ = 0;
  int64_t epoch_ = 0;
};

/// Shards any sampler's output across ranks (Lightning's DistributedSamplerWrapper): position i
/// of the inner sampler's pass goes to the rank DistributedSampler would give index i. Shuffling
/// is the inner sampler's business; set_epoch reaches both.
class DistributedSamplerWrapper : public Sampler {
 public:
  DistributedSamplerWrapper(std::shared_ptr<Sampler> sampler, DistributedSampler::Options options);
  std::size_t size() const override { return positions_.size(); }
  std::vector<int64_t> indices() override;
  void set_epoch(int64_t epoch) override;
  bool has_set_epoch() const override { return true; }
  std::string name() const override { return "DistributedSamplerWrapper"; }
  const std::shared_ptr<Sampler>& sampler() const { return sampler_; }
  const DistributedSampler::Options& options() const { return positions_.options(); }

 private:
  std::shared_ptr<Sampler> sampler_;
  DistributedSampler positions_;
};

/// Groups another sampler's indices into batches of `batch_size` (the last one smaller unless
/// drop_last).
class BatchSampler {
 public:
  BatchSampler(std::shared_ptr<Sampler> sampler, std::size_t batch_size, bool drop_last);
  /// Number of batches per pass.
  std::size_t size() const;
  std::vector<std::vector<int64_t>> batches();
  const std::shared_ptr<Sampler>& sampler() const { return sampler_; }
  std::size_t batch_size() const { return batch_size_; }
  bool drop_last() const { return drop_last_; }

 private:
  std::shared_ptr<Sampler> sampler_;
  std::size_t batch_size_;
  bool drop_last_;
};

}  // namespace cppfabric::data
