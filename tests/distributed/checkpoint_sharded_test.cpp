// Sharded checkpoints across real processes (Gloo on loopback): 2 ranks save row pieces, 1 and 3
// ranks load them back (resharding); a failure on one rank fails every rank and keeps the previous
// checkpoint; a process SIGKILLed in the middle of save_sharded leaves the previous checkpoint
// loadable under the final name. `cppfabric consolidate` writes a file Python opens.
#include <dirent.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <torch/torch.h>
#include <unistd.h>

#include <chrono>
#include <cppfabric/checkpoint/sharded.hpp>
#include <cppfabric/checkpoint/torch_pickle.hpp>
#include <cppfabric/collectives/process_group.hpp>
#include <cppfabric/cppfabric.hpp>
#include <cstring>
#include <functional>
#include <string>
#include <thread>
#include <vector>

#include "distributed/multiprocess.hpp"
#include "test_utils.hpp"

namespace {

using cppfabric::Value;
using cppfabric::collectives::ProcessGroup;
using cppfabric::testing::run_ranks;
using namespace cppfabric::checkpoint;

// The global tensors, the same on every process (no RNG: computed).
at::Tensor weight() { return torch::arange(7 * 4, torch::kFloat).reshape({7, 4}) / 3.0; }
at::Tensor embed() { return torch::arange(5 * 6, torch::kLong).reshape({5, 6}) * 1000003; }
at::Tensor bias() { return (torch::arange(4, torch::kFloat) - 1.5).to(torch::kBFloat16); }

// Rows [begin, end) of `rows` split into `parts` as evenly as torch.chunk does.
std::pair<int64_t, int64_t> rows_of(int64_t rows, int part, int parts) {
  const int64_t per = (rows + parts - 1) / parts;
  const int64_t begin = std::min(rows, part * per);
  return {begin, std::min(rows, begin + per)};
}

std::vector<ShardedItem> pieces(int rank, int world, bool zeros) {
  std::vector<ShardedItem> items;
  const auto add = [&](std::vector<std::string> path, const at::Tensor& full, int dim) {
    const auto [b, e] = rows_of(full.size(dim), rank, world);
    at::Tensor piece = full.narrow(dim, b, e - b);
    if (zeros) piece = torch::zeros_like(piece);
    std::vector<int64_t> offsets(full.dim(), 0);
    offsets[dim] = b;
    items.push_back(
        {.path = std::move(path), .tensor = TensorShard{piece, offsets, full.sizes().vec()}});
  };
  add({"model", "fc.weight"}, weight(), 0);
  add({"model", "embed.weight"}, embed(), 1);  // column pieces
  if (rank == 0) {
    items.push_back({.path = {"model", "fc.bias"},
                     .tensor = TensorShard{zeros ? torch::zeros_like(bias()) : bias(), {0}, {4}}});
    items.push_back({.path = {"optimizer", "param_groups", "0", "lr"},
                     .value = Value(zeros ? 0.0 : 0.125),
                     .list_index = {false, false, true, false}});
  }
  return items;
}

Value expected_full(int epoch) {
  Value model = Value::dict();
  model.set("fc.weight", weight());
  model.set("embed.weight", embed());
  model.set("fc.bias", bias());
  Value group = Value::dict();
  group.set("lr", 0.125);
  Value optimizer = Value::dict();
  optimizer.set("param_groups", Value::list({group}));
  Value state = Value::dict();
  state.set("model", model);
  state.set("optimizer", optimizer);
  state.set("epoch", epoch);
  return state;
}

std::shared_ptr<ProcessGroup> join(int rank, int world, int port) {
  return ProcessGroup::create({.main_port = port, .rank = rank, .world_size = world});
}

// Runs `body` as `world` ranks; every rank must return 0 (its gtest checks passed).
void expect_ranks_pass(int world, const std::function<int(int rank, int port)>& body,
                       const std::string& what = "") {
  const auto codes = run_ranks(world, body);
  EXPECT_EQ(codes, std::vector<int>(codes.size(), 0)) << what;
}

// `ckpt` saved by 2 ranks: their pieces of the global tensors and meta.pt {"epoch": epoch}.
void save_with_two_ranks(const std::string& ckpt, int epoch) {
  const auto codes = run_ranks(2, [&](int rank, int port) {
    auto group = join(rank, 2, port);
    Value meta = Value::dict();
    meta.set("epoch", epoch);
    save_sharded(ckpt, pieces(rank, 2, false), &meta, group.get());
    // every rank returns after the commit
    EXPECT_TRUE(is_sharded_checkpoint(ckpt));
    return ::testing::Test::HasFailure() ? 1 : 0;
  });
  ASSERT_EQ(codes, std::vector<int>(codes.size(), 0));
}

class ShardedCheckpointDistributed : public ::testing::Test {
 protected:
  void SetUp() override { dir_ = cppfabric::testing::temp_dir("sharded_dist"); }
  void TearDown() override { std::system(("rm -rf " + dir_).c_str()); }
  std::string dir_;
};

TEST_F(ShardedCheckpointDistributed, TwoRanksSaveOneAndThreeLoad) {
  const std::string ckpt = dir_ + "/ckpt";
  ASSERT_NO_FATAL_FAILURE(save_with_two_ranks(ckpt, 5));

  for (int world : {1, 3}) {
    expect_ranks_pass(
        world,
        [&](int rank, int port) {
          std::vector<ShardedItem> items = pieces(rank, world, /*zeros=*/true);
          load_sharded(ckpt, items);
          const std::vector<ShardedItem> want = pieces(rank, world, false);
          for (std::size_t k = 0; k < items.size(); ++k) {
            if (items[k].tensor) {
              EXPECT_TRUE(torch::equal(items[k].tensor->local, want[k].tensor->local))
                  << "world " << world << " rank " << rank << " item " << k;
            } else {
              EXPECT_EQ(items[k].value->to_double(), 0.125);
            }
          }
          if (rank == 0) {
            EXPECT_TRUE(load_sharded_full(ckpt) == expected_full(5));
            const ShardedMetadata md = read_sharded_metadata(ckpt);
            EXPECT_EQ(md.tensors.size(), 3u);
          }
          (void)port;
          return ::testing::Test::HasFailure() ? 1 : 0;
        },
        "loading on " + std::to_string(world) + " processes");
  }
}

TEST_F(ShardedCheckpointDistributed, PythonLoadsOurPiecesIntoThreeRanksOfDTensors) {
  const auto python = cppfabric::testing::venv_python();
  if (!python) GTEST_SKIP() << "bootstrapped venv missing";
  const std::string ckpt = dir_ + "/ckpt";
  ASSERT_NO_FATAL_FAILURE(save_with_two_ranks(ckpt, 5));
  // Python's own resharding: 3 processes, each a dim-0 DTensor shard, torch.distributed.checkpoint
  // reads the overlapping pieces of what 2 cppfabric ranks wrote.
  int status = 0;
  const std::string script = std::string(CPPFABRIC_SOURCE_DIR) + "/tests/python/dcp_reference.py";
  const std::string out = cppfabric::testing::run_command(
      *python + " -W ignore " + script + " read3 " + ckpt + " " + dir_ + "/gathered.pt " +
          std::to_string(cppfabric::testing::find_free_port()) + " 2>&1",
      &status);
  ASSERT_EQ(status, 0) << out;
  expect_ranks_pass(1, [&](int, int) {
    Value expected = expected_full(5);
    expected.erase("epoch");  // meta.pt is Lightning's, not DCP's
    const Value gathered = load_torch_file(dir_ + "/gathered.pt");
    EXPECT_TRUE(gathered == expected) << gathered.repr();
    return ::testing::Test::HasFailure() ? 1 : 0;
  });
}

TEST_F(ShardedCheckpointDistributed, AFailureOnOneRankFailsEveryRankAndKeepsThePrevious) {
  const std::string ckpt = dir_ + "/ckpt";
  expect_ranks_pass(2, [&](int rank, int port) {
    auto group = join(rank, 2, port);
    Value meta = Value::dict();
    meta.set("epoch", 1);
    save_sharded(ckpt, pieces(rank, 2, false), &meta, group.get());
    // rank 1 passes a piece that does not fit: both ranks fail, rank 0 names rank 1
    auto items = pieces(rank, 2, false);
    if (rank == 1) items[0].tensor->offsets = {6, 0};
    meta.set("epoch", 2);
    if (rank == 1) {
      EXPECT_THROW_WITH(save_sharded(ckpt, items, &meta, group.get()), std::invalid_argument,
                        "does not fit");
    } else {
      EXPECT_THROW_WITH(save_sharded(ckpt, items, &meta, group.get()), std::runtime_error,
                        "failed on rank 1", "does not fit", ckpt);
    }
    // overlapping pieces (both ranks pass the whole bias): the same error on both ranks
    items = pieces(rank, 2, false);
    items.push_back({.path = {"model", "fc.bias"}, .tensor = TensorShard{bias(), {0}, {4}}});
    if (rank == 0) items.erase(items.begin() + 2);
    EXPECT_THROW_WITH(save_sharded(ckpt, items, &meta, group.get()), std::invalid_argument,
                      "overlap", "'model.fc.bias'", "rank 0", "rank 1");
    // different paths on different ranks: refused on every rank, nothing written
    EXPECT_THROW_WITH(save_sharded(ckpt + (rank == 1 ? "_other" : ""), pieces(rank, 2, false),
                                   &meta, group.get()),
                      std::invalid_argument, "different paths", "rank 1", "_other");
    // the first checkpoint is still there, whole; no temporary folder is left
    group->barrier();
    EXPECT_TRUE(load_sharded_full(ckpt) == expected_full(1));
    DIR* d = ::opendir(dir_.c_str());
    int entries = 0;
    while (dirent* e = ::readdir(d)) entries += e->d_name[0] != '.' || std::strlen(e->d_name) > 2;
    ::closedir(d);
    EXPECT_EQ(entries, 1);
    return ::testing::Test::HasFailure() ? 1 : 0;
  });
}

// A temporary sibling of `ckpt` exists (a save is under way).
bool save_in_progress(const std::string& dir, const std::string& base) {
  bool found = false;
  if (DIR* d = ::opendir(dir.c_str())) {
    const std::string prefix = "." + base + ".sharded-tmp-";
    while (dirent* e = ::readdir(d))
      if (std::string(e->d_name).rfind(prefix, 0) == 0) found = true;
    ::closedir(d);
  }
  return found;
}

TEST_F(ShardedCheckpointDistributed, SigkillDuringSaveLeavesThePreviousCheckpoint) {
  const std::string ckpt = dir_ + "/ckpt";
  expect_ranks_pass(1, [&](int, int) {
    Value meta = Value::dict();
    meta.set("epoch", 1);
    save_sharded(ckpt, pieces(0, 1, false), &meta, nullptr);
    return 0;
  });
  if (HasFailure()) return;

  int killed_mid_save = 0;
  for (int delay_ms : {0, 20, 80}) {
    const pid_t child = ::fork();
    ASSERT_GE(child, 0);
    if (child == 0) {
      // A large state (256 MiB in 8 pieces) so the save takes a while; saved again and again.
      std::vector<ShardedItem> items;
      for (int k = 0; k < 8; ++k)
        items.push_back({.path = {"big", std::to_string(k)},
                         .tensor = TensorShard{
                             torch::full({8, 1024, 1024}, float(k)), {0, 0, 0}, {8, 1024, 1024}}});
      try {
        for (;;) save_sharded(ckpt, items, nullptr, nullptr);
      } catch (const std::exception& e) {
        std::fprintf(stderr, "save failed: %s\n", e.what());
      }
      ::_exit(1);
    }
    const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(60);
    while (!save_in_progress(dir_, "ckpt") && std::chrono::steady_clock::now() < until)
      std::this_thread::sleep_for(std::chrono::microseconds(200));
    std::this_thread::sleep_for(std::chrono::milliseconds(delay_ms));
    const bool mid_save = save_in_progress(dir_, "ckpt");
    ::kill(child, SIGKILL);
    int status = 0;
    ::waitpid(child, &status, 0);
    ASSERT_TRUE(WIFSIGNALED(status));
    const auto codes = run_ranks(1, [&](int, int) {
      // Whatever moment the kill hit, the folder holds one complete checkpoint: the first one,
      // unless a later save had committed before the kill.
      const Value back = load_sharded_full(ckpt);
      const bool previous = back == expected_full(1);
      const bool later = back.find("big") != nullptr;
      EXPECT_TRUE(previous || later) << back.repr();
      if (later) {
        for (int k = 0; k < 8; ++k)
          EXPECT_TRUE(torch::equal(back.at("big").at(std::to_string(k)).to_tensor(),
                                   torch::full({8, 1024, 1024}, float(k))));
      }
      return ::testing::Test::HasFailure() ? 1 : (previous ? 0 : 3);
    });
    ASSERT_TRUE(codes[0] == 0 || codes[0] == 3) << codes[0];
    if (mid_save && codes[0] == 0) ++killed_mid_save;
  }
  EXPECT_GE(killed_mid_save, 1) << "no kill landed during the first save";
}

TEST_F(ShardedCheckpointDistributed, ConsolidateToolWritesAFilePythonOpens) {
#ifndef CPPFABRIC_CLI
  GTEST_SKIP() << "the cppfabric tool is not built (CLI11 missing)";
#else
  const std::string ckpt = dir_ + "/ckpt";
  ASSERT_NO_FATAL_FAILURE(save_with_two_ranks(ckpt, 7));
  const std::string tool = CPPFABRIC_CLI;
  int status = 0;
  std::string out = cppfabric::testing::run_command(
      tool + " consolidate " + ckpt + " -o " + dir_ + "/full.pt 2>&1", &status);
  ASSERT_EQ(status, 0) << out;
  // the output exists now: refused, as Python refuses; bad folders are named
  out = cppfabric::testing::run_command(
      tool + " consolidate " + ckpt + " -o " + dir_ + "/full.pt 2>&1", &status);
  EXPECT_NE(status, 0);
  EXPECT_NE(out.find("already exists"), std::string::npos) << out;
  out = cppfabric::testing::run_command(tool + " consolidate " + dir_ + "/nope 2>&1", &status);
  EXPECT_NE(out.find("does not exist: " + dir_ + "/nope"), std::string::npos) << out;
  out = cppfabric::testing::run_command(tool + " consolidate " + dir_ + " 2>&1", &status);
  EXPECT_NE(out.find("not a sharded checkpoint"), std::string::npos) << out;
  out = cppfabric::testing::run_command(tool + " consolidate 2>&1", &status);
  EXPECT_NE(out.find("Missing argument 'CHECKPOINT_FOLDER'"), std::string::npos) << out;
  out = cppfabric::testing::run_command(tool + " consolidate --help 2>&1", &status);
  EXPECT_EQ(status, 0);
  EXPECT_NE(out.find("--output-file"), std::string::npos) << out;
  // the default name: the folder + ".consolidated"
  out = cppfabric::testing::run_command(tool + " consolidate " + ckpt + "/ 2>&1", &status);
  EXPECT_EQ(status, 0) << out;

  expect_ranks_pass(1, [&](int, int) {
    const Value full = load_torch_file(dir_ + "/full.pt");
    EXPECT_TRUE(full == expected_full(7));
    EXPECT_TRUE(load_torch_file(dir_ + "/ckpt.consolidated") == full);
    if (const auto python = cppfabric::testing::venv_python()) {
      int st = 0;
      const std::string script =
          std::string(CPPFABRIC_SOURCE_DIR) + "/tests/python/dcp_reference.py";
      const std::string o =
          cppfabric::testing::run_command(*python + " -W ignore " + script + " torchload " + dir_ +
                                              "/full.pt " + dir_ + "/back.pt 2>&1",
                                          &st);
      EXPECT_EQ(st, 0) << o;
      EXPECT_TRUE(load_torch_file(dir_ + "/back.pt") == full);
    } else {
      std::printf("venv missing: the Python half of this test is skipped\n");
    }
    return ::testing::Test::HasFailure() ? 1 : 0;
  });
#endif
}

// ------------------------------------------------ a checkpoint written by Python FSDP (Lightning)

// The model of tests/python/fsdp_reference.py, with its parameter names.
struct PyNetImpl : torch::nn::Module {
  PyNetImpl()
      : fc1(register_module("fc1", torch::nn::Linear(8, 15))),
        mid(register_module("mid", torch::nn::Linear(15, 15))),
        fc2(register_module("fc2", torch::nn::Linear(15, 4))) {}
  torch::Tensor forward(const torch::Tensor& x) {
    return fc2(torch::relu(mid(torch::tanh(fc1(x)))));
  }
  torch::nn::Linear fc1, mid, fc2;
};
TORCH_MODULE(PyNet);

// fsdp_reference.py's batch(step): GLOBAL_ROWS computed rows; each rank its contiguous 1/world.
constexpr int64_t kPyRows = 12;
std::pair<at::Tensor, at::Tensor> py_batch(int step, int rank, int world) {
  const auto x =
      torch::sin(torch::arange(kPyRows * 8, torch::kFloat).reshape({kPyRows, 8}) * 0.37 + step);
  const auto y =
      torch::cos(torch::arange(kPyRows * 4, torch::kFloat).reshape({kPyRows, 4}) * 0.23 - step);
  const int64_t rows = kPyRows / world;
  return {x.narrow(0, rank * rows, rows), y.narrow(0, rank * rows, rows)};
}

double scalar_of(const Value& v) {
  return v.kind() == Value::Kind::Tensor ? v.to_tensor().item<double>() : v.to_double();
}

// Every tensor of `want` ({name: tensor}) is in `got` with the same shape, within `tol`.
void expect_tensors_near(const Value& got, const Value& want, double tol, const std::string& what) {
  EXPECT_EQ(got.items().size(), want.items().size()) << what;
  for (const auto& [name, w] : want.items()) {
    const Value* g = got.find(name);
    ASSERT_NE(g, nullptr) << what << ": no " << name.repr();
    const at::Tensor a = g->to_tensor().to(torch::kDouble);
    const at::Tensor b = w.to_tensor().to(torch::kDouble);
    ASSERT_EQ(a.sizes(), b.sizes()) << what << " " << name.repr();
    EXPECT_LE((a - b).abs().max().item<double>(), tol) << what << " " << name.repr();
  }
}

// Python FSDP1 (FullyShardedDataParallel, use_orig_params=True) under Lightning's
// FSDPStrategy.save_checkpoint(state_dict_type="sharded") on 2 Gloo processes; cppfabric's "fsdp"
// loads it on 1, 2 and 3 processes (resharding), holds the same parameters and AdamW state, and
// its next step gives Python's next step.
TEST_F(ShardedCheckpointDistributed, FsdpLoadsWhatPythonFsdpSavedAndTrainsOn) {
  const auto python = cppfabric::testing::venv_python();
  if (!python) GTEST_SKIP() << "bootstrapped venv missing";
  const std::string ckpt = dir_ + "/python_fsdp";
  const std::string expected_file = dir_ + "/expected.pt";
  int status = 0;
  const std::string script = std::string(CPPFABRIC_SOURCE_DIR) + "/tests/python/fsdp_reference.py";
  const std::string out = cppfabric::testing::run_command(
      *python + " -W ignore " + script + " save " + ckpt + " " + expected_file + " " +
          std::to_string(cppfabric::testing::find_free_port()) + " 2>&1",
      &status);
  ASSERT_EQ(status, 0) << out;
  ASSERT_TRUE(is_sharded_checkpoint(ckpt));

  for (int world : {1, 2, 3}) {
    const std::string full = dir_ + "/loaded_" + std::to_string(world) + ".pt";
    const std::string next = dir_ + "/next_" + std::to_string(world) + ".pt";
    expect_ranks_pass(
        world,
        [&](int rank, int port) {
          cppfabric::testing::ScopedEnv local("LOCAL_RANK", std::to_string(rank)),
              size("WORLD_SIZE", std::to_string(world)),
              master("MASTER_PORT", std::to_string(port));
          // "full": what this side then saves is one file to compare; loading reads either form.
          auto fsdp = std::make_shared<cppfabric::strategies::FSDPStrategy>(
              cppfabric::strategies::FSDPOptions{.state_dict_type = "full"});
          cppfabric::Fabric fabric({.accelerator = "cpu", .strategy = fsdp, .devices = world});
          fabric.launch();
          torch::manual_seed(7);  // not Python's initial model: the load must replace it
          PyNet model;
          auto optimizer = std::make_shared<torch::optim::AdamW>(
              model->parameters(), torch::optim::AdamWOptions(0.5).weight_decay(0.5));
          auto [net, opt] = fabric.setup(model, optimizer);
          const auto remainder = fabric.load(ckpt, {{"model", net}, {"optimizer", opt}});
          EXPECT_EQ(remainder.get<int64_t>("step"), 3);
          fabric.save(full, {{"model", net}, {"optimizer", opt}});
          const auto [x, y] = py_batch(3, rank, world);
          opt.zero_grad();
          fabric.backward(torch::mse_loss(net(x), y));
          opt.step();
          fabric.save(next, {{"model", net}});
          return ::testing::Test::HasFailure() ? 1 : 0;
        },
        "loading on " + std::to_string(world) + " processes");

    expect_ranks_pass(1, [&](int, int) {
      const std::string what = "world " + std::to_string(world);
      const Value expected = load_torch_file(expected_file);
      const Value loaded = load_torch_file(full);
      expect_tensors_near(loaded.at("model"), expected.at("model"), 1e-6, what + " model");
      const Value& want_state = expected.at("optimizer").at("state");
      const Value& got_state = loaded.at("optimizer").at("state");
      EXPECT_EQ(got_state.items().size(), want_state.items().size()) << what;
      for (const auto& [name, st] : want_state.items()) {
        const Value* g = got_state.find(name);
        if (g == nullptr) {
          ADD_FAILURE() << what << ": no optimizer state for " << name.repr();
          continue;
        }
        Value moments = Value::dict();
        moments.set("exp_avg", st.at("exp_avg"));
        moments.set("exp_avg_sq", st.at("exp_avg_sq"));
        Value got = Value::dict();
        got.set("exp_avg", g->at("exp_avg"));
        got.set("exp_avg_sq", g->at("exp_avg_sq"));
        expect_tensors_near(got, moments, 1e-6, what + " optimizer " + name.repr());
        EXPECT_EQ(scalar_of(g->at("step")), scalar_of(st.at("step"))) << what << name.repr();
      }
      const Value& group = loaded.at("optimizer").at("param_groups").elements().at(0);
      EXPECT_DOUBLE_EQ(group.at("lr").to_double(), expected.at("lr").to_double()) << what;
      EXPECT_DOUBLE_EQ(group.at("weight_decay").to_double(), 1e-2) << what;
      // One more step here equals Python's next step.
      expect_tensors_near(load_torch_file(next).at("model"), expected.at("next_model"), 1e-6,
                          what + " after one more step");
      return ::testing::Test::HasFailure() ? 1 : 0;
    });
  }
}

}  // namespace
