# Toolchain discovery shared by the build: ccache, LibTorch (with or without CUDA), gloo headers.

if(CPPFABRIC_USE_CCACHE)
  find_program(CPPFABRIC_CCACHE ccache)
  if(CPPFABRIC_CCACHE AND NOT CMAKE_CXX_COMPILER_LAUNCHER)
    # PCH-friendly ccache settings, passed through the environment of each compile. BASEDIR
    # makes paths inside the source tree relative, so a fresh clone elsewhere (CI) hits the cache.
    set(CMAKE_CXX_COMPILER_LAUNCHER ${CMAKE_COMMAND} -E env
        CCACHE_SLOPPINESS=pch_defines,time_macros,include_file_mtime,include_file_ctime
        CCACHE_BASEDIR=${PROJECT_SOURCE_DIR} ${CPPFABRIC_CCACHE})
    message(STATUS "cppfabric: compiling through ccache (${CPPFABRIC_CCACHE})")
  endif()
endif()

# LibTorch: Torch_DIR / CMAKE_PREFIX_PATH win; otherwise ask the python on PATH (scripts/env.sh puts
# the bootstrapped virtual environment first).
if(NOT Torch_DIR)
  find_package(Python3 COMPONENTS Interpreter QUIET)
  if(Python3_Interpreter_FOUND)
    execute_process(COMMAND ${Python3_EXECUTABLE} -c "import torch.utils; print(torch.utils.cmake_prefix_path)"
      OUTPUT_VARIABLE _cppfabric_torch_prefix OUTPUT_STRIP_TRAILING_WHITESPACE ERROR_QUIET)
    if(_cppfabric_torch_prefix)
      list(APPEND CMAKE_PREFIX_PATH ${_cppfabric_torch_prefix})
    endif()
  endif()
endif()

# A CUDA-enabled LibTorch runs enable_language(CUDA) inside find_package(Torch): point it at the
# machine's toolkit so nvcc and the toolkit agree.
if(NOT CMAKE_CUDA_COMPILER AND EXISTS /usr/local/cuda/bin/nvcc)
  set(CMAKE_CUDA_COMPILER /usr/local/cuda/bin/nvcc)
endif()
if(NOT TORCH_CUDA_ARCH_LIST)
  set(TORCH_CUDA_ARCH_LIST 9.0)   # H100 / H200
endif()
find_package(Torch REQUIRED)
if(Torch_VERSION AND Torch_VERSION VERSION_LESS 2.11)
  message(FATAL_ERROR "cppfabric needs LibTorch >= 2.11, found ${Torch_VERSION} at ${Torch_DIR}")
endif()
set(CPPFABRIC_WITH_CUDA OFF)
if(TARGET torch_cuda)
  set(CPPFABRIC_WITH_CUDA ON)
endif()
get_filename_component(TORCH_LIBRARY_DIRS "${TORCH_INSTALL_PREFIX}/lib" ABSOLUTE)
message(STATUS "cppfabric: LibTorch ${Torch_VERSION} at ${TORCH_INSTALL_PREFIX} (CUDA: ${CPPFABRIC_WITH_CUDA})")

find_package(fmt REQUIRED)
find_package(spdlog REQUIRED)
get_target_property(_cppfabric_fmt_inc fmt::fmt INTERFACE_INCLUDE_DIRECTORIES)
list(GET _cppfabric_fmt_inc 0 _cppfabric_fmt_inc)
set(CPPFABRIC_FMT_SHIM_DIR ${PROJECT_BINARY_DIR}/fmt-shim)
file(MAKE_DIRECTORY ${CPPFABRIC_FMT_SHIM_DIR})
file(CREATE_LINK ${_cppfabric_fmt_inc}/fmt ${CPPFABRIC_FMT_SHIM_DIR}/fmt SYMBOLIC)
string(REPLACE "." ";" _cppfabric_fmt_parts "${fmt_VERSION}")
list(GET _cppfabric_fmt_parts 0 _fmt_major)
list(GET _cppfabric_fmt_parts 1 _fmt_minor)
list(GET _cppfabric_fmt_parts 2 _fmt_patch)
math(EXPR CPPFABRIC_FMT_VERSION "${_fmt_major} * 10000 + ${_fmt_minor} * 100 + ${_fmt_patch}")
message(STATUS "cppfabric: fmt ${fmt_VERSION} from ${_cppfabric_fmt_inc}")

# Gloo: LibTorch's ProcessGroupGloo.hpp includes <gloo/...>; the wheel may not ship those headers.
find_path(CPPFABRIC_GLOO_INCLUDE_DIR gloo/algorithm.h
  HINTS ${TORCH_INSTALL_PREFIX}/include /usr/include /usr/local/include NO_CACHE)
if(CPPFABRIC_GLOO_INCLUDE_DIR)
  message(STATUS "cppfabric: gloo headers from ${CPPFABRIC_GLOO_INCLUDE_DIR}")
else()
  message(WARNING "cppfabric: gloo headers not found (apt-get install libgloo-dev); CPU collectives disabled")
endif()

# NCCL: ProcessGroupNCCL.hpp includes <nccl.h>. Prefer the header of the NCCL that LibTorch loads
# (the nvidia-nccl wheel beside torch), then the CUDA toolkit's.
if(CPPFABRIC_WITH_CUDA)
  find_path(CPPFABRIC_NCCL_INCLUDE_DIR nccl.h
    HINTS ${TORCH_INSTALL_PREFIX}/../nvidia/nccl/include ${CUDAToolkit_INCLUDE_DIRS} /usr/local/cuda/include
    NO_CACHE)
  if(CPPFABRIC_NCCL_INCLUDE_DIR)
    message(STATUS "cppfabric: nccl.h from ${CPPFABRIC_NCCL_INCLUDE_DIR}")
  else()
    message(WARNING "cppfabric: nccl.h not found; the 'nccl' process group backend is disabled")
  endif()
endif()
