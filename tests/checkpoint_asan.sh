#!/bin/bash
# Builds the checkpoint reader/writer and its tests (tests/unit/checkpoint_pickle_test.cpp) alone
# with AddressSanitizer + UBSan, without a full `asan` preset build, then runs them.
#   tests/checkpoint_asan.sh [fuzz iterations per mode, default 30000]
# Needs build/dev configured (for the fmt shim) and the bootstrapped venv.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT=${ASAN_OUT:-/tmp/cppfabric_checkpoint_asan}
T=$("${CPPFABRIC_CACHE:-$HOME/.cache/cppfabric}/venv/bin/python" -c 'import torch,os;print(os.path.dirname(torch.__file__))')
FLAGS="-std=c++20 -O1 -g -fsanitize=address,undefined -fno-omit-frame-pointer -DCPPFABRIC_FMT_VERSION=90100
  -DFMT_SHARED -DSPDLOG_COMPILED_LIB -DSPDLOG_FMT_EXTERNAL -DSPDLOG_SHARED_LIB -I$ROOT/build/dev/fmt-shim
  -I$ROOT/include -I$ROOT/src -I$ROOT/tests -isystem $T/include -isystem $T/include/torch/csrc/api/include"
mkdir -p "$OUT" && cd "$OUT"
for f in src/state.cpp src/checkpoint/torch_pickle.cpp src/plugins.cpp tests/unit/checkpoint_pickle_test.cpp; do
  c++ $FLAGS -c "$ROOT/$f" -o "$(echo "$f" | tr / _).o"
done
c++ -fsanitize=address,undefined ./*.o -o checkpoint_asan -Wl,-rpath,"$T/lib" "$T/lib/libtorch.so" \
  "$T/lib/libtorch_cpu.so" "$T/lib/libc10.so" -lgtest -lgtest_main -lfmt -lspdlog -lpthread
CPPFABRIC_FUZZ_ITERATIONS=${1:-30000} ASAN_OPTIONS=detect_leaks=0:protect_shadow_gap=0 \
  UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 ./checkpoint_asan
