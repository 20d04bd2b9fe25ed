// The torch.save reader and writer against hostile or unlucky conditions (issue #15): a 100k-key
// dict loads in linear time, shared references cannot amplify a small file into gigabytes,
// LibTorch's errors never escape with a backtrace, and a full disk is a clean error that leaves
// the previous checkpoint and no temporary file.
#include <gtest/gtest.h>
#include <sys/mount.h>
#include <sys/resource.h>
#include <torch/torch.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cppfabric/checkpoint/torch_pickle.hpp>
#include <cppfabric/state.hpp>
#include <csignal>
#include <cstring>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "pickle_builders.hpp"
#include "test_utils.hpp"

namespace {

using cppfabric::Value;
namespace ck = cppfabric::checkpoint;
using Clock = std::chrono::steady_clock;
using namespace cppfabric::testing::pickle;

double seconds_since(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

std::string temp_dir(const std::string& name) {
  const std::string dir =
      ::testing::TempDir() + "cppfabric_" + name + "_" + std::to_string(::getpid());
  int status = 0;
  cppfabric::testing::run_command("rm -rf " + dir + " && mkdir -p " + dir, &status);
  return dir;
}

// ------------------------------------------------------------------ #15.3: large dicts

TEST(CheckpointAdversarial, AHundredThousandKeyDictLoadsInLinearTime) {
  // The old reader compared every new key with every key before it: 100k keys took 23 s.
  const int n = 100000;
  Value::Items items;
  items.reserve(n);
  for (int i = 0; i < n; ++i) items.emplace_back(Value("key." + std::to_string(i)), Value(i));
  const Value big = Value::dict(std::move(items));
  const Value checkpoint = Value::dict({{Value("big"), big}, {Value("tail"), Value(7)}});
  const std::string dir = temp_dir("bigdict");
  const std::string path = dir + "/big.pt";
  ck::save_torch_file(checkpoint, path);

  const auto start = Clock::now();
  const Value back = ck::load_torch_file(path);
  const double load_s = seconds_since(start);
  EXPECT_LT(load_s, 2.0) << "loading a 100k-key dict must be linear";
  EXPECT_TRUE(back == checkpoint);
  ASSERT_EQ(back.at("big").items().size(), static_cast<std::size_t>(n));
  EXPECT_EQ(back.at("big").items()[n - 1].first.to_string(), "key." + std::to_string(n - 1));

  // The same keys at the top level go through State (fabric.load's result) in linear time too.
  const auto start_state = Clock::now();
  const cppfabric::State state = cppfabric::State::from_value(back.at("big"));
  EXPECT_LT(seconds_since(start_state), 2.0);
  ASSERT_EQ(state.size(), static_cast<std::size_t>(n));
  EXPECT_EQ(state.get<int64_t>("key.99999"), 99999);
  std::cout << "[100k-key dict] load " << load_s << " s\n";
}

TEST(CheckpointAdversarial, RepeatedDictKeysReplaceInPlaceAsInPython) {
  // {'a': 1, 'b': 2, 'a': 3, 1: 'int', True: 'bool', 1.0: 'float'} through SETITEMS:
  // 'a' keeps its first position with the last value; 1, True and 1.0 stay apart (the keys
  // compare by type first, as Value::scalar_equals does).
  const std::string pickle =
      kProto + "}(" + unicode("a") + "K" + byte(1) + unicode("b") + "K" + byte(2) + unicode("a") +
      "K" + byte(3) + "K" + byte(1) + unicode("int") + byte(0x88) + unicode("bool") + "G" +
      std::string("\x3f\xf0\x00\x00\x00\x00\x00\x00", 8) + unicode("float") + "u.";
  const Value v = ck::from_torch_bytes(wrap_pickle(pickle));
  ASSERT_EQ(v.items().size(), 5u);
  EXPECT_EQ(v.items()[0].first.to_string(), "a");
  EXPECT_EQ(v.items()[0].second.to_int(), 3);
  EXPECT_EQ(v.items()[1].first.to_string(), "b");
  EXPECT_EQ(v.at(Value(1)).to_string(), "int");
  EXPECT_EQ(v.at(Value(true)).to_string(), "bool");
  EXPECT_EQ(v.at(Value(1.0)).to_string(), "float");
}

// ------------------------------------------------------------------ #15.4: shared references

// A "billion laughs" pickle: level 0 is a list of 10 ints, each next level a list of 10 memo
// references to the previous one; `levels` levels expand to about 10^levels values.
std::string laughs(int levels) {
  std::string p = kProto + "](";
  for (int i = 0; i < 10; ++i) p.append("K").append(byte(i));
  p.append("eq").append(byte(0)).append("0");  // memoize, pop
  for (int level = 1; level < levels; ++level) {
    p += "](";
    for (int i = 0; i < 10; ++i) p.append("h").append(byte(level - 1));
    p.append("eq").append(byte(level)).append("0");
  }
  return p.append("h").append(byte(levels - 1)).append(".");
}

TEST(CheckpointAdversarial, SharedReferencesCannotAmplifyASmallFile) {
  // 9 levels: about 300 bytes of pickle that would build 10^9 values.
  const std::string file = wrap_pickle(laughs(9));
  ASSERT_LT(file.size(), 2048u);
  const auto start = Clock::now();
  EXPECT_THROW_WITH(ck::from_torch_bytes(file, "laughs.pt"), std::runtime_error, "laughs.pt",
                    "expands to more than", "max_expansion");
  EXPECT_LT(seconds_since(start), 1.0) << "the limit must apply before anything is built";

  // A little sharing is fine: 3 levels are 1000 values from a ~100-byte pickle... within the
  // floor, and the copies are equal.
  const Value small = ck::from_torch_bytes(wrap_pickle(laughs(3)));
  ASSERT_EQ(small.elements().size(), 10u);
  EXPECT_TRUE(small.elements()[0] == small.elements()[9]);
  EXPECT_EQ(small.elements()[3].elements()[2].elements()[7].to_int(), 7);

  // The factor is a limit the caller can lower or raise.
  ck::ReadLimits strict;
  strict.max_expansion = 1;
  EXPECT_NO_THROW(ck::from_torch_bytes(wrap_pickle(laughs(3)), "<memory>", strict));
  EXPECT_THROW_WITH(ck::from_torch_bytes(wrap_pickle(laughs(6)), "<memory>", strict),
                    std::runtime_error, "expands");
}

TEST(CheckpointAdversarial, RepeatedCopiesOfASharedDictAreBounded) {
  // d = {0: 0, ..., 999: 999}; then OrderedDict(d) 20000 times (each copy popped again).
  std::string p = kProto + global("collections", "OrderedDict") + "q" + byte(1) + "}(";
  // Appends piece by piece: GCC 12 warns (-Wstringop-overflow) on "literal" + std::string&&.
  for (int i = 0; i < 1000; ++i)
    p.append("M").append(byte(i & 0xff)).append(byte(i >> 8)).append("K").append(byte(0));
  p.append("uq").append(byte(0));
  for (int i = 0; i < 20000; ++i)
    p.append("h").append(byte(1)).append("h").append(byte(0)).append(byte(0x85)).append("R0");
  p += ".";
  EXPECT_THROW_WITH(ck::from_torch_bytes(wrap_pickle(p)), std::runtime_error,
                    "copying shared containers");
}

TEST(CheckpointAdversarial, AContainerThatContainsItselfIsRefused) {
  // l = []; l.append(l)
  const std::string p = kProto + "]q" + byte(0) + "h" + byte(0) + "a.";
  EXPECT_THROW_WITH(ck::from_torch_bytes(wrap_pickle(p), "cycle.pt"), std::runtime_error,
                    "cycle.pt", "contains itself");
}

// ------------------------------------------------------------------ #15.6: no c10::Error

// _rebuild_tensor_v2 on a 2-float storage with the given size and stride tuples (LONG1 ints).
std::string tensor_with(const std::vector<int64_t>& sizes, const std::vector<int64_t>& strides) {
  std::string p = kProto + global("torch._utils", "_rebuild_tensor_v2") + "((" +
                  unicode("storage") + global("torch", "FloatStorage") + unicode("0") +
                  unicode("cpu") + "K" + byte(2) + "tQK" + byte(0) + "(";
  for (auto s : sizes) p += long1(s);
  p += "t(";
  for (auto s : strides) p += long1(s);
  p += "t" + byte(0x89) + global("collections", "OrderedDict") + ")RtR.";
  return p;
}

TEST(CheckpointAdversarial, AnOverflowingTensorSizeIsOurErrorNamingTheFile) {
  const std::vector<std::pair<std::string, std::string>> storage = {
      {"data/0", std::string(8, '\0')}};
  // A sane one first, so the builder is known to be right.
  EXPECT_EQ(ck::from_torch_bytes(wrap_pickle(tensor_with({2}, {1}), storage)).to_tensor().numel(),
            2);
  const int64_t huge = int64_t{1} << 40;
  for (const auto& sizes : std::vector<std::vector<int64_t>>{
           {huge, huge}, {huge, huge, 0}, {INT64_MAX, 2}, {3, INT64_MAX / 2}}) {
    const std::string dir = temp_dir("overflow");
    const std::string path = dir + "/overflow.pt";
    {
      std::ofstream out(path, std::ios::binary);
      const std::string bytes =
          wrap_pickle(tensor_with(sizes, std::vector<int64_t>(sizes.size(), 0)), storage);
      out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
    }
    try {
      ck::load_torch_file(path);
      ADD_FAILURE() << "an overflowing size was accepted";
    } catch (const std::runtime_error& e) {
      const std::string what = e.what();
      EXPECT_NE(what.find(path), std::string::npos) << what;
      EXPECT_NE(what.find("overflows"), std::string::npos) << what;
      EXPECT_EQ(what.find("Exception raised from"), std::string::npos) << what;
    } catch (const std::exception& e) {
      ADD_FAILURE() << "not a std::runtime_error: " << e.what();
    }
  }
}

// ------------------------------------------------------------------ #15.1: full disk

// A 4 MB checkpoint over a small one must fail cleanly in `dir`, where writes stop at ~1 MiB.
void expect_clean_failure(const std::string& dir, const std::string& expected_error) {
  const std::string path = dir + "/model.pt";
  const Value small = Value::dict({{Value("w"), Value(torch::arange(10, torch::kFloat))}});
  ck::save_torch_file(small, path);
  const Value large = Value::dict({{Value("w"), Value(torch::ones({1 << 20}, torch::kFloat))}});
  try {
    ck::save_torch_file(large, path);
    ADD_FAILURE() << "saving 4 MB into 1 MiB succeeded";
  } catch (const std::runtime_error& e) {
    const std::string what = e.what();
    EXPECT_NE(what.find(path), std::string::npos) << what;
    EXPECT_NE(what.find(expected_error), std::string::npos) << what;
    EXPECT_EQ(what.find("Exception raised from"), std::string::npos) << what;
  }
  // The previous checkpoint is intact and no temporary file is left behind.
  EXPECT_TRUE(ck::load_torch_file(path) == small);
  int status = 0;
  EXPECT_EQ(cppfabric::testing::run_command("ls -A " + dir, &status), "model.pt\n");
}

TEST(CheckpointAdversarial, AFullDiskIsACleanErrorKeepingThePreviousCheckpoint) {
  const std::string dir = temp_dir("fulldisk");
  if (::mount("tmpfs", dir.c_str(), "tmpfs", 0, "size=1m") != 0) {
    GTEST_SKIP() << "cannot mount a 1 MiB tmpfs at " << dir << " (" << std::strerror(errno)
                 << "); the RLIMIT_FSIZE test covers the same path";
  }
  expect_clean_failure(dir, "No space left on device");
  EXPECT_EQ(::umount2(dir.c_str(), MNT_DETACH), 0) << std::strerror(errno);
}

TEST(CheckpointAdversarial, AFileSizeLimitIsACleanErrorKeepingThePreviousCheckpoint) {
  // The same write failure without a mount: writes past RLIMIT_FSIZE fail with EFBIG.
  const std::string dir = temp_dir("fsize");
  rlimit old{};
  ASSERT_EQ(::getrlimit(RLIMIT_FSIZE, &old), 0);
  auto* old_handler = std::signal(SIGXFSZ, SIG_IGN);
  rlimit limited = old;
  limited.rlim_cur = 1 << 20;
  ASSERT_EQ(::setrlimit(RLIMIT_FSIZE, &limited), 0);
  expect_clean_failure(dir, "File too large");
  ::setrlimit(RLIMIT_FSIZE, &old);
  std::signal(SIGXFSZ, old_handler);
}

}  // namespace

// ------------------------------------------------------------------ #13: mapped reads

TEST(CheckpointMappedRead, MappedTensorsEqualCopiedOnesAndStayPrivate) {
  const std::string dir = temp_dir("mapped");
  const std::string path = dir + "/m.pt";
  auto base = torch::arange(4096, torch::kFloat).reshape({64, 64});
  const Value saved = Value::dict({{Value("base"), Value(base)},
                                   {Value("row"), Value(base[3])},
                                   {Value("half"), Value(torch::ones({7}, torch::kHalf))},
                                   {Value("long"), Value(torch::arange(5, torch::kLong))}});
  ck::save_torch_file(saved, path);
  ck::ReadLimits mapped;
  mapped.map_file = true;
  mapped.map_min_file_bytes = 0;  // these files are small: map them anyway
  mapped.map_min_record_bytes = 0;
  at::Tensor survivor;
  {
    const Value back = ck::load_torch_file(path, mapped);
    EXPECT_TRUE(back == saved);
    EXPECT_TRUE(back.at("row").to_tensor().is_alias_of(back.at("base").to_tensor()));
    survivor = back.at("base").to_tensor();
    // Writes go to private pages, never to the file.
    survivor.fill_(-1);
  }
  // The mapping outlives the Value while a tensor uses it.
  EXPECT_EQ(survivor.sum().item<float>(), -4096.0f);
  EXPECT_TRUE(ck::load_torch_file(path, mapped) == saved);
  EXPECT_TRUE(ck::load_torch_file(path) == saved);
}

TEST(CheckpointMappedRead, CorruptRecordsFailTheCrcCheckWhenMapped) {
  const std::string dir = temp_dir("mapped_crc");
  const std::string path = dir + "/m.pt";
  ck::save_torch_file(Value::dict({{Value("t"), Value(torch::ones({64}))}}), path);
  std::string bytes;
  {
    std::ifstream in(path, std::ios::binary);
    bytes.assign(std::istreambuf_iterator<char>(in), {});
  }
  const auto pos = bytes.find(std::string("\x00\x00\x80\x3f", 4));  // a 1.0f in the storage
  ASSERT_NE(pos, std::string::npos);
  bytes[pos + 3] = 0x40;
  {
    std::ofstream out(path, std::ios::binary | std::ios::trunc);
    out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  }
  ck::ReadLimits mapped;
  mapped.map_file = true;
  mapped.map_min_file_bytes = 0;  // these files are small: map them anyway
  mapped.map_min_record_bytes = 0;
  EXPECT_THROW_WITH(ck::load_torch_file(path, mapped), std::runtime_error, path, "CRC");
}
