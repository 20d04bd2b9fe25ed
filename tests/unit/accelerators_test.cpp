// The accelerators: CPU core counts and CUDA device-index parsing, with Python's rules and
// errors; the TF32 hint's decision and text against lightning's own `_check_cuda_matmul_precision`
// (tests/python/matmul_precision_reference.py runs it with stand-in CUDA queries). Runs without a
// GPU.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cppfabric/cppfabric.hpp>
#include <sstream>

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

TEST(Accelerators, MatmulPrecisionHintMatchesPython) {
  const auto python = cppfabric::testing::venv_python();
  if (!python) GTEST_SKIP() << "bootstrapped venv missing";
  int status = 0;
  const std::string text =
      cppfabric::testing::run_command(*python + " -W ignore " + CPPFABRIC_SOURCE_DIR +
                                          "/tests/python/matmul_precision_reference.py",
                                      &status);
  ASSERT_EQ(status, 0) << text;
  std::istringstream lines(text);
  int cases = 0;
  std::string python_message;
  for (std::string line; std::getline(lines, line);) {
    if (line.rfind("message : ", 0) == 0) {
      python_message = line.substr(10);
      continue;
    }
    std::istringstream fields(line);
    int major = 0, shown = -1;
    std::string precision, colon;
    ASSERT_TRUE(fields >> major >> precision >> colon >> shown) << line;
    EXPECT_EQ(acc::CUDAAccelerator::needs_matmul_precision_hint(major, precision), shown == 1)
        << "capability " << major << ".0, precision " << precision;
    ++cases;
  }
  EXPECT_EQ(cases, 21);
  EXPECT_FALSE(python_message.empty()) << text;
  // Our own words, with the device and the C++ call.
  const auto ours = acc::CUDAAccelerator::matmul_precision_hint("Fake GPU");
  EXPECT_NE(ours.find("'Fake GPU'"), std::string::npos) << ours;
  EXPECT_NE(ours.find("at::globalContext().setFloat32MatmulPrecision(\"high\")"), std::string::npos)
      << ours;
}

TEST(Accelerators, MatmulPrecisionHintErrors) {
  EXPECT_THROW_WITH(acc::CUDAAccelerator::needs_matmul_precision_hint(8, "low"),
                    std::invalid_argument, "'low'", "'highest', 'high', 'medium'");
  // No GPU here: LibTorch's default is torch's, "highest".
  EXPECT_EQ(acc::CUDAAccelerator::float32_matmul_precision(), "highest");
  at::globalContext().setFloat32MatmulPrecision("medium");
  EXPECT_EQ(acc::CUDAAccelerator::float32_matmul_precision(), "medium");
  at::globalContext().setFloat32MatmulPrecision("highest");
  EXPECT_THROW_WITH(acc::CUDAAccelerator().setup_device(c10::Device(c10::kCPU)),
                    std::invalid_argument, "Device should be CUDA, got cpu instead.");
}
