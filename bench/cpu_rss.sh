#!/usr/bin/env bash
# Peak resident memory (/usr/bin/time -v "Maximum resident set size") of
# CPU-only pdserve processes: `pdserve --help`, a router, and a prefill and a
# decode node (1 thread each) on the bundled model that serve one request
# through that router; and whether any of them mapped a CUDA library
# (/proc/PID/maps: libcuda, libcudart, libcublas, libnccl).
#
#   bench/cpu_rss.sh [path/to/pdserve] [base_port]
#
# Uses base_port .. base_port+3. Every wait has a deadline; the processes it
# starts are stopped by pid on exit.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PDSERVE=${1:-$ROOT/build/bin/pdserve}
PORT=${2:-33100}
MODEL=${MODEL:-$ROOT/models/SmolLM2-135M-Instruct.Q4_1.gguf}
LOG=$(mktemp -d)
timers=()
cleanup() {
  for t in "${timers[@]}"; do
    for c in $(pgrep -P "$t" 2>/dev/null); do kill "$c" 2>/dev/null || true; done
  done
  wait 2>/dev/null || true
  rm -rf "$LOG"
}
trap cleanup EXIT

# Waits up to $2 seconds for "$1" (a command) to succeed.
wait_for() {
  local deadline=$((SECONDS + $2))
  until eval "$1" >/dev/null 2>&1; do
    [ $SECONDS -lt $deadline ] || { echo "cpu_rss: timed out waiting for: $1" >&2; exit 1; }
    sleep 0.5
  done
}
# Starts "$@" under /usr/bin/time -v; sets REPLY to the pdserve pid.
start() {
  local name=$1
  shift
  /usr/bin/time -v -o "$LOG/$name.time" "$@" >"$LOG/$name.log" 2>&1 &
  timers+=($!)
  local t=$!
  wait_for "pgrep -P $t" 10
  REPLY=$(pgrep -P "$t")
}
cuda_maps() { grep -cE 'libcuda|libcudart|libcublas|libnccl' "/proc/$1/maps" || true; }
peak_mib() { awk -F: '/Maximum resident set size/ { printf "%.0f", $2 / 1024 }' "$1"; }

/usr/bin/time -v -o "$LOG/help.time" "$PDSERVE" --help >/dev/null 2>&1 || true
printf '%-34s peak RSS %5s MiB\n' "pdserve --help" "$(peak_mib "$LOG/help.time")"

start router "$PDSERVE" router --model "$MODEL" --listen "127.0.0.1:$PORT"
ROUTER=$REPLY
wait_for "ss -ltn | grep -q ':$PORT '" 30
start prefill "$PDSERVE" prefill --model "$MODEL" --threads 1 --listen "127.0.0.1:$((PORT + 1))" \
  --router "127.0.0.1:$PORT"
PREFILL=$REPLY
start decode "$PDSERVE" decode --model "$MODEL" --threads 1 --listen "127.0.0.1:$((PORT + 2))" \
  --kv-port $((PORT + 3)) --router "127.0.0.1:$PORT"
DECODE=$REPLY
wait_for "ss -ltn | grep -q ':$((PORT + 1)) ' && ss -ltn | grep -q ':$((PORT + 2)) '" 60
# One request through the cluster (retried while the nodes register).
wait_for "timeout 60 '$PDSERVE' client --addr 127.0.0.1:$PORT --prompt 'The capital of France is' \
  -n 16 --temperature 0" 90
maps_router=$(cuda_maps "$ROUTER")
maps_prefill=$(cuda_maps "$PREFILL")
maps_decode=$(cuda_maps "$DECODE")
for p in "$DECODE" "$PREFILL" "$ROUTER"; do kill "$p"; done
for t in "${timers[@]}"; do
  deadline=$((SECONDS + 40))
  while kill -0 "$t" 2>/dev/null; do
    [ $SECONDS -lt $deadline ] || { echo "cpu_rss: a process did not exit" >&2; exit 1; }
    sleep 0.2
  done
done
timers=()
printf '%-34s peak RSS %5s MiB  CUDA library mappings: %s\n' \
  "router" "$(peak_mib "$LOG/router.time")" "$maps_router" \
  "prefill node, cpu, 1 thread" "$(peak_mib "$LOG/prefill.time")" "$maps_prefill" \
  "decode node, cpu, 1 thread" "$(peak_mib "$LOG/decode.time")" "$maps_decode"
