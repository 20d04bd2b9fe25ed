// The accelerators: CPU core counts and CUDA device-index parsing, with Python's rules and
// errors. Runs without a GPU.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cppfabric/cppfabric.hpp>

#include "test_utils.hpp"

namespace acc = cppfabric::accelerators;

TEST(Accelerators, CpuParseCores) {
  EXPECT_EQ(acc::CPUAccelerator::parse_cpu_cores(3), 3);
  EXPECT_EQ(acc::CPUAccelerator::parse_cpu_cores(" 2 "), 2);
  acc::CPUAccelerator cpu;
  EXPECT_EQ(cpu.parse_devices(4).size(), 4u);
}

TEST(Accelerators, GpuIdParsingMatchesPython) {
  using V = std::vector<int>;
  EXPECT_EQ(acc::CUDAAccelerator::parse_gpu_ids(2, 4), (V{0, 1}));
  EXPECT_EQ(acc::CUDAAccelerator::parse_gpu_ids(-1, 3), (V{0, 1, 2}));
  EXPECT_EQ(acc::CUDAAccelerator::parse_gpu_ids("-1", 2), (V{0, 1}));
  EXPECT_EQ(acc::CUDAAccelerator::parse_gpu_ids("2", 4), (V{0, 1}));
  EXPECT_EQ(acc::CUDAAccelerator::parse_gpu_ids("1,3", 4), (V{1, 3}));
  EXPECT_EQ(acc::CUDAAccelerator::parse_gpu_ids("1, 3", 4), (V{1, 3}));
  EXPECT_EQ(acc::CUDAAccelerator::parse_gpu_ids("0,", 4), (V{0}));
  EXPECT_EQ(acc::CUDAAccelerator::parse_gpu_ids(V{1, 4}, 5), (V{1, 4}));
  EXPECT_EQ(acc::CUDAAccelerator::parse_gpu_ids(0, 4), V{});
  EXPECT_EQ(acc::CUDAAccelerator::parse_gpu_ids("0", 4), V{});
}

TEST(Accelerators, GpuIdErrors) {
  EXPECT_THROW_WITH(acc::CUDAAccelerator::parse_gpu_ids(2, 0), cppfabric::MisconfigurationError,
                    "You requested gpu: [0, 1]", "only has: []");
  EXPECT_THROW_WITH(acc::CUDAAccelerator::parse_gpu_ids(-1, 0), cppfabric::MisconfigurationError,
                    "none are available");
  EXPECT_THROW_WITH(acc::CUDAAccelerator::parse_gpu_ids("1,1", 4), cppfabric::MisconfigurationError,
                    "must be unique");
  EXPECT_THROW_WITH(acc::CUDAAccelerator::parse_gpu_ids(std::vector<int>{0, 5}, 2),
                    cppfabric::MisconfigurationError, "You requested gpu: [0, 5]",
                    "only has: [0, 1]");
  EXPECT_THROW_WITH(acc::CUDAAccelerator::parse_gpu_ids(3, 2), cppfabric::MisconfigurationError,
                    "You requested gpu: [0, 1, 2]");
  EXPECT_THROW_WITH(acc::CUDAAccelerator::parse_gpu_ids("a,b", 2), std::invalid_argument,
                    "`devices='a,b'`", "not an integer");
  EXPECT_THROW_WITH(acc::CUDAAccelerator::parse_gpu_ids(-3, 2), std::invalid_argument,
                    "`devices=-3`");
}
