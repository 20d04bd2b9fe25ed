// Sharded checkpoints in PyTorch's distributed-checkpoint layout, on one process: round trips,
// resharding of pieces, the checks save_sharded makes, hostile `.metadata` and data files, and
// Python (torch.distributed.checkpoint, Lightning's consolidation) reading what cppfabric writes
// and the reverse (tests/python/dcp_reference.py). The multi-process cases are in
// tests/distributed/checkpoint_sharded_test.cpp.
#include <dirent.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <torch/torch.h>
#include <unistd.h>

#include <cppfabric/checkpoint/sharded.hpp>
#include <cppfabric/checkpoint/torch_pickle.hpp>
#include <cstdlib>
#include <fstream>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "checkpoint/dcp_metadata.hpp"
#include "distributed/multiprocess.hpp"
#include "test_utils.hpp"

namespace {

using cppfabric::Value;
using namespace cppfabric::checkpoint;

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}
void write_file(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << bytes;
}
std::vector<std::string> list_dir(const std::string& dir) {
  std::vector<std::string> names;
  if (DIR* d = ::opendir(dir.c_str())) {
    while (dirent* e = ::readdir(d)) {
      const std::string n = e->d_name;
      if (n != "." && n != "..") names.push_back(n);
    }
    ::closedir(d);
  }
  std::sort(names.begin(), names.end());
  return names;
}

// A state like a module + optimizer + plain values, as Python's DCP sees them.
Value sample_state() {
  torch::manual_seed(11);
  Value model = Value::dict();
  model.set("fc.weight", torch::randn({5, 3}));
  model.set("fc.bias", torch::randn({3}).to(torch::kBFloat16));
  model.set("embed.weight", torch::randint(-1000, 1000, {4, 6}, torch::kLong));
  model.set("scale", torch::tensor(2.5));
  Value group = Value::dict();
  group.set("lr", 0.01);
  group.set("betas", Value::tuple({0.9, 0.999}));
  group.set("params", Value::list({"fc.weight"}));
  Value inner = Value::dict();
  inner.set("step", torch::tensor(7.0));
  inner.set("exp_avg", torch::ones({5, 3}));
  Value opt_state = Value::dict();
  opt_state.set("fc.weight", inner);
  Value optimizer = Value::dict();
  optimizer.set("state", opt_state);
  optimizer.set("param_groups", Value::list({group}));
  Value state = Value::dict();
  state.set("model", model);
  state.set("optimizer", optimizer);
  state.set("step", 42);
  state.set("name", "cpp");
  return state;
}

class ShardedCheckpoint : public ::testing::Test {
 protected:
  void SetUp() override { dir_ = cppfabric::testing::temp_dir("sharded"); }
  void TearDown() override { std::system(("rm -rf " + dir_).c_str()); }
  std::string path(const std::string& name) const { return dir_ + "/" + name; }
  std::string dir_;
};

TEST_F(ShardedCheckpoint, FlattenMirrorsDcp) {
  const auto items = flatten_state(sample_state());
  std::vector<std::string> keys;
  for (const auto& item : items) keys.push_back(flattened_key(item));
  EXPECT_EQ(keys, (std::vector<std::string>{
                      "model.fc.weight", "model.fc.bias", "model.embed.weight", "model.scale",
                      "optimizer.state.fc.weight.step", "optimizer.state.fc.weight.exp_avg",
                      "optimizer.param_groups.0.lr", "optimizer.param_groups.0.betas",
                      "optimizer.param_groups.0.params", "step", "name"}));
  // param_groups' position is a list index; its values and the tuple are leaves.
  EXPECT_EQ(items[6].list_index, (std::vector<bool>{false, false, true, false}));
  EXPECT_TRUE(items[7].value.has_value());
  EXPECT_TRUE(items[0].list_index.empty());
  // int dict keys become strings, as str(key) in Python
  Value s = Value::dict();
  Value inner = Value::dict();
  inner.set(0, torch::ones({1}));
  s.set("state", inner);
  EXPECT_EQ(flattened_key(flatten_state(s)[0]), "state.0");
  EXPECT_THROW(flatten_state(Value(3)), std::invalid_argument);
}

TEST_F(ShardedCheckpoint, RoundTripOneProcess) {
  const Value state = sample_state();
  Value meta = Value::dict();
  meta.set("epoch", 3);
  const std::string ckpt = path("ckpt");
  save_sharded(ckpt, flatten_state(state), &meta, nullptr);
  EXPECT_TRUE(is_sharded_checkpoint(ckpt));
  EXPECT_FALSE(is_sharded_checkpoint(ckpt + "/meta.pt"));
  EXPECT_EQ(list_dir(ckpt), (std::vector<std::string>{".metadata", "__0_0.distcp", "meta.pt"}));
  EXPECT_EQ(list_dir(dir_), (std::vector<std::string>{"ckpt"}));  // no temporary left

  Value expected = state;
  expected.set("epoch", 3);
  EXPECT_TRUE(load_sharded_full(ckpt) == expected) << load_sharded_full(ckpt).repr();

  // a subtree: the param groups DCP flattened back into a list of dicts
  EXPECT_TRUE(load_sharded_full(ckpt, {"optimizer", "param_groups"}) ==
              state.at("optimizer").at("param_groups"));
  EXPECT_TRUE(load_sharded_full(ckpt, {"optimizer", "param_groups", "0", "lr"}) == Value(0.01));
  EXPECT_TRUE(load_sharded_full(ckpt, {"model"}) == state.at("model"));
  EXPECT_THROW_WITH(load_sharded_full(ckpt, {"optimizer", "nope"}), std::runtime_error,
                    "nothing under 'optimizer.nope'");
  const ShardedMetadata md = read_sharded_metadata(ckpt);
  EXPECT_TRUE(md.has_meta);
  ASSERT_EQ(md.tensors.size(), 6u);
  EXPECT_EQ(md.tensors[1].path, (std::vector<std::string>{"model", "fc.bias"}));
  EXPECT_EQ(md.tensors[1].dtype, c10::ScalarType::BFloat16);
  EXPECT_EQ(md.tensors[3].global_shape, std::vector<int64_t>{});
  EXPECT_EQ(md.values.size(), 5u);

  // load_sharded fills given tensors in place (converting dtype) and replaces values
  auto items = flatten_state(state);
  std::vector<at::Tensor> targets;
  for (auto& item : items) {
    if (item.tensor) {
      item.tensor->local = torch::zeros_like(item.tensor->local, torch::kDouble);
      targets.push_back(item.tensor->local);
    } else {
      item.value = Value();
    }
  }
  load_sharded(ckpt, items);
  EXPECT_TRUE(
      torch::equal(targets[0], state.at("model").at("fc.weight").to_tensor().to(torch::kDouble)));
  EXPECT_TRUE(torch::equal(targets[2],
                           state.at("model").at("embed.weight").to_tensor().to(torch::kDouble)));
  EXPECT_EQ(items.back().value->to_string(), "cpp");
}

TEST_F(ShardedCheckpoint, PiecesReshardOnLoad) {
  // One process may pass several pieces of a key: rows [0, 3) and [3, 5) of a 5x4 tensor.
  const auto full = torch::arange(20, torch::kFloat).reshape({5, 4});
  std::vector<ShardedItem> items;
  items.push_back({.path = {"w"}, .tensor = TensorShard{full.slice(0, 0, 3), {0, 0}, {5, 4}}});
  items.push_back({.path = {"w"}, .tensor = TensorShard{full.slice(0, 3, 5), {3, 0}, {5, 4}}});
  // column pieces of an int tensor, non-contiguous views
  const auto ints = torch::arange(12, torch::kLong).reshape({3, 4});
  items.push_back({.path = {"i"}, .tensor = TensorShard{ints.slice(1, 0, 1), {0, 0}, {3, 4}}});
  items.push_back({.path = {"i"}, .tensor = TensorShard{ints.slice(1, 1, 4), {0, 1}, {3, 4}}});
  save_sharded(path("c"), items, nullptr, nullptr);
  EXPECT_FALSE(read_sharded_metadata(path("c")).has_meta);

  // any region: a 2x3 window crossing the row split, and column 2 of the int tensor
  std::vector<ShardedItem> want;
  want.push_back({.path = {"w"}, .tensor = TensorShard{torch::zeros({2, 3}), {2, 1}, {5, 4}}});
  want.push_back(
      {.path = {"i"}, .tensor = TensorShard{torch::zeros({3, 1}, torch::kLong), {0, 2}, {3, 4}}});
  load_sharded(path("c"), want);
  EXPECT_TRUE(torch::equal(want[0].tensor->local, full.slice(0, 2, 4).slice(1, 1, 4)));
  EXPECT_TRUE(torch::equal(want[1].tensor->local, ints.slice(1, 2, 3)));
  const Value back = load_sharded_full(path("c"));
  EXPECT_TRUE(torch::equal(back.at("w").to_tensor(), full));
  EXPECT_TRUE(torch::equal(back.at("i").to_tensor(), ints));

  // a wrong global shape, a missing key, a region outside
  std::vector<ShardedItem> bad{
      {.path = {"w"}, .tensor = TensorShard{torch::zeros({1}), {0}, {20}}}};
  EXPECT_THROW_WITH(load_sharded(path("c"), bad), std::runtime_error, "'w'", "[5, 4]", "[20]",
                    path("c"));
  std::vector<ShardedItem> missing{{.path = {"nope"}, .value = Value()}};
  EXPECT_THROW_WITH(load_sharded(path("c"), missing), std::runtime_error, "no entry 'nope'");
  std::vector<ShardedItem> outside{
      {.path = {"w"}, .tensor = TensorShard{torch::zeros({2, 4}), {4, 0}, {5, 4}}}};
  EXPECT_THROW(load_sharded(path("c"), outside), std::invalid_argument);
}

TEST_F(ShardedCheckpoint, SaveChecksThePieces) {
  const auto t = torch::ones({4, 2});
  const auto save = [&](std::vector<ShardedItem> items) {
    save_sharded(path("bad"), items, nullptr, nullptr);
  };
  EXPECT_THROW_WITH(
      save({{.path = {"w"}, .tensor = TensorShard{t, {0, 0}, {4, 2}}, .value = Value(1)}}),
      std::invalid_argument, "exactly one");
  EXPECT_THROW_WITH(save({{.path = {"w"}, .tensor = TensorShard{t, {0, 0}, {3, 2}}}}),
                    std::invalid_argument, "does not fit", "[3, 2]");
  EXPECT_THROW_WITH(
      save({{.path = {"w"}, .tensor = TensorShard{t.slice(0, 0, 2), {0, 0}, {4, 2}}}}),
      std::invalid_argument, "cover 4 of the 8", "'w'");
  EXPECT_THROW_WITH(
      save({{.path = {"w"}, .tensor = TensorShard{t.slice(0, 0, 3), {0, 0}, {4, 2}}},
            {.path = {"w"}, .tensor = TensorShard{t.slice(0, 0, 2), {2, 0}, {4, 2}}}}),
      std::invalid_argument, "overlap");
  EXPECT_THROW_WITH(
      save({{.path = {"a.b"}, .value = Value(1)}, {.path = {"a", "b"}, .value = Value(2)}}),
      std::invalid_argument, "flatten to the key 'a.b'");
  EXPECT_THROW_WITH(save({{.path = {"v"}, .value = Value(1)}, {.path = {"v"}, .value = Value(2)}}),
                    std::invalid_argument, "'v'", "rank 0 and by rank 0");
  EXPECT_THROW(
      save({{.path = {"w"}, .tensor = TensorShard{torch::ones({2}, torch::kUInt16), {0}, {2}}}}),
      std::invalid_argument);
  Value not_dict(3);
  EXPECT_THROW_WITH(save_sharded(path("bad"), {}, &not_dict, nullptr), std::invalid_argument,
                    "must be a dict");
  // nothing was left behind by the failures
  EXPECT_TRUE(list_dir(dir_).empty()) << list_dir(dir_).front();
}

TEST_F(ShardedCheckpoint, ReplacesAPreviousCheckpointOnly) {
  const auto items_of = [](float v) {
    return std::vector<ShardedItem>{
        {.path = {"w"}, .tensor = TensorShard{torch::full({3}, v), {0}, {3}}}};
  };
  save_sharded(path("c"), items_of(1), nullptr, nullptr);
  save_sharded(path("c"), items_of(2), nullptr, nullptr);
  EXPECT_TRUE(
      torch::equal(load_sharded_full(path("c")).at("w").to_tensor(), torch::full({3}, 2.f)));
  EXPECT_EQ(list_dir(dir_), std::vector<std::string>{"c"});
  // a file in the way is replaced (Lightning unlinks it); a folder of other things is refused
  write_file(path("file"), "x");
  save_sharded(path("file"), items_of(3), nullptr, nullptr);
  EXPECT_TRUE(is_sharded_checkpoint(path("file")));
  ::mkdir(path("mine").c_str(), 0755);
  write_file(path("mine/notes.txt"), "keep me");
  EXPECT_THROW_WITH(save_sharded(path("mine"), items_of(4), nullptr, nullptr), std::runtime_error,
                    "not a sharded checkpoint", "refusing");
  EXPECT_EQ(read_file(path("mine/notes.txt")), "keep me");
  EXPECT_THROW_WITH(load_sharded_full(path("mine")), std::runtime_error,
                    "not a sharded checkpoint");
  EXPECT_THROW_WITH(load_sharded_full(path("absent")), std::runtime_error, "not found");
}

TEST_F(ShardedCheckpoint, FlatRangesBecomeRectangles) {
  // Every range of a 3x4x5 tensor: at most 5 pieces, in order, views of the flat buffer, and
  // exactly the range's elements.
  const std::vector<int64_t> shape{3, 4, 5};
  const auto full = torch::arange(60, torch::kFloat).reshape({3, 4, 5});
  for (int64_t b = 0; b <= 60; b += 1) {
    for (int64_t e = b; e <= 60; e += 7) {
      const auto flat = full.flatten().slice(0, b, e).clone();
      const auto pieces = shard_flat_range(flat, b, shape);
      EXPECT_LE(pieces.size(), 5u);
      int64_t total = 0;
      for (const auto& p : pieces) {
        at::Tensor region = full;
        for (int64_t d = 0; d < 3; ++d) region = region.narrow(d, p.offsets[d], p.local.size(d));
        ASSERT_TRUE(torch::equal(p.local, region)) << b << ".." << e;
        EXPECT_EQ(p.local.data_ptr<float>(), flat.data_ptr<float>() + total);
        total += p.local.numel();
      }
      EXPECT_EQ(total, e - b);
    }
  }
  EXPECT_THROW(shard_flat_range(torch::zeros({5}), 58, shape), std::invalid_argument);
  EXPECT_THROW(shard_flat_range(torch::zeros({2, 2}), 0, shape), std::invalid_argument);

  // Saved from one flat split ([0, 37) + [37, 60)), loaded into another ([0, 13) + [13, 60)):
  // the flat buffers are filled in place.
  std::vector<ShardedItem> items;
  for (auto [b, e] : {std::pair<int64_t, int64_t>{0, 37}, {37, 60}})
    for (auto& p : shard_flat_range(full.flatten().slice(0, b, e).clone(), b, shape))
      items.push_back({.path = {"w"}, .tensor = p});
  save_sharded(path("flat"), items, nullptr, nullptr);
  for (auto [b, e] : {std::pair<int64_t, int64_t>{0, 13}, {13, 60}}) {
    const auto flat = torch::zeros({e - b});
    std::vector<ShardedItem> want;
    for (auto& p : shard_flat_range(flat, b, shape)) want.push_back({.path = {"w"}, .tensor = p});
    load_sharded(path("flat"), want);
    EXPECT_TRUE(torch::equal(flat, full.flatten().slice(0, b, e)));
  }
}

// ------------------------------------------------------------------ hostile files

TEST_F(ShardedCheckpoint, TruncatedOrCorruptMetadataFailsCleanly) {
  save_sharded(path("c"), flatten_state(sample_state()), nullptr, nullptr);
  const std::string good = read_file(path("c/.metadata"));
  ASSERT_NO_THROW(load_sharded_full(path("c")));
  for (std::size_t n = 0; n < good.size(); n += 7) {
    write_file(path("c/.metadata"), good.substr(0, n));
    EXPECT_THROW_WITH(read_sharded_metadata(path("c")), std::runtime_error, path("c/.metadata"));
  }
  // flipped bytes: an error naming the file, or (rarely) a still-valid file; never a crash
  std::mt19937 rng(5);
  int errors = 0;
  for (int round = 0; round < 300; ++round) {
    std::string bad = good;
    for (int k = 0; k < 3; ++k) bad[rng() % bad.size()] = static_cast<char>(rng());
    write_file(path("c/.metadata"), bad);
    try {
      load_sharded_full(path("c"));
    } catch (const std::runtime_error& e) {
      ++errors;
      EXPECT_NE(std::string(e.what()).find(path("c")), std::string::npos) << e.what();
    }
  }
  EXPECT_GT(errors, 200);
}

TEST_F(ShardedCheckpoint, ForbiddenGlobalsAreRefused) {
  save_sharded(path("c"), flatten_state(sample_state()), nullptr, nullptr);
  const std::string good = read_file(path("c/.metadata"));
  // the classic: os.system("...") through REDUCE, in place of the whole Metadata
  write_file(path("c/.metadata"),
             std::string("\x80\x02") + "cos\nsystem\n(X\x04\0\0\0touch" + "tR.");
  EXPECT_THROW_WITH(read_sharded_metadata(path("c")), std::runtime_error, "'os.system'",
                    path("c/.metadata"));
  // a forbidden class where a metadata class belongs (STACK_GLOBAL form)
  std::string stack = good;
  const std::string cls = "torch.distributed.checkpoint.metadata\nBytesStorageMetadata\n";
  const auto at = stack.find(cls);
  ASSERT_NE(at, std::string::npos);
  stack.replace(at, cls.size(), "builtins\neval\n");
  write_file(path("c/.metadata"), stack);
  EXPECT_THROW_WITH(read_sharded_metadata(path("c")), std::runtime_error, "'builtins.eval'");
  // an allowed global called in a way it is not: torch.Size used as NEWOBJ
  write_file(path("c/.metadata"), std::string("\x80\x02") + "ctorch\nSize\n)\x81.");
  EXPECT_THROW_WITH(read_sharded_metadata(path("c")), std::runtime_error, "NEWOBJ");
}

TEST_F(ShardedCheckpoint, ItemsOutsideTheirFileFailCleanly) {
  const auto state = sample_state();
  save_sharded(path("c"), flatten_state(state), nullptr, nullptr);
  const std::string data = read_file(path("c/__0_0.distcp"));
  write_file(path("c/__0_0.distcp"), data.substr(0, data.size() / 2));
  EXPECT_THROW_WITH(load_sharded_full(path("c")), std::runtime_error, "beyond the end",
                    "__0_0.distcp");
  // a chunk whose storage points at another range of a good file: a clean error too
  write_file(path("c/__0_0.distcp"), data);
  namespace d = cppfabric::checkpoint::detail;
  d::DcpMetadata md = d::read_dcp_metadata(read_file(path("c/.metadata")), "x");
  md.entries[0].chunks[0].storage.offset += 1;
  write_file(path("c/.metadata"), d::write_dcp_metadata(md));
  EXPECT_THROW_WITH(load_sharded_full(path("c")), std::runtime_error, "__0_0.distcp");
  // a file name that climbs out of the folder
  md.entries[0].chunks[0].storage.offset -= 1;
  md.entries[0].chunks[0].storage.relative_path = "../escape";
  write_file(path("c/.metadata"), d::write_dcp_metadata(md));
  EXPECT_THROW_WITH(read_sharded_metadata(path("c")), std::runtime_error, "'../escape'");
  // a chunk outside its tensor, two overlapping chunks
  md.entries[0].chunks[0].storage.relative_path = "__0_0.distcp";
  md.entries[0].chunks[0].offsets = {1, 0};
  write_file(path("c/.metadata"), d::write_dcp_metadata(md));
  EXPECT_THROW_WITH(read_sharded_metadata(path("c")), std::runtime_error, "lies outside",
                    "'model.fc.weight'");
  md.entries[0].chunks[0].offsets = {0, 0};
  md.entries[0].chunks.push_back(md.entries[0].chunks[0]);
  md.entries[0].chunks.back().sizes = {2, 3};
  write_file(path("c/.metadata"), d::write_dcp_metadata(md));
  EXPECT_THROW_WITH(read_sharded_metadata(path("c")), std::runtime_error, "overlap");
}

// ------------------------------------------------------------------ Python

class ShardedCheckpointPython : public ShardedCheckpoint {
 protected:
  void SetUp() override {
    if (!cppfabric::testing::venv_python()) GTEST_SKIP() << "bootstrapped venv missing";
    ShardedCheckpoint::SetUp();
  }
  std::string python(const std::string& args) {
    int status = 0;
    const std::string script = std::string(CPPFABRIC_SOURCE_DIR) + "/tests/python/dcp_reference.py";
    const std::string out = cppfabric::testing::run_command(
        *cppfabric::testing::venv_python() + " -W ignore " + script + " " + args + " 2>&1",
        &status);
    EXPECT_EQ(status, 0) << out;
    EXPECT_NE(out.find("ok 1"), std::string::npos) << out;
    return out;
  }
};

TEST_F(ShardedCheckpointPython, PythonReadsOurs) {
  const Value state = sample_state();
  // a sharded layout: fc.weight and exp_avg in row pieces, the rest whole
  std::vector<ShardedItem> items;
  for (auto& item : flatten_state(state)) {
    const std::string key = flattened_key(item);
    if (key == "model.fc.weight" || key == "optimizer.state.fc.weight.exp_avg") {
      const auto full = item.tensor->local;
      items.push_back(
          {.path = item.path, .tensor = TensorShard{full.slice(0, 0, 2), {0, 0}, {5, 3}}});
      items.push_back(
          {.path = item.path, .tensor = TensorShard{full.slice(0, 2, 5), {2, 0}, {5, 3}}});
    } else {
      items.push_back(item);
    }
  }
  Value meta = Value::dict();
  meta.set("epoch", 3);
  meta.set("note", "from cpp");
  save_sharded(path("c"), items, &meta, nullptr);
  ::mkdir(path("out").c_str(), 0755);
  python("read " + path("c") + " " + path("out"));

  Value without_meta = state;
  Value with_meta = state;
  with_meta.set("epoch", 3);
  with_meta.set("note", "from cpp");
  const Value dcp = load_torch_file(path("out/dcp.pt"));
  EXPECT_TRUE(dcp == without_meta) << dcp.repr();
  const Value lightning = load_torch_file(path("out/lightning.pt"));
  EXPECT_TRUE(lightning == with_meta) << lightning.repr();
  EXPECT_TRUE(lightning == load_sharded_full(path("c")));
  EXPECT_TRUE(load_torch_file(path("out/cli.pt")) == with_meta);
  const Value loaded = load_torch_file(path("out/load.pt"));
  EXPECT_TRUE(loaded == without_meta) << loaded.repr();
}

TEST_F(ShardedCheckpointPython, WeReadPythons) {
  python("write " + path("p") + " " + path("expected.pt"));
  const Value expected = load_torch_file(path("expected.pt"));
  const Value ours = load_sharded_full(path("p"));
  EXPECT_TRUE(ours == expected) << ours.repr() << "\nvs\n" << expected.repr();
  const ShardedMetadata md = read_sharded_metadata(path("p"));
  EXPECT_FALSE(md.has_meta);
  EXPECT_EQ(md.tensors.size(), 6u);

  // Python's 2-process DTensor save (FSDP2's layout): uneven row pieces, read whole and resharded
  python("write2 " + path("p2") + " " + path("expected2.pt") + " " +
         std::to_string(cppfabric::testing::find_free_port()));
  const Value expected2 = load_torch_file(path("expected2.pt"));
  EXPECT_TRUE(load_sharded_full(path("p2")) == expected2) << load_sharded_full(path("p2")).repr();
  const auto w = expected2.at("model").at("fc.weight").to_tensor();
  for (int64_t start = 0; start < 5; ++start) {
    std::vector<ShardedItem> piece{
        {.path = {"model", "fc.weight"},
         .tensor = TensorShard{torch::zeros({1, 2}), {start, 1}, {5, 3}}}};
    load_sharded(path("p2"), piece);
    EXPECT_TRUE(torch::equal(piece[0].tensor->local, w.slice(0, start, start + 1).slice(1, 1, 3)));
  }
}

TEST_F(ShardedCheckpointPython, ConsolidatedFileOpensWithWeightsOnly) {
  const Value state = sample_state();
  Value meta = Value::dict();
  meta.set("epoch", 4);
  save_sharded(path("c"), flatten_state(state), &meta, nullptr);
  consolidate(path("c"), path("full.pt"));
  python("torchload " + path("full.pt") + " " + path("back.pt"));
  EXPECT_TRUE(load_torch_file(path("back.pt")) == load_sharded_full(path("c")));
}

}  // namespace
