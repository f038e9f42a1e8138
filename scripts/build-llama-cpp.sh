#!/usr/bin/env bash
# Builds the benchmark peer, llama.cpp, from the sources PyPI's llama-cpp-python sdist vendors,
# fetched with pip (never committed; kept under .build/peer). Prints the folder of its binaries.
# Usage: scripts/build-llama-cpp.sh TARGET...   (e.g. llama-bench llama-server)
set -euo pipefail
cd "$(dirname "$0")/.."
peer=.build/peer
version=0.3.36
missing=()
for t in "$@"; do [ -x "$peer/build/bin/$t" ] || missing+=("$t"); done
if [ ${#missing[@]} -gt 0 ]; then
  command -v g++ >/dev/null || {
    sudo -n true 2>/dev/null && SUDO=sudo || SUDO=
    $SUDO apt-get update -qq && $SUDO apt-get install -y -qq g++ >/dev/null
  }
  mkdir -p "$peer"
  # cmake and the sdist's build backend as wheels, so that pip can read the sdist's metadata
  # without building cmake from source.
  [ -x "$peer/venv/bin/cmake" ] || { python3 -m venv "$peer/venv" && "$peer/venv/bin/pip" install --quiet --only-binary :all: cmake scikit-build-core >&2; }
  sdist=$peer/llama_cpp_python-$version.tar.gz
  [ -f "$sdist" ] || "$peer/venv/bin/pip" download --quiet --no-deps --no-binary :all: --no-build-isolation \
    "llama-cpp-python==$version" -d "$peer" >&2
  [ -d "$peer/llama_cpp_python-$version" ] || tar -xzf "$sdist" -C "$peer"
  "$peer/venv/bin/cmake" -S "$peer/llama_cpp_python-$version/vendor/llama.cpp" -B "$peer/build" -DCMAKE_BUILD_TYPE=Release \
    -DGGML_NATIVE=ON -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_SERVER=ON >&2
  "$peer/venv/bin/cmake" --build "$peer/build" --target "${missing[@]}" -j 2 >&2
fi
echo "$peer/build/bin"
