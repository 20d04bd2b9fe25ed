// The torch.save reader/writer (checkpoint/torch_pickle.hpp): round trips of every kind of value,
// clear errors for truncated, corrupt and foreign files, and a seeded mutation fuzz loop.
// CPPFABRIC_FUZZ_ITERATIONS sets the fuzz budget (default 1500 per mode; try 200000 by hand).
#include <caffe2/serialize/inline_container.h>
#include <gtest/gtest.h>
#include <torch/torch.h>
#include <unistd.h>

#include <cppfabric/checkpoint/torch_pickle.hpp>
#include <cstdlib>
#include <fstream>
#include <random>
#include <sstream>
#include <string>

#include "pickle_builders.hpp"
#include "test_utils.hpp"

namespace {

using cppfabric::Value;
namespace ck = cppfabric::checkpoint;
using namespace cppfabric::testing::pickle;

Value sample_value() {
  auto base = torch::arange(12, torch::kFloat).reshape({3, 4});
  Value inner = Value::dict({{Value("w"), Value(torch::randn({2, 3}, torch::kDouble))},
                             {Value("b"), Value(torch::ones({3}, torch::kHalf))}},
                            /*ordered=*/true);
  return Value::dict({
      {Value("model"), inner},
      {Value("view_row"), Value(base[1])},
      {Value("view_col"), Value(base.select(1, 2))},
      {Value("base"), Value(base)},
      {Value("empty"), Value(torch::empty({0, 5}))},
      {Value("long"), Value(torch::tensor({1, -2, 3}, torch::kLong))},
      {Value("bool"), Value(torch::tensor({true, false}))},
      {Value("bf16"), Value(torch::ones({2}, torch::kBFloat16))},
      {Value("scalar"), Value(torch::scalar_tensor(3.5))},
      {Value("ints"), Value::list({Value(0), Value(255), Value(256), Value(65535), Value(65536),
                                   Value(-1), Value(int64_t{1} << 40), Value(-(int64_t{1} << 40)),
                                   Value(INT64_MAX), Value(INT64_MIN)})},
      {Value("floats"), Value::tuple({Value(0.1), Value(-2.5e300), Value(1e-310)})},
      {Value("flags"), Value::list({Value(true), Value(false), Value()})},
      {Value("text"), Value("héllo")},
      {Value("int_keys"), Value::dict({{Value(0), Value("a")}, {Value(7), Value("b")}})},
      {Value("empty_list"), Value::list()},
      {Value("empty_tuple"), Value::tuple()},
      {Value("empty_dict"), Value::dict()},
  });
}

void expect_same(const Value& a, const Value& b, const std::string& where) {
  ASSERT_EQ(a.kind(), b.kind()) << where;
  ASSERT_EQ(a.is_ordered_dict(), b.is_ordered_dict()) << where;
  switch (a.kind()) {
    case Value::Kind::Tensor:
      EXPECT_EQ(a.to_tensor().scalar_type(), b.to_tensor().scalar_type()) << where;
      EXPECT_TRUE(torch::equal(a.to_tensor(), b.to_tensor())) << where;
      break;
    case Value::Kind::List:
    case Value::Kind::Tuple:
      ASSERT_EQ(a.elements().size(), b.elements().size()) << where;
      for (std::size_t i = 0; i < a.elements().size(); ++i)
        expect_same(a.elements()[i], b.elements()[i], where + "[" + std::to_string(i) + "]");
      break;
    case Value::Kind::Dict:
      ASSERT_EQ(a.items().size(), b.items().size()) << where;
      for (std::size_t i = 0; i < a.items().size(); ++i) {
        EXPECT_TRUE(a.items()[i].first.scalar_equals(b.items()[i].first)) << where;
        expect_same(a.items()[i].second, b.items()[i].second,
                    where + "." + a.items()[i].first.repr());
      }
      break;
    default:
      EXPECT_TRUE(a.scalar_equals(b)) << where << ": " << a.repr() << " vs " << b.repr();
  }
}

TEST(CheckpointPickle, RoundTripsEveryKindOfValue) {
  const Value value = sample_value();
  const Value back = ck::from_torch_bytes(ck::to_torch_bytes(value));
  expect_same(value, back, "root");
}

TEST(CheckpointPickle, ViewsShareTheirStorageAgain) {
  const Value back = ck::from_torch_bytes(ck::to_torch_bytes(sample_value()));
  auto base = back.at("base").to_tensor();
  auto row = back.at("view_row").to_tensor();
  EXPECT_TRUE(row.is_alias_of(base));
  EXPECT_EQ(row.storage_offset(), 4);
  base.fill_(-1);
  EXPECT_EQ(row[0].item<float>(), -1.0f);
  EXPECT_EQ(back.at("view_col").to_tensor().stride(0), 4);
}

TEST(CheckpointPickle, FileRoundTripCreatesFoldersAndReplacesAtomically) {
  const std::string dir = ::testing::TempDir() + "cppfabric_pickle_" + std::to_string(::getpid());
  const std::string path = dir + "/a/b/c.pt";
  ck::save_torch_file(Value::dict({{Value("x"), Value(1)}}), path);
  ck::save_torch_file(Value::dict({{Value("x"), Value(2)}}), path);
  EXPECT_EQ(ck::load_torch_file(path).at("x").to_int(), 2);
  // No temporary file is left behind after a successful save.
  int status = 0;
  const std::string listing = cppfabric::testing::run_command("ls -A " + dir + "/a/b", &status);
  EXPECT_EQ(listing, "c.pt\n");
}

TEST(CheckpointPickle, MissingFileNamesThePath) {
  EXPECT_THROW_WITH(ck::load_torch_file("/nonexistent/x.ckpt"), std::runtime_error,
                    "Checkpoint file not found", "/nonexistent/x.ckpt");
}

TEST(CheckpointPickle, ForeignAndEmptyFilesGiveClearErrors) {
  EXPECT_THROW_WITH(ck::from_torch_bytes(""), std::runtime_error, "too small");
  EXPECT_THROW_WITH(ck::from_torch_bytes(std::string(1000, 'x')), std::runtime_error,
                    "end-of-central-directory", "not a valid torch.save file");
  EXPECT_THROW_WITH(ck::from_torch_bytes("{\"json\": true, \"padding\": \"....\"}"),
                    std::runtime_error, "not a valid torch.save file");
  // torch's legacy format starts with a bare pickle.
  EXPECT_THROW_WITH(ck::from_torch_bytes(std::string("\x80\x02", 2) + std::string(100, 'N')),
                    std::runtime_error, "legacy format");
}

TEST(CheckpointPickle, EveryTruncationIsAnErrorNotACrash) {
  const std::string bytes = ck::to_torch_bytes(sample_value());
  int errors = 0;
  for (std::size_t n = 0; n < bytes.size(); n += 7) {
    try {
      ck::from_torch_bytes(std::string_view(bytes).substr(0, n));
    } catch (const std::runtime_error&) {
      ++errors;
    }
  }
  EXPECT_EQ(errors, static_cast<int>((bytes.size() + 6) / 7));
}

TEST(CheckpointPickle, CorruptDataFailsTheCrcCheck) {
  std::string bytes = ck::to_torch_bytes(Value::dict({{Value("t"), Value(torch::ones({64}))}}));
  const auto pos = bytes.find(std::string("\x00\x00\x80\x3f", 4));  // a 1.0f in the storage
  ASSERT_NE(pos, std::string::npos);
  bytes[pos + 3] = 0x40;
  EXPECT_THROW_WITH(ck::from_torch_bytes(bytes), std::runtime_error, "CRC");
}

TEST(CheckpointPickle, RefusesGlobalsOutsideTheAllowList) {
  // What pickle.dumps of a call to os.system would contain: GLOBAL, args, REDUCE.
  const std::string evil = kProto + global("os", "system") + unicode("true") + byte(0x85) + "R.";
  EXPECT_THROW_WITH(ck::from_torch_bytes(wrap_pickle(evil)), std::runtime_error, "os.system",
                    "may not contain");
  const std::string builtin = kProto + global("builtins", "eval") + ").";
  EXPECT_THROW_WITH(ck::from_torch_bytes(wrap_pickle(builtin)), std::runtime_error,
                    "builtins.eval");
}

// _rebuild_tensor_v2(storage(FloatStorage, "0", numel), offset 0, (size,), (1,), False,
// OrderedDict())
std::string tensor_pickle(uint32_t storage_numel, uint32_t size) {
  return kProto + global("torch._utils", "_rebuild_tensor_v2") + "(" + "(" + unicode("storage") +
         global("torch", "FloatStorage") + unicode("0") + unicode("cpu") + "J" +
         u32le(storage_numel) + "t" + "Q" + "J" + u32le(0) + "J" + u32le(size) + byte(0x85) + "J" +
         u32le(1) + byte(0x85) + byte(0x89) + global("collections", "OrderedDict") + ")R" + "tR.";
}

TEST(CheckpointPickle, StorageClaimsAreCheckedAgainstTheRecord) {
  const std::vector<std::pair<std::string, std::string>> two_floats = {
      {"data/0", std::string(8, '\0')}};
  // A sane one first, so the builder itself is known to be right.
  const Value ok = ck::from_torch_bytes(wrap_pickle(tensor_pickle(2, 2), two_floats));
  EXPECT_EQ(ok.to_tensor().numel(), 2);
  // A view of 1000 floats over a storage of 2.
  EXPECT_THROW_WITH(ck::from_torch_bytes(wrap_pickle(tensor_pickle(2, 1000), two_floats)),
                    std::runtime_error, "outside its storage");
  // A storage that claims more elements than its record holds.
  EXPECT_THROW_WITH(ck::from_torch_bytes(wrap_pickle(tensor_pickle(1u << 28, 2), two_floats)),
                    std::runtime_error, "claims");
}

TEST(CheckpointPickle, DeepNestingIsBoundedNotAStackOverflow) {
  // 200k nested lists: ] ] ] ... a a a .
  std::string pickle = kProto;
  const int depth = 200000;
  pickle += std::string(depth, ']');
  pickle += std::string(depth - 1, 'a');
  pickle += '.';
  EXPECT_THROW_WITH(ck::from_torch_bytes(wrap_pickle(pickle)), std::runtime_error, "nest");
}

int fuzz_iterations() {
  if (const char* env = std::getenv("CPPFABRIC_FUZZ_ITERATIONS")) return std::atoi(env);
  return 1500;
}

// Mutates `seed` in one of several ways.
std::string mutate(const std::string& seed, std::mt19937_64& rng) {
  std::string s = seed;
  const int edits = 1 + static_cast<int>(rng() % 4);
  for (int e = 0; e < edits && !s.empty(); ++e) {
    const std::size_t at = rng() % s.size();
    switch (rng() % 6) {
      case 0:
        s[at] = static_cast<char>(rng());
        break;
      case 1:
        s[at] ^= static_cast<char>(1u << (rng() % 8));
        break;
      case 2:
        s.resize(at);
        break;
      case 3:
        s.insert(at, 1 + rng() % 8, static_cast<char>(rng()));
        break;
      case 4:
        s.erase(at, 1 + rng() % 16);
        break;
      case 5: {  // overwrite 4 bytes with an interesting integer
        static const uint32_t interesting[] = {0,      1,          0x7f,       0xff,
                                               0xffff, 0x7fffffff, 0xffffffff, 0x80000000};
        const uint32_t v = interesting[rng() % 8];
        for (int k = 0; k < 4 && at + k < s.size(); ++k)
          s[at + k] = static_cast<char>(v >> (8 * k));
        break;
      }
    }
  }
  return s;
}

// Runs the reader on `bytes`: it must return or throw std::runtime_error, nothing else.
void read_or_error(const std::string& bytes, int& ok, int& errors) {
  try {
    ck::from_torch_bytes(bytes);
    ++ok;
  } catch (const std::runtime_error&) {
    ++errors;
  }
}

TEST(CheckpointPickle, FuzzWholeFiles) {
  const std::string seed = ck::to_torch_bytes(sample_value());
  std::mt19937_64 rng(20240611);
  int ok = 0, errors = 0;
  for (int i = 0; i < fuzz_iterations(); ++i) read_or_error(mutate(seed, rng), ok, errors);
  EXPECT_EQ(ok + errors, fuzz_iterations());
  std::cout << "[fuzz files] accepted " << ok << ", rejected " << errors << "\n";
}

TEST(CheckpointPickle, FuzzThePickleInsideAValidZip) {
  // Mutating data.pkl inside a well-formed archive exercises the unpickler past the CRC check.
  const std::string file = ck::to_torch_bytes(sample_value());
  std::string pickle;
  std::vector<std::pair<std::string, std::string>> records;
  {
    std::istringstream stream(file);
    caffe2::serialize::PyTorchStreamReader reader(&stream);
    for (const auto& name : reader.getAllRecords()) {
      auto [data, size] = reader.getRecord(name);
      std::string bytes(static_cast<const char*>(data.get()), size);
      if (name == "data.pkl") {
        pickle = bytes;
      } else if (name.rfind("data/", 0) == 0) {
        records.emplace_back(name, bytes);
      }
    }
  }
  ASSERT_FALSE(pickle.empty());
  std::mt19937_64 rng(77);
  int ok = 0, errors = 0;
  for (int i = 0; i < fuzz_iterations(); ++i)
    read_or_error(wrap_pickle(mutate(pickle, rng), records), ok, errors);
  EXPECT_EQ(ok + errors, fuzz_iterations());
  std::cout << "[fuzz pickle] accepted " << ok << ", rejected " << errors << "\n";
}

}  // namespace
