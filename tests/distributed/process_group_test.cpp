// ProcessGroup over Gloo with real processes on loopback (see multiprocess.hpp).
#include "cppfabric/collectives/process_group.hpp"

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "cppfabric/accelerators/cuda.hpp"
#include "cppfabric/utilities/errors.hpp"
#include "multiprocess.hpp"

namespace {

using cppfabric::collectives::CollectiveWork;
using cppfabric::collectives::ProcessGroup;
using cppfabric::collectives::ProcessGroupOptions;
using cppfabric::collectives::ReduceKind;
using cppfabric::testing::run_ranks;
using namespace std::chrono_literals;

ProcessGroupOptions loopback(int rank, int world_size, int port,
                             std::chrono::milliseconds timeout = 30s) {
  ProcessGroupOptions o;
  o.backend = "gloo";
  o.main_address = "127.0.0.1";
  o.main_port = port;
  o.rank = rank;
  o.world_size = world_size;
  o.timeout = timeout;
  return o;
}

// Whether `text` contains `part`; prints both when it does not.
::testing::AssertionResult Contains(const std::string& text, const std::string& part) {
  if (text.find(part) != std::string::npos) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << "\"" << text << "\" does not contain \"" << part << "\"";
}

// A child's exit code: 0 when every EXPECT_* in it passed.
int child_status() { return ::testing::Test::HasFailure() ? 1 : 0; }

template <typename Fn>
std::string invalid_argument_message(Fn&& fn) {
  try {
    fn();
  } catch (const std::invalid_argument& e) {
    return e.what();
  } catch (const std::exception& e) {
    return std::string("wrong exception type: ") + e.what();
  }
  return "no exception";
}

// ------------------------------------------------------------ no processes needed

TEST(ProcessGroupOptionsTest, DefaultsFollowFabric) {
  ProcessGroupOptions o;
  EXPECT_EQ(o.backend, "gloo");
  EXPECT_EQ(o.main_address, "127.0.0.1");
  EXPECT_EQ(o.main_port, 29500);
  EXPECT_EQ(o.rank, 0);
  EXPECT_EQ(o.world_size, 1);
  EXPECT_EQ(o.timeout, std::chrono::minutes(30));
}

TEST(ProcessGroupValidationTest, RejectsUnknownBackend) {
  ProcessGroupOptions o;
  o.backend = "mpi";
  const std::string msg = invalid_argument_message([&] { ProcessGroup::create(o); });
  EXPECT_TRUE(Contains(msg, "'mpi'"));
  EXPECT_TRUE(Contains(msg, "'gloo'"));
  EXPECT_TRUE(Contains(msg, "'nccl'"));
}

TEST(ProcessGroupValidationTest, NcclNeedsABuildWithNcclAndAGpu) {
  ProcessGroupOptions o;
  o.backend = "nccl";
  o.main_port = cppfabric::testing::find_free_port();
  if (!ProcessGroup::is_backend_available("nccl")) {
    EXPECT_THROW(ProcessGroup::create(o), cppfabric::NotYetAvailableError);
  } else if (cppfabric::accelerators::CUDAAccelerator::device_count() == 0) {
    try {
      ProcessGroup::create(o);
      ADD_FAILURE() << "an nccl group was created without a GPU";
    } catch (const std::runtime_error& e) {
      EXPECT_TRUE(Contains(e.what(), "'nccl' needs a CUDA device")) << e.what();
    }
  } else {
    // World size 1 on the GPU: a real NCCL communicator.
    auto group = ProcessGroup::create(o);
    auto t = at::ones({4}, at::TensorOptions().device(c10::Device(c10::kCUDA, 0)));
    group->all_reduce(t, cppfabric::collectives::ReduceKind::Sum);
    EXPECT_EQ(t.sum().item<float>(), 4.0f);
    group->barrier();
  }
  EXPECT_TRUE(ProcessGroup::is_backend_available("gloo"));
  EXPECT_FALSE(ProcessGroup::is_backend_available("mpi"));
}

TEST(ProcessGroupValidationTest, RejectsRankOutOfRange) {
  ProcessGroupOptions o;
  o.world_size = 2;
  o.rank = 2;
  std::string msg = invalid_argument_message([&] { ProcessGroup::create(o); });
  EXPECT_TRUE(Contains(msg, "rank"));
  EXPECT_TRUE(Contains(msg, "[0, 2)"));
  EXPECT_TRUE(Contains(msg, "got 2"));
  o.rank = -1;
  msg = invalid_argument_message([&] { ProcessGroup::create(o); });
  EXPECT_TRUE(Contains(msg, "got -1"));
}

TEST(ProcessGroupValidationTest, RejectsBadWorldSizePortAndTimeout) {
  ProcessGroupOptions o;
  o.world_size = 0;
  EXPECT_TRUE(Contains(invalid_argument_message([&] { ProcessGroup::create(o); }),
                       "world_size must be >= 1, got 0"));
  o = {};
  o.main_port = 0;
  EXPECT_TRUE(Contains(invalid_argument_message([&] { ProcessGroup::create(o); }),
                       "main_port must be in 1..65535, got 0"));
  o.main_port = 65536;
  EXPECT_TRUE(Contains(invalid_argument_message([&] { ProcessGroup::create(o); }), "65536"));
  o = {};
  o.timeout = 0ms;
  EXPECT_TRUE(Contains(invalid_argument_message([&] { ProcessGroup::create(o); }), "timeout"));
  o = {};
  o.main_address = "";
  EXPECT_TRUE(Contains(invalid_argument_message([&] { ProcessGroup::create(o); }), "main_address"));
}

TEST(ReduceKindTest, ParsesFabricNames) {
  using cppfabric::collectives::reduce_kind_from_string;
  EXPECT_EQ(reduce_kind_from_string("sum"), ReduceKind::Sum);
  EXPECT_EQ(reduce_kind_from_string("mean"), ReduceKind::Avg);
  EXPECT_EQ(reduce_kind_from_string("AVG"), ReduceKind::Avg);
  EXPECT_EQ(reduce_kind_from_string("max"), ReduceKind::Max);
  EXPECT_EQ(reduce_kind_from_string("min"), ReduceKind::Min);
  EXPECT_EQ(reduce_kind_from_string("product"), ReduceKind::Product);
  EXPECT_EQ(cppfabric::collectives::to_string(ReduceKind::Avg), "avg");
  EXPECT_TRUE(
      Contains(invalid_argument_message([] { reduce_kind_from_string("median"); }), "'median'"));
}

// ------------------------------------------------------------ real processes

TEST(ProcessGroupTest, TwoRanksRunEveryCollective) {
  const auto codes = run_ranks(2, [](int rank, int port) {
    auto pg = ProcessGroup::create(loopback(rank, 2, port));
    EXPECT_EQ(pg->rank(), rank);
    EXPECT_EQ(pg->world_size(), 2);
    EXPECT_EQ(pg->backend(), "gloo");

    auto t = torch::full({3}, rank + 1.0);
    pg->all_reduce(t, ReduceKind::Sum);
    EXPECT_TRUE(torch::equal(t, torch::full({3}, 3.0))) << t;

    t = torch::full({3}, rank + 1.0);
    pg->all_reduce(t, ReduceKind::Avg);
    EXPECT_TRUE(torch::equal(t, torch::full({3}, 1.5))) << t;

    // Integers: the average truncates toward zero, as Fabric's copy_(t / world_size) does.
    auto i = torch::full({2}, rank + 1, torch::kInt64);
    pg->all_reduce(i, ReduceKind::Avg);
    EXPECT_EQ(i.scalar_type(), torch::kInt64);
    EXPECT_TRUE(torch::equal(i, torch::full({2}, 1, torch::kInt64))) << i;
    auto neg = torch::full({2}, -(rank + 1), torch::kInt32);
    pg->all_reduce(neg, ReduceKind::Avg);
    EXPECT_TRUE(torch::equal(neg, torch::full({2}, -1, torch::kInt32))) << neg;

    t = torch::full({3}, rank + 1.0);
    pg->all_reduce(t, ReduceKind::Max);
    EXPECT_TRUE(torch::equal(t, torch::full({3}, 2.0))) << t;
    t = torch::full({3}, rank + 1.0);
    pg->all_reduce(t, ReduceKind::Min);
    EXPECT_TRUE(torch::equal(t, torch::full({3}, 1.0))) << t;
    t = torch::full({3}, rank + 2.0);
    pg->all_reduce(t, ReduceKind::Product);
    EXPECT_TRUE(torch::equal(t, torch::full({3}, 6.0))) << t;

    // Non-contiguous views are reduced through a contiguous copy and written back.
    auto base = torch::arange(6, torch::kFloat32).reshape({2, 3}) * (rank + 1);
    auto view = base.t();
    EXPECT_FALSE(view.is_contiguous()) << "test setup";
    pg->all_reduce(view, ReduceKind::Sum);
    EXPECT_TRUE(torch::equal(base, torch::arange(6, torch::kFloat32).reshape({2, 3}) * 3)) << base;

    // Async: nothing is final before wait(); wait() applies the Avg division.
    t = torch::full({4}, rank + 1.0);
    CollectiveWork work = pg->all_reduce_async(t, ReduceKind::Avg);
    work.wait();
    EXPECT_TRUE(work.is_completed());
    EXPECT_TRUE(torch::equal(t, torch::full({4}, 1.5))) << t;
    work.wait();  // a second wait is a no-op
    EXPECT_TRUE(torch::equal(t, torch::full({4}, 1.5))) << t;

    auto b = torch::full({2, 2}, rank * 10, torch::kInt64);
    pg->broadcast(b, /*src=*/1);
    EXPECT_TRUE(torch::equal(b, torch::full({2, 2}, 10, torch::kInt64))) << b;
    EXPECT_THROW(pg->broadcast(b, 2), std::invalid_argument);

    const auto parts = pg->all_gather(torch::tensor({static_cast<int64_t>(rank)}));
    EXPECT_EQ(parts.size(), 2u);
    EXPECT_TRUE(torch::equal(torch::stack(parts), torch::tensor({{0}, {1}}, torch::kInt64)));
    const auto rows = pg->all_gather(torch::full({2, 3}, rank + 0.5).t());
    EXPECT_EQ(rows.size(), 2u);
    if (rows.size() == 2) {
      EXPECT_TRUE(torch::equal(rows[1], torch::full({3, 2}, 1.5)));
    }

    pg->barrier();
    return child_status();
  });
  EXPECT_EQ(codes, std::vector<int>(codes.size(), 0));
}

TEST(ProcessGroupTest, ThreeRanks) {
  const auto codes = run_ranks(3, [](int rank, int port) {
    auto pg = ProcessGroup::create(loopback(rank, 3, port));
    auto t = torch::full({5}, rank + 1.0);
    pg->all_reduce(t, ReduceKind::Avg);
    EXPECT_TRUE(torch::equal(t, torch::full({5}, 2.0))) << t;
    auto b = torch::full({1}, rank);
    pg->broadcast(b, /*src=*/2);
    EXPECT_EQ(b.item<float>(), 2.0f);
    const auto parts = pg->all_gather(torch::full({1}, rank, torch::kInt32));
    EXPECT_TRUE(torch::equal(torch::cat(parts), torch::tensor({0, 1, 2}, torch::kInt32)));
    pg->barrier();
    return child_status();
  });
  EXPECT_EQ(codes, std::vector<int>(codes.size(), 0));
}

// The flat-tensor collectives of the sharding strategies: rank r's chunk of the sum, and every
// rank's shard concatenated in rank order; async forms; shape checks.
TEST(ProcessGroupTest, ReduceScatterAndAllGatherIntoFlatTensors) {
  const auto codes = run_ranks(3, [](int rank, int port) {
    auto pg = ProcessGroup::create(loopback(rank, 3, port));
    // full[i] = i + 10 * rank; the sum over ranks is 3 i + 30.
    auto full = torch::arange(6, torch::kFloat32) + 10.0 * rank;
    auto shard = torch::empty({2});
    pg->reduce_scatter(shard, full);
    const auto expected = torch::tensor({6.0f * rank + 30, 6.0f * rank + 33});
    EXPECT_TRUE(torch::equal(shard, expected)) << shard;
    auto avg = torch::empty({2});
    auto work = pg->reduce_scatter_async(avg, full, ReduceKind::Avg);
    work.wait();
    EXPECT_TRUE(torch::allclose(avg, expected / 3)) << avg;
    auto gathered = torch::empty({6});
    pg->all_gather_into(gathered, torch::full({2}, static_cast<float>(rank)));
    EXPECT_TRUE(torch::equal(gathered, torch::tensor({0.f, 0.f, 1.f, 1.f, 2.f, 2.f}))) << gathered;
    auto gathered_async = torch::empty({6}, torch::kInt64);
    auto g = pg->all_gather_into_async(gathered_async, torch::full({2}, rank, torch::kInt64));
    g.wait();
    EXPECT_EQ(gathered_async.sum().item<int64_t>(), 6);
    auto wrong = torch::empty({5});
    try {
      pg->reduce_scatter(shard, wrong);
      ADD_FAILURE() << "a full tensor of 5 elements for shards of 2 on 3 ranks was accepted";
    } catch (const std::invalid_argument& e) {
      EXPECT_NE(std::string(e.what()).find("world_size (3)"), std::string::npos) << e.what();
    }
    return child_status();
  });
  EXPECT_EQ(codes, std::vector<int>(codes.size(), 0));
}

TEST(ProcessGroupTest, SingleRankCollectivesAreIdentities) {
  const auto codes = run_ranks(1, [](int rank, int port) {
    auto pg = ProcessGroup::create(loopback(rank, 1, port));
    auto i = torch::tensor({3, -3}, torch::kInt64);
    pg->all_reduce(i, ReduceKind::Avg);
    EXPECT_TRUE(torch::equal(i, torch::tensor({3, -3}, torch::kInt64))) << i;
    auto t = torch::full({2}, 4.0);
    pg->broadcast(t, 0);
    EXPECT_TRUE(torch::equal(t, torch::full({2}, 4.0)));
    EXPECT_EQ(pg->all_gather(t).size(), 1u);
    pg->barrier();
    return child_status();
  });
  EXPECT_EQ(codes, std::vector<int>(codes.size(), 0));
}

// A peer that leaves: the next collective fails fast with an error naming the operation.
TEST(ProcessGroupTest, CollectiveFailsWhenPeerExits) {
  const auto codes = run_ranks(2, [](int rank, int port) {
    auto pg = ProcessGroup::create(loopback(rank, 2, port, 2s));
    pg->barrier();
    if (rank == 1) return 0;  // leaves without joining the all_reduce
    const auto start = std::chrono::steady_clock::now();
    auto t = torch::ones({4});
    try {
      pg->all_reduce(t, ReduceKind::Sum);
      ADD_FAILURE() << "all_reduce succeeded without its peer";
    } catch (const std::runtime_error& e) {
      std::fprintf(stderr, "[rank 0] expected error: %s\n", e.what());
      EXPECT_TRUE(Contains(e.what(), "all_reduce"));
      EXPECT_TRUE(Contains(e.what(), "rank 0 of 2"));
    }
    EXPECT_LT(std::chrono::steady_clock::now() - start, 10s);
    return child_status();
  });
  EXPECT_EQ(codes, std::vector<int>(codes.size(), 0));
}

// A peer that is alive but never joins: the collective times out after the group timeout.
TEST(ProcessGroupTest, CollectiveTimesOutWhenPeerStalls) {
  const auto codes = run_ranks(2, [](int rank, int port) {
    auto pg = ProcessGroup::create(loopback(rank, 2, port, 2s));
    pg->barrier();
    if (rank == 1) {
      std::this_thread::sleep_for(4s);  // alive, but never calls all_reduce
      return 0;
    }
    const auto start = std::chrono::steady_clock::now();
    auto t = torch::ones({4});
    try {
      pg->all_reduce(t, ReduceKind::Sum);
      ADD_FAILURE() << "all_reduce succeeded without its peer";
    } catch (const std::runtime_error& e) {
      std::fprintf(stderr, "[rank 0] expected error: %s\n", e.what());
      EXPECT_TRUE(Contains(e.what(), "all_reduce"));
      EXPECT_TRUE(Contains(e.what(), "rank 0 of 2"));
      EXPECT_TRUE(Contains(e.what(), "timeout 2 s"));
    }
    const auto elapsed = std::chrono::steady_clock::now() - start;
    EXPECT_GE(elapsed, 1500ms);
    EXPECT_LT(elapsed, 3500ms);
    return child_status();
  });
  EXPECT_EQ(codes, std::vector<int>(codes.size(), 0));
}

// barrier(timeout) waits longer than the group timeout when asked, and no longer than asked.
TEST(ProcessGroupTest, BarrierWithItsOwnTimeout) {
  const auto codes = run_ranks(2, [](int rank, int port) {
    auto pg = ProcessGroup::create(loopback(rank, 2, port, 1s));
    if (rank == 0) std::this_thread::sleep_for(2500ms);  // longer than the group timeout
    pg->barrier(std::chrono::milliseconds(10s));
    EXPECT_THROW(pg->barrier(0ms), std::invalid_argument);
    if (rank == 1) {
      std::this_thread::sleep_for(3s);  // alive, but skips the next barrier
      return 0;
    }
    const auto start = std::chrono::steady_clock::now();
    try {
      pg->barrier(std::chrono::milliseconds(1500ms));
      ADD_FAILURE() << "barrier passed without its peer";
    } catch (const std::runtime_error& e) {
      std::fprintf(stderr, "[rank 0] expected error: %s\n", e.what());
      EXPECT_TRUE(Contains(e.what(), "barrier"));
      EXPECT_TRUE(Contains(e.what(), "1500 ms"));
    }
    const auto elapsed = std::chrono::steady_clock::now() - start;
    EXPECT_GE(elapsed, 1200ms);
    EXPECT_LT(elapsed, 2900ms);
    return child_status();
  });
  EXPECT_EQ(codes, std::vector<int>(codes.size(), 0));
}

// Rank 0 alone in a group of two: create() gives up after the timeout instead of hanging.
TEST(ProcessGroupTest, CreateFailsWhenPeersNeverJoin) {
  const auto codes = run_ranks(1, [](int, int port) {
    const auto start = std::chrono::steady_clock::now();
    try {
      ProcessGroup::create(loopback(0, 2, port, 2s));
      ADD_FAILURE() << "create() succeeded without rank 1";
    } catch (const std::runtime_error& e) {
      std::fprintf(stderr, "[rank 0] expected error: %s\n", e.what());
      EXPECT_TRUE(Contains(e.what(), "rank 0 of 2"));
    }
    EXPECT_LT(std::chrono::steady_clock::now() - start, 10s);
    return child_status();
  });
  EXPECT_EQ(codes, std::vector<int>(codes.size(), 0));
}

}  // namespace

// ------------------------------------------------------------ sub-groups

// 4 ranks split two ways (as HYBRID_SHARD does: {0,1},{2,3} and {0,2},{1,3}), plus a group named
// in descending order: each sub-group's collectives see only its members, ranks are numbered in
// ascending order, non-members get nullptr, and the parent's collectives still work between them.
TEST(ProcessGroupSubgroupTest, FourRanksSplitTwoWays) {
  const auto codes = run_ranks(4, [](int rank, int port) {
    auto pg = ProcessGroup::create(loopback(rank, 4, port));
    auto shard = pg->new_subgroups({{0, 1}, {2, 3}});
    auto replicate = pg->new_subgroups({{0, 2}, {1, 3}});
    auto odd = pg->new_group({3, 1});
    EXPECT_EQ(pg->global_ranks(), (std::vector<int>{0, 1, 2, 3}));
    if (!shard || !replicate) {
      ADD_FAILURE() << "rank " << rank << " got no sub-group";
      return 1;
    }
    EXPECT_EQ(shard->world_size(), 2);
    EXPECT_EQ(shard->rank(), rank % 2);
    EXPECT_EQ(shard->backend(), "gloo");
    EXPECT_EQ(shard->timeout(), pg->timeout());
    EXPECT_EQ(shard->global_ranks(), (std::vector<int>{rank / 2 * 2, rank / 2 * 2 + 1}));
    EXPECT_EQ(replicate->rank(), rank / 2);
    EXPECT_EQ(replicate->global_ranks(), (std::vector<int>{rank % 2, rank % 2 + 2}));
    EXPECT_EQ(odd != nullptr, rank % 2 == 1);

    // Sums of 10^rank show exactly which ranks took part.
    auto t = torch::full({2}, std::pow(10.0, rank), torch::kFloat64);
    shard->all_reduce(t, ReduceKind::Sum);
    const double shard_sum = rank < 2 ? 11.0 : 1100.0;
    EXPECT_TRUE(torch::equal(t, torch::full({2}, shard_sum, torch::kFloat64))) << t;
    t = torch::full({2}, std::pow(10.0, rank), torch::kFloat64);
    replicate->all_reduce(t, ReduceKind::Sum);
    const double replica_sum = rank % 2 == 0 ? 101.0 : 1010.0;
    EXPECT_TRUE(torch::equal(t, torch::full({2}, replica_sum, torch::kFloat64))) << t;

    // The whole group still runs between the sub-groups' collectives.
    t = torch::full({1}, std::pow(10.0, rank), torch::kFloat64);
    pg->all_reduce(t, ReduceKind::Sum);
    EXPECT_EQ(t.item<double>(), 1111.0);

    if (odd) {
      EXPECT_EQ(odd->rank(), rank == 1 ? 0 : 1);  // ascending order: 1 is rank 0
      EXPECT_EQ(odd->global_ranks(), (std::vector<int>{1, 3}));
      auto b = torch::full({1}, static_cast<double>(rank), torch::kFloat64);
      odd->broadcast(b, /*src=*/1);  // global rank 3
      EXPECT_EQ(b.item<double>(), 3.0);
      odd->barrier();
      odd->barrier(std::chrono::milliseconds(10000));
    }

    // The flat collectives of sharding, within a shard group: chunk r of the group's sum.
    auto full = torch::arange(4, torch::kFloat32) + 10.0 * rank;
    auto piece = torch::empty({2});
    shard->reduce_scatter(piece, full);
    const float base = rank < 2 ? 10.0f : 50.0f;  // 10 * (r0 + r1)
    const int r = shard->rank();
    EXPECT_TRUE(torch::equal(piece, torch::tensor({base + 4.0f * r, base + 4.0f * r + 2.0f})))
        << piece;
    auto gathered = torch::empty({4});
    shard->all_gather_into(gathered, torch::full({2}, static_cast<float>(rank)));
    const float a = static_cast<float>(rank / 2 * 2);
    EXPECT_TRUE(torch::equal(gathered, torch::tensor({a, a, a + 1, a + 1}))) << gathered;
    const auto parts = replicate->all_gather(torch::full({1}, rank, torch::kInt64));
    EXPECT_TRUE(torch::equal(torch::cat(parts), torch::tensor({rank % 2, rank % 2 + 2})));

    // A sub-group of a sub-group: global ranks are composed.
    auto single = shard->new_group({1});
    EXPECT_EQ(single != nullptr, rank % 2 == 1);
    if (single) {
      EXPECT_EQ(single->world_size(), 1);
      EXPECT_EQ(single->global_ranks(), (std::vector<int>{rank}));
      auto s = torch::full({1}, 5.0);
      single->all_reduce(s);
      EXPECT_EQ(s.item<float>(), 5.0f);
    }
    pg->barrier();
    return child_status();
  });
  EXPECT_EQ(codes, std::vector<int>(codes.size(), 0));
}

TEST(ProcessGroupSubgroupTest, RejectsBadRankLists) {
  const auto codes = run_ranks(2, [](int rank, int port) {
    auto pg = ProcessGroup::create(loopback(rank, 2, port));
    std::string msg = invalid_argument_message([&] { pg->new_group({}); });
    EXPECT_TRUE(Contains(msg, "at least one rank"));
    msg = invalid_argument_message([&] { pg->new_group({0, 2}); });
    EXPECT_TRUE(Contains(msg, "rank 2"));
    EXPECT_TRUE(Contains(msg, "0 .. 1"));
    msg = invalid_argument_message([&] { pg->new_group({-1}); });
    EXPECT_TRUE(Contains(msg, "rank -1"));
    msg = invalid_argument_message([&] { pg->new_group({1, 1}); });
    EXPECT_TRUE(Contains(msg, "twice"));
    msg = invalid_argument_message([&] { pg->new_subgroups({{0, 1}, {1}}); });
    EXPECT_TRUE(Contains(msg, "disjoint"));
    msg = invalid_argument_message([&] { pg->new_subgroups({{0}, {5}}); });
    EXPECT_TRUE(Contains(msg, "rank 5"));
    // The rejected calls created nothing: the next sub-group still forms on both ranks.
    auto both = pg->new_group({0, 1});
    auto t = torch::ones({1});
    both->all_reduce(t);
    EXPECT_EQ(t.item<float>(), 2.0f);
    return child_status();
  });
  EXPECT_EQ(codes, std::vector<int>(codes.size(), 0));
}

// A sub-group's collective that a member never joins times out with the sub-group named.
TEST(ProcessGroupSubgroupTest, TimeoutNamesTheSubgroup) {
  const auto codes = run_ranks(3, [](int rank, int port) {
    auto pg = ProcessGroup::create(loopback(rank, 3, port, 2s));
    auto pair = pg->new_group({1, 2});
    if (rank == 1) {
      auto t = torch::ones({2});
      try {
        pair->all_reduce(t);
        ADD_FAILURE() << "all_reduce completed without rank 2";
      } catch (const std::runtime_error& e) {
        EXPECT_TRUE(Contains(e.what(), "all_reduce"));
        EXPECT_TRUE(Contains(e.what(), "sub-group of global ranks [1, 2]"));
      }
    }
    pg->barrier(std::chrono::milliseconds(20000));
    return child_status();
  });
  EXPECT_EQ(codes, std::vector<int>(codes.size(), 0));
}
