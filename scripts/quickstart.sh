#!/usr/bin/env bash
# Installs dependencies, fetches the model, builds, then runs the main job:
# a local disaggregated cluster (router + 1 prefill node + 1 decode node, on
# loopback) with the real model, one streamed answer through it, and the
# per-stage timing table of that request. The cluster is stopped on exit,
# whatever happens.
#   PROMPT="..." scripts/quickstart.sh     ask something else
#   PORT=52051 scripts/quickstart.sh       router port (nodes use the next
#                                          ports and PORT+100 for KV)
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
PORT=${PORT:-52051}
PROMPT=${PROMPT:-The capital of France is}
BUILD_DIR=${BUILD_DIR:-$ROOT/build}
PDSERVE="$BUILD_DIR/bin/pdserve"

scripts/install_deps.sh
scripts/fetch_model.sh
echo "== build =="
scripts/build.sh

LOG=$(mktemp -t pdserve-quickstart.XXXXXX.log)
CLUSTER_PID=""
cleanup() {
  local rc=$?
  if [ -n "$CLUSTER_PID" ] && kill -0 "$CLUSTER_PID" 2>/dev/null; then
    echo "== stopping the cluster =="
    kill -TERM "$CLUSTER_PID" 2>/dev/null || true
    for _ in $(seq 1 100); do
      kill -0 "$CLUSTER_PID" 2>/dev/null || break
      sleep 0.1
    done
    kill -KILL "$CLUSTER_PID" 2>/dev/null || true
    wait "$CLUSTER_PID" 2>/dev/null || true
  fi
  if [ $rc -ne 0 ]; then
    echo "quickstart: failed (exit $rc); cluster log:" >&2
    tail -n 40 "$LOG" >&2 || true
  fi
  rm -f "$LOG"
  exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

echo "== starting the cluster: router on 127.0.0.1:$PORT, 1 prefill node, 1 decode node =="
"$PDSERVE" cluster --prefill 1 --decode 1 --port "$PORT" --threads 1 >"$LOG" 2>&1 &
CLUSTER_PID=$!
for _ in $(seq 1 600); do
  if grep -q "cluster ready" "$LOG"; then break; fi
  if ! kill -0 "$CLUSTER_PID" 2>/dev/null; then
    echo "quickstart: the cluster exited during startup" >&2
    exit 1
  fi
  sleep 0.2
done
grep -q "cluster ready" "$LOG" || { echo "quickstart: the cluster did not become ready" >&2; exit 1; }
sed -n '/cluster ready/,$p' "$LOG" | grep -E "cluster ready|^  " || true

echo "== prompt: $PROMPT =="
"$PDSERVE" client --addr "127.0.0.1:$PORT" --prompt "$PROMPT" --temperature 0 --max-tokens 32 \
  --timings
