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
#include "loggers/proto.hpp"
#include "loggers/summary_detail.hpp"

namespace cppfabric::loggers {
namespace fs = std::filesystem;

namespace {
using detail::Proto;

// tensorboard.Summary / Summary.Value / SummaryMetadata / PluginData
constexpr int kSummaryValue = 1;
constexpr int kValueTag = 1, kValueMetadata = 9;
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

Proto hparams_summary(const std::string& tag, const Proto& plugin_data) {
  Proto plugin;
  plugin.string(kPluginName, "hparams").bytes(kPluginContent, plugin_data.str());
  Proto metadata;
  metadata.message(kMetadataPluginData, plugin);
  Proto value;
  value.string(kValueTag, tag).message(kValueMetadata, metadata);
  return Proto().message(kSummaryValue, value);
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

}  // namespace

// ------------------------------------------------------------------ TensorBoardLogger

struct TensorBoardLogger::Impl {
  Impl(detail::LogDirectory dir, TensorBoardLoggerOptions options)
      : dir(std::move(dir)), options(std::move(options)) {}

  detail::LogDirectory dir;  // root_dir, name, version (options.version is not used)
  TensorBoardLoggerOptions options;
  mutable std::mutex mutex;
  std::unique_ptr<SummaryWriter> writer;

  fs::path log_dir() const {
    fs::path path = dir.log_dir();
    if (options.sub_dir) path /= *options.sub_dir;
    return fs::path(expand_path(path.string()));
  }

  SummaryWriter& experiment() {
    if (writer) return *writer;
    if (!detail::is_rank_zero()) {
      writer = SummaryWriter::disabled();
      return *writer;
    }
    detail::create_directories(dir.root_dir().string(), "TensorBoardLogger");
    writer = std::make_unique<SummaryWriter>(
        log_dir(),
        SummaryWriterOptions{options.max_queue, options.flush_secs, options.filename_suffix});
    return *writer;
  }
};

TensorBoardLogger::TensorBoardLogger(fs::path root_dir, TensorBoardLoggerOptions options) {
  detail::validate_queue_options("TensorBoardLogger", options.max_queue, options.flush_secs);
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
  return impl_->writer ? impl_->writer->event_file_path() : "";
}

SummaryWriter& TensorBoardLogger::experiment() {
  std::lock_guard lock(impl_->mutex);
  return impl_->experiment();
}

void TensorBoardLogger::log_metrics(const Metrics& metrics, std::optional<int64_t> step) {
  if (!detail::is_rank_zero()) return;
  SummaryWriter& writer = experiment();
  for (const auto& [tag, value] :
       detail::add_prefix(metrics, impl_->options.prefix, LOGGER_JOIN_CHAR)) {
    writer.add_scalar(tag, value, step);
  }
}

void TensorBoardLogger::log_nested_metrics(const NestedMetrics& metrics,
                                           std::optional<int64_t> step) {
  if (!detail::is_rank_zero()) return;
  SummaryWriter& writer = experiment();
  const std::string& prefix = impl_->options.prefix;
  for (const auto& [key, value] : metrics) {
    const std::string tag = prefix.empty() ? key : prefix + LOGGER_JOIN_CHAR + key;
    if (const auto* group = std::get_if<std::map<std::string, double>>(&value)) {
      writer.add_scalars(tag, *group, step);
    } else {
      writer.add_scalar(tag, std::get<double>(value), step);
    }
  }
}

namespace {
std::string python_str(const cppfabric::Value& value);

std::string python_repr(const cppfabric::Value& value) {
  if (value.kind() == cppfabric::Value::Kind::String) {
    const std::string& text = value.to_string();
    const char quote =
        text.find('\'') != std::string::npos && text.find('"') == std::string::npos ? '"' : '\'';
    std::string out(1, quote);
    for (char c : text) {
      if (c == quote || c == '\\') out += '\\';
      out += c;
    }
    return out + quote;
  }
  return python_str(value);
}

/// Python's str() of a plain value (what _sanitize_params turns unsupported values into).
std::string python_str(const cppfabric::Value& value) {
  using Kind = cppfabric::Value::Kind;
  switch (value.kind()) {
    case Kind::None:
      return "None";
    case Kind::Bool:
      return value.to_bool() ? "True" : "False";
    case Kind::Int:
      return std::to_string(value.to_int());
    case Kind::Double:
      return detail::python_float_repr(value.to_double());
    case Kind::String:
      return value.to_string();
    case Kind::Tensor:
      return fmt::format("tensor(shape={})", fmt::join(value.to_tensor().sizes(), ", "));
    case Kind::List:
    case Kind::Tuple: {
      std::vector<std::string> parts;
      for (const auto& element : value.elements()) parts.push_back(python_repr(element));
      if (value.kind() == Kind::List) return fmt::format("[{}]", fmt::join(parts, ", "));
      return parts.size() == 1 ? fmt::format("({},)", parts[0])
                               : fmt::format("({})", fmt::join(parts, ", "));
    }
    case Kind::Dict: {
      std::vector<std::string> parts;
      for (const auto& [k, v] : value.items()) {
        parts.push_back(python_repr(k) + ": " + python_repr(v));
      }
      return fmt::format("{{{}}}", fmt::join(parts, ", "));
    }
  }
  return "";
}

void flatten_into(const cppfabric::Value& dict, const std::string& parent, HParams& out) {
  for (const auto& [key, value] : dict.items()) {
    const std::string name = (parent.empty() ? "" : parent + "/") + python_str(key);
    using Kind = cppfabric::Value::Kind;
    switch (value.kind()) {
      case Kind::Dict:
        flatten_into(value, name, out);
        break;
      case Kind::Bool:
        out[name] = value.to_bool();
        break;
      case Kind::Int:
        out[name] = value.to_int();
        break;
      case Kind::Double:
        out[name] = value.to_double();
        break;
      case Kind::String:
        out[name] = value.to_string();
        break;
      case Kind::Tensor:
        if (value.to_tensor().numel() == 1) {
          out[name] = value.to_tensor().item<double>();
          break;
        }
        [[fallthrough]];
      default:
        out[name] = python_str(value);
    }
  }
}
}  // namespace

HParams TensorBoardLogger::flatten_hparams(const cppfabric::Value& params) {
  if (!params.is_dict()) {
    throw std::invalid_argument(fmt::format(
        "TensorBoardLogger.log_hyperparams: expects a dict of hyperparameters, got a value of "
        "type {}.",
        params.type_name()));
  }
  HParams out;
  flatten_into(params, "", out);
  return out;
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

  SummaryWriter& writer = this->experiment();  // (`experiment` is also the Proto above)
  const std::pair<const char*, Proto> summaries[] = {
      {"_hparams_/experiment", Proto().message(kPluginDataExperiment, experiment)},
      {"_hparams_/session_start_info", Proto().message(kPluginDataSessionStart, start)},
      {"_hparams_/session_end_info", Proto().message(kPluginDataSessionEnd, end)},
  };
  for (const auto& [tag, plugin_data] : summaries) {
    detail::SummaryWriterAccess::add_summary(writer, hparams_summary(tag, plugin_data), step);
  }
}

void TensorBoardLogger::save() {
  if (!detail::is_rank_zero()) return;
  experiment().flush();
}

void TensorBoardLogger::finalize(const std::string& status) {
  if (!detail::is_rank_zero()) return;
  std::lock_guard lock(impl_->mutex);
  if (impl_->writer) impl_->writer->close();  // as Python: flush and close; a later event reopens
}

}  // namespace cppfabric::loggers
