#!/usr/bin/env bash
# Builds llama.cpp's command-line tools `llama-quantize`, `llama-imatrix` and `llama-perplexity`
# into models/llama-cpp-tools/ (git-ignored), from the SAME pinned llama.cpp source that
# scripts/check-gguf-llamacpp.sh installs: the PyPI sdist of llama-cpp-python==0.3.36, whose
# vendor/llama.cpp is the llama.cpp tree. scripts/compare-llamacpp.sh uses them to compare
# llama.cpp's own quantization with qpipe's at equal size.
#
#   scripts/build-llamacpp-tools.sh        # prints the bin directory on stdout
#
# Pins: the sdist's sha256 (observed on first download, checked on every later one) and, when no
# cmake is on PATH, a cmake wheel from PyPI installed into models/llama-cpp-tools/venv.
# Build: Release, -DGGML_NATIVE=ON (tuned for THIS machine's CPU), -DLLAMA_CURL=OFF, only the
# needed targets, -j2 (env JOBS). Idempotent: skipped when models/llama-cpp-tools/.built holds
# the same pins. Not part of CI.
#
# The sdist is fetched with `pip download --no-binary llama-cpp-python --no-deps`: with
# `--no-binary :all:` pip also compiles the sdist's *build* dependencies (cmake itself) from
# source just to read its metadata, which takes most of an hour on 2 cores; the file is the same.
set -euo pipefail
cd "$(dirname "$0")/.."

LLAMA_CPP_PYTHON="llama-cpp-python==0.3.36"
SDIST_NAME="llama_cpp_python-0.3.36.tar.gz"
SDIST_SHA256="832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e"
CMAKE_WHEEL="cmake==3.31.6"
TARGETS="llama-quantize llama-imatrix llama-perplexity"
JOBS="${JOBS:-2}"
DIR=models/llama-cpp-tools
BIN="$DIR/build/bin"
MARKER="$LLAMA_CPP_PYTHON sha256=$SDIST_SHA256 targets=$TARGETS native=on curl=off"

if [ $# -ne 0 ]; then
  echo "usage: $0   (no arguments; env JOBS=2)" >&2
  exit 2
fi

built() {
  [ "$(cat "$DIR/.built" 2>/dev/null)" = "$MARKER" ] || return 1
  for t in $TARGETS; do [ -x "$BIN/$t" ] || return 1; done
}
if built; then
  echo "llama.cpp tools: up to date ($BIN)" >&2
  echo "$BIN"
  exit 0
fi

mkdir -p "$DIR"
sdist="$DIR/$SDIST_NAME"
if ! { [ -f "$sdist" ] && echo "$SDIST_SHA256  $sdist" | sha256sum --check --quiet --status; }; then
  echo "llama.cpp tools: downloading the $LLAMA_CPP_PYTHON sdist from PyPI" >&2
  rm -f "$sdist"
  if ! pip download --quiet --disable-pip-version-check --no-binary llama-cpp-python --no-deps \
      -d "$DIR" "$LLAMA_CPP_PYTHON" >&2; then
    echo "error: cannot download the $LLAMA_CPP_PYTHON sdist from PyPI" >&2
    exit 2
  fi
  [ -f "$sdist" ] || { echo "error: pip did not produce $sdist" >&2; exit 2; }
fi
observed=$(sha256sum "$sdist" | cut -d' ' -f1)
if [ "$observed" != "$SDIST_SHA256" ]; then
  echo "error: $sdist: sha256 $observed differs from the pinned $SDIST_SHA256" >&2
  exit 2
fi

CMAKE=$(command -v cmake || true)
if [ -z "$CMAKE" ]; then
  venv="$DIR/venv"
  if [ "$(cat "$venv/.installed" 2>/dev/null)" != "$CMAKE_WHEEL" ]; then
    echo "llama.cpp tools: installing $CMAKE_WHEEL into $venv" >&2
    rm -rf "$venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check --only-binary :all: "$CMAKE_WHEEL" >&2
    echo "$CMAKE_WHEEL" >"$venv/.installed"
  fi
  CMAKE="$venv/bin/cmake"
fi

echo "llama.cpp tools: unpacking and building $TARGETS with $("$CMAKE" --version | head -1), -j$JOBS" >&2
rm -rf "$DIR/src" "$DIR/build" "$DIR/.built"
mkdir -p "$DIR/src"
tar -xzf "$sdist" -C "$DIR/src" --strip-components=1
src="$DIR/src/vendor/llama.cpp"
[ -f "$src/CMakeLists.txt" ] || { echo "error: $src: no llama.cpp tree in the sdist" >&2; exit 2; }
start=$(date +%s)
"$CMAKE" -S "$src" -B "$DIR/build" -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON -DLLAMA_CURL=OFF \
  -DBUILD_SHARED_LIBS=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_SERVER=OFF >&2
# shellcheck disable=SC2086 # the targets are separate words
"$CMAKE" --build "$DIR/build" --config Release -j"$JOBS" --target $TARGETS >&2
for t in $TARGETS; do
  [ -x "$BIN/$t" ] || { echo "error: $BIN/$t was not built" >&2; exit 2; }
done
echo "$MARKER" >"$DIR/.built"
echo "llama.cpp tools: built in $(( $(date +%s) - start )) s ($BIN)" >&2
echo "$BIN"
