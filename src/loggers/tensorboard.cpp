#include "cppfabric/loggers/tensorboard.hpp"

#include <spdlog/spdlog.h>
#include <unistd.h>

#include <atomic>
#include <cctype>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <stdexcept>

#include "cppfabric/detail/fmt.hpp"
#include "cppfabric/utilities/rank_zero.hpp"
#include "loggers/logger_detail.hpp"
#include "loggers/tfrecord.hpp"

namespace cppfabric::loggers {
namespace fs = std::filesystem;

// ------------------------------------------------------------------ protobuf encoding
// Only what TensorBoard's Event, Summary and hparams plugin messages need. Wire types:
// 0 varint, 1 fixed64, 2 length-delimited, 5 fixed32. Fields at their default value (0, "")
// are left out, as proto3 serialisers do; fields inside a oneof are always written.

namespace {
class Proto {
 public:
  Proto& varint(int field, uint64_t value) {
    key(field, 0);
    put_varint(value);
    return *this;
  }
  Proto& int64(int field, int64_t value) {
    return value == 0 ? *this : varint(field, static_cast<uint64_t>(value));
  }
  Proto& enum_value(int field, int value) {
    return value == 0 ? *this : varint(field, static_cast<uint64_t>(value));
  }
  Proto& double_value(int field, double value) {  // always written (oneof or non-zero)
    key(field, 1);
    uint64_t bits;
    std::memcpy(&bits, &value, sizeof(bits));
    detail::put_fixed64(bytes_, bits);
    return *this;
  }
  Proto& float_value(int field, float value) {
    key(field, 5);
    uint32_t bits;
    std::memcpy(&bits, &value, sizeof(bits));
    detail::put_fixed32(bytes_, bits);
    return *this;
  }
  Proto& bytes(int field, const std::string& value) {
    key(field, 2);
    put_varint(value.size());
    bytes_ += value;
    return *this;
  }
  Proto& string(int field, const std::string& value) {
    return value.empty() ? *this : bytes(field, value);
  }
  Proto& message(int field, const Proto& value) { return bytes(field, value.bytes_); }
  const std::string& str() const { return bytes_; }

 private:
  void key(int field, int wire_type) {
    put_varint((static_cast<uint64_t>(field) << 3) | static_cast<uint64_t>(wire_type));
  }
  void put_varint(uint64_t value) {
    while (value >= 0x80) {
      bytes_ += static_cast<char>((value & 0x7F) | 0x80);
      value >>= 7;
    }
    bytes_ += static_cast<char>(value);
  }
  std::string bytes_;
};

// tensorboard.Event
constexpr int kEventWallTime = 1, kEventStep = 2, kEventFileVersion = 3, kEventSummary = 5,
              kEventSourceMetadata = 10;
// tensorboard.Summary / Summary.Value / SummaryMetadata / PluginData
constexpr int kSummaryValue = 1;
constexpr int kValueTag = 1, kValueSimpleValue = 2, kValueMetadata = 9;
constexpr int kMetadataPluginData = 1;
constexpr int kPluginName = 1, kPluginContent = 2;
// tensorboard.hparams.HParamsPluginData and friends
constexpr int kPluginDataExperiment = 2, kPluginDataSessionStart = 3, kPluginDataSessionEnd = 4;
constexpr int kExperimentHParamInfos = 4, kExperimentMetricInfos = 5;
constexpr int kHParamInfoName = 1, kHParamInfoType = 4;
constexpr int kMetricInfoName = 1, kMetricNameTag = 2;
constexpr int kSessionStartHParams = 1, kMapKey = 1, kMapValue = 2;
constexpr int kValueNumber = 2, kValueString = 3;  // google.protobuf.Value
constexpr int kSessionEndStatus = 1;
constexpr int kDataTypeString = 1, kDataTypeFloat64 = 3, kStatusSuccess = 1;

double now_seconds() {
  return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
}

std::string event_bytes(double wall_time, std::optional<int64_t> step, const Proto& summary) {
  Proto event;
  event.double_value(kEventWallTime, wall_time);
  if (step) event.int64(kEventStep, *step);
  event.message(kEventSummary, summary);
  return event.str();
}

Proto scalar_summary(const std::string& tag, double value) {
  Proto v;
  v.string(kValueTag, tag).float_value(kValueSimpleValue, static_cast<float>(value));
  return Proto().message(kSummaryValue, v);
}

Proto hparams_summary(const std::string& tag, const Proto& plugin_data) {
  Proto plugin;
  plugin.string(kPluginName, "hparams").bytes(kPluginContent, plugin_data.str());
  Proto metadata;
  metadata.message(kMetadataPluginData, plugin);
  Proto value;
  value.string(kValueTag, tag).message(kValueMetadata, metadata);
  return Proto().message(kSummaryValue, value);
}

std::atomic<int> g_event_file_uid{0};

std::string hostname() {
  char buffer[256] = {};
  if (::gethostname(buffer, sizeof(buffer) - 1) != 0) return "localhost";
  return buffer;
}

/// Python's os.path.expanduser + os.path.expandvars for the common forms (`~`, `~/x`, `$VAR`,
/// `${VAR}`); unknown variables stay as written.
std::string expand_path(const std::string& path) {
  std::string text = path;
  if (!text.empty() && text[0] == '~' && (text.size() == 1 || text[1] == '/')) {
    if (const char* home = std::getenv("HOME")) text = std::string(home) + text.substr(1);
  }
  std::string out;
  auto is_name = [](char c) { return std::isalnum(static_cast<unsigned char>(c)) || c == '_'; };
  for (std::size_t i = 0; i < text.size();) {
    if (text[i] != '$') {
      out += text[i++];
      continue;
    }
    std::size_t start = i + 1;
    std::size_t end = start;
    bool braces = start < text.size() && text[start] == '{';
    if (braces) {
      end = text.find('}', start);
      if (end == std::string::npos) {
        out += text.substr(i);
        break;
      }
      const std::string name = text.substr(start + 1, end - start - 1);
      const char* value = name.empty() ? nullptr : std::getenv(name.c_str());
      out += value ? std::string(value) : text.substr(i, end + 1 - i);
      i = end + 1;
      continue;
    }
    while (end < text.size() && is_name(text[end])) ++end;
    const std::string name = text.substr(start, end - start);
    const char* value = name.empty() ? nullptr : std::getenv(name.c_str());
    out += value ? std::string(value) : text.substr(i, end - i);
    i = end;
  }
  return out;
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
      throw std::runtime_error(
          fmt::format("TensorBoardLogger: cannot create the event file '{}': {}", path_.string(),
                      std::strerror(errno)));
    }
    Proto source;
    source.string(1, "cppfabric.loggers.TensorBoardLogger");
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
    if (std::fwrite(record.data(), 1, record.size(), file_) != record.size()) {
      throw std::runtime_error(
          fmt::format("TensorBoardLogger: cannot write the event file '{}': {}", path_.string(),
                      std::strerror(errno)));
    }
    ++pending_;
  }
  void flush() {
    if (std::fflush(file_) != 0) {
      throw std::runtime_error(
          fmt::format("TensorBoardLogger: cannot write the event file '{}': {}", path_.string(),
                      std::strerror(errno)));
    }
    pending_ = 0;
    last_flush_ = now_seconds();
  }
  void close() {
    flush();
    std::FILE* file = file_;
    file_ = nullptr;
    if (std::fclose(file) != 0) {
      throw std::runtime_error(
          fmt::format("TensorBoardLogger: cannot close the event file '{}': {}", path_.string(),
                      std::strerror(errno)));
    }
  }
  int pending() const { return pending_; }
  double last_flush() const { return last_flush_; }
  const fs::path& path() const { return path_; }

 private:
  fs::path path_;
  std::FILE* file_ = nullptr;
  int pending_ = 0;
  double last_flush_ = 0;
};
}  // namespace

// ------------------------------------------------------------------ TensorBoardLogger

struct TensorBoardLogger::Impl {
  Impl(detail::LogDirectory dir, TensorBoardLoggerOptions options)
      : dir(std::move(dir)), options(std::move(options)) {}

  detail::LogDirectory dir;  // root_dir, name, version (options.version is not used)
  TensorBoardLoggerOptions options;
  mutable std::mutex mutex;
  std::unique_ptr<EventFileWriter> writer;
  std::string last_file;

  fs::path log_dir() const {
    fs::path path = dir.log_dir();
    if (options.sub_dir) path /= *options.sub_dir;
    return fs::path(expand_path(path.string()));
  }

  EventFileWriter& experiment() {
    if (writer) return *writer;
    const fs::path path = log_dir();
    detail::create_directories(dir.root_dir().string(), "TensorBoardLogger");
    detail::create_directories(path.string(), "TensorBoardLogger");
    writer = std::make_unique<EventFileWriter>(path, options.filename_suffix);
    last_file = writer->path().string();
    return *writer;
  }

  void add(const std::string& event) {
    EventFileWriter& file = experiment();
    file.write(event);
    if (file.pending() >= options.max_queue ||
        now_seconds() - file.last_flush() >= options.flush_secs) {
      file.flush();
    }
  }
};

TensorBoardLogger::TensorBoardLogger(fs::path root_dir, TensorBoardLoggerOptions options) {
  if (options.max_queue < 1) {
    throw std::invalid_argument(fmt::format(
        "TensorBoardLogger(max_queue={}): must be at least 1 (events buffered before a flush; "
        "the default is 10).",
        options.max_queue));
  }
  if (!(options.flush_secs > 0)) {
    throw std::invalid_argument(fmt::format(
        "TensorBoardLogger(flush_secs={}): must be a positive number of seconds (the default is "
        "120).",
        options.flush_secs));
  }
  detail::LogDirectory dir(std::move(root_dir), options.name, options.version, "TensorBoardLogger");
  impl_ = std::make_unique<Impl>(std::move(dir), std::move(options));
}

TensorBoardLogger::~TensorBoardLogger() {
  try {
    std::lock_guard lock(impl_->mutex);
    if (impl_->writer) impl_->writer->close();
  } catch (const std::exception& e) {
    utilities::console()->error("TensorBoardLogger could not write its last events: {}", e.what());
  }
}

std::string TensorBoardLogger::name() const { return impl_->dir.name(); }

std::string TensorBoardLogger::version() const {
  std::lock_guard lock(impl_->mutex);
  return impl_->dir.version();
}

std::string TensorBoardLogger::root_dir() const { return impl_->dir.root_dir().string(); }

std::string TensorBoardLogger::log_dir() const {
  std::lock_guard lock(impl_->mutex);
  return impl_->log_dir().string();
}

std::optional<std::string> TensorBoardLogger::sub_dir() const { return impl_->options.sub_dir; }

std::string TensorBoardLogger::event_file_path() const {
  std::lock_guard lock(impl_->mutex);
  return impl_->last_file;
}

void TensorBoardLogger::log_metrics(const Metrics& metrics, std::optional<int64_t> step) {
  if (!detail::is_rank_zero()) return;
  std::lock_guard lock(impl_->mutex);
  for (const auto& [tag, value] :
       detail::add_prefix(metrics, impl_->options.prefix, LOGGER_JOIN_CHAR)) {
    impl_->add(event_bytes(now_seconds(), step, scalar_summary(tag, value)));
  }
}

void TensorBoardLogger::log_hyperparams(const HParams& params) {
  if (!impl_->options.default_hp_metric) return;  // as Python: no metrics, nothing logged
  log_hyperparams(params, Metrics{{"hp_metric", -1.0}}, std::nullopt);
}

void TensorBoardLogger::log_hyperparams(const HParams& params, const Metrics& metrics,
                                        std::optional<int64_t> step) {
  if (!detail::is_rank_zero() || metrics.empty()) return;
  log_metrics(metrics, step);

  // As torch.utils.tensorboard.summary.hparams: numbers (and bools, which Python treats as
  // ints) become FLOAT64 hyperparameters, strings STRING ones.
  Proto start;
  Proto experiment;
  for (const auto& [key, value] : params) {
    Proto entry_value;
    int type = kDataTypeFloat64;
    std::visit(
        [&](const auto& v) {
          using T = std::decay_t<decltype(v)>;
          if constexpr (std::is_same_v<T, std::string>) {
            entry_value.bytes(kValueString, v);
            type = kDataTypeString;
          } else {
            entry_value.double_value(kValueNumber, static_cast<double>(v));
          }
        },
        value);
    Proto entry;
    entry.string(kMapKey, key).message(kMapValue, entry_value);
    start.message(kSessionStartHParams, entry);
    Proto info;
    info.string(kHParamInfoName, key).enum_value(kHParamInfoType, type);
    experiment.message(kExperimentHParamInfos, info);
  }
  for (const auto& [tag, value] : metrics) {
    Proto name;
    name.string(kMetricNameTag, tag);
    Proto info;
    info.message(kMetricInfoName, name);
    experiment.message(kExperimentMetricInfos, info);
  }
  Proto end;
  end.enum_value(kSessionEndStatus, kStatusSuccess);

  std::lock_guard lock(impl_->mutex);
  const std::pair<const char*, Proto> summaries[] = {
      {"_hparams_/experiment", Proto().message(kPluginDataExperiment, experiment)},
      {"_hparams_/session_start_info", Proto().message(kPluginDataSessionStart, start)},
      {"_hparams_/session_end_info", Proto().message(kPluginDataSessionEnd, end)},
  };
  for (const auto& [tag, plugin_data] : summaries) {
    impl_->add(event_bytes(now_seconds(), step, hparams_summary(tag, plugin_data)));
  }
}

void TensorBoardLogger::save() {
  if (!detail::is_rank_zero()) return;
  std::lock_guard lock(impl_->mutex);
  impl_->experiment().flush();
}

void TensorBoardLogger::finalize(const std::string& status) {
  if (!detail::is_rank_zero()) return;
  std::lock_guard lock(impl_->mutex);
  if (!impl_->writer) return;
  auto writer = std::move(impl_->writer);
  writer->close();
}

}  // namespace cppfabric::loggers
