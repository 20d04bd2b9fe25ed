#include "cppfabric/loggers/csv.hpp"

#include <dirent.h>
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <mutex>
#include <regex>
#include <set>
#include <stdexcept>

#include "cppfabric/detail/fmt.hpp"
#include "cppfabric/utilities/rank_zero.hpp"

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

// ------------------------------------------------------------------ YAML (PyYAML's yaml.dump)

std::u32string decode_utf8(const std::string& text) {
  std::u32string out;
  for (std::size_t i = 0; i < text.size();) {
    const auto c = static_cast<unsigned char>(text[i]);
    int extra = 0;
    char32_t cp = c;
    if (c >= 0xF0) {
      extra = 3;
      cp = c & 0x07;
    } else if (c >= 0xE0) {
      extra = 2;
      cp = c & 0x0F;
    } else if (c >= 0xC0) {
      extra = 1;
      cp = c & 0x1F;
    }
    if (i + static_cast<std::size_t>(extra) >= text.size() && extra > 0) {
      out.push_back(0xFFFD);  // truncated sequence
      break;
    }
    for (int k = 1; k <= extra; ++k) {
      cp = (cp << 6) | (static_cast<unsigned char>(text[i + k]) & 0x3F);
    }
    out.push_back(cp);
    i += 1 + extra;
  }
  return out;
}

void append_utf8(std::string& out, char32_t cp) {
  if (cp < 0x80) {
    out += static_cast<char>(cp);
  } else if (cp < 0x800) {
    out += static_cast<char>(0xC0 | (cp >> 6));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else if (cp < 0x10000) {
    out += static_cast<char>(0xE0 | (cp >> 12));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else {
    out += static_cast<char>(0xF0 | (cp >> 18));
    out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  }
}

bool is_break(char32_t c) { return c == U'\n' || c == 0x85 || c == 0x2028 || c == 0x2029; }
bool is_blank_or_end(char32_t c) {
  return c == 0 || c == U' ' || c == U'\t' || c == U'\r' || is_break(c);
}

/// Whether YAML 1.1 (PyYAML's resolver) would read the plain text as something else than a
/// string: a bool, int, float, null, timestamp, merge key or value key.
bool resolves_to_non_string(const std::string& text) {
  static const std::regex patterns(
      // bool
      "yes|Yes|YES|no|No|NO|true|True|TRUE|false|False|FALSE|on|On|ON|off|Off|OFF"
      // float
      "|[-+]?(?:[0-9][0-9_]*)\\.[0-9_]*(?:[eE][-+][0-9]+)?"
      "|\\.[0-9][0-9_]*(?:[eE][-+][0-9]+)?"
      "|[-+]?[0-9][0-9_]*(?::[0-5]?[0-9])+\\.[0-9_]*"
      "|[-+]?\\.(?:inf|Inf|INF)|\\.(?:nan|NaN|NAN)"
      // int
      "|[-+]?0b[0-1_]+|[-+]?0[0-7_]+|[-+]?(?:0|[1-9][0-9_]*)|[-+]?0x[0-9a-fA-F_]+"
      "|[-+]?[1-9][0-9_]*(?::[0-5]?[0-9])+"
      // null, merge, value
      "|~|null|Null|NULL|<<|="
      // timestamp
      "|[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]"
      "|[0-9][0-9][0-9][0-9]-[0-9][0-9]?-[0-9][0-9]?(?:[Tt]|[ \\t]+)[0-9][0-9]?:[0-9][0-9]:"
      "[0-9][0-9](?:\\.[0-9]*)?(?:[ \\t]*(?:Z|[-+][0-9][0-9]?(?::[0-9][0-9])?))?",
      std::regex::ECMAScript | std::regex::optimize);
  return text.empty() || std::regex_match(text, patterns);
}

struct ScalarAnalysis {
  bool multiline = false;
  bool allow_block_plain = true;
  bool allow_single_quoted = true;
};

ScalarAnalysis analyze(const std::u32string& s) {
  ScalarAnalysis a;
  if (s.empty()) {
    return a;
  }
  bool block_indicators = false;
  bool line_breaks = false;
  bool special = false;
  bool leading_space = false, leading_break = false, trailing_space = false, trailing_break = false,
       break_space = false, space_break = false;
  bool previous_space = false, previous_break = false;
  const std::u32string head = s.substr(0, 3);
  if (head == U"---" || head == U"...") block_indicators = true;
  bool preceded_by_ws = true;
  bool followed_by_ws = s.size() == 1 || is_blank_or_end(s[1]);
  const std::u32string first_indicators = U"#,[]{}&*!|>'\"%@`";
  for (std::size_t i = 0; i < s.size(); ++i) {
    const char32_t ch = s[i];
    if (i == 0) {
      if (first_indicators.find(ch) != std::u32string::npos) block_indicators = true;
      if ((ch == U'?' || ch == U':') && followed_by_ws) block_indicators = true;
      if (ch == U'-' && followed_by_ws) block_indicators = true;
    } else {
      if (ch == U':' && followed_by_ws) block_indicators = true;
      if (ch == U'#' && preceded_by_ws) block_indicators = true;
    }
    if (is_break(ch)) line_breaks = true;
    if (!(ch == U'\n' || (ch >= 0x20 && ch <= 0x7E))) special = true;  // no allow_unicode
    if (ch == U' ') {
      if (i == 0) leading_space = true;
      if (i == s.size() - 1) trailing_space = true;
      if (previous_break) break_space = true;
      previous_space = true;
      previous_break = false;
    } else if (is_break(ch)) {
      if (i == 0) leading_break = true;
      if (i == s.size() - 1) trailing_break = true;
      if (previous_space) space_break = true;
      previous_space = false;
      previous_break = true;
    } else {
      previous_space = previous_break = false;
    }
    preceded_by_ws = is_blank_or_end(ch);
    followed_by_ws = i + 2 >= s.size() || is_blank_or_end(s[i + 2]);
  }
  if (leading_space || leading_break || trailing_space || trailing_break) {
    a.allow_block_plain = false;
  }
  if (break_space || space_break || special) {
    a.allow_block_plain = a.allow_single_quoted = false;
  }
  if (line_breaks || block_indicators) a.allow_block_plain = false;
  a.multiline = line_breaks;
  return a;
}

/// Writes scalars the way PyYAML's emitter does for a top-level block mapping: keys at column
/// 0, values folded at a single space once past column 80, continuation lines indented by 2.
class YamlWriter {
 public:
  std::string out;

  void key(const std::string& text) {
    column_ = 0;
    whitespace_ = true;
    indention_ = true;
    scalar(text, /*simple_key=*/true);
    out += ':';
    ++column_;
    whitespace_ = false;
  }
  void plain_value(const std::string& text) {
    out += ' ';
    out += text;
    out += '\n';
  }
  void string_value(const std::string& text) {
    scalar(text, /*simple_key=*/false);
    out += '\n';
  }

 private:
  static constexpr int kBestWidth = 80;
  static constexpr int kIndent = 2;
  int column_ = 0;
  bool whitespace_ = true;
  bool indention_ = true;

  void put(const std::u32string& text) {
    for (char32_t c : text) append_utf8(out, c);
    column_ += static_cast<int>(text.size());
  }
  void put(const std::string& ascii) {
    out += ascii;
    column_ += static_cast<int>(ascii.size());
  }
  void line_break() {
    out += '\n';
    column_ = 0;
    whitespace_ = true;
    indention_ = true;
  }
  void indent() {
    if (!indention_ || column_ > kIndent || (column_ == kIndent && !whitespace_)) line_break();
    if (column_ < kIndent) {
      out.append(static_cast<std::size_t>(kIndent - column_), ' ');
      column_ = kIndent;
      whitespace_ = true;
    }
  }
  void indicator(const std::string& text, bool need_whitespace) {
    put(whitespace_ || !need_whitespace ? text : " " + text);
    whitespace_ = false;
    indention_ = false;
  }

  void scalar(const std::string& text, bool simple_key) {
    const std::u32string s = decode_utf8(text);
    const ScalarAnalysis a = analyze(s);
    const bool split = !simple_key;
    if (!resolves_to_non_string(text) && !(simple_key && (s.empty() || a.multiline)) &&
        a.allow_block_plain) {
      write_plain(s, split);
    } else if (a.allow_single_quoted && !(simple_key && a.multiline)) {
      write_single_quoted(s, split);
    } else {
      write_double_quoted(s);
    }
  }

  void write_plain(const std::u32string& s, bool split) {
    if (!whitespace_) put(std::string(" "));
    whitespace_ = false;
    indention_ = false;
    bool spaces = false;
    std::size_t start = 0;
    for (std::size_t end = 0; end <= s.size(); ++end) {
      const char32_t ch = end < s.size() ? s[end] : 0;
      if (spaces) {
        if (ch != U' ') {
          if (start + 1 == end && column_ > kBestWidth && split) {
            indent();
            whitespace_ = false;
            indention_ = false;
          } else {
            put(s.substr(start, end - start));
          }
          start = end;
        }
      } else if (end == s.size() || ch == U' ') {
        put(s.substr(start, end - start));
        start = end;
      }
      if (end < s.size()) spaces = ch == U' ';
    }
  }

  void write_single_quoted(const std::u32string& s, bool split) {
    indicator("'", true);
    bool spaces = false;
    bool breaks = false;
    std::size_t start = 0;
    for (std::size_t end = 0; end <= s.size(); ++end) {
      const char32_t ch = end < s.size() ? s[end] : 0;
      if (spaces) {
        if (end == s.size() || ch != U' ') {
          if (start + 1 == end && column_ > kBestWidth && split && start != 0 && end != s.size()) {
            indent();
          } else {
            put(s.substr(start, end - start));
          }
          start = end;
        }
      } else if (breaks) {
        if (end == s.size() || !is_break(ch)) {
          if (s[start] == U'\n') line_break();
          for (std::size_t k = start; k < end; ++k) {
            if (s[k] == U'\n') {
              line_break();
            } else {
              append_utf8(out, s[k]);
              column_ = 0;
              whitespace_ = true;
              indention_ = true;
            }
          }
          indent();
          start = end;
        }
      } else if (end == s.size() || ch == U' ' || is_break(ch) || ch == U'\'') {
        if (start < end) {
          put(s.substr(start, end - start));
          start = end;
        }
      }
      if (end < s.size() && ch == U'\'') {
        put(std::string("''"));
        start = end + 1;
      }
      if (end < s.size()) {
        spaces = ch == U' ';
        breaks = is_break(ch);
      }
    }
    indicator("'", false);
  }

  void write_double_quoted(const std::u32string& s) {
    indicator("\"", true);
    for (char32_t ch : s) {
      const bool plain_ascii = ch >= 0x20 && ch <= 0x7E && ch != U'"' && ch != U'\\';
      if (plain_ascii) {
        put(std::u32string(1, ch));
        continue;
      }
      std::string escaped;
      switch (ch) {
        case 0:
          escaped = "\\0";
          break;
        case 0x07:
          escaped = "\\a";
          break;
        case 0x08:
          escaped = "\\b";
          break;
        case 0x09:
          escaped = "\\t";
          break;
        case 0x0A:
          escaped = "\\n";
          break;
        case 0x0B:
          escaped = "\\v";
          break;
        case 0x0C:
          escaped = "\\f";
          break;
        case 0x0D:
          escaped = "\\r";
          break;
        case 0x1B:
          escaped = "\\e";
          break;
        case U'"':
          escaped = "\\\"";
          break;
        case U'\\':
          escaped = "\\\\";
          break;
        case 0x85:
          escaped = "\\N";
          break;
        case 0xA0:
          escaped = "\\_";
          break;
        case 0x2028:
          escaped = "\\L";
          break;
        case 0x2029:
          escaped = "\\P";
          break;
        default:
          if (ch <= 0xFF) {
            escaped = fmt::format("\\x{:02X}", static_cast<unsigned>(ch));
          } else if (ch <= 0xFFFF) {
            escaped = fmt::format("\\u{:04X}", static_cast<unsigned>(ch));
          } else {
            escaped = fmt::format("\\U{:08X}", static_cast<unsigned>(ch));
          }
      }
      put(escaped);
    }
    indicator("\"", false);
  }
};

std::string yaml_float(double value) {
  if (std::isnan(value)) return ".nan";
  if (std::isinf(value)) return value > 0 ? ".inf" : "-.inf";
  std::string text = detail::python_float_repr(value);
  std::transform(text.begin(), text.end(), text.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  if (text.find('.') == std::string::npos && text.find('e') != std::string::npos) {
    text.replace(text.find('e'), 1, ".0e");
  }
  return text;
}

}  // namespace

std::string detail::hparams_to_yaml(const HParams& params) {
  if (params.empty()) return "{}\n";
  YamlWriter writer;
  for (const auto& [key, value] : params) {
    writer.key(key);
    std::visit(
        [&](const auto& v) {
          using T = std::decay_t<decltype(v)>;
          if constexpr (std::is_same_v<T, bool>) {
            writer.plain_value(v ? "true" : "false");
          } else if constexpr (std::is_same_v<T, int64_t>) {
            writer.plain_value(std::to_string(v));
          } else if constexpr (std::is_same_v<T, double>) {
            writer.plain_value(yaml_float(v));
          } else {
            writer.string_value(v);
          }
        },
        value);
  }
  return writer.out;
}

// ------------------------------------------------------------------ CSVLogger

struct CSVLogger::Impl {
  fs::path root_dir;
  std::string name;
  mutable VersionArg version;
  std::string prefix;
  int flush_every = 100;

  mutable std::mutex mutex;
  // The experiment writer, created on first use (rank 0 only).
  bool experiment_created = false;
  std::vector<std::map<std::string, std::string>> rows;  // buffered, not yet written
  std::vector<std::string> keys;                         // sorted, every column written so far
  HParams hparams;

  std::string version_text() const {
    if (version.is_auto()) version = VersionArg(detail::next_version(root_dir / name));
    return version.text() ? *version.text() : std::to_string(*version.number());
  }
  fs::path log_dir() const {
    const std::string dir =
        version.is_auto() || version.number() ? "version_" + version_text() : version_text();
    return root_dir / name / dir;
  }
  fs::path metrics_file() const { return log_dir() / NAME_METRICS_FILE; }

  void ensure_experiment() {
    if (experiment_created) return;
    detail::create_directories(root_dir.string(), "CSVLogger");
    const std::string dir = log_dir().string();
    if (detail::is_directory(dir) && !directory_is_empty(dir)) {
      utilities::rank_zero_warn(fmt::format(
          "Experiment logs directory {} exists and is not empty. Previous log files in this "
          "directory will be deleted when the new ones are saved!",
          dir));
      const std::string file = metrics_file().string();
      if (detail::is_regular_file(file)) ::unlink(file.c_str());
    }
    detail::create_directories(dir, "CSVLogger");
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
    const bool file_exists = detail::is_regular_file(file.string());
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

CSVLogger::CSVLogger(fs::path root_dir, CSVLoggerOptions options)
    : impl_(std::make_unique<Impl>()) {
  if (options.flush_logs_every_n_steps < 1) {
    throw std::invalid_argument(fmt::format(
        "CSVLogger(flush_logs_every_n_steps={}): must be a positive number of steps (1 writes "
        "every row at once; the default is 100).",
        options.flush_logs_every_n_steps));
  }
  if (root_dir.empty()) {
    throw std::invalid_argument(
        "CSVLogger(root_dir=\"\"): pass the folder to write logs under, e.g. \"logs\" or \".\".");
  }
  detail::validate_version(options.version, "CSVLogger");
  impl_->root_dir = std::move(root_dir);
  impl_->name = std::move(options.name);
  impl_->version = std::move(options.version);
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

std::string CSVLogger::name() const { return impl_->name; }

std::string CSVLogger::version() const {
  std::lock_guard lock(impl_->mutex);
  return impl_->version_text();
}

std::string CSVLogger::root_dir() const { return impl_->root_dir.string(); }

std::string CSVLogger::log_dir() const {
  std::lock_guard lock(impl_->mutex);
  return impl_->log_dir().string();
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
  write_file(impl_->log_dir() / NAME_HPARAMS_FILE, detail::hparams_to_yaml(impl_->hparams), "wb");
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
