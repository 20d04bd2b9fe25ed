// SummaryWriter: TensorBoard event files, as torch.utils.tensorboard.SummaryWriter writes them --
// scalars, scalar groups, histograms, images and text -- without TensorFlow or protobuf.
// TensorBoardLogger::experiment() returns the logger's writer (a no-op one on ranks other than 0):
//
//   auto tb = std::make_shared<cppfabric::loggers::TensorBoardLogger>("logs");
//   auto& writer = tb->experiment();
//   writer.add_scalar("train/loss", 0.25, step);
//   writer.add_scalars("loss", {{"train", 0.25}, {"val", 0.31}}, step);  // runs loss_train, loss_val
//   writer.add_histogram("fc1/weight", model->fc1->weight, step);       // TensorBoard's default bins
//   writer.add_image("input", images[0], step);  // CHW, float in [0, 1] or uint8; PNG-encoded
//   writer.add_text("notes", "lr **3e-4**", step);  // markdown, the text plugin's format
//
// Or on its own, in any directory: `cppfabric::loggers::SummaryWriter writer("runs/exp1");`.
// Events are buffered and written after `max_queue` events or `flush_secs` seconds (checked when
// adding), on flush()/close() and on destruction. Adding after close() starts a new event file.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <optional>
#include <string>

namespace cppfabric::loggers {

namespace detail {
struct SummaryWriterAccess;
}

struct SummaryWriterOptions {
  /// Flush after this many buffered events (>= 1).
  int max_queue = 10;
  /// ... or when this many seconds passed since the last flush (> 0).
  double flush_secs = 120.0;
  /// Appended to the event file names.
  std::string filename_suffix = "";
};

class SummaryWriter {
 public:
  /// Writes below `log_dir` (created on the first event). Throws std::invalid_argument for a
  /// max_queue < 1 or a flush_secs <= 0.
  explicit SummaryWriter(std::filesystem::path log_dir, SummaryWriterOptions options = {});
  /// Flushes and closes every event file (errors are reported on the console, not thrown).
  ~SummaryWriter();
  SummaryWriter(const SummaryWriter&) = delete;
  SummaryWriter& operator=(const SummaryWriter&) = delete;

  /// A writer that writes nothing (what TensorBoardLogger::experiment() gives ranks other than 0,
  /// as Python's DummyExperiment).
  static std::unique_ptr<SummaryWriter> disabled();
  bool enabled() const;

  std::string log_dir() const;
  /// The main event file (the last one after close(); "" before the first event).
  std::string event_file_path() const;

  /// One scalar (stored as float32, as Python's simple_value). `step` unset writes none (0).
  void add_scalar(const std::string& tag, double value, std::optional<int64_t> step = std::nullopt);
  /// Several curves on one chart, as Python: each `tag` goes to its own run directory
  /// `log_dir/<main_tag with '/' as '_'>_<tag>` as the scalar `main_tag`.
  void add_scalars(const std::string& main_tag, const std::map<std::string, double>& values,
                   std::optional<int64_t> step = std::nullopt);
  /// A histogram of all elements of `values` (any real dtype, any device), bucketed on
  /// TensorBoard's default edges (0, +-1e-12 * 1.1^k up to 1e20) as Python's bins="tensorflow".
  /// Throws std::invalid_argument for an empty tensor or non-finite values.
  void add_histogram(const std::string& tag, const at::Tensor& values,
                     std::optional<int64_t> step = std::nullopt);
  /// An image, PNG-encoded. `dataformats` "CHW" (the default, as Python), "HWC" or "HW"; 1 (grey,
  /// stored as RGB as Python does), 3 (RGB) or 4 (RGBA) channels. uint8 values are used as they
  /// are; any other dtype is multiplied by 255 and clipped to [0, 255], as Python.
  void add_image(const std::string& tag, const at::Tensor& image,
                 std::optional<int64_t> step = std::nullopt,
                 const std::string& dataformats = "CHW");
  /// Text (markdown) for the text plugin, under the tag `<tag>/text_summary` as Python.
  void add_text(const std::string& tag, const std::string& text,
                std::optional<int64_t> step = std::nullopt);

  /// Writes buffered events of every event file to disk (creating the main one if needed).
  void flush();
  /// Flushes and closes every event file; adding afterwards starts new files.
  void close();

 private:
  SummaryWriter();
  friend struct detail::SummaryWriterAccess;
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace cppfabric::loggers
