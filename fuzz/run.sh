#!/bin/bash
# Runs libFuzzer targets built by fuzz/build.sh over the seed corpus in fuzz/corpus/<target>,
# with the caps that catch quadratic loads and memory amplification (issue #15):
#   -rss_limit_mb=2048   a process past 2 GiB is a finding (the old loader reached 2 GB)
#   -malloc_limit_mb=1024  one allocation past 1 GiB is a finding
#   -timeout=10          one input taking 10 s is a finding (the old 100k-key dict took 23 s)
#   fuzz/run.sh [-runs=N | -max_total_time=S] [target ...]   # default: -runs=20000, all targets
# New inputs go to $BUILD_DIR/fuzz/work/<target>, never into the repository's corpus; crashes to
# $BUILD_DIR/fuzz/findings/<target>/. Builds the targets first (fuzz/build.sh; exit 77 = skip).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BUILD=$(cd "${BUILD_DIR:-$ROOT/build/ci}" && pwd)
OUT=${FUZZ_OUT:-$BUILD/fuzz}
budget="-runs=20000"
targets=""
for arg in "$@"; do
  case "$arg" in
    -*) budget="$arg" ;;
    *) targets="$targets $arg" ;;
  esac
done
targets=${targets:-checkpoint_file checkpoint_pickle dcp_metadata cifar10 slurm}
BUILD_DIR=$BUILD FUZZ_OUT=$OUT "$ROOT/fuzz/build.sh" $targets
status=0
for target in $targets; do
  case "$target" in
    cifar10) max_len=16384 ;;
    slurm) max_len=65536 ;;
    *) max_len=16384 ;;
  esac
  mkdir -p "$OUT/work/$target" "$OUT/findings/$target"
  echo "== fuzz_$target $budget"
  if ! ASAN_OPTIONS=detect_leaks=0:allocator_may_return_null=1 \
      UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
      "$OUT/fuzz_$target" "$budget" -rss_limit_mb=2048 -malloc_limit_mb=1024 -timeout=10 \
      -max_len=$max_len -print_final_stats=1 -artifact_prefix="$OUT/findings/$target/" \
      "$OUT/work/$target" "$ROOT/fuzz/corpus/$target" 2>&1 | tail -n 25; then
    status=1
  fi
done
exit $status
