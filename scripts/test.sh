#!/usr/bin/env bash
# Installs dependencies, fetches the model, builds, and runs every test:
#   0. source checks: forbidden includes (tools/check_includes.py) and
#      clang-format (every tracked C++ file must be formatted);
#   1. the Release build in build/ (unit, integration and end-to-end tests),
#      then a report of every skipped test and why (tools/skip_report.py; in
#      CI a skip of a test that can run without a GPU fails the run);
#   2. a clang ASan+UBSan build in build-san/ of the engine-level unit tests
#      plus a short smoke run of each libFuzzer target (the HTTP, OpenAI JSON
#      and KV frame parsers among them);
#   3. a clang TSan build in build-tsan/ of the threaded server-side suites
#      (transport, http, tracing, the router's registry, common), against an
#      Abseil built with TSan from Debian's source (scripts/build_tsan_deps.sh,
#      cached outside the repo) so TSan sees every absl::Mutex, gRPC's too.
#      Why these suites: they own the threads (KV sender/receiver loops, the
#      HTTP server, metrics), run in seconds, and need no model; the model
#      suites under TSan would take longer than the rest of CI together.
# SKIP_SANITIZERS=1 skips steps 2 and 3; SKIP_TSAN=1 only step 3.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
JOBS=${JOBS:-$(nproc)}

scripts/install_deps.sh
scripts/fetch_model.sh

echo "== source checks =="
python3 tools/check_includes.py
unformatted=$(git ls-files '*.cc' '*.h' '*.cu' '*.cuh' | xargs clang-format --dry-run 2>&1 |
  grep -oE '^[^:]+:[0-9]+:[0-9]+: (error|warning)' | cut -d: -f1 | sort -u || true)
if [ -n "$unformatted" ]; then
  echo "clang-format: these files are not formatted (run clang-format -i on them):" >&2
  echo "$unformatted" >&2
  exit 1
fi
echo "clang-format: every tracked C++ file is formatted"

echo "== build (Release) =="
scripts/build.sh
echo "== ctest (Release) =="
ctest --test-dir build --output-on-failure -j "$JOBS" --timeout 900 \
  --output-junit "$ROOT/build/ctest-junit.xml"
STRICT_SKIPS=""
if [ "${CI:-}" = true ]; then STRICT_SKIPS=--strict; fi
python3 tools/skip_report.py build "$ROOT/build/ctest-junit.xml" $STRICT_SKIPS

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
if [ "${SKIP_SANITIZERS:-0}" != 1 ] && [ "${SKIP_TSAN:-0}" != 1 ]; then
  echo "== build (clang, TSan, server-side suites) =="
  ABSL_TSAN=$(scripts/build_tsan_deps.sh)
  TSAN_SUITES="common_test http_test tracing_test router_registry_test transport_test"
  TARGETS="$TSAN_SUITES" BUILD_DIR="$ROOT/build-tsan" scripts/build.sh \
    -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCMAKE_C_COMPILER=clang -DCMAKE_CXX_COMPILER=clang++ \
    -DPDSERVE_CUDA=OFF -DPDSERVE_BENCHMARKS=OFF -DPDSERVE_SANITIZE=thread \
    "-DCMAKE_PREFIX_PATH=$ABSL_TSAN"
  echo "== TSan =="
  for suite in $TSAN_SUITES; do
    echo "-- $suite"
    # gRPC links libabsl dynamically: the instrumented build goes first.
    LD_LIBRARY_PATH="$ABSL_TSAN/lib" \
      TSAN_OPTIONS="halt_on_error=1 second_deadlock_stack=1 suppressions=$ROOT/tests/tsan.supp" \
      timeout 900 "$ROOT/build-tsan/bin/$suite" --gtest_brief=1
  done
fi
echo "== all tests passed =="
