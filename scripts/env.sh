# shellcheck shell=bash
# Source this file (bash), from any folder, after scripts/bootstrap:
#   source scripts/env.sh
# It points CMake, ccache and the shell at what scripts/bootstrap provisioned:
#   CPPFABRIC_CACHE     ${XDG_CACHE_HOME:-$HOME/.cache}/cppfabric unless already set
#   PATH                $CPPFABRIC_CACHE/venv/bin first, then /usr/local/cuda/bin (when present)
#   VIRTUAL_ENV         the virtual environment (so CMake's FindPython picks it)
#   CMAKE_PREFIX_PATH   torch's CMake folder (torch.utils.cmake_prefix_path) prepended
#   CUDACXX             /usr/local/cuda/bin/nvcc (when present)
#   CCACHE_DIR          $CPPFABRIC_CACHE/ccache, CCACHE_MAXSIZE 5G
# LD_LIBRARY_PATH is left alone: cppfabric's binaries find LibTorch through their rpath.
# Sourcing it twice changes nothing more.

export CPPFABRIC_CACHE="${CPPFABRIC_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/cppfabric}"

# Puts $2 first in the ':'-separated variable named $1, dropping other copies of it.
_cppfabric_prepend() {
  local list=":${!1:-}:"
  while [[ "$list" == *:"$2":* ]]; do list="${list//:"$2":/:}"; done
  list="${list#:}"
  list="${list%:}"
  printf -v "$1" '%s' "$2${list:+:$list}"
}

if [ -x /usr/local/cuda/bin/nvcc ]; then
  _cppfabric_prepend PATH /usr/local/cuda/bin
  export CUDACXX=/usr/local/cuda/bin/nvcc
fi

export CCACHE_DIR="$CPPFABRIC_CACHE/ccache"
export CCACHE_MAXSIZE=5G

_cppfabric_status=0
if [ -x "$CPPFABRIC_CACHE/venv/bin/python" ]; then
  _cppfabric_prepend PATH "$CPPFABRIC_CACHE/venv/bin"
  export VIRTUAL_ENV="$CPPFABRIC_CACHE/venv"
  # Same folder as torch.utils.cmake_prefix_path (<torch package>/share/cmake), found without
  # importing torch, which would take seconds.
  _cppfabric_torch_cmake="$("$CPPFABRIC_CACHE/venv/bin/python" -c '
import importlib.util, os
spec = importlib.util.find_spec("torch")
if spec and spec.submodule_search_locations:
    print(os.path.join(list(spec.submodule_search_locations)[0], "share", "cmake"))
' 2>/dev/null || true)"
  if [ -n "$_cppfabric_torch_cmake" ] && [ -d "$_cppfabric_torch_cmake" ]; then
    _cppfabric_prepend CMAKE_PREFIX_PATH "$_cppfabric_torch_cmake"
    export CMAKE_PREFIX_PATH
  else
    echo "cppfabric env: torch is not installed in $CPPFABRIC_CACHE/venv; run scripts/bootstrap" >&2
    _cppfabric_status=1
  fi
else
  echo "cppfabric env: no virtual environment at $CPPFABRIC_CACHE/venv; run scripts/bootstrap" >&2
  _cppfabric_status=1
fi
export PATH
hash -r 2>/dev/null

unset -f _cppfabric_prepend
unset _cppfabric_torch_cmake
# Non-zero when the virtual environment is missing. (eval: expand the status, then unset it.)
eval "unset _cppfabric_status; return $_cppfabric_status"
