#include "cppfabric/loggers/summary_writer.hpp"

#include <spdlog/spdlog.h>
#include <torch/torch.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <mutex>
#include <stdexcept>

#include "cppfabric/detail/fmt.hpp"
#include "cppfabric/utilities/rank_zero.hpp"
#include "loggers/logger_detail.hpp"
#include "loggers/proto.hpp"
#include "loggers/summary_detail.hpp"
#include "loggers/tfrecord.hpp"

namespace cppfabric::loggers {
namespace fs = std::filesystem;
using detail::Proto;

namespace {

// tensorboard.Event
constexpr int kEventWallTime = 1, kEventStep = 2, kEventFileVersion = 3, kEventSummary = 5,
              kEventSourceMetadata = 10;
// tensorboard.Summary.Value and friends
constexpr int kSummaryValue = 1;
constexpr int kValueTag = 1, kValueSimpleValue = 2, kValueImage = 4, kValueHisto = 5,
              kValueTensor = 8, kValueMetadata = 9;
constexpr int kImageHeight = 1, kImageWidth = 2, kImageColorspace = 3, kImageEncoded = 4;
constexpr int kHistoMin = 1, kHistoMax = 2, kHistoNum = 3, kHistoSum = 4, kHistoSumSquares = 5,
              kHistoBucketLimit = 6, kHistoBucket = 7;
constexpr int kMetadataPluginData = 1, kPluginName = 1, kPluginContent = 2;
constexpr int kTensorDtype = 1, kTensorShape = 2, kTensorStringVal = 8, kShapeDim = 2, kDimSize = 1;
constexpr int kDtString = 7;  // tensorflow.DataType.DT_STRING

double now_seconds() {
  return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
}

std::atomic<int> g_event_file_uid{0};

std::string hostname() {
  char buffer[256] = {};
  if (::gethostname(buffer, sizeof(buffer) - 1) != 0) return "localhost";
  return buffer;
}

/// One events.out.tfevents.* file: the file_version event first, then one record per event.
class EventFileWriter {
 public:
  EventFileWriter(const fs::path& dir, const std::string& suffix) {
    const double now = now_seconds();
    path_ = dir / fmt::format("events.out.tfevents.{:010d}.{}.{}.{}{}", static_cast<int64_t>(now),
                              hostname(), ::getpid(), g_event_file_uid.fetch_add(1), suffix);
    file_ = std::fopen(path_.c_str(), "wb");
    if (file_ == nullptr) {
      throw std::runtime_error(fmt::format("SummaryWriter: cannot create the event file '{}': {}",
                                           path_.string(), std::strerror(errno)));
    }
    Proto source;
    source.string(1, "cppfabric.loggers.SummaryWriter");
    Proto first;
    first.double_value(kEventWallTime, now)
        .string(kEventFileVersion, "brain.Event:2")
        .message(kEventSourceMetadata, source);
    write(first.str());
    flush();
  }
  ~EventFileWriter() {
    if (file_ != nullptr) std::fclose(file_);
  }
  EventFileWriter(const EventFileWriter&) = delete;
  EventFileWriter& operator=(const EventFileWriter&) = delete;

  void write(const std::string& event) {
    const std::string record = detail::tfrecord(event);
    if (std::fwrite(record.data(), 1, record.size(), file_) != record.size()) fail("write");
    ++pending_;
  }
  void flush() {
    if (std::fflush(file_) != 0) fail("write");
    pending_ = 0;
    last_flush_ = now_seconds();
  }
  void close() {
    flush();
    std::FILE* file = file_;
    file_ = nullptr;
    if (std::fclose(file) != 0) fail("close");
  }
  int pending() const { return pending_; }
  double last_flush() const { return last_flush_; }
  const fs::path& path() const { return path_; }

 private:
  [[noreturn]] void fail(const char* what) const {
    throw std::runtime_error(fmt::format("SummaryWriter: cannot {} the event file '{}': {}", what,
                                         path_.string(), std::strerror(errno)));
  }
  fs::path path_;
  std::FILE* file_ = nullptr;
  int pending_ = 0;
  double last_flush_ = 0;
};

Proto summary_of(const Proto& value) { return Proto().message(kSummaryValue, value); }

/// TensorBoard's default histogram edges, as torch's SummaryWriter builds them: -1e20 .. -1e-12,
/// 0, 1e-12 .. 1e20 with a ratio of 1.1 (the same multiplications, so the same doubles).
const std::vector<double>& default_bins() {
  static const std::vector<double> edges = [] {
    std::vector<double> positive;
    for (double v = 1e-12; v < 1e20; v *= 1.1) positive.push_back(v);
    std::vector<double> out;
    out.reserve(2 * positive.size() + 1);
    for (auto it = positive.rbegin(); it != positive.rend(); ++it) out.push_back(-*it);
    out.push_back(0.0);
    out.insert(out.end(), positive.begin(), positive.end());
    return out;
  }();
  return edges;
}

void check_tag(const char* call, const std::string& tag) {
  if (tag.empty()) {
    throw std::invalid_argument(fmt::format("SummaryWriter::{}: the tag must not be empty.", call));
  }
}

}  // namespace

// ------------------------------------------------------------------ SummaryWriter

struct SummaryWriter::Impl {
  fs::path log_dir;
  SummaryWriterOptions options;
  bool enabled = true;
  std::mutex mutex;
  std::unique_ptr<EventFileWriter> main;
  // add_scalars' run directories (Python's all_writers), by directory.
  std::map<std::string, std::unique_ptr<EventFileWriter>> runs;

  EventFileWriter& open(std::unique_ptr<EventFileWriter>& slot, const fs::path& dir) {
    if (!slot) {
      detail::create_directories(dir.string(), "SummaryWriter");
      slot = std::make_unique<EventFileWriter>(dir, options.filename_suffix);
    }
    return *slot;
  }
  EventFileWriter& main_file() {
    EventFileWriter& file = open(main, log_dir);
    last_main = file.path().string();
    return file;
  }
  std::string last_main;

  void add(EventFileWriter& file, const Proto& summary, std::optional<int64_t> step,
           double wall_time) {
    Proto event;
    event.double_value(kEventWallTime, wall_time);
    if (step) event.int64(kEventStep, *step);
    event.message(kEventSummary, summary);
    file.write(event.str());
    if (file.pending() >= options.max_queue ||
        now_seconds() - file.last_flush() >= options.flush_secs) {
      file.flush();
    }
  }
  void add(const Proto& summary, std::optional<int64_t> step) {
    add(main_file(), summary, step, now_seconds());
  }
};

void detail::validate_queue_options(std::string_view owner, int max_queue, double flush_secs) {
  if (max_queue < 1) {
    throw std::invalid_argument(fmt::format(
        "{}(max_queue={}): must be at least 1 (events buffered before a flush; the default is 10).",
        owner, max_queue));
  }
  if (!(flush_secs > 0)) {
    throw std::invalid_argument(
        fmt::format("{}(flush_secs={}): must be a positive number of seconds (the default is 120).",
                    owner, flush_secs));
  }
}

SummaryWriter::SummaryWriter() : impl_(std::make_unique<Impl>()) { impl_->enabled = false; }

SummaryWriter::SummaryWriter(fs::path log_dir, SummaryWriterOptions options)
    : impl_(std::make_unique<Impl>()) {
  detail::validate_queue_options("SummaryWriter", options.max_queue, options.flush_secs);
  if (log_dir.empty()) {
    throw std::invalid_argument(
        "SummaryWriter(log_dir=''): give the directory to write the event files to.");
  }
  impl_->log_dir = std::move(log_dir);
  impl_->options = std::move(options);
}

SummaryWriter::~SummaryWriter() {
  try {
    close();
  } catch (const std::exception& e) {
    utilities::console()->error("SummaryWriter could not write its last events: {}", e.what());
  }
}

std::unique_ptr<SummaryWriter> SummaryWriter::disabled() {
  return std::unique_ptr<SummaryWriter>(new SummaryWriter());
}

bool SummaryWriter::enabled() const { return impl_->enabled; }

std::string SummaryWriter::log_dir() const { return impl_->log_dir.string(); }

std::string SummaryWriter::event_file_path() const {
  std::lock_guard lock(impl_->mutex);
  return impl_->last_main;
}

void SummaryWriter::add_scalar(const std::string& tag, double value, std::optional<int64_t> step) {
  if (!impl_->enabled) return;
  check_tag("add_scalar", tag);
  Proto v;
  v.string(kValueTag, tag).float_value(kValueSimpleValue, static_cast<float>(value));
  std::lock_guard lock(impl_->mutex);
  impl_->add(summary_of(v), step);
}

void SummaryWriter::add_scalars(const std::string& main_tag,
                                const std::map<std::string, double>& values,
                                std::optional<int64_t> step) {
  if (!impl_->enabled) return;
  check_tag("add_scalars", main_tag);
  std::string run_prefix = main_tag;
  std::replace(run_prefix.begin(), run_prefix.end(), '/', '_');
  const double wall_time = now_seconds();
  std::lock_guard lock(impl_->mutex);
  impl_->main_file();  // as Python: the main file exists too
  for (const auto& [tag, value] : values) {
    const fs::path dir = impl_->log_dir / (run_prefix + "_" + tag);
    EventFileWriter& file = impl_->open(impl_->runs[dir.string()], dir);
    Proto v;
    v.string(kValueTag, main_tag).float_value(kValueSimpleValue, static_cast<float>(value));
    impl_->add(file, summary_of(v), step, wall_time);
  }
}

void SummaryWriter::add_histogram(const std::string& tag, const at::Tensor& values,
                                  std::optional<int64_t> step) {
  if (!impl_->enabled) return;
  check_tag("add_histogram", tag);
  if (!values.defined() || values.numel() == 0) {
    throw std::invalid_argument(
        fmt::format("SummaryWriter::add_histogram('{}'): the tensor has no element.", tag));
  }
  if (values.is_complex()) {
    throw std::invalid_argument(
        fmt::format("SummaryWriter::add_histogram('{}'): expects real values, got a {} tensor.",
                    tag, std::string(c10::toString(values.scalar_type()))));
  }
  const at::Tensor flat =
      values.detach().to(torch::kCPU).to(torch::kDouble).contiguous().reshape({-1});
  const double* data = flat.data_ptr<double>();
  const int64_t n = flat.numel();
  const std::vector<double>& edges = default_bins();
  std::vector<double> counts(edges.size() - 1, 0.0);
  double lo = data[0], hi = data[0], sum = 0, sum_squares = 0;
  for (int64_t i = 0; i < n; ++i) {
    const double v = data[i];
    if (!std::isfinite(v)) {
      throw std::invalid_argument(fmt::format(
          "SummaryWriter::add_histogram('{}'): the values must be finite, found {} at flat index "
          "{}.",
          tag, v, i));
    }
    lo = std::min(lo, v);
    hi = std::max(hi, v);
    sum += v;
    sum_squares += v * v;
    // numpy.histogram: bin i holds edges[i] <= v < edges[i+1]; the last bin also holds its
    // right edge; values outside the edges are not counted.
    if (v < edges.front() || v > edges.back()) continue;
    auto bin =
        static_cast<std::size_t>(std::upper_bound(edges.begin(), edges.end(), v) - edges.begin());
    bin = std::min(bin, counts.size()) - 1;
    counts[bin] += 1;
  }
  // Keep the buckets from the one left of the first non-empty bucket to the last non-empty one
  // (TensorBoard stores right edges only), as torch's make_histogram.
  std::size_t first = counts.size(), last = 0;
  for (std::size_t i = 0; i < counts.size(); ++i) {
    if (counts[i] > 0) {
      first = std::min(first, i);
      last = i;
    }
  }
  if (first == counts.size()) {
    throw std::invalid_argument(fmt::format(
        "SummaryWriter::add_histogram('{}'): every value is outside TensorBoard's bucket range "
        "[-1e20, 1e20].",
        tag));
  }
  std::vector<double> bucket, limit;
  if (first == 0) bucket.push_back(0.0);
  for (std::size_t i = first == 0 ? 0 : first - 1; i <= last; ++i) bucket.push_back(counts[i]);
  for (std::size_t i = first; i <= last + 1; ++i) limit.push_back(edges[i]);

  Proto histo;
  histo.double_field(kHistoMin, lo)
      .double_field(kHistoMax, hi)
      .double_field(kHistoNum, static_cast<double>(n))
      .double_field(kHistoSum, sum)
      .double_field(kHistoSumSquares, sum_squares)
      .packed_doubles(kHistoBucketLimit, limit)
      .packed_doubles(kHistoBucket, bucket);
  Proto v;
  v.string(kValueTag, tag).message(kValueHisto, histo);
  std::lock_guard lock(impl_->mutex);
  impl_->add(summary_of(v), step);
}

void SummaryWriter::add_image(const std::string& tag, const at::Tensor& image,
                              std::optional<int64_t> step, const std::string& dataformats) {
  if (!impl_->enabled) return;
  check_tag("add_image", tag);
  std::string format = dataformats;
  for (char& c : format) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  if (format != "CHW" && format != "HWC" && format != "HW") {
    throw std::invalid_argument(fmt::format(
        "SummaryWriter::add_image('{}', dataformats='{}'): choose one of 'CHW', 'HWC', 'HW'.", tag,
        dataformats));
  }
  if (!image.defined() || image.dim() != static_cast<int64_t>(format.size())) {
    throw std::invalid_argument(fmt::format(
        "SummaryWriter::add_image('{}'): the tensor has {} dimensions, dataformats '{}' needs {}.",
        tag, image.defined() ? image.dim() : 0, format, format.size()));
  }
  if (image.is_complex() || image.scalar_type() == torch::kBool) {
    throw std::invalid_argument(fmt::format(
        "SummaryWriter::add_image('{}'): expects a floating-point or integer tensor, got {}.", tag,
        std::string(c10::toString(image.scalar_type()))));
  }
  at::Tensor hwc = image.detach().to(torch::kCPU);
  if (format == "CHW") hwc = hwc.permute({1, 2, 0});
  if (format == "HW") hwc = hwc.unsqueeze(2);
  const int64_t channels = hwc.size(2);
  if (channels != 1 && channels != 3 && channels != 4) {
    throw std::invalid_argument(fmt::format(
        "SummaryWriter::add_image('{}'): {} channels; images have 1 (grey), 3 (RGB) or 4 (RGBA).",
        tag, channels));
  }
  if (hwc.size(0) < 1 || hwc.size(1) < 1) {
    throw std::invalid_argument(
        fmt::format("SummaryWriter::add_image('{}'): the image is empty ({} x {}).", tag,
                    hwc.size(0), hwc.size(1)));
  }
  if (channels == 1) hwc = hwc.expand({-1, -1, 3});  // as Python: grey is stored as RGB
  // As Python: uint8 as is, anything else times 255, both in float32, clipped, truncated.
  const double scale = image.scalar_type() == torch::kUInt8 ? 1.0 : 255.0;
  const at::Tensor pixels =
      (hwc.to(torch::kFloat) * scale).clamp(0, 255).to(torch::kUInt8).contiguous();
  const auto height = static_cast<int>(pixels.size(0));
  const auto width = static_cast<int>(pixels.size(1));
  const auto colors = static_cast<int>(pixels.size(2));
  Proto img;
  img.int64(kImageHeight, height)
      .int64(kImageWidth, width)
      .int64(kImageColorspace, colors)
      .bytes(kImageEncoded, detail::encode_png(pixels.data_ptr<uint8_t>(), height, width, colors));
  Proto v;
  v.string(kValueTag, tag).message(kValueImage, img);
  std::lock_guard lock(impl_->mutex);
  impl_->add(summary_of(v), step);
}

void SummaryWriter::add_text(const std::string& tag, const std::string& text,
                             std::optional<int64_t> step) {
  if (!impl_->enabled) return;
  check_tag("add_text", tag);
  // The text plugin: an empty TextPluginData (version 0), a DT_STRING tensor of shape [1].
  Proto plugin;
  plugin.string(kPluginName, "text").bytes(kPluginContent, "");
  Proto metadata;
  metadata.message(kMetadataPluginData, plugin);
  Proto dim;
  dim.int64(kDimSize, 1);
  Proto shape;
  shape.message(kShapeDim, dim);
  Proto tensor;
  tensor.enum_value(kTensorDtype, kDtString)
      .message(kTensorShape, shape)
      .bytes(kTensorStringVal, text);
  Proto v;
  v.string(kValueTag, tag + "/text_summary")
      .message(kValueMetadata, metadata)
      .message(kValueTensor, tensor);
  std::lock_guard lock(impl_->mutex);
  impl_->add(summary_of(v), step);
}

void SummaryWriter::flush() {
  if (!impl_->enabled) return;
  std::lock_guard lock(impl_->mutex);
  impl_->main_file().flush();
  for (auto& [dir, file] : impl_->runs) {
    if (file) file->flush();
  }
}

void SummaryWriter::close() {
  if (!impl_->enabled) return;
  std::lock_guard lock(impl_->mutex);
  auto main = std::move(impl_->main);
  auto runs = std::move(impl_->runs);
  impl_->runs.clear();
  if (main) main->close();
  for (auto& [dir, file] : runs) {
    if (file) file->close();
  }
}

// ------------------------------------------------------------------ for TensorBoardLogger

void detail::SummaryWriterAccess::add_summary(SummaryWriter& writer, const Proto& summary,
                                              std::optional<int64_t> step) {
  if (!writer.impl_->enabled) return;
  std::lock_guard lock(writer.impl_->mutex);
  writer.impl_->add(summary, step);
}

void detail::SummaryWriterAccess::create_file(SummaryWriter& writer) {
  if (!writer.impl_->enabled) return;
  std::lock_guard lock(writer.impl_->mutex);
  writer.impl_->main_file();
}

}  // namespace cppfabric::loggers
