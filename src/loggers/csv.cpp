#include "cppfabric/loggers/csv.hpp"

#include <dirent.h>
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <mutex>
#include <set>
#include <stdexcept>

#include "cppfabric/detail/fmt.hpp"
#include "cppfabric/utilities/rank_zero.hpp"
#include "loggers/hparams_yaml.hpp"
#include "loggers/logger_detail.hpp"
#include "utilities/filesystem.hpp"

namespace cppfabric::loggers {
namespace fs = std::filesystem;

namespace {

// ------------------------------------------------------------------ CSV text (Python's csv module,
// excel dialect: ',' separator, '"' quotes doubled, "\r\n" line ends, minimal quoting)

std::string csv_field(const std::string& value) {
  if (value.find_first_of(",\"\r\n") == std::string::npos) return value;
  std::string out = "\"";
  for (char c : value) {
    if (c == '"') out += '"';
    out += c;
  }
  out += '"';
  return out;
}

std::string csv_line(const std::vector<std::string>& fields) {
  std::string line;
  for (std::size_t i = 0; i < fields.size(); ++i) {
    if (i > 0) line += ',';
    line += csv_field(fields[i]);
  }
  line += "\r\n";
  return line;
}

std::vector<std::vector<std::string>> parse_csv(const std::string& text) {
  std::vector<std::vector<std::string>> rows;
  std::vector<std::string> row;
  std::string field;
  bool quoted = false;
  bool field_started = false;
  auto end_row = [&] {
    if (field_started || !row.empty()) {
      row.push_back(field);
      rows.push_back(row);
    }
    row.clear();
    field.clear();
    field_started = false;
  };
  for (std::size_t i = 0; i < text.size(); ++i) {
    const char c = text[i];
    if (quoted) {
      if (c == '"') {
        if (i + 1 < text.size() && text[i + 1] == '"') {
          field += '"';
          ++i;
        } else {
          quoted = false;
        }
      } else {
        field += c;
      }
    } else if (c == '"') {
      quoted = true;
      field_started = true;
    } else if (c == ',') {
      row.push_back(field);
      field.clear();
      field_started = true;
    } else if (c == '\r' || c == '\n') {
      if (c == '\r' && i + 1 < text.size() && text[i + 1] == '\n') ++i;
      end_row();  // blank lines are skipped, as csv.DictReader does
    } else {
      field += c;
      field_started = true;
    }
  }
  end_row();
  return rows;
}

std::string read_file(const fs::path& path) {
  std::FILE* file = std::fopen(path.c_str(), "rb");
  if (file == nullptr) {
    throw std::runtime_error(
        fmt::format("CSVLogger: cannot read '{}': {}", path.string(), std::strerror(errno)));
  }
  std::string text;
  char buffer[65536];
  while (std::size_t n = std::fread(buffer, 1, sizeof(buffer), file)) text.append(buffer, n);
  std::fclose(file);
  return text;
}

void write_file(const fs::path& path, const std::string& text, const char* mode) {
  std::FILE* file = std::fopen(path.c_str(), mode);
  if (file == nullptr) {
    throw std::runtime_error(fmt::format("CSVLogger: cannot open '{}' for writing: {}",
                                         path.string(), std::strerror(errno)));
  }
  const std::size_t written = std::fwrite(text.data(), 1, text.size(), file);
  const bool failed = written != text.size() || std::fflush(file) != 0;
  const int error = errno;
  if (std::fclose(file) != 0 || failed) {
    throw std::runtime_error(fmt::format("CSVLogger: cannot write '{}': {}", path.string(),
                                         std::strerror(failed ? error : errno)));
  }
}

bool directory_is_empty(const std::string& path) {
  DIR* handle = ::opendir(path.c_str());
  if (handle == nullptr) return true;
  bool empty = true;
  while (const dirent* entry = ::readdir(handle)) {
    const std::string name = entry->d_name;
    if (name != "." && name != "..") {
      empty = false;
      break;
    }
  }
  ::closedir(handle);
  return empty;
}

}  // namespace

// ------------------------------------------------------------------ CSVLogger

struct CSVLogger::Impl {
  explicit Impl(detail::LogDirectory dir) : dir(std::move(dir)) {}

  detail::LogDirectory dir;
  std::string prefix;
  int flush_every = 100;

  mutable std::mutex mutex;
  // The experiment writer, created on first use (rank 0 only).
  bool experiment_created = false;
  std::vector<std::map<std::string, std::string>> rows;  // buffered, not yet written
  std::vector<std::string> keys;                         // sorted, every column written so far
  HParams hparams;

  fs::path metrics_file() const { return dir.log_dir() / NAME_METRICS_FILE; }

  void ensure_experiment() {
    if (experiment_created) return;
    detail::create_directories(dir.root_dir().string(), "CSVLogger");
    const std::string log_dir = dir.log_dir().string();
    if (cppfabric::detail::is_directory(log_dir) && !directory_is_empty(log_dir)) {
      utilities::rank_zero_warn(fmt::format(
          "Experiment logs directory {} exists and is not empty. Previous log files in this "
          "directory will be deleted when the new ones are saved!",
          log_dir));
      const std::string file = metrics_file().string();
      if (cppfabric::detail::is_regular_file(file)) ::unlink(file.c_str());
    }
    detail::create_directories(log_dir, "CSVLogger");
    experiment_created = true;
  }

  void save_rows() {
    if (rows.empty()) return;
    // New column names, then the sorted union.
    std::set<std::string> current;
    for (const auto& row : rows) {
      for (const auto& [key, value] : row) current.insert(key);
    }
    bool new_keys = false;
    for (const auto& key : current) {
      if (std::find(keys.begin(), keys.end(), key) == keys.end()) {
        keys.push_back(key);
        new_keys = true;
      }
    }
    std::sort(keys.begin(), keys.end());

    const fs::path file = metrics_file();
    const bool file_exists = cppfabric::detail::is_regular_file(file.string());
    if (new_keys && file_exists) rewrite_with_header(file);

    std::string text;
    if (!file_exists) text += csv_line(keys);
    for (const auto& row : rows) {
      std::vector<std::string> fields;
      fields.reserve(keys.size());
      for (const auto& key : keys) {
        auto it = row.find(key);
        fields.push_back(it == row.end() ? std::string() : it->second);
      }
      text += csv_line(fields);
    }
    write_file(file, text, file_exists ? "ab" : "wb");
    rows.clear();
  }

  void rewrite_with_header(const fs::path& file) {
    const auto table = parse_csv(read_file(file));
    std::string text = csv_line(keys);
    if (!table.empty()) {
      const auto& header = table.front();
      for (std::size_t r = 1; r < table.size(); ++r) {
        std::map<std::string, std::string> old;
        for (std::size_t c = 0; c < header.size() && c < table[r].size(); ++c) {
          old[header[c]] = table[r][c];
        }
        std::vector<std::string> fields;
        for (const auto& key : keys) {
          auto it = old.find(key);
          fields.push_back(it == old.end() ? std::string() : it->second);
        }
        text += csv_line(fields);
      }
    }
    write_file(file, text, "wb");
  }
};

CSVLogger::CSVLogger(fs::path root_dir, CSVLoggerOptions options) {
  if (options.flush_logs_every_n_steps < 1) {
    throw std::invalid_argument(fmt::format(
        "CSVLogger(flush_logs_every_n_steps={}): must be a positive number of steps (1 writes "
        "every row at once; the default is 100).",
        options.flush_logs_every_n_steps));
  }
  impl_ = std::make_unique<Impl>(detail::LogDirectory(std::move(root_dir), std::move(options.name),
                                                      std::move(options.version), "CSVLogger"));
  impl_->prefix = std::move(options.prefix);
  impl_->flush_every = options.flush_logs_every_n_steps;
}

CSVLogger::~CSVLogger() {
  try {
    std::lock_guard lock(impl_->mutex);
    if (impl_->experiment_created && detail::is_rank_zero()) impl_->save_rows();
  } catch (const std::exception& e) {
    utilities::console()->error("CSVLogger could not write its last rows: {}", e.what());
  }
}

std::string CSVLogger::name() const { return impl_->dir.name(); }

std::string CSVLogger::version() const {
  std::lock_guard lock(impl_->mutex);
  return impl_->dir.version();
}

std::string CSVLogger::root_dir() const { return impl_->dir.root_dir().string(); }

std::string CSVLogger::log_dir() const {
  std::lock_guard lock(impl_->mutex);
  return impl_->dir.log_dir().string();
}

std::string CSVLogger::metrics_file_path() const {
  std::lock_guard lock(impl_->mutex);
  return impl_->metrics_file().string();
}

void CSVLogger::log_metrics(const Metrics& metrics, std::optional<int64_t> step) {
  if (!detail::is_rank_zero()) return;
  std::lock_guard lock(impl_->mutex);
  impl_->ensure_experiment();
  const int64_t row_step = step ? *step : static_cast<int64_t>(impl_->rows.size());
  std::map<std::string, std::string> row;
  for (const auto& [key, value] : detail::add_prefix(metrics, impl_->prefix, LOGGER_JOIN_CHAR)) {
    row[key] = detail::python_float_repr(value);
  }
  row["step"] = std::to_string(row_step);
  impl_->rows.push_back(std::move(row));
  if ((row_step + 1) % impl_->flush_every == 0) impl_->save_rows();
}

void CSVLogger::log_hyperparams(const HParams& params) {
  if (!detail::is_rank_zero()) return;
  std::lock_guard lock(impl_->mutex);
  impl_->ensure_experiment();
  for (const auto& [key, value] : params) impl_->hparams[key] = value;
  write_file(impl_->dir.log_dir() / NAME_HPARAMS_FILE, detail::hparams_to_yaml(impl_->hparams),
             "wb");
}

void CSVLogger::save() {
  if (!detail::is_rank_zero()) return;
  std::lock_guard lock(impl_->mutex);
  impl_->ensure_experiment();
  impl_->save_rows();
}

void CSVLogger::finalize(const std::string& status) {
  if (!detail::is_rank_zero()) return;
  std::lock_guard lock(impl_->mutex);
  if (!impl_->experiment_created) return;
  impl_->save_rows();
}

std::vector<std::string> CSVLogger::metrics_keys() const {
  std::lock_guard lock(impl_->mutex);
  return impl_->keys;
}

std::size_t CSVLogger::buffered_rows() const {
  std::lock_guard lock(impl_->mutex);
  return impl_->rows.size();
}

}  // namespace cppfabric::loggers
