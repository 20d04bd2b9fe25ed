#include "cppfabric/data/transforms.hpp"

#include <ATen/CPUGeneratorImpl.h>
#include <torch/torch.h>

#include <cstring>
#include <mutex>
#include <stdexcept>

#include "cppfabric/detail/fmt.hpp"

namespace cppfabric::data::transforms {

namespace {

uint64_t splitmix64(uint64_t& x) {
  uint64_t z = (x += 0x9E3779B97F4A7C15ULL);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
  return z ^ (z >> 31);
}

uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

struct ThreadStream {
  RandomStream stream;
  bool seeded = false;
};
thread_local ThreadStream thread_stream;

/// An image's geometry as [outer, H, W, inner] with inner counted in bytes; `uint8` is HWC.
struct Geometry {
  int64_t outer = 1, height = 0, width = 0, inner_bytes = 0;
  int64_t h_dim = 0, w_dim = 0;
};

Geometry geometry_of(const at::Tensor& t, const char* what) {
  Geometry g;
  const int64_t dims = t.dim();
  if (t.scalar_type() == at::kByte) {
    if (dims != 2 && dims != 3)
      throw std::invalid_argument(fmt::format(
          "{}: a uint8 image must be H x W or H x W x C, got {} dimensions", what, dims));
    g.h_dim = 0;
    g.w_dim = 1;
    g.inner_bytes = dims == 3 ? t.size(2) : 1;
  } else {
    if (dims < 2)
      throw std::invalid_argument(
          fmt::format("{}: a tensor image must be [..., H, W], got {} dimensions", what, dims));
    g.h_dim = dims - 2;
    g.w_dim = dims - 1;
    for (int64_t d = 0; d < g.h_dim; ++d) g.outer *= t.size(d);
    g.inner_bytes = static_cast<int64_t>(t.element_size());
  }
  g.height = t.size(g.h_dim);
  g.width = t.size(g.w_dim);
  if (t.scalar_type() == at::kByte) g.inner_bytes *= 1;
  return g;
}

}  // namespace

// ---------------------------------------------------------------- randomness

void RandomStream::seed_with(uint64_t seed) {
  uint64_t x = seed;
  for (auto& word : state_) word = splitmix64(x);
}

uint64_t RandomStream::next() {
  const uint64_t result = rotl(state_[1] * 5, 7) * 9;
  const uint64_t t = state_[1] << 17;
  state_[2] ^= state_[0];
  state_[3] ^= state_[1];
  state_[1] ^= state_[2];
  state_[0] ^= state_[3];
  state_[2] ^= t;
  state_[3] = rotl(state_[3], 45);
  return result;
}

int64_t RandomStream::randint(int64_t low, int64_t high) {
  if (high < low)
    throw std::invalid_argument(fmt::format("randint: empty range [{}, {}]", low, high));
  const auto span = static_cast<uint64_t>(high - low) + 1;
  if (span == 0) return static_cast<int64_t>(next());  // the full 64-bit range
  // Rejection sampling keeps the draw unbiased.
  const uint64_t limit = UINT64_MAX - UINT64_MAX % span;
  uint64_t value = next();
  while (value >= limit) value = next();
  return low + static_cast<int64_t>(value % span);
}

RandomStream& random() {
  auto& ts = thread_stream;
  if (!ts.seeded) {
    auto generator = at::detail::getDefaultCPUGenerator();
    uint64_t seed = 0;
    {
      std::lock_guard<std::mutex> lock(generator.mutex());
      seed = at::check_generator<at::CPUGeneratorImpl>(generator)->random64();
    }
    ts.stream.seed_with(seed);
    ts.seeded = true;
  }
  return ts.stream;
}

SampleSeed::SampleSeed(uint64_t seed)
    : previous_(thread_stream.stream), had_previous_(thread_stream.seeded) {
  thread_stream.stream.seed_with(seed);
  thread_stream.seeded = true;
}

SampleSeed::~SampleSeed() {
  thread_stream.stream = previous_;
  thread_stream.seeded = had_previous_;
}

uint64_t SampleSeed::for_sample(uint64_t base_seed, int64_t pass, int64_t index) {
  uint64_t x = base_seed;
  uint64_t h = splitmix64(x);
  x = h ^ (static_cast<uint64_t>(pass) * 0xD6E8FEB86659FD93ULL);
  h = splitmix64(x);
  x = h ^ (static_cast<uint64_t>(index) * 0xA0761D6478BD642FULL);
  return splitmix64(x);
}

// ---------------------------------------------------------------- Compose

at::Tensor Compose::operator()(const at::Tensor& input) const {
  at::Tensor x = input;
  for (const auto& transform : transforms_) {
    if (transform) x = transform(x);
  }
  return x;
}

// ---------------------------------------------------------------- ToTensor

at::Tensor ToTensor::operator()(const at::Tensor& input) const {
  if (input.scalar_type() != at::kByte) {
    if (at::isFloatingType(input.scalar_type())) return input;
    throw std::invalid_argument(fmt::format(
        "ToTensor: expected a uint8 H x W x C image (or a floating tensor, passed through), got {}",
        c10::toString(input.scalar_type())));
  }
  if (input.dim() != 2 && input.dim() != 3)
    throw std::invalid_argument(fmt::format(
        "ToTensor: a uint8 image must be H x W or H x W x C, got {} dimensions", input.dim()));
  const auto src = input.contiguous().cpu();
  const int64_t h = src.size(0), w = src.size(1), c = src.dim() == 3 ? src.size(2) : 1;
  auto out = at::empty({c, h, w}, at::TensorOptions(at::kFloat));
  const uint8_t* in = src.data_ptr<uint8_t>();
  float* o = out.data_ptr<float>();
  const int64_t plane = h * w;
  constexpr float scale = 1.0f / 255.0f;
  for (int64_t p = 0; p < plane; ++p)
    for (int64_t ch = 0; ch < c; ++ch)
      o[ch * plane + p] = static_cast<float>(in[p * c + ch]) * scale;
  return out;
}

// ---------------------------------------------------------------- Normalize

Normalize::Normalize(std::vector<double> mean, std::vector<double> std)
    : mean_(std::move(mean)), std_(std::move(std)) {
  if (mean_.empty() || std_.empty() || mean_.size() != std_.size())
    throw std::invalid_argument(
        fmt::format("Normalize: mean and std need one value per channel, got {} and {} values",
                    mean_.size(), std_.size()));
  for (double s : std_)
    if (s == 0.0)
      throw std::invalid_argument(fmt::format(
          "Normalize: std evaluated to zero after conversion to float, leading to division by "
          "zero (std = {})",
          std_));
}

at::Tensor Normalize::operator()(const at::Tensor& input) const {
  if (!at::isFloatingType(input.scalar_type()))
    throw std::invalid_argument(fmt::format(
        "Normalize: input tensor should be a float tensor (apply ToTensor first), got {}",
        c10::toString(input.scalar_type())));
  if (input.dim() < 3)
    throw std::invalid_argument(
        fmt::format("Normalize: expected a tensor image of size [..., C, H, W], got {} dimensions",
                    input.dim()));
  const int64_t channels = input.size(-3);
  if (mean_.size() != 1 && static_cast<int64_t>(mean_.size()) != channels)
    throw std::invalid_argument(fmt::format(
        "Normalize: {} mean/std values for an image with {} channels", mean_.size(), channels));
  auto value = [](const std::vector<double>& v, int64_t c) { return v.size() == 1 ? v[0] : v[c]; };
  if (input.scalar_type() == at::kFloat && input.device().is_cpu()) {
    const auto src = input.contiguous();
    auto out = at::empty_like(src);
    const int64_t plane = src.size(-1) * src.size(-2);
    const int64_t outer = src.numel() / (plane * channels);
    const float* in = src.data_ptr<float>();
    float* o = out.data_ptr<float>();
    for (int64_t n = 0; n < outer; ++n) {
      for (int64_t c = 0; c < channels; ++c) {
        const float m = static_cast<float>(value(mean_, c));
        const float inv = static_cast<float>(1.0 / value(std_, c));
        const int64_t base = (n * channels + c) * plane;
        for (int64_t p = 0; p < plane; ++p) o[base + p] = (in[base + p] - m) * inv;
      }
    }
    return out;
  }
  auto opts = at::TensorOptions(input.scalar_type()).device(input.device());
  std::vector<double> m(channels), s(channels);
  for (int64_t c = 0; c < channels; ++c) {
    m[c] = value(mean_, c);
    s[c] = value(std_, c);
  }
  auto mean = at::tensor(m, opts).view({-1, 1, 1});
  auto stdv = at::tensor(s, opts).view({-1, 1, 1});
  return (input - mean) / stdv;
}

// ---------------------------------------------------------------- RandomHorizontalFlip

RandomHorizontalFlip::RandomHorizontalFlip(double p) : p_(p) {
  if (p < 0.0 || p > 1.0)
    throw std::invalid_argument(
        fmt::format("RandomHorizontalFlip: p must be a probability in [0, 1], got {}", p));
}

bool RandomHorizontalFlip::draw() const { return random().uniform() < p_; }

at::Tensor RandomHorizontalFlip::operator()(const at::Tensor& input) const {
  const Geometry g = geometry_of(input, "RandomHorizontalFlip");
  if (!draw()) return input;
  if (!input.device().is_cpu()) return input.flip({g.w_dim});
  const auto src = input.contiguous();
  auto out = at::empty_like(src);
  const auto* in = static_cast<const uint8_t*>(src.data_ptr());
  auto* o = static_cast<uint8_t*>(out.data_ptr());
  const int64_t row = g.width * g.inner_bytes;
  for (int64_t r = 0; r < g.outer * g.height; ++r) {
    const uint8_t* src_row = in + r * row;
    uint8_t* dst_row = o + r * row;
    for (int64_t x = 0; x < g.width; ++x)
      std::memcpy(dst_row + x * g.inner_bytes, src_row + (g.width - 1 - x) * g.inner_bytes,
                  static_cast<std::size_t>(g.inner_bytes));
  }
  return out;
}

// ---------------------------------------------------------------- RandomCrop

RandomCrop::RandomCrop(int64_t size, int64_t padding, double fill)
    : RandomCrop(std::vector<int64_t>{size, size}, padding, fill) {}

RandomCrop::RandomCrop(std::vector<int64_t> size, int64_t padding, double fill)
    : padding_(padding), fill_(fill) {
  if (size.size() == 1) size.push_back(size[0]);
  if (size.size() != 2 || size[0] <= 0 || size[1] <= 0)
    throw std::invalid_argument(
        fmt::format("RandomCrop: size must be one positive int or (height, width), got {}", size));
  if (padding < 0)
    throw std::invalid_argument(
        fmt::format("RandomCrop: padding must be non-negative, got {}", padding));
  height_ = size[0];
  width_ = size[1];
}

std::pair<int64_t, int64_t> RandomCrop::draw(int64_t height, int64_t width) const {
  const int64_t padded_h = height + 2 * padding_, padded_w = width + 2 * padding_;
  if (padded_h < height_ || padded_w < width_)
    throw std::invalid_argument(fmt::format(
        "RandomCrop: required crop size ({}, {}) is larger than the (padded) input image size "
        "({}, {})",
        height_, width_, padded_h, padded_w));
  if (padded_h == height_ && padded_w == width_) return {0, 0};
  auto& rng = random();
  const int64_t top = rng.randint(0, padded_h - height_);
  return {top, rng.randint(0, padded_w - width_)};
}

at::Tensor RandomCrop::operator()(const at::Tensor& input) const {
  const Geometry g = geometry_of(input, "RandomCrop");
  const auto [top, left] = draw(g.height, g.width);
  // Offsets into the unpadded image; rows/columns outside it take `fill`.
  const int64_t y0 = top - padding_, x0 = left - padding_;
  std::vector<int64_t> sizes(input.sizes().begin(), input.sizes().end());
  sizes[g.h_dim] = height_;
  sizes[g.w_dim] = width_;
  if (!input.device().is_cpu()) {
    auto padded = padding_ > 0
                      ? at::constant_pad_nd(input.movedim({g.h_dim, g.w_dim}, {-2, -1}),
                                            {padding_, padding_, padding_, padding_}, fill_)
                            .movedim({-2, -1}, {g.h_dim, g.w_dim})
                      : input;
    return padded.narrow(g.h_dim, top, height_).narrow(g.w_dim, left, width_).contiguous();
  }
  const auto src = input.contiguous();
  auto out = fill_ == 0.0 ? at::zeros(sizes, src.options()) : at::full(sizes, fill_, src.options());
  const auto* in = static_cast<const uint8_t*>(src.data_ptr());
  auto* o = static_cast<uint8_t*>(out.data_ptr());
  const int64_t in_row = g.width * g.inner_bytes, out_row = width_ * g.inner_bytes;
  const int64_t x_begin = std::max<int64_t>(0, -x0), x_end = std::min(width_, g.width - x0);
  if (x_end <= x_begin) return out;
  const auto bytes = static_cast<std::size_t>((x_end - x_begin) * g.inner_bytes);
  for (int64_t n = 0; n < g.outer; ++n) {
    for (int64_t y = 0; y < height_; ++y) {
      const int64_t sy = y0 + y;
      if (sy < 0 || sy >= g.height) continue;
      std::memcpy(o + (n * height_ + y) * out_row + x_begin * g.inner_bytes,
                  in + (n * g.height + sy) * in_row + (x0 + x_begin) * g.inner_bytes, bytes);
    }
  }
  return out;
}

}  // namespace cppfabric::data::transforms
