#!/bin/bash
# Builds the libFuzzer targets (clang, -fsanitize=fuzzer,address,undefined) from just the sources
# each needs, linked in front of a regular libcppfabric build for everything else (as
# tests/sanitize.sh does).
#   fuzz/build.sh [target ...]      # default: every target; binaries in $BUILD_DIR/fuzz/
# BUILD_DIR (default build/ci) must be a configured and built tree (fmt shim, libcppfabric).
# Exit 77 (ctest's skip code) when clang or its libFuzzer runtime is missing.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BUILD=$(cd "${BUILD_DIR:-$ROOT/build/ci}" && pwd)
OUT=${FUZZ_OUT:-$BUILD/fuzz}
CLANG=${CLANGXX:-clang++}
if ! command -v "$CLANG" >/dev/null; then
  echo "fuzz/build.sh: $CLANG not found; the fuzz targets need clang's libFuzzer" >&2
  exit 77
fi
mkdir -p "$OUT"
if ! echo 'extern "C" int LLVMFuzzerTestOneInput(const unsigned char*, unsigned long){return 0;}' |
    "$CLANG" -x c++ -fsanitize=fuzzer - -o "$OUT/.probe" 2>/dev/null; then
  echo "fuzz/build.sh: $CLANG cannot link -fsanitize=fuzzer (install libclang-rt-dev)" >&2
  exit 77
fi
targets=${*:-checkpoint_file checkpoint_pickle dcp_metadata cifar10 slurm}
CHECKPOINT="src/checkpoint/torch_pickle.cpp src/checkpoint/zip_archive.cpp
            src/checkpoint/pickler.cpp src/checkpoint/unpickler.cpp"
T=$("${CPPFABRIC_CACHE:-$HOME/.cache/cppfabric}/venv/bin/python" -c 'import torch,os;print(os.path.dirname(torch.__file__))')
FMTV=$(sed -n "s/^#define FMT_VERSION \([0-9]*\).*/\1/p" "$BUILD/fmt-shim/fmt/core.h" 2>/dev/null || true)
FLAGS="-std=c++20 -O1 -g -fsanitize=fuzzer-no-link,address,undefined -fno-omit-frame-pointer
  -DCPPFABRIC_FMT_VERSION=${FMTV:-90100} -DFMT_SHARED -DSPDLOG_COMPILED_LIB -DSPDLOG_FMT_EXTERNAL
  -DSPDLOG_SHARED_LIB -DCPPFABRIC_HAS_CURL=0 -DCPPFABRIC_HAS_LIBARCHIVE=0 -I$BUILD/fmt-shim -I$ROOT/include -I$ROOT/src -isystem $T/include
  -isystem $T/include/torch/csrc/api/include -Wno-unused-command-line-argument"
CXX="$CLANG"
command -v ccache >/dev/null && CXX="env CCACHE_BASEDIR=$ROOT CCACHE_NOHASHDIR=1 ccache $CLANG"
compile() {  # source -> object under $OUT/obj
  # Always compiled (ccache makes a repeat cheap): a timestamp check on the source alone kept
  # objects built against an older header (a grown struct read past its end under ASan).
  local obj="$OUT/obj/$(echo "$1" | tr / _).o"
  mkdir -p "$OUT/obj"
  $CXX $FLAGS -c "$ROOT/$1" -o "$obj" >&2
  echo "$obj"
}
for target in $targets; do
  case "$target" in
    checkpoint_file|checkpoint_pickle) sources="fuzz/$target.cpp $CHECKPOINT" ;;
    dcp_metadata) sources="fuzz/dcp_metadata.cpp src/checkpoint/dcp_metadata.cpp" ;;
    cifar10) sources="fuzz/cifar10.cpp src/data/datasets/cifar10.cpp" ;;
    slurm) sources="fuzz/slurm.cpp src/environments/slurm.cpp" ;;
    *) echo "unknown fuzz target '$target'; valid: checkpoint_file checkpoint_pickle dcp_metadata cifar10 slurm" >&2
       exit 2 ;;
  esac
  objs=""
  for s in $sources; do objs="$objs $(compile "$s")"; done
  "$CLANG" -fsanitize=fuzzer,address,undefined $objs -o "$OUT/fuzz_$target" \
    -Wl,-rpath,"$T/lib:$BUILD" "$BUILD/libcppfabric.so" "$T/lib/libtorch.so" \
    "$T/lib/libtorch_cpu.so" "$T/lib/libc10.so" -lfmt -lspdlog -lpthread
  echo "built $OUT/fuzz_$target"
done
