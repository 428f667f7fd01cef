#!/usr/bin/env bash
# pdserve against llama.cpp's llama-server: the same model, the same cores,
# the same load, one client (`pdserve loadgen` over OpenAI-compatible HTTP
# with SSE streaming on /v1/completions, so both servers see the same
# requests through the same protocol).
#
# Targets, one at a time, each on all the machine's CPUs:
#   llama.cpp:             llama-server -t CPUS -np SLOTS (continuous batching)
#   pdserve colocated:     pdserve cluster --mixed 1 --threads CPUS --http-port
#   pdserve disaggregated: pdserve cluster --prefill 1 --decode 1 (half the
#                          CPUs each) --http-port
# Workload: Poisson arrivals at each of RATES (fresh prompts per rate),
# ~INPUT_LEN-token prompts (random words), OUTPUT_LEN generated tokens
# (--ignore-eos); goodput against user-facing SLOs (TTFT <= SLO_TTFT_MS,
# TPOT <= SLO_TPOT_MS).
#
# llama-server is not a Debian package here: build llama.cpp and point
# LLAMA_SERVER at the binary (or put it on PATH).
# Writes $OUT_DIR/peer_llama_server.json and the per-target loadgen results,
# plus comparison plots, in $OUT_DIR/peer_llama_server/.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=${PDSERVE_BIN:-$ROOT/build/bin/pdserve}
MODEL=${MODEL:-$ROOT/models/SmolLM2-135M-Instruct.Q4_1.gguf}
LLAMA_SERVER=${LLAMA_SERVER:-$(command -v llama-server || true)}
INPUT_LEN=${INPUT_LEN:-512}
OUTPUT_LEN=${OUTPUT_LEN:-64}
RANGE_RATIO=${RANGE_RATIO:-0.1}
NUM_PROMPTS=${NUM_PROMPTS:-40}
RATES=${RATES:-"0.25,0.5,1,2"}
SLO_TTFT_MS=${SLO_TTFT_MS:-2000}
SLO_TPOT_MS=${SLO_TPOT_MS:-50}
SLOTS=${SLOTS:-4}
MAX_DURATION=${MAX_DURATION:-240}
SEED=${SEED:-0}
PORT=${PORT:-47100}
HTTP_PORT=${HTTP_PORT:-47180}
TARGETS=${TARGETS:-"llama.cpp pdserve-colocated pdserve-disaggregated"}
CPUS=$(nproc)
HALF=$((CPUS / 2 > 0 ? CPUS / 2 : 1))
OUT_DIR=${OUT_DIR:-$ROOT/bench/results}
WORK=$OUT_DIR/peer_llama_server
RESULT=$OUT_DIR/peer_llama_server.json

die() { echo "peer_llama_server: $*" >&2; exit 1; }
[ -x "$BIN" ] || die "no pdserve binary at $BIN (scripts/build.sh, or set PDSERVE_BIN)"
[ -f "$MODEL" ] || die "no model at $MODEL: run scripts/fetch_model.sh"
[ -n "$LLAMA_SERVER" ] && [ -x "$LLAMA_SERVER" ] ||
  die "no llama-server: set LLAMA_SERVER to llama.cpp's llama-server binary"
command -v curl >/dev/null || die "curl is needed to wait for the servers"
mkdir -p "$WORK"

SERVER_PID=
stop_server() {
  if [ -n "$SERVER_PID" ] && kill -0 "$SERVER_PID" 2>/dev/null; then
    kill -TERM "$SERVER_PID"
    wait "$SERVER_PID" 2>/dev/null || true
  fi
  SERVER_PID=
}
trap stop_server EXIT

# wait_http LOG URL: until URL answers 200 (the server loaded the model).
wait_http() {
  local log=$1 url=$2
  for _ in $(seq 1 600); do
    curl -sf -o /dev/null "$url" && return 0
    kill -0 "$SERVER_PID" 2>/dev/null || die "server exited; see $log"
    sleep 0.5
  done
  die "server not ready after 300 s; see $log"
}

start_target() {
  local name=$1 log=$WORK/$1.server.log
  case $name in
    llama.cpp)
      # Each slot holds one request's context; SLOTS of them run batched.
      taskset -c "0-$((CPUS - 1))" "$LLAMA_SERVER" -m "$MODEL" -t "$CPUS" -tb "$CPUS" \
        -np "$SLOTS" -c $((SLOTS * (INPUT_LEN * 2 + OUTPUT_LEN * 2))) \
        --host 127.0.0.1 --port "$HTTP_PORT" >"$log" 2>&1 &
      SERVER_PID=$!
      wait_http "$log" "http://127.0.0.1:$HTTP_PORT/health"
      ;;
    pdserve-colocated | pdserve-disaggregated)
      local deploy="--mixed 1 --threads $CPUS --pin"
      [ "$name" = pdserve-disaggregated ] && deploy="--prefill 1 --decode 1 --threads $HALF --pin"
      # shellcheck disable=SC2086  # the deployment flags are words
      "$BIN" cluster --model "$MODEL" --port "$PORT" --http-port "$HTTP_PORT" \
        --log-level warning $deploy >"$log" 2>&1 &
      SERVER_PID=$!
      wait_http "$log" "http://127.0.0.1:$HTTP_PORT/v1/models"
      ;;
    *) die "unknown target $name" ;;
  esac
}

files=()
IFS=, read -r -a rate_list <<<"$RATES"
for name in $TARGETS; do
  echo "== $name =="
  start_target "$name"
  # One run per rate, each with prompts of its own (seed + i): a prompt seen
  # at an earlier rate would hit llama-server's slot cache or pdserve's
  # prefix cache and flatter the later rate.
  per_rate=()
  for i in "${!rate_list[@]}"; do
    "$BIN" loadgen --target "http://127.0.0.1:$HTTP_PORT" --label "$name" \
      --seed $((SEED + i)) --random-input-len "$INPUT_LEN" --random-output-len "$OUTPUT_LEN" \
      --random-range-ratio "$RANGE_RATIO" --ignore-eos --num-prompts "$NUM_PROMPTS" \
      --request-rate "${rate_list[$i]}" --num-warmups 2 --max-duration "$MAX_DURATION" \
      --goodput "ttft:$SLO_TTFT_MS" "tpot:$SLO_TPOT_MS" --no-progress \
      --result-json "$WORK/$name.rate$i.json"
    kill -0 "$SERVER_PID" 2>/dev/null || die "$name died during the run; see $WORK/$name.server.log"
    per_rate+=("$WORK/$name.rate$i.json")
  done
  stop_server
  # The per-rate files as one sweep result, for --compare.
  python3 - "$WORK/$name.json" "${per_rate[@]}" <<'EOF'
import json, sys
merged = json.load(open(sys.argv[2]))
merged["runs"] = [json.load(open(f))["runs"][0] for f in sys.argv[2:]]
json.dump(merged, open(sys.argv[1], "w"), indent=2)
EOF
  files+=("$WORK/$name.json")
done
"$BIN" loadgen --compare "${files[@]}" --plot-dir "$WORK"

python3 - "$RESULT" "${files[@]}" <<'EOF'
import json, sys
result_path, files = sys.argv[1], sys.argv[2:]
out = {"experiment": "pdserve against llama.cpp's llama-server over OpenAI HTTP, Poisson arrivals",
       "targets": {}}
for f in files:
    r = json.load(open(f))
    meta = r["metadata"]
    out.setdefault("machine", meta.get("machine"))
    out.setdefault("slo", r.get("slo"))
    runs = [{"request_rate": x["request_rate"], "request_throughput": x["request_throughput"],
             "output_throughput": x["output_throughput"], "goodput": x["goodput"],
             "p50_ttft_ms": x["ttft_ms"]["p50"], "p99_ttft_ms": x["ttft_ms"]["p99"],
             "p50_tpot_ms": x["tpot_ms"]["p50"], "p99_tpot_ms": x["tpot_ms"]["p99"],
             "p99_itl_ms": x["itl_ms"]["p99"], "completed": x["completed"], "failed": x["failed"]}
            for x in r["runs"]]
    best = max(runs, key=lambda x: x["goodput"] or 0.0)
    out["targets"][meta["label"]] = {"best_goodput": best["goodput"],
                                      "at_rate": best["request_rate"], "by_rate": runs,
                                      "result_file": f}
json.dump(out, open(result_path, "w"), indent=2)
for name, t in out["targets"].items():
    print(f"{name}: best goodput {t['best_goodput']} req/s at {t['at_rate']} req/s")
print(f"wrote {result_path}")
EOF
