#!/bin/bash
# Builds one part of cppfabric and its tests alone with AddressSanitizer + UBSan (much cheaper than a
# full `asan` preset build), links them in front of the regular libcppfabric, and runs them.
#   tests/sanitize.sh checkpoint [fuzz iterations per mode, default 30000]   # reader/writer + fuzz
#   tests/sanitize.sh data                                                   # threaded DataLoader
#   tests/sanitize.sh sharded                  # sharded (DCP) checkpoints: .metadata reader, save/load
# BUILD_DIR (default build/dev) must be a configured and built tree (fmt shim, libcppfabric); the
# bootstrapped venv provides LibTorch. Uses ccache when it is installed.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
suite=${1:?usage: tests/sanitize.sh checkpoint|data|sharded [iterations]}
BUILD=$(cd "${BUILD_DIR:-$ROOT/build/dev}" && pwd)
case "$suite" in
  checkpoint) sources="src/state.cpp src/checkpoint/torch_pickle.cpp src/checkpoint/zip_archive.cpp
                       src/checkpoint/pickler.cpp src/checkpoint/unpickler.cpp
                       src/utilities/filesystem.cpp src/plugins.cpp
                       tests/unit/checkpoint_pickle_test.cpp
                       tests/unit/checkpoint_adversarial_test.cpp" ;;
  sharded) sources="src/checkpoint/dcp_metadata.cpp src/checkpoint/sharded.cpp
                    tests/unit/checkpoint_sharded_test.cpp"
           extra="-DCPPFABRIC_SOURCE_DIR=\"$ROOT\"" ;;
  data) sources="src/data/dataloader.cpp src/data/dataset.cpp src/data/sampler.cpp
                 src/data/transforms.cpp tests/unit/data_loader_test.cpp" ;;
  *) echo "unknown suite '$suite'; valid: checkpoint, data, sharded" >&2; exit 2 ;;
esac
OUT=${ASAN_OUT:-$BUILD/sanitize_$suite}
T=$("${CPPFABRIC_CACHE:-$HOME/.cache/cppfabric}/venv/bin/python" -c 'import torch,os;print(os.path.dirname(torch.__file__))')
FLAGS="-std=c++20 -O1 -g -fsanitize=address,undefined -fno-omit-frame-pointer -DCPPFABRIC_FMT_VERSION=90100
  -DFMT_SHARED -DSPDLOG_COMPILED_LIB -DSPDLOG_FMT_EXTERNAL -DSPDLOG_SHARED_LIB -I$BUILD/fmt-shim
  -I$ROOT/include -I$ROOT/src -I$ROOT/tests -isystem $T/include -isystem $T/include/torch/csrc/api/include
  ${extra:-}"
CXX="c++"
if command -v ccache >/dev/null; then
  # NOHASHDIR: -g records the folder, which differs per clone; the cache should not care.
  CXX="env CCACHE_BASEDIR=$ROOT CCACHE_NOHASHDIR=1 CCACHE_SLOPPINESS=time_macros,include_file_mtime,include_file_ctime ccache c++"
fi
mkdir -p "$OUT" && cd "$OUT" && rm -f ./*.o
# One compiler per core: these files carry the full LibTorch headers.
export CXX FLAGS ROOT
printf '%s\n' $sources | xargs -P "$(nproc)" -I{} sh -c \
  '$CXX $FLAGS -c "$ROOT/{}" -o "$(echo "{}" | tr / _).o"'
c++ -fsanitize=address,undefined ./*.o -o "${suite}_asan" -Wl,-rpath,"$T/lib:$BUILD" \
  "$BUILD/libcppfabric.so" "$T/lib/libtorch.so" "$T/lib/libtorch_cpu.so" "$T/lib/libc10.so" \
  -lgtest -lgtest_main -lfmt -lspdlog -lpthread
CPPFABRIC_FUZZ_ITERATIONS=${2:-30000} ASAN_OPTIONS=detect_leaks=0:protect_shadow_gap=0 \
  UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 "./${suite}_asan"
