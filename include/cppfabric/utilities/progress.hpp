// ProgressBar: a terminal progress bar (count/total, rate, ETA, metrics) for rank 0.
//
//   cppfabric::utilities::ProgressBar bar(steps_per_epoch, {.description = "Epoch 1"});
//   for (auto& batch : train) {
//     ...
//     bar.set_postfix({{"loss", loss.item<double>()}});
//     bar.update();
//   }
//   bar.close();   // or let it go out of scope
//
// On a terminal it redraws one line in place:
//   Epoch 1:  45%|███████▋         | 176/391 [00:03<00:04, 52.31it/s, loss=0.4321]
// When the stream is not a terminal (a pipe, a file, CI logs) it prints a plain line every
// `print_every_n` steps or `print_every_secs` seconds, and a last one on close:
//   Epoch 1:  45% 176/391 [00:03<00:04, 52.31it/s, loss=0.4321]
// By default only global rank 0 draws; other ranks get a silent bar.
#pragma once

#include <cstdint>
#include <cstdio>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>

namespace cppfabric::utilities {

struct ProgressBarOptions {
  /// Text before the bar ("Epoch 1").
  std::string description = "";
  /// What one step is called in the rate ("it/s").
  std::string unit = "it";
  /// Where to draw (stderr, as tqdm).
  std::FILE* stream = stderr;
  /// Force terminal (true) or plain-line (false) output; unset: isatty(stream).
  std::optional<bool> terminal = std::nullopt;
  /// Line width; 0: the terminal's width, else $COLUMNS, else 80.
  int width = 0;
  /// Terminal: at most one redraw per this many seconds (the last step always redraws).
  double min_interval = 0.1;
  /// Plain lines: one every this many steps (>= 0); 0: a tenth of `total`, or none without total.
  int64_t print_every_n = 0;
  /// Plain lines: or one every this many seconds (>= 0; 0: never by time).
  double print_every_secs = 30.0;
  /// Keep the finished bar on screen (true) or erase it (false).
  bool leave = true;
  /// ASCII bar ('#') instead of Unicode blocks; unset: Unicode when LC_ALL/LC_CTYPE/LANG say UTF-8.
  std::optional<bool> ascii = std::nullopt;
  /// Draw only on global rank 0 (cppfabric::utilities::current_rank()).
  bool rank_zero_only = true;
  /// Draw nothing at all.
  bool disable = false;
  /// Seconds from an arbitrary origin; unset: std::chrono::steady_clock (tests inject their own).
  std::function<double()> clock = nullptr;
};

class ProgressBar {
 public:
  /// `total` steps (unset: unknown, no percentage or ETA). std::invalid_argument on a negative
  /// total or option.
  explicit ProgressBar(std::optional<int64_t> total = std::nullopt,
                       ProgressBarOptions options = {});
  ~ProgressBar();
  ProgressBar(const ProgressBar&) = delete;
  ProgressBar& operator=(const ProgressBar&) = delete;

  /// Advances by `n` steps (>= 0) and redraws when due.
  void update(int64_t n = 1);
  /// Metrics shown after the rate: "loss=0.4321, acc=0.91" (4 significant digits).
  void set_postfix(const std::map<std::string, double>& metrics);
  /// Free text shown after the rate.
  void set_postfix_str(std::string text);
  void set_description(std::string text);
  /// Starts over at 0 (for the next epoch), optionally with a new total.
  void reset(std::optional<int64_t> total = std::nullopt);
  /// Redraws now (terminal) or prints a line now (plain).
  void refresh();
  /// Draws the final state and ends the line; later calls do nothing.
  void close();

  int64_t count() const;
  std::optional<int64_t> total() const;
  /// Seconds since the bar started.
  double elapsed() const;
  /// Steps per second so far (0 before any time has passed).
  double rate() const;
  /// Whether this bar writes anything (not disabled, right rank).
  bool enabled() const;
  /// Whether it redraws in place (terminal) rather than printing plain lines.
  bool is_terminal() const;
  /// The line a terminal redraw shows, fitted to `width` columns (no "\r").
  std::string format_line(int width) const;
  /// The plain line printed when the stream is not a terminal.
  std::string format_plain() const;

  /// "05:07", or "1:02:03" from one hour on (tqdm's format).
  static std::string format_interval(double seconds);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace cppfabric::utilities
