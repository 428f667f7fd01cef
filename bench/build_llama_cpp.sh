#!/usr/bin/env bash
# Builds the benchmark peer: llama.cpp from the llama-cpp-python sdist, in
# Release with native CPU flags (the way its users build it), CPU only.
# Nothing lands in the repo: sources and binaries live in a cache directory.
#
#   bench/build_llama_cpp.sh            # builds once, then prints the bin dir
#
# Environment:
#   LCP_VERSION   llama-cpp-python version (default 0.3.36)
#   LCP_SDIST     an already downloaded sdist to reuse instead of pip download
#   LLAMA_CPP_DIR cache dir (default ~/.cache/pdserve/llama.cpp-$LCP_VERSION)
#   JOBS          parallel compile jobs (default 2)
#   BUILD_SERVER  1 also builds llama-server (default 0: not needed by the matrix)
#
# Output: $LLAMA_CPP_DIR/bin/{llama-bench,llama-quantize,llama-perplexity} and
# $LLAMA_CPP_DIR/bin/build_info.json (version, compiler, flags, CPU). The last
# line printed is the bin directory. Idempotent: exits early when build_info.json
# exists and the binaries run.
set -euo pipefail

LCP_VERSION=${LCP_VERSION:-0.3.36}
LLAMA_CPP_DIR=${LLAMA_CPP_DIR:-$HOME/.cache/pdserve/llama.cpp-$LCP_VERSION}
JOBS=${JOBS:-2}
BUILD_SERVER=${BUILD_SERVER:-0}
BIN="$LLAMA_CPP_DIR/bin"
INFO="$BIN/build_info.json"

log() { echo "build_llama_cpp: $*" >&2; }

if [ -f "$INFO" ] && "$BIN/llama-bench" --help >/dev/null 2>&1 &&
   [ -x "$BIN/llama-quantize" ] && [ -x "$BIN/llama-perplexity" ] &&
   { [ "$BUILD_SERVER" != 1 ] || [ -x "$BIN/llama-server" ]; }; then
  log "already built ($INFO)"
  echo "$BIN"
  exit 0
fi

mkdir -p "$LLAMA_CPP_DIR"
SDIST=${LCP_SDIST:-}
if [ -z "$SDIST" ]; then
  SDIST="$LLAMA_CPP_DIR/llama_cpp_python-$LCP_VERSION.tar.gz"
  if [ ! -f "$SDIST" ]; then
    log "downloading llama-cpp-python==$LCP_VERSION sdist"
    python3 -m pip download --quiet --no-deps --no-binary :all: \
      -d "$LLAMA_CPP_DIR" "llama-cpp-python==$LCP_VERSION"
  fi
fi
[ -f "$SDIST" ] || { log "sdist not found: $SDIST"; exit 1; }
SDIST_SHA256=$(sha256sum "$SDIST" | cut -d' ' -f1)

SRC="$LLAMA_CPP_DIR/src"
if [ ! -f "$SRC/CMakeLists.txt" ]; then
  log "unpacking vendor/llama.cpp from $SDIST"
  rm -rf "$SRC" "$LLAMA_CPP_DIR/unpack"
  mkdir -p "$LLAMA_CPP_DIR/unpack"
  tar xzf "$SDIST" -C "$LLAMA_CPP_DIR/unpack" \
    "llama_cpp_python-$LCP_VERSION/vendor/llama.cpp"
  mv "$LLAMA_CPP_DIR/unpack/llama_cpp_python-$LCP_VERSION/vendor/llama.cpp" "$SRC"
  rm -rf "$LLAMA_CPP_DIR/unpack"
fi

LAUNCHER=()
if command -v ccache >/dev/null; then
  LAUNCHER=(-DCMAKE_C_COMPILER_LAUNCHER=ccache -DCMAKE_CXX_COMPILER_LAUNCHER=ccache)
fi
# llama-perplexity: its --kl-divergence scores bench/top1_agreement.sh.
TARGETS=(llama-bench llama-quantize llama-perplexity)
SERVER_FLAG=OFF
if [ "$BUILD_SERVER" = 1 ]; then TARGETS+=(llama-server); SERVER_FLAG=ON; fi

# The flags users get from a plain `cmake -B build` on a CPU machine, spelled out.
CMAKE_FLAGS=(-DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON -DGGML_CUDA=OFF
             -DBUILD_SHARED_LIBS=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF
             -DLLAMA_BUILD_SERVER=$SERVER_FLAG -DLLAMA_BUILD_APP=OFF -DLLAMA_OPENSSL=OFF)
log "configuring: ${CMAKE_FLAGS[*]}"
cmake -S "$SRC" -B "$LLAMA_CPP_DIR/build" -G Ninja "${CMAKE_FLAGS[@]}" "${LAUNCHER[@]}" >&2
log "building ${TARGETS[*]} with -j$JOBS (tens of minutes on 2 cores)"
nice -n 10 ninja -C "$LLAMA_CPP_DIR/build" -j"$JOBS" "${TARGETS[@]}" >&2

mkdir -p "$BIN"
for t in "${TARGETS[@]}"; do cp -f "$LLAMA_CPP_DIR/build/bin/$t" "$BIN/"; done

# Record what was built. llama-bench prints build_commit/build_number in its
# JSON; from an sdist (no .git) they read "unknown"/0, so the sdist's version
# and hash identify the source.
CACHE="$LLAMA_CPP_DIR/build/CMakeCache.txt"
cache_get() { sed -n "s/^$1:[A-Z]*=//p" "$CACHE" | head -1; }
CXX=$(cache_get CMAKE_CXX_COMPILER)
CXX_VERSION=$("$CXX" --version | head -1)
CXX_FLAGS_RELEASE=$(cache_get CMAKE_CXX_FLAGS_RELEASE)
NATIVE_FLAGS=$(grep -o -- '-march=native[^"]*' "$LLAMA_CPP_DIR/build/build.ninja" | head -1 || true)
# What -march=native turns on here (the ISA ggml-cpu was compiled for).
NATIVE_ISA=$(echo | "$CXX" -march=native -dM -E - 2>/dev/null |
  sed -n 's/^#define __\(AVX[A-Z0-9_]*\|FMA\|F16C\|AMX[A-Z0-9_]*\)__ 1$/\1/p' | sort | tr '\n' ' ' || true)
CPU_MODEL=$(lscpu | sed -n 's/^Model name:[[:space:]]*//p' | head -1)
BENCH_VERSION=$("$BIN/llama-bench" --version 2>&1 | head -1 || true)

python3 - "$INFO" <<EOF
import json, sys
info = {
    "source": "llama-cpp-python==$LCP_VERSION sdist, vendor/llama.cpp",
    "sdist_sha256": "$SDIST_SHA256",
    "llama_bench_version": """$BENCH_VERSION""",
    "cmake_flags": """${CMAKE_FLAGS[*]}""".split(),
    "cxx": "$CXX",
    "cxx_version": """$CXX_VERSION""",
    "cxx_flags_release": "$CXX_FLAGS_RELEASE",
    "native_flags": "$NATIVE_FLAGS",
    "native_isa": """$NATIVE_ISA""".split(),
    "cpu_model": "$CPU_MODEL",
    "targets": """${TARGETS[*]}""".split(),
}
json.dump(info, open(sys.argv[1], "w"), indent=2)
EOF
log "built; record in $INFO"
echo "$BIN"
