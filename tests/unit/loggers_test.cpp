// CSVLogger and TensorBoardLogger: files compared with what Python Lightning writes for the same
// calls (tests/python/*_reference.py, run with the bootstrapped venv), versioning, flushing,
// rank-zero behaviour, bad inputs.
#include <ftw.h>
#include <gtest/gtest.h>
#include <torch/torch.h>
#include <unistd.h>

#include <cppfabric/fabric.hpp>
#include <cppfabric/loggers/csv.hpp>
#include <cppfabric/loggers/tensorboard.hpp>
#include <cppfabric/utilities/rank_zero.hpp>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <regex>
#include <sstream>

#include "cppfabric/detail/fmt.hpp"
#include "loggers/hparams_yaml.hpp"
#include "loggers/logger_detail.hpp"
#include "loggers/proto.hpp"
#include "loggers/tfrecord.hpp"
#include "test_utils.hpp"

namespace fs = std::filesystem;
using cppfabric::loggers::CSVLogger;
using cppfabric::loggers::HParams;
using cppfabric::loggers::Logger;
using cppfabric::loggers::TensorBoardLogger;
using cppfabric::loggers::VersionArg;
using cppfabric::testing::CaptureConsole;

namespace {

/// A fresh directory, removed with everything in it at the end. (Not std::filesystem's
/// temp_directory_path/remove_all: LibTorch's wheel exports an old copy of them, and its
/// remove_all crashes in a process linked with LibTorch.)
class TempDir {
 public:
  TempDir() {
    const char* tmp = std::getenv("TMPDIR");
    std::string pattern = std::string(tmp && *tmp ? tmp : "/tmp") + "/cppfabric_loggers_XXXXXX";
    if (::mkdtemp(pattern.data()) == nullptr) throw std::runtime_error("mkdtemp failed");
    path_ = pattern;
  }
  ~TempDir() {
    ::nftw(
        path_.c_str(),
        [](const char* path, const struct stat*, int, FTW*) { return ::remove(path); }, 16,
        FTW_DEPTH | FTW_PHYS);
  }
  const fs::path& path() const { return path_; }

 private:
  fs::path path_;
};

std::string read_bytes(const fs::path& path) {
  std::ifstream file(path, std::ios::binary);
  std::stringstream text;
  text << file.rdbuf();
  return text.str();
}

std::string quote(const std::string& text) {
  std::string out = "'";
  for (char c : text) out += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return out + "'";
}

/// Runs tests/python/<script> with the venv python; returns stdout, or fails the test.
std::string run_python(const std::string& python, const std::string& script,
                       const std::vector<std::string>& args) {
  std::string command =
      quote(python) + " " + quote(std::string(CPPFABRIC_SOURCE_DIR) + "/tests/python/" + script);
  for (const auto& arg : args)
    command.append(" ").append(quote(arg));  // GCC 12: no "lit" + string&&
  int status = 0;
  const std::string output = cppfabric::testing::run_command(command + " 2>/dev/null", &status);
  EXPECT_EQ(status, 0) << "failed: " << command << "\n" << output;
  return output;
}

std::vector<std::string> lines_of(const std::string& text) {
  std::vector<std::string> lines;
  std::stringstream stream(text);
  for (std::string line; std::getline(stream, line);) {
    if (!line.empty()) lines.push_back(line);
  }
  return lines;
}

#define REQUIRE_VENV_PYTHON(var)                                                          \
  const auto var##_found = cppfabric::testing::venv_python();                             \
  if (!var##_found) {                                                                     \
    GTEST_SKIP() << "no venv python at $CPPFABRIC_CACHE/venv or ~/.cache/cppfabric/venv " \
                    "(run scripts/bootstrap): cannot produce the Python expectation";     \
  }                                                                                       \
  const std::string var = *var##_found

std::string float_text(double value) {
  if (std::isnan(value)) return "nan";
  if (std::isinf(value)) return value > 0 ? "inf" : "-inf";
  return fmt::format("{:.17g}", value);
}

/// Applies logger calls to a C++ CSVLogger and records them for csv_logger_reference.py.
class CsvScript {
 public:
  CsvScript(const fs::path& root, const std::string& name, std::optional<int> version,
            const std::string& prefix, int flush, bool pytorch = false)
      : logger(std::make_unique<CSVLogger>(root, name, VersionArg(version), prefix, flush)) {
    ops_ << "init\t" << name << "\t" << (version ? std::to_string(*version) : "-") << "\t" << prefix
         << "\t" << flush << "\t" << (pytorch ? "pytorch" : "fabric") << "\n";
  }
  void log(std::optional<int64_t> step, const Logger::Metrics& metrics) {
    logger->log_metrics(metrics, step);
    ops_ << "log\t" << (step ? std::to_string(*step) : "-");
    for (const auto& [key, value] : metrics) ops_ << "\t" << key << "\t" << float_text(value);
    ops_ << "\n";
  }
  void hparams(const HParams& params) {
    logger->log_hyperparams(params);
    ops_ << "hparams";
    for (const auto& [key, value] : params) {
      ops_ << "\t" << key << "\t";
      if (const auto* b = std::get_if<bool>(&value)) ops_ << "b\t" << (*b ? "true" : "false");
      if (const auto* i = std::get_if<int64_t>(&value)) ops_ << "i\t" << *i;
      if (const auto* d = std::get_if<double>(&value)) ops_ << "f\t" << float_text(*d);
      if (const auto* s = std::get_if<std::string>(&value)) ops_ << "s\t" << *s;
    }
    ops_ << "\n";
  }
  void save() {
    logger->save();
    ops_ << "save\n";
  }
  void finalize() {
    logger->finalize("success");
    ops_ << "finalize\n";
  }
  /// Records a call for Python only.
  void record(const std::string& line) { ops_ << line << "\n"; }
  /// Python's log_dir after replaying the calls under `root`.
  std::string replay_in_python(const std::string& python, const fs::path& root,
                               const fs::path& ops_file) const {
    std::ofstream(ops_file) << ops_.str();
    const auto out =
        lines_of(run_python(python, "csv_logger_reference.py", {ops_file.string(), root.string()}));
    return out.empty() ? "" : out.back();
  }

  std::unique_ptr<CSVLogger> logger;

 private:
  std::stringstream ops_;
};

/// Sets a fake rank for the test's duration.
struct FakeRank {
  FakeRank(int rank, int world) { cppfabric::utilities::set_rank(rank, world); }
  ~FakeRank() { cppfabric::utilities::set_rank(0, 1); }
};

}  // namespace

// ------------------------------------------------------------------ CSV: byte for byte

TEST(CSVLogger, MetricsFileMatchesPythonByteForByte) {
  REQUIRE_VENV_PYTHON(python);
  TempDir tmp;
  CsvScript s(tmp.path() / "cpp", "exp", std::nullopt, "", 3);
  s.log(0, {{"loss", 0.5}, {"acc", 0.1}});
  s.log(1, {{"loss", 0.25}, {"acc", 1.0 / 3.0}});
  s.log(2, {{"loss", 1e-05}, {"acc", 0.1 + 0.2}});  // (2 + 1) % 3 == 0: first flush
  ASSERT_TRUE(fs::exists(s.logger->metrics_file_path()));
  s.log(3, {{"loss", 1e16}, {"acc", 123456.789}});
  s.log(4, {{"loss", -0.0}, {"val,loss", 2.5}, {"lr", 0.001}});  // new columns...
  s.log(5, {{"loss", INFINITY}, {"acc", NAN}, {"big", 1e300}, {"tiny", 5e-324}});
  s.log(std::nullopt, {{"loss", 42.0}});                       // auto step: 0 rows buffered -> 0
  s.log(std::nullopt, {{"say \"hi\"", 7.0}, {"loss", 1e15}});  // -> 1
  s.log(10, {{"loss", 0.0001}, {"acc", 100.0}});
  s.finalize();

  const std::string py_dir = s.replay_in_python(python, tmp.path() / "py", tmp.path() / "ops.tsv");
  ASSERT_EQ(fs::path(py_dir).lexically_relative(tmp.path() / "py"), "exp/version_0");
  const std::string expected = read_bytes(fs::path(py_dir) / "metrics.csv");
  const std::string actual = read_bytes(s.logger->metrics_file_path());
  ASSERT_FALSE(expected.empty());
  EXPECT_EQ(actual, expected);
  // The header was rewritten when the new columns arrived, old rows padded.
  EXPECT_EQ(actual.substr(0, actual.find("\r\n")),
            "acc,big,loss,lr,\"say \"\"hi\"\"\",step,tiny,\"val,loss\"");
  EXPECT_NE(actual.find("0.1,,0.5,,,0,,\r\n"), std::string::npos) << actual;
  EXPECT_EQ(s.logger->metrics_keys().size(), 8u);
}

TEST(CSVLogger, PrefixAndAutoStepsMatchPython) {
  REQUIRE_VENV_PYTHON(python);
  TempDir tmp;
  CsvScript s(tmp.path() / "cpp", "", 4, "train", 2);
  // No step: the number of rows buffered since the last flush (Python's quirk), so the steps
  // restart at 0 after each flush.
  for (int i = 0; i < 5; ++i) s.log(std::nullopt, {{"loss", 1.0 / (i + 1)}, {"acc", i * 0.1}});
  s.save();
  s.log(7, {{"loss", 3.0}});
  s.finalize();
  const std::string py_dir = s.replay_in_python(python, tmp.path() / "py", tmp.path() / "ops.tsv");
  EXPECT_EQ(fs::path(py_dir).lexically_relative(tmp.path() / "py"), "version_4");
  EXPECT_EQ(fs::path(s.logger->log_dir()), tmp.path() / "cpp" / "version_4");
  const std::string actual = read_bytes(s.logger->metrics_file_path());
  EXPECT_EQ(actual, read_bytes(fs::path(py_dir) / "metrics.csv"));
  EXPECT_EQ(actual.substr(0, actual.find("\r\n")), "step,train-acc,train-loss");
  EXPECT_NE(actual.find("\r\n0,0.2,0.3333333333333333\r\n"), std::string::npos) << actual;
}

TEST(CSVLogger, FlushesOnDestructionLikePythonFinalize) {
  REQUIRE_VENV_PYTHON(python);
  TempDir tmp;
  CsvScript s(tmp.path() / "cpp", "lightning_logs", std::nullopt, "", 100);
  for (int step = 0; step < 3; ++step) s.log(step, {{"loss", 1.5 - step}});
  const std::string metrics_file = s.logger->metrics_file_path();
  EXPECT_EQ(s.logger->buffered_rows(), 3u);
  EXPECT_FALSE(fs::exists(metrics_file));  // nothing written before the 100th step
  s.record("finalize");                    // Python needs finalize(); C++ flushes when destroyed
  s.logger.reset();
  EXPECT_EQ(read_bytes(metrics_file), "loss,step\r\n1.5,0\r\n0.5,1\r\n-0.5,2\r\n");
  const std::string py_dir = s.replay_in_python(python, tmp.path() / "py", tmp.path() / "ops.tsv");
  EXPECT_EQ(read_bytes(metrics_file), read_bytes(fs::path(py_dir) / "metrics.csv"));
}

TEST(CSVLogger, HparamsYamlMatchesPyTorchLightning) {
  REQUIRE_VENV_PYTHON(python);
  TempDir tmp;
  CsvScript s(tmp.path() / "cpp", "exp", 0, "", 100, /*pytorch=*/true);
  s.hparams({{"lr", 3e-4},
             {"batch_size", int64_t{128}},
             {"optimizer", "adamw"},
             {"use_amp", true},
             {"weight_decay", 1e-05},
             {"big", 1e16},
             {"negative", int64_t{-3}},
             {"run name", "my run: 1"},
             {"empty", ""},
             {"yes_string", "yes"},
             {"number_string", "1.5"},
             {"version_string", "1.2.3"},
             {"date_string", "2024-01-01"},
             {"quote", "it's"},
             {"hash", "a #b"},
             {"dash", "- x"},
             {"colon", "a:b"},
             {"path", "/tmp/data"},
             {"unicode", "caf\xc3\xa9"},
             {"spaces", " padded "},
             {"long",
              "a long description of the experiment that goes on and on past the "
              "eighty column limit of the emitter so that it folds"}});
  s.hparams({{"lr", 1e-3}, {"epochs", int64_t{20}}});  // merged, file rewritten
  s.log(0, {{"loss", 1.0}});
  s.finalize();
  const std::string py_dir = s.replay_in_python(python, tmp.path() / "py", tmp.path() / "ops.tsv");
  const std::string expected = read_bytes(fs::path(py_dir) / "hparams.yaml");
  const std::string actual = read_bytes(fs::path(s.logger->log_dir()) / "hparams.yaml");
  ASSERT_FALSE(expected.empty());
  EXPECT_EQ(actual, expected);
  EXPECT_NE(actual.find("lr: 0.001\n"), std::string::npos);
  EXPECT_EQ(cppfabric::loggers::detail::hparams_to_yaml({}), "{}\n");
}

// ------------------------------------------------------------------ CSV: layout and versions

TEST(CSVLogger, PicksTheNextVersionLikePython) {
  REQUIRE_VENV_PYTHON(python);
  TempDir tmp;
  const fs::path exp = tmp.path() / "exp";
  for (const char* dir :
       {"version_0", "version_3", "version_5_old", "version_x", "version_", "other"}) {
    fs::create_directories(exp / dir);
  }
  std::ofstream(exp / "version_9") << "a file, not a folder";
  CSVLogger csv(tmp.path(), "exp");
  TensorBoardLogger tb(tmp.path(), "exp");
  EXPECT_EQ(csv.version(), "6");  // "version_5_old" counts as 5, as in Python
  EXPECT_EQ(tb.version(), "6");
  EXPECT_EQ(lines_of(run_python(python, "csv_logger_reference.py",
                                {"--version", tmp.path().string(), "exp"})),
            (std::vector<std::string>{"6", "6"}));

  EXPECT_EQ(CSVLogger(tmp.path(), "fresh").version(), "0");
  EXPECT_EQ(fs::path(CSVLogger(tmp.path(), "exp", 7).log_dir()), exp / "version_7");
  EXPECT_EQ(fs::path(CSVLogger(tmp.path(), "exp", "run_a").log_dir()), exp / "run_a");
  EXPECT_EQ(fs::path(CSVLogger(tmp.path(), "", 2).log_dir()), tmp.path() / "version_2");
  EXPECT_EQ(CSVLogger(tmp.path(), "exp", "run_a").version(), "run_a");
  EXPECT_EQ(csv.name(), "exp");
  EXPECT_EQ(csv.root_dir(), tmp.path().string());
  // Nothing is created until something is logged.
  EXPECT_FALSE(fs::exists(exp / "version_6"));
}

TEST(CSVLogger, ExistingLogDirWarnsAndDropsOldMetrics) {
  TempDir tmp;
  const fs::path dir = tmp.path() / "lightning_logs" / "version_2";
  fs::create_directories(dir);
  std::ofstream(dir / "metrics.csv") << "old,step\r\n1,0\r\n";
  std::ofstream(dir / "notes.txt") << "kept";
  CaptureConsole console;
  CSVLogger logger(tmp.path(), "lightning_logs", 2, "", 1);
  logger.log_metrics({{"new", 2.0}}, 0);
  EXPECT_NE(console.text().find("exists and is not empty"), std::string::npos) << console.text();
  EXPECT_EQ(read_bytes(dir / "metrics.csv"), "new,step\r\n2.0,0\r\n");
  EXPECT_TRUE(fs::exists(dir / "notes.txt"));
}

TEST(CSVLogger, OptionsStructAndStringHparams) {
  TempDir tmp;
  CSVLogger logger(tmp.path(), {.name = "opts", .prefix = "val", .flush_logs_every_n_steps = 1});
  logger.log_metrics({{"acc", 0.5}}, 0);
  EXPECT_EQ(read_bytes(logger.metrics_file_path()), "step,val-acc\r\n0,0.5\r\n");
  const std::map<std::string, std::string> strings{{"model", "resnet"}, {"seed", "42"}};
  logger.log_hyperparams(strings);  // the older string-only overload still works
  EXPECT_EQ(read_bytes(fs::path(logger.log_dir()) / "hparams.yaml"), "model: resnet\nseed: '42'\n");
}

TEST(CSVLogger, PythonFloatText) {
  using cppfabric::loggers::detail::python_float_repr;
  EXPECT_EQ(python_float_repr(0.1), "0.1");
  EXPECT_EQ(python_float_repr(1.0), "1.0");
  EXPECT_EQ(python_float_repr(-0.0), "-0.0");
  EXPECT_EQ(python_float_repr(1e-05), "1e-05");
  EXPECT_EQ(python_float_repr(0.0001), "0.0001");
  EXPECT_EQ(python_float_repr(1e16), "1e+16");
  EXPECT_EQ(python_float_repr(1e15), "1000000000000000.0");
  EXPECT_EQ(python_float_repr(1.5e300), "1.5e+300");
  EXPECT_EQ(python_float_repr(123456.789), "123456.789");
  EXPECT_EQ(python_float_repr(2.5e-7), "2.5e-07");
  EXPECT_EQ(python_float_repr(NAN), "nan");
  EXPECT_EQ(python_float_repr(-INFINITY), "-inf");
}

// ------------------------------------------------------------------ CSV: errors, ranks, Fabric

TEST(CSVLogger, RejectsBadArguments) {
  TempDir tmp;
  EXPECT_THROW_WITH(CSVLogger(tmp.path(), "x", std::nullopt, "", 0), std::invalid_argument,
                    "flush_logs_every_n_steps=0", "positive");
  EXPECT_THROW_WITH(CSVLogger(tmp.path(), {.flush_logs_every_n_steps = -5}), std::invalid_argument,
                    "flush_logs_every_n_steps=-5");
  EXPECT_THROW_WITH(CSVLogger(tmp.path(), "x", -1), std::invalid_argument, "version=-1");
  EXPECT_THROW_WITH(CSVLogger(tmp.path(), "x", ""), std::invalid_argument, "version=\"\"");
  EXPECT_THROW_WITH(CSVLogger(""), std::invalid_argument, "root_dir");
  EXPECT_THROW_WITH(TensorBoardLogger(tmp.path(), {.max_queue = 0}), std::invalid_argument,
                    "max_queue=0");
  EXPECT_THROW_WITH(TensorBoardLogger(tmp.path(), {.flush_secs = 0}), std::invalid_argument,
                    "flush_secs=0");
}

TEST(CSVLogger, UnwritableRootDirNamesThePath) {
  TempDir tmp;
  std::ofstream(tmp.path() / "a_file") << "x";
  const fs::path root = tmp.path() / "a_file" / "logs";
  CSVLogger csv(root);
  EXPECT_THROW_WITH(csv.log_metrics({{"loss", 1.0}}, 0), std::runtime_error, root.string());
  TensorBoardLogger tb(root);
  EXPECT_THROW_WITH(tb.log_metrics({{"loss", 1.0}}, 0), std::runtime_error, root.string());
}

TEST(CSVLogger, WritesOnRankZeroOnly) {
  TempDir tmp;
  {
    FakeRank rank(1, 2);
    CSVLogger csv(tmp.path(), "ranks", std::nullopt, "", 1);
    TensorBoardLogger tb(tmp.path(), "ranks");
    for (Logger* logger : std::initializer_list<Logger*>{&csv, &tb}) {
      logger->log_metrics({{"loss", 1.0}}, 0);
      logger->log_hyperparams(HParams{{"lr", 0.1}});
      logger->save();
      logger->finalize("success");
    }
  }
  EXPECT_FALSE(fs::exists(tmp.path() / "ranks"));
}

TEST(CSVLogger, FabricLogReachesEveryLogger) {
  TempDir tmp;
  auto csv = std::make_shared<CSVLogger>(tmp.path(), "fabric", std::nullopt, "", 100);
  auto tb = std::make_shared<TensorBoardLogger>(tmp.path(), "fabric_tb");
  cppfabric::Fabric fabric({.accelerator = "cpu", .devices = 1, .loggers = {csv, tb}});
  fabric.log("train/loss", 0.75, 0);
  fabric.log_dict({{"train/loss", 0.5}, {"train/acc", 0.25}}, 1);
  EXPECT_EQ(fabric.logger(), csv);
  csv->finalize("success");
  tb->finalize("success");
  EXPECT_EQ(read_bytes(csv->metrics_file_path()),
            "step,train/acc,train/loss\r\n0,,0.75\r\n1,0.25,0.5\r\n");
  EXPECT_FALSE(tb->event_file_path().empty());
  EXPECT_TRUE(fs::exists(tb->event_file_path()));
}

// ------------------------------------------------------------------ TensorBoard

namespace {
/// Applies calls to a C++ TensorBoardLogger and records them for tensorboard_reference.py.
class TbScript {
 public:
  TbScript(const fs::path& root, const std::string& name, const std::string& prefix,
           std::optional<std::string> sub_dir)
      : logger(
            std::make_unique<TensorBoardLogger>(root, name, VersionArg(), true, prefix, sub_dir)) {
    ops_ << "init\t" << name << "\t-\t" << prefix << "\t" << sub_dir.value_or("-") << "\n";
  }
  void log(std::optional<int64_t> step, const Logger::Metrics& metrics) {
    logger->log_metrics(metrics, step);
    ops_ << "log\t" << (step ? std::to_string(*step) : "-");
    for (const auto& [key, value] : metrics) ops_ << "\t" << key << "\t" << float_text(value);
    ops_ << "\n";
  }
  void hparams(const HParams& params, std::optional<Logger::Metrics> metrics,
               std::optional<int64_t> step) {
    if (metrics) {
      logger->log_hyperparams(params, *metrics, step);
    } else {
      logger->log_hyperparams(params);
    }
    ops_ << "hparams\t" << (step ? std::to_string(*step) : "-");
    if (metrics) {
      for (const auto& [key, value] : *metrics) ops_ << "\t" << key << "\t" << float_text(value);
    } else {
      ops_ << "\tDEFAULT";
    }
    ops_ << "\t;";
    for (const auto& [key, value] : params) {
      ops_ << "\t" << key << "\t";
      if (const auto* b = std::get_if<bool>(&value)) ops_ << "b\t" << (*b ? "true" : "false");
      if (const auto* i = std::get_if<int64_t>(&value)) ops_ << "i\t" << *i;
      if (const auto* d = std::get_if<double>(&value)) ops_ << "f\t" << float_text(*d);
      if (const auto* s = std::get_if<std::string>(&value)) ops_ << "s\t" << *s;
    }
    ops_ << "\n";
  }
  void finalize() {
    logger->finalize("success");
    ops_ << "finalize\n";
  }
  std::string replay_in_python(const std::string& python, const fs::path& root,
                               const fs::path& ops_file) const {
    std::ofstream(ops_file) << ops_.str();
    const auto out = lines_of(run_python(python, "tensorboard_reference.py",
                                         {"write", ops_file.string(), root.string()}));
    return out.empty() ? "" : out.back();
  }
  std::unique_ptr<TensorBoardLogger> logger;

 private:
  std::stringstream ops_;
};

std::string f32(double value) {
  return cppfabric::loggers::detail::python_float_repr(static_cast<float>(value));
}
}  // namespace

TEST(TensorBoardLogger, EventAccumulatorReadsScalarsAndHparams) {
  REQUIRE_VENV_PYTHON(python);
  TempDir tmp;
  TbScript s(tmp.path() / "cpp", "exp", "", "train");
  s.log(0, {{"loss", 0.5}, {"acc", 0.25}});
  s.log(1, {{"loss", 0.1}});
  s.log(2, {{"loss", -3.75}, {"lr", 3e-4}});
  s.log(std::nullopt, {{"epoch_time", 12.5}});
  s.hparams({{"lr", 3e-4}, {"batch_size", int64_t{128}}, {"optimizer", "adamw"}, {"amp", true}},
            std::nullopt, std::nullopt);
  s.finalize();
  const fs::path log_dir = s.logger->log_dir();
  EXPECT_EQ(log_dir, tmp.path() / "cpp" / "exp" / "version_0" / "train");

  const std::string dump =
      run_python(python, "tensorboard_reference.py", {"dump", log_dir.string()});
  std::cout << "EventAccumulator dump of the C++ event file:\n" << dump;
  const std::vector<std::string> expected = {
      "file_version\t2.0",  // EventAccumulator parses "brain.Event:2"
      "hparam\tamp\tnumber\t1.0",
      "hparam\tbatch_size\tnumber\t128.0",
      "hparam\tlr\tnumber\t0.0003",
      "hparam\toptimizer\tstring\tadamw",
      "hparam_info\tamp\tDATA_TYPE_FLOAT64",
      "hparam_info\tbatch_size\tDATA_TYPE_FLOAT64",
      "hparam_info\tlr\tDATA_TYPE_FLOAT64",
      "hparam_info\toptimizer\tDATA_TYPE_STRING",
      "metric_info\thp_metric",
      "scalar\tacc\t0\t0.25",
      "scalar\tepoch_time\t0\t12.5",
      "scalar\thp_metric\t0\t-1.0",
      "scalar\tloss\t0\t0.5",
      "scalar\tloss\t1\t" + f32(0.1),
      "scalar\tloss\t2\t-3.75",
      "scalar\tlr\t2\t" + f32(3e-4),
      "session_end\tSTATUS_SUCCESS",
  };
  EXPECT_EQ(lines_of(dump), expected);

  // Python Fabric's TensorBoardLogger, same calls: the same dump.
  const std::string py_dir = s.replay_in_python(python, tmp.path() / "py", tmp.path() / "ops.tsv");
  EXPECT_EQ(fs::path(py_dir), tmp.path() / "py" / "exp" / "version_0" / "train");
  EXPECT_EQ(run_python(python, "tensorboard_reference.py", {"dump", py_dir}), dump);
}

TEST(TensorBoardLogger, HparamsWithOwnMetricsAndPrefixMatchPython) {
  REQUIRE_VENV_PYTHON(python);
  TempDir tmp;
  TbScript s(tmp.path() / "cpp", "", "train", std::nullopt);
  s.log(5, {{"loss", 2.0}});
  s.hparams({{"dropout", 0.5}, {"layers", int64_t{4}}, {"act", "gelu"}},
            Logger::Metrics{{"val/acc", 0.875}}, 7);
  s.finalize();
  const std::string dump =
      run_python(python, "tensorboard_reference.py", {"dump", s.logger->log_dir()});
  EXPECT_NE(dump.find("scalar\ttrain-loss\t5\t2.0\n"), std::string::npos) << dump;
  EXPECT_NE(dump.find("scalar\ttrain-val/acc\t7\t0.875\n"), std::string::npos) << dump;
  EXPECT_NE(dump.find("metric_info\tval/acc\n"), std::string::npos) << dump;
  EXPECT_NE(dump.find("hparam\tact\tstring\tgelu\n"), std::string::npos) << dump;
  const std::string py_dir = s.replay_in_python(python, tmp.path() / "py", tmp.path() / "ops.tsv");
  EXPECT_EQ(run_python(python, "tensorboard_reference.py", {"dump", py_dir}), dump);
}

TEST(TensorBoardLogger, EventFileNameAndFraming) {
  TempDir tmp;
  TensorBoardLogger logger(tmp.path(), {.name = "tb", .version = "run", .filename_suffix = ".x"});
  logger.save();  // creates the file with its file_version record
  const fs::path file = logger.event_file_path();
  char host[256] = {};
  ::gethostname(host, sizeof(host) - 1);
  const std::regex pattern("events\\.out\\.tfevents\\.[0-9]{10}\\." + std::string(host) + "\\." +
                           std::to_string(::getpid()) + "\\.[0-9]+\\.x");
  EXPECT_TRUE(std::regex_match(file.filename().string(), pattern)) << file;
  EXPECT_EQ(file.parent_path(), tmp.path() / "tb" / "run");

  // One record: length, masked CRC of the length, the Event, masked CRC of the Event.
  const std::string bytes = read_bytes(file);
  ASSERT_GE(bytes.size(), 16u);
  uint64_t length = 0;
  std::memcpy(&length, bytes.data(), 8);
  ASSERT_EQ(bytes.size(), 8 + 4 + length + 4);
  uint32_t length_crc = 0, data_crc = 0;
  std::memcpy(&length_crc, bytes.data() + 8, 4);
  std::memcpy(&data_crc, bytes.data() + 12 + length, 4);
  EXPECT_EQ(length_crc, cppfabric::loggers::detail::masked_crc32c(bytes.data(), 8));
  EXPECT_EQ(data_crc, cppfabric::loggers::detail::masked_crc32c(bytes.data() + 12, length));
  EXPECT_NE(bytes.find("brain.Event:2"), std::string::npos);
  // The CRC-32C check value.
  EXPECT_EQ(cppfabric::loggers::detail::crc32c("123456789", 9), 0xE3069283u);
}

TEST(TensorBoardLogger, BuffersUpToMaxQueueAndReopensAfterFinalize) {
  TempDir tmp;
  TensorBoardLogger logger(tmp.path(), {.name = "q", .max_queue = 3});
  logger.log_metrics({{"a", 1.0}}, 0);  // creates the file (first record flushed)
  const fs::path first = logger.event_file_path();
  const auto size0 = fs::file_size(first);
  logger.log_metrics({{"a", 2.0}}, 1);
  EXPECT_EQ(fs::file_size(first), size0);  // 2 events pending
  logger.log_metrics({{"a", 3.0}}, 2);     // the third one flushes
  EXPECT_GT(fs::file_size(first), size0);
  logger.finalize("success");
  logger.log_metrics({{"a", 4.0}}, 3);  // as Python's SummaryWriter: a new file after close
  EXPECT_NE(logger.event_file_path(), first.string());
  logger.finalize("success");
  std::size_t files = 0;
  for (const auto& entry : fs::directory_iterator(logger.log_dir())) {
    files += entry.path().filename().string().rfind("events.out.tfevents.", 0) == 0;
  }
  EXPECT_EQ(files, 2u);
}

TEST(TensorBoardLogger, LogDirExpandsUserAndVariables) {
  TempDir tmp;
  cppfabric::testing::ScopedEnv home("HOME", tmp.path().string());
  cppfabric::testing::ScopedEnv var("CPPFABRIC_TB_TEST", "expanded");
  TensorBoardLogger logger("~/logs", "$CPPFABRIC_TB_TEST", 1, true, "", "${CPPFABRIC_TB_TEST}");
  EXPECT_EQ(fs::path(logger.log_dir()),
            tmp.path() / "logs" / "expanded" / "version_1" / "expanded");
  EXPECT_EQ(logger.sub_dir(), "${CPPFABRIC_TB_TEST}");
}

// ------------------------------------------------------------------ SummaryWriter

namespace {
/// Applies calls to a SummaryWriter and records them for tensorboard_reference.py's `summary`
/// (torch.utils.tensorboard.SummaryWriter replaying the same calls).
class SummaryScript {
 public:
  explicit SummaryScript(cppfabric::loggers::SummaryWriter& writer) : writer_(writer) {}
  void scalar(const std::string& tag, double value, std::optional<int64_t> step) {
    writer_.add_scalar(tag, value, step);
    ops_ << "scalar\t" << tag << "\t" << step_text(step) << "\t" << float_text(value) << "\n";
  }
  void scalars(const std::string& main_tag, const std::map<std::string, double>& values,
               std::optional<int64_t> step) {
    writer_.add_scalars(main_tag, values, step);
    record_scalars(main_tag, values, step);
  }
  void record_scalars(const std::string& main_tag, const std::map<std::string, double>& values,
                      std::optional<int64_t> step) {
    ops_ << "scalars\t" << main_tag << "\t" << step_text(step);
    for (const auto& [tag, value] : values) ops_ << "\t" << tag << "\t" << float_text(value);
    ops_ << "\n";
  }
  void record_scalar(const std::string& tag, double value, std::optional<int64_t> step) {
    ops_ << "scalar\t" << tag << "\t" << step_text(step) << "\t" << float_text(value) << "\n";
  }
  void histogram(const std::string& tag, const torch::Tensor& values, std::optional<int64_t> step) {
    writer_.add_histogram(tag, values, step);
    ops_ << "histogram\t" << tag << "\t" << step_text(step) << "\t" << tensor_text(values) << "\n";
  }
  void image(const std::string& tag, const torch::Tensor& image, std::optional<int64_t> step,
             const std::string& dataformats = "CHW") {
    writer_.add_image(tag, image, step, dataformats);
    const std::string text = tensor_text(image);
    const auto tab = text.find('\t');
    ops_ << "image\t" << tag << "\t" << step_text(step) << "\t" << text.substr(0, tab) << "\t"
         << dataformats << text.substr(tab) << "\n";
  }
  void text(const std::string& tag, const std::string& text, std::optional<int64_t> step) {
    writer_.add_text(tag, text, step);
    std::string hex;
    for (unsigned char c : text) hex += fmt::format("{:02x}", c);
    ops_ << "text\t" << tag << "\t" << step_text(step) << "\t" << hex << "\n";
  }
  void replay_in_python(const std::string& python, const fs::path& log_dir,
                        const fs::path& ops_file) const {
    std::ofstream(ops_file) << ops_.str();
    run_python(python, "tensorboard_reference.py",
               {"summary", ops_file.string(), log_dir.string()});
  }

 private:
  static std::string step_text(std::optional<int64_t> step) {
    return step ? std::to_string(*step) : "-";
  }
  static std::string tensor_text(const torch::Tensor& t) {
    const char* dtype = t.scalar_type() == torch::kFloat    ? "float32"
                        : t.scalar_type() == torch::kDouble ? "float64"
                        : t.scalar_type() == torch::kUInt8  ? "uint8"
                                                            : "int64";
    std::string out = fmt::format("{}\t{}", dtype, fmt::join(t.sizes(), ","));
    const torch::Tensor flat = t.to(torch::kDouble).contiguous().reshape({-1});
    for (int64_t i = 0; i < flat.numel(); ++i)
      out.append("\t").append(float_text(flat[i].item<double>()));
    return out;
  }
  cppfabric::loggers::SummaryWriter& writer_;
  std::stringstream ops_;
};
}  // namespace

TEST(SummaryWriter, EventAccumulatorReadsWhatTorchSummaryWriterWrites) {
  REQUIRE_VENV_PYTHON(python);
  TempDir tmp;
  TensorBoardLogger logger(tmp.path() / "cpp", "exp", 0);
  cppfabric::loggers::SummaryWriter& writer = logger.experiment();
  EXPECT_TRUE(writer.enabled());
  EXPECT_EQ(fs::path(writer.log_dir()), tmp.path() / "cpp" / "exp" / "version_0");
  SummaryScript s(writer);
  torch::manual_seed(0);
  s.scalar("train/loss", 0.5, 0);
  s.scalar("train/loss", 0.25, 1);
  s.scalar("no_step", 1.5, std::nullopt);
  s.scalars("loss/all", {{"train", 0.3}, {"val", 0.4}}, 2);
  s.scalars("loss/all", {{"train", 0.2}, {"val", 0.35}}, 3);
  s.histogram("weights", torch::randn({50}), 0);
  s.histogram("weights", torch::randn({4, 8}, torch::kDouble) * 1e3, 1);
  s.histogram("positive", torch::rand({20}) + 2, 0);  // no bucket at zero: a left empty bucket
  s.histogram("zeros_and_ints", torch::tensor({0, 0, 3, -7, 1}, torch::kLong), 0);
  s.histogram("single", torch::tensor({0.1f}), 0);
  // float in [0, 1] (with out-of-range values, which clip), CHW RGB
  s.image("rgb", torch::rand({3, 4, 5}) * 1.2 - 0.1, 0);
  s.image("grey_uint8", torch::randint(0, 256, {1, 6, 3}, torch::kUInt8), 1);  // stored as RGB
  s.image("rgba_hwc", torch::rand({2, 3, 4}), 2, "HWC");
  s.image("hw", torch::rand({5, 7}, torch::kDouble), 3, "HW");
  s.text("notes", "hello **world**\nsecond line, \xc3\xbcnicode", 4);
  s.text("notes", "", 5);
  logger.finalize("success");

  const std::string dump =
      run_python(python, "tensorboard_reference.py", {"dump_all", writer.log_dir()});
  // What TensorBoard shows, spelled out for a few of them.
  for (const std::string& line : std::initializer_list<std::string>{
           ".\tscalar\ttrain/loss\t1\t0.25",
           ".\tscalar\tno_step\t0\t1.5",
           "loss_all_train\tscalar\tloss/all\t2\t" + f32(0.3),
           "loss_all_val\tscalar\tloss/all\t3\t" + f32(0.35),
           ".\thistogram\tsingle\t0\tmin=0.10000000149011612 max=0.10000000149011612 num=1.0 "
           "sum=0.100000001 sum_squares=0.0100000003",
           ".\thistogram_counts\tzeros_and_ints\t0\t",
           ".\timage\trgb\t0\t5x4 mode=RGB size=(5, 4) pixels=",
           ".\timage\tgrey_uint8\t1\t3x6 mode=RGB size=(3, 6) pixels=",
           ".\timage\trgba_hwc\t2\t3x2 mode=RGBA size=(3, 2) pixels=",
           ".\ttensor\tnotes/text_summary\t4\tshape=[1] ['hello **world**\\nsecond line, "
           "\xc3\xbcnicode']",
           ".\tplugin\ttext\tnotes/text_summary\tb''",
       }) {
    EXPECT_NE(dump.find(line), std::string::npos) << line;
  }
  // torch.utils.tensorboard.SummaryWriter, same calls: the same dump.
  const fs::path py_dir = tmp.path() / "py";
  s.replay_in_python(python, py_dir, tmp.path() / "ops.tsv");
  EXPECT_EQ(run_python(python, "tensorboard_reference.py", {"dump_all", py_dir.string()}), dump);
}

TEST(SummaryWriter, LogMetricsWithGroupsIsAddScalarsAsPython) {
  REQUIRE_VENV_PYTHON(python);
  TempDir tmp;
  TensorBoardLogger logger(tmp.path() / "cpp", "exp", 0, true, "train");
  SummaryScript s(logger.experiment());
  logger.log_metrics(
      TensorBoardLogger::NestedMetrics{
          {"loss", std::map<std::string, double>{{"a", 1.0}, {"b", 2.0}}}, {"lr", 0.5}},
      7);
  // What Python's TensorBoardLogger does with {"loss": {"a": 1, "b": 2}, "lr": 0.5}, prefix
  // "train": add_scalars("train-loss", ...) and add_scalar("train-lr", ...).
  s.record_scalars("train-loss", {{"a", 1.0}, {"b", 2.0}}, 7);
  s.record_scalar("train-lr", 0.5, 7);
  logger.finalize("success");
  const std::string dump =
      run_python(python, "tensorboard_reference.py", {"dump_all", logger.log_dir()});
  EXPECT_NE(dump.find("train-loss_a\tscalar\ttrain-loss\t7\t1.0\n"), std::string::npos) << dump;
  EXPECT_NE(dump.find(".\tscalar\ttrain-lr\t7\t0.5\n"), std::string::npos) << dump;
  s.replay_in_python(python, tmp.path() / "py", tmp.path() / "ops.tsv");
  EXPECT_EQ(
      run_python(python, "tensorboard_reference.py", {"dump_all", (tmp.path() / "py").string()}),
      dump);
}

TEST(SummaryWriter, NestedHyperparametersAreFlattenedAsPython) {
  cppfabric::Value hp = cppfabric::Value::dict();
  hp.set("lr", 3e-4);
  hp.set("optimizer", cppfabric::Value::dict({{"name", "adamw"},
                                              {"betas", cppfabric::Value::tuple({0.9, 0.999})},
                                              {"sched", cppfabric::Value::dict({{"T_max", 20}})}}));
  hp.set("layers", cppfabric::Value::list({64, "a'b"}));
  hp.set("none", cppfabric::Value());
  hp.set("amp", true);
  const HParams flat = TensorBoardLogger::flatten_hparams(hp);
  const HParams expected = {{"lr", 3e-4},
                            {"optimizer/name", "adamw"},
                            {"optimizer/betas", "(0.9, 0.999)"},
                            {"optimizer/sched/T_max", int64_t{20}},
                            {"layers", "[64, \"a'b\"]"},
                            {"none", "None"},
                            {"amp", true}};
  EXPECT_EQ(flat, expected);
  EXPECT_THROW_WITH(TensorBoardLogger::flatten_hparams(cppfabric::Value(3)), std::invalid_argument,
                    "expects a dict of hyperparameters, got a value of type int");

  REQUIRE_VENV_PYTHON(python);
  TempDir tmp;
  TensorBoardLogger logger(tmp.path(), "exp");
  logger.log_hyperparams(hp);
  logger.finalize("success");
  const std::string dump =
      run_python(python, "tensorboard_reference.py", {"dump", logger.log_dir()});
  EXPECT_NE(dump.find("hparam\toptimizer/sched/T_max\tnumber\t20.0\n"), std::string::npos) << dump;
  EXPECT_NE(dump.find("hparam\toptimizer/name\tstring\tadamw\n"), std::string::npos) << dump;
  EXPECT_NE(dump.find("scalar\thp_metric\t0\t-1.0\n"), std::string::npos) << dump;
}

TEST(SummaryWriter, ArgumentOrderDisabledWriterAndBadInputs) {
  TempDir tmp;
  // Python's order: default_hp_metric fourth.
  TensorBoardLogger logger(tmp.path(), "exp", 2, false, "pre", "sub");
  logger.log_hyperparams(HParams{{"lr", 0.1}});  // default_hp_metric=false: nothing written
  EXPECT_EQ(logger.event_file_path(), "");
  EXPECT_EQ(fs::path(logger.log_dir()), tmp.path() / "exp" / "version_2" / "sub");
  static_assert(
      !std::is_constructible_v<TensorBoardLogger, fs::path, const char*, int, const char*>,
      "the fourth positional argument is default_hp_metric (a bool), as in Python");
  auto& writer = logger.experiment();
  EXPECT_THROW_WITH(writer.add_histogram("h", torch::empty({0})), std::invalid_argument,
                    "add_histogram('h'): the tensor has no element");
  EXPECT_THROW_WITH(writer.add_histogram("h", torch::tensor({1.0, std::nan("")})),
                    std::invalid_argument, "must be finite");
  EXPECT_THROW_WITH(writer.add_image("i", torch::rand({2, 4, 4})), std::invalid_argument,
                    "2 channels; images have 1 (grey), 3 (RGB) or 4 (RGBA)");
  EXPECT_THROW_WITH(writer.add_image("i", torch::rand({4, 4})), std::invalid_argument,
                    "the tensor has 2 dimensions, dataformats 'CHW' needs 3");
  EXPECT_THROW_WITH(writer.add_image("i", torch::rand({4, 4}), 0, "NCHW"), std::invalid_argument,
                    "choose one of 'CHW', 'HWC', 'HW'");
  EXPECT_THROW_WITH(writer.add_scalar("", 1.0), std::invalid_argument, "tag must not be empty");
  EXPECT_THROW_WITH(cppfabric::loggers::SummaryWriter(tmp.path(), {.max_queue = 0}),
                    std::invalid_argument, "max_queue=0");
  {
    FakeRank rank(1, 2);
    TensorBoardLogger other(tmp.path(), "rank1");
    auto& dummy = other.experiment();
    EXPECT_FALSE(dummy.enabled());
    dummy.add_scalar("x", 1.0, 0);
    dummy.add_image("i", torch::rand({3, 2, 2}), 0);
    dummy.flush();
  }
  EXPECT_FALSE(fs::exists(tmp.path() / "rank1"));
}

TEST(SummaryWriter, PngIsValidWithOrWithoutZlib) {
  // 300 x 300 RGB: more than one stored deflate block (65535 bytes) when zlib is absent.
  std::vector<uint8_t> pixels(300 * 300 * 3);
  for (std::size_t i = 0; i < pixels.size(); ++i) pixels[i] = static_cast<uint8_t>(i * 7);
  const std::string png = cppfabric::loggers::detail::encode_png(pixels.data(), 300, 300, 3);
  EXPECT_EQ(png.substr(0, 8), std::string("\x89PNG\r\n\x1a\n", 8));
  EXPECT_EQ(png.substr(png.size() - 8, 4), "IEND");
  REQUIRE_VENV_PYTHON(python);
  TempDir tmp;
  std::ofstream(tmp.path() / "a.png", std::ios::binary) << png;
  std::ofstream(tmp.path() / "raw", std::ios::binary)
      .write(reinterpret_cast<const char*>(pixels.data()),
             static_cast<std::streamsize>(pixels.size()));
  int status = 0;
  const std::string out = cppfabric::testing::run_command(
      quote(python) +
          " -c 'import sys; from PIL import Image; i = Image.open(sys.argv[1]); "
          "print(i.mode, i.size, i.tobytes() == open(sys.argv[2], \"rb\").read())' " +
          quote((tmp.path() / "a.png").string()) + " " + quote((tmp.path() / "raw").string()),
      &status);
  EXPECT_EQ(status, 0) << out;
  EXPECT_EQ(out, "RGB (300, 300) True\n");
}
