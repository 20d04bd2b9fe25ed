#include "cppfabric/utilities/progress.hpp"

#include <sys/ioctl.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <mutex>
#include <stdexcept>

#include "cppfabric/detail/fmt.hpp"
#include "cppfabric/utilities/rank_zero.hpp"

namespace cppfabric::utilities {
namespace {

double steady_seconds() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

bool locale_is_utf8() {
  for (const char* name : {"LC_ALL", "LC_CTYPE", "LANG"}) {
    const char* value = std::getenv(name);
    if (value == nullptr || *value == '\0') continue;
    std::string text(value);
    std::transform(text.begin(), text.end(), text.begin(),
                   [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
    return text.find("utf-8") != std::string::npos || text.find("utf8") != std::string::npos;
  }
  return false;
}

/// Display columns of UTF-8 text (one per code point; enough for block characters and ASCII).
int columns(const std::string& text) {
  int n = 0;
  for (unsigned char c : text) n += (c & 0xC0) != 0x80;
  return n;
}

/// The first `width` columns of UTF-8 text.
std::string fit(const std::string& text, int width) {
  int n = 0;
  for (std::size_t i = 0; i < text.size(); ++i) {
    if ((static_cast<unsigned char>(text[i]) & 0xC0) != 0x80) {
      if (n == width) return text.substr(0, i);
      ++n;
    }
  }
  return text;
}

int stream_width(std::FILE* stream) {
  winsize size{};
  if (stream != nullptr && ::ioctl(::fileno(stream), TIOCGWINSZ, &size) == 0 && size.ws_col > 0) {
    return size.ws_col;
  }
  if (const char* cols = std::getenv("COLUMNS")) {
    const int value = std::atoi(cols);
    if (value > 0) return value;
  }
  return 80;
}

std::string format_rate(double rate, const std::string& unit) {
  if (rate <= 0) return "?" + unit + "/s";
  if (rate < 1) return fmt::format("{:5.2f}s/{}", 1.0 / rate, unit);
  return fmt::format("{:5.2f}{}/s", rate, unit);
}

}  // namespace

struct ProgressBar::Impl {
  std::optional<int64_t> total;
  ProgressBarOptions options;
  bool enabled = true;
  bool terminal = false;
  bool ascii = true;
  mutable std::mutex mutex;

  int64_t count = 0;
  double start = 0;
  double last_draw = -1e300;
  int64_t last_printed = -1;
  double last_print_time = 0;
  bool closed = false;
  std::string description;
  std::string postfix;

  double now() const { return options.clock ? options.clock() : steady_seconds(); }
  double elapsed() const { return std::max(0.0, now() - start); }
  double rate() const {
    const double seconds = elapsed();
    return seconds > 0 ? static_cast<double>(count) / seconds : 0.0;
  }

  std::string prefix() const { return description.empty() ? "" : description + ": "; }

  /// "[00:03<00:04, 52.31it/s, loss=0.4321]"
  std::string stats() const {
    const double seconds = elapsed();
    const double r = rate();
    // (append, not `"[" + string`: GCC 12 reports a false -Wstringop-overflow for the latter)
    std::string text(1, '[');
    text += format_interval(seconds);
    if (total) {
      const std::string remaining =
          r > 0 ? format_interval(static_cast<double>(std::max<int64_t>(*total - count, 0)) / r)
                : "?";
      text += "<" + remaining;
    }
    text += ", " + format_rate(r, options.unit);
    if (!postfix.empty()) text += ", " + postfix;
    return text + "]";
  }

  std::string percentage() const {
    const double fraction =
        *total > 0 ? std::min(1.0, static_cast<double>(count) / static_cast<double>(*total)) : 1.0;
    return fmt::format("{:3.0f}%", fraction * 100.0);
  }

  std::string bar(int width) const {
    const double fraction =
        *total > 0 ? std::clamp(static_cast<double>(count) / static_cast<double>(*total), 0.0, 1.0)
                   : 1.0;
    const int steps = ascii ? 10 : 8;
    const double filled = fraction * width;
    int full = static_cast<int>(filled);
    int partial = static_cast<int>((filled - full) * steps);
    std::string out;
    static const char* const kBlocks[] = {"▏", "▎", "▍", "▌", "▋", "▊", "▉"};
    for (int i = 0; i < full; ++i) out += ascii ? "#" : "█";
    int used = full;
    if (used < width && partial > 0) {
      out += ascii ? std::string(1, static_cast<char>('0' + partial)) : kBlocks[partial - 1];
      ++used;
    }
    out.append(static_cast<std::size_t>(width - used), ' ');
    return out;
  }

  std::string line(int width) const {
    std::string text;
    if (total) {
      const std::string left = prefix() + percentage() + "|";
      const std::string right = fmt::format("| {}/{} {}", count, *total, stats());
      const int bar_width = width - columns(left) - columns(right);
      text = bar_width >= 1
                 ? left + bar(bar_width) + right
                 : prefix() + percentage() + fmt::format(" {}/{} {}", count, *total, stats());
    } else {
      text = prefix() + fmt::format("{}{} {}", count, options.unit, stats());
    }
    return fit(text, width);
  }

  std::string plain() const {
    if (total) return prefix() + percentage() + fmt::format(" {}/{} {}", count, *total, stats());
    return prefix() + fmt::format("{}{} {}", count, options.unit, stats());
  }

  void write(const std::string& text) const {
    std::fwrite(text.data(), 1, text.size(), options.stream);
    std::fflush(options.stream);
  }

  void draw() {
    const int width =
        options.width > 0 ? options.width : std::max(1, stream_width(options.stream) - 1);
    std::string text(1, '\r');
    text.append(line(width)).append("\x1b[K");
    write(text);
    last_draw = now();
  }

  void print_line() {
    write(plain() + "\n");
    last_printed = count;
    last_print_time = now();
  }

  int64_t plain_every() const {
    if (options.print_every_n > 0) return options.print_every_n;
    if (total && *total > 0) return std::max<int64_t>(1, (*total + 9) / 10);
    return 0;
  }

  void maybe_output() {
    if (!enabled || closed) return;
    const double t = now();
    if (terminal) {
      if (t - last_draw >= options.min_interval || (total && count >= *total)) draw();
      return;
    }
    const int64_t every = plain_every();
    const int64_t since = count - std::max<int64_t>(last_printed, 0);
    if ((every > 0 && since >= every) ||
        (options.print_every_secs > 0 && t - last_print_time >= options.print_every_secs)) {
      print_line();
    }
  }

  void begin() {
    count = 0;
    start = now();
    last_print_time = start;
    last_printed = -1;
    last_draw = -1e300;
    if (enabled && terminal) draw();
  }
};

ProgressBar::ProgressBar(std::optional<int64_t> total, ProgressBarOptions options)
    : impl_(std::make_unique<Impl>()) {
  if (total && *total < 0) {
    throw std::invalid_argument(fmt::format(
        "ProgressBar(total={}): the total must be >= 0, or unset when unknown.", *total));
  }
  if (options.print_every_n < 0 || options.print_every_secs < 0 || options.min_interval < 0 ||
      options.width < 0) {
    throw std::invalid_argument(fmt::format(
        "ProgressBar options must not be negative (print_every_n={}, print_every_secs={}, "
        "min_interval={}, width={}); 0 means automatic (width, print_every_n) or never "
        "(print_every_secs).",
        options.print_every_n, options.print_every_secs, options.min_interval, options.width));
  }
  if (options.stream == nullptr && !options.disable) {
    throw std::invalid_argument(
        "ProgressBar(stream=nullptr): pass a FILE* to draw on (stderr by default), or set "
        "disable = true.");
  }
  impl_->total = total;
  impl_->enabled = !options.disable && (!options.rank_zero_only || current_rank() == 0);
  impl_->terminal = options.terminal.value_or(options.stream != nullptr &&
                                              ::isatty(::fileno(options.stream)) == 1);
  impl_->ascii = options.ascii.value_or(!locale_is_utf8());
  impl_->description = options.description;
  impl_->options = std::move(options);
  std::lock_guard lock(impl_->mutex);
  impl_->begin();
}

ProgressBar::~ProgressBar() { close(); }

void ProgressBar::update(int64_t n) {
  if (n < 0) {
    throw std::invalid_argument(
        fmt::format("ProgressBar::update(n={}): the step count must be >= 0.", n));
  }
  std::lock_guard lock(impl_->mutex);
  impl_->count += n;
  impl_->maybe_output();
}

void ProgressBar::set_postfix(const std::map<std::string, double>& metrics) {
  std::string text;
  for (const auto& [key, value] : metrics) {
    if (!text.empty()) text += ", ";
    text += fmt::format("{}={:.4g}", key, value);
  }
  std::lock_guard lock(impl_->mutex);
  impl_->postfix = std::move(text);
}

void ProgressBar::set_postfix_str(std::string text) {
  std::lock_guard lock(impl_->mutex);
  impl_->postfix = std::move(text);
}

void ProgressBar::set_description(std::string text) {
  std::lock_guard lock(impl_->mutex);
  impl_->description = std::move(text);
}

void ProgressBar::reset(std::optional<int64_t> total) {
  if (total && *total < 0) {
    throw std::invalid_argument(fmt::format(
        "ProgressBar::reset(total={}): the total must be >= 0, or unset when unknown.", *total));
  }
  std::lock_guard lock(impl_->mutex);
  if (total) impl_->total = total;
  impl_->closed = false;
  impl_->begin();
}

void ProgressBar::refresh() {
  std::lock_guard lock(impl_->mutex);
  if (!impl_->enabled || impl_->closed) return;
  if (impl_->terminal) {
    impl_->draw();
  } else {
    impl_->print_line();
  }
}

void ProgressBar::close() {
  std::lock_guard lock(impl_->mutex);
  if (impl_->closed) return;
  impl_->closed = true;
  if (!impl_->enabled) return;
  if (impl_->terminal) {
    if (impl_->options.leave) {
      impl_->draw();
      impl_->write("\n");
    } else {
      impl_->write("\r\x1b[K");
    }
  } else if (impl_->last_printed != impl_->count) {
    impl_->print_line();
  }
}

int64_t ProgressBar::count() const {
  std::lock_guard lock(impl_->mutex);
  return impl_->count;
}
std::optional<int64_t> ProgressBar::total() const {
  std::lock_guard lock(impl_->mutex);
  return impl_->total;
}
double ProgressBar::elapsed() const {
  std::lock_guard lock(impl_->mutex);
  return impl_->elapsed();
}
double ProgressBar::rate() const {
  std::lock_guard lock(impl_->mutex);
  return impl_->rate();
}
bool ProgressBar::enabled() const { return impl_->enabled; }
bool ProgressBar::is_terminal() const { return impl_->terminal; }

std::string ProgressBar::format_line(int width) const {
  std::lock_guard lock(impl_->mutex);
  return impl_->line(width);
}

std::string ProgressBar::format_plain() const {
  std::lock_guard lock(impl_->mutex);
  return impl_->plain();
}

std::string ProgressBar::format_interval(double seconds) {
  const auto total = static_cast<int64_t>(std::max(0.0, seconds));
  const int64_t minutes = total / 60;
  const int64_t secs = total % 60;
  const int64_t hours = minutes / 60;
  if (hours > 0) return fmt::format("{:d}:{:02d}:{:02d}", hours, minutes % 60, secs);
  return fmt::format("{:02d}:{:02d}", minutes, secs);
}

}  // namespace cppfabric::utilities
