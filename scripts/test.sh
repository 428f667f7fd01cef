#!/usr/bin/env bash
# Installs dependencies, fetches the model, builds, and runs every test:
#   1. the Release build in build/ (unit, integration and end-to-end tests);
#   2. a clang ASan+UBSan build in build-san/ of the engine-level unit tests
#      plus a short smoke run of each libFuzzer target.
# SKIP_SANITIZERS=1 skips step 2.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
JOBS=${JOBS:-$(nproc)}

scripts/install_deps.sh
scripts/fetch_model.sh

echo "== build (Release) =="
scripts/build.sh
echo "== ctest (Release) =="
ctest --test-dir build --output-on-failure -j "$JOBS" --timeout 900

if [ "${SKIP_SANITIZERS:-0}" != 1 ]; then
  echo "== build (clang, ASan+UBSan, fuzzers) =="
  BUILD_DIR="$ROOT/build-san" scripts/build.sh -DCMAKE_BUILD_TYPE=RelWithDebInfo \
    -DCMAKE_C_COMPILER=clang -DCMAKE_CXX_COMPILER=clang++ -DPDSERVE_SERVER=OFF \
    -DPDSERVE_CUDA=OFF -DPDSERVE_BENCHMARKS=OFF "-DPDSERVE_SANITIZE=address;undefined" \
    -DPDSERVE_FUZZ=ON
  echo "== ctest (ASan+UBSan, fuzz smoke) =="
  ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1 \
    ctest --test-dir build-san --output-on-failure -j "$JOBS" --timeout 900 -LE model
fi
echo "== all tests passed =="
