#!/usr/bin/env bash
# pdserve against llama.cpp's llama-server: the same model, the same cores,
# the same load, one client (`pdserve loadgen` over OpenAI-compatible HTTP
# with SSE streaming on /v1/completions, so both servers see the same
# requests through the same protocol).
#
# Targets, one at a time, each on all the machine's CPUs:
#   llama.cpp:             llama-server tuned as its README advises for a CPU:
#                          threads = cores for generation (-t) and prompt
#                          batches (-tb), SLOTS parallel slots with
#                          continuous batching, the logical and physical
#                          batch sizes spelled out; the exact command line is
#                          recorded in the result
#   pdserve colocated:     pdserve cluster --mixed 1 --threads CPUS --pin
#   pdserve disaggregated: pdserve cluster --prefill 1 --decode 1 (half the
#                          CPUs each) --pin
#
# The method, so that neither server is judged against a bar it cannot meet:
#   1. Calibration, per target: idle latency (one request at a time, 6
#      requests) and capacity (closed loop, SLOTS*2 in flight, 16 requests).
#   2. One common SLO above both: the TTFT and TPOT SLOs are SLO_FACTOR (3)
#      times the larger idle p50 of the targets (or SLO_TTFT_MS / SLO_TPOT_MS
#      when set).
#   3. Rates: FRACTIONS of the slowest target's capacity, from 0.1 upward.
#   4. REPS repetitions (3). In each, every target runs every rate, targets in
#      turn, so drift on a shared machine falls on all of them. Each run has
#      prompts of its own (a seed per rate and repetition: a prompt seen
#      before would hit llama-server's slot cache or pdserve's prefix cache)
#      and 2 warm-up requests whose prompts are not measured.
#   5. Reported: per target and rate, the median goodput over the
#      repetitions with its range, and the medians of p50/p99 TTFT and TPOT.
#
# llama-server is not a Debian package here: `BUILD_SERVER=1
# bench/build_llama_cpp.sh` builds it (Release, native CPU flags); this
# script uses that build unless LLAMA_SERVER names another binary.
# Writes $OUT_DIR/peer_llama_server.json and the per-run loadgen results,
# plus comparison plots, in $OUT_DIR/peer_llama_server/.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=${PDSERVE_BIN:-$ROOT/build/bin/pdserve}
MODEL=${MODEL:-$ROOT/models/SmolLM2-135M-Instruct.Q4_1.gguf}
LLAMA_SERVER=${LLAMA_SERVER:-$(command -v llama-server || true)}
if [ -z "$LLAMA_SERVER" ] && [ -x "$HOME/.cache/pdserve/llama.cpp-0.3.36/bin/llama-server" ]; then
  LLAMA_SERVER=$HOME/.cache/pdserve/llama.cpp-0.3.36/bin/llama-server
fi
INPUT_LEN=${INPUT_LEN:-512}
OUTPUT_LEN=${OUTPUT_LEN:-64}
RANGE_RATIO=${RANGE_RATIO:-0.1}
FRACTIONS=${FRACTIONS:-"0.1,0.3,0.5,0.7,0.9"}
RUN_SECONDS=${RUN_SECONDS:-60} # arrivals per run: rate * RUN_SECONDS, at least MIN_PROMPTS
MIN_PROMPTS=${MIN_PROMPTS:-12}
REPS=${REPS:-3}
SLO_FACTOR=${SLO_FACTOR:-3}
SLO_TTFT_MS=${SLO_TTFT_MS:-}
SLO_TPOT_MS=${SLO_TPOT_MS:-}
SLOTS=${SLOTS:-4}
BATCH=${BATCH:-2048}
UBATCH=${UBATCH:-512}
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
case " $TARGETS " in
  *" llama.cpp "*)
    [ -n "$LLAMA_SERVER" ] && [ -x "$LLAMA_SERVER" ] ||
      die "no llama-server: BUILD_SERVER=1 bench/build_llama_cpp.sh, or set LLAMA_SERVER"
    ;;
esac
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

LLAMA_CMD=()
start_target() {
  local name=$1 log=$WORK/$1.server.log
  case $name in
    llama.cpp)
      # Its README's CPU advice: -t and -tb at the core count, -np slots with
      # continuous batching (-cb), -c the whole context divided among the
      # slots, -b / -ub the logical and physical batch (its defaults, spelled
      # out so that the record shows them).
      LLAMA_CMD=("$LLAMA_SERVER" -m "$MODEL" -t "$CPUS" -tb "$CPUS" -np "$SLOTS" -cb
        -c $((SLOTS * (INPUT_LEN * 2 + OUTPUT_LEN * 2))) -b "$BATCH" -ub "$UBATCH"
        --host 127.0.0.1 --port "$HTTP_PORT")
      taskset -c "0-$((CPUS - 1))" "${LLAMA_CMD[@]}" >"$log" 2>&1 &
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

# load OUT SEED NAME [loadgen flags...]: one loadgen run against the target.
load() {
  local out=$1 seed=$2 name=$3
  shift 3
  "$BIN" loadgen --target "http://127.0.0.1:$HTTP_PORT" --label "$name" --seed "$seed" \
    --random-input-len "$INPUT_LEN" --random-output-len "$OUTPUT_LEN" \
    --random-range-ratio "$RANGE_RATIO" --ignore-eos --num-warmups 2 \
    --max-duration "$MAX_DURATION" --no-progress --result-json "$out" "$@" >"$out.txt" 2>&1 ||
    die "loadgen failed against $name; see $out.txt"
  kill -0 "$SERVER_PID" 2>/dev/null || die "$name died during the run; see $WORK/$name.server.log"
}

# --- 1. calibration ---------------------------------------------------------
echo "== calibration: idle latency and capacity per target"
for name in $TARGETS; do
  start_target "$name"
  load "$WORK/$name.idle.json" $((SEED + 9000)) "$name" --num-prompts 6 --max-concurrency 1
  load "$WORK/$name.capacity.json" $((SEED + 9100)) "$name" --num-prompts 16 \
    --max-concurrency $((SLOTS * 2))
  stop_server
done
# shellcheck disable=SC2086  # TARGETS are words
read -r SLO_TTFT SLO_TPOT RATES < <(python3 - "$WORK" "$SLO_FACTOR" "$FRACTIONS" \
  "${SLO_TTFT_MS:-0}" "${SLO_TPOT_MS:-0}" $TARGETS <<'PY'
import json, sys
work, factor, fractions = sys.argv[1], float(sys.argv[2]), [float(f) for f in sys.argv[3].split(",")]
ttft_set, tpot_set, names = float(sys.argv[4]), float(sys.argv[5]), sys.argv[6:]
idle = {n: json.load(open(f"{work}/{n}.idle.json"))["runs"][0] for n in names}
cap = {n: json.load(open(f"{work}/{n}.capacity.json"))["runs"][0]["request_throughput"]
       for n in names}
ttft = ttft_set or factor * max(r["ttft_ms"]["p50"] for r in idle.values())
tpot = tpot_set or factor * max(r["tpot_ms"]["p50"] for r in idle.values())
slowest = min(cap.values())
print(round(ttft), round(tpot, 1), ",".join(f"{slowest * f:.3g}" for f in fractions))
PY
)
echo "   common SLO: TTFT <= $SLO_TTFT ms, TPOT <= $SLO_TPOT ms; rates $RATES req/s"

# --- 2. the sweep, REPS times, targets in turn --------------------------------
IFS=, read -r -a rate_list <<<"$RATES"
for rep in $(seq 1 "$REPS"); do
  for name in $TARGETS; do
    echo "== repetition $rep: $name"
    start_target "$name"
    for i in "${!rate_list[@]}"; do
      rate=${rate_list[$i]}
      n=$(python3 -c "print(max($MIN_PROMPTS, round($rate * $RUN_SECONDS)))")
      load "$WORK/$name.rep$rep.rate$i.json" $((SEED + 100 * rep + i)) "$name" \
        --num-prompts "$n" --request-rate "$rate" --goodput "ttft:$SLO_TTFT" "tpot:$SLO_TPOT"
    done
    stop_server
  done
done

# --- 3. report ------------------------------------------------------------------
files=()
for name in $TARGETS; do
  # The first repetition's runs as one sweep, for --compare's table and plots.
  python3 - "$WORK/$name.json" "${#rate_list[@]}" "$WORK/$name.rep1" <<'PY'
import json, sys
out, n, prefix = sys.argv[1], int(sys.argv[2]), sys.argv[3]
runs = [json.load(open(f"{prefix}.rate{i}.json")) for i in range(n)]
merged = runs[0]
merged["runs"] = [r["runs"][0] for r in runs]
json.dump(merged, open(out, "w"), indent=2)
PY
  files+=("$WORK/$name.json")
done
"$BIN" loadgen --compare "${files[@]}" --plot-dir "$WORK"

# shellcheck disable=SC2086  # TARGETS are words
python3 - "$RESULT" "$WORK" "$REPS" "$RATES" "$SLO_TTFT" "$SLO_TPOT" "$SLO_FACTOR" \
  "${LLAMA_CMD[*]:-}" $TARGETS <<'PY'
import json, statistics, sys
result_path, work, reps, rates, slo_ttft, slo_tpot, factor, llama_cmd = sys.argv[1:9]
names = sys.argv[9:]
reps, rates = int(reps), [float(r) for r in rates.split(",")]
out = {"experiment": "pdserve against llama.cpp's llama-server over OpenAI HTTP, Poisson arrivals",
       "method": f"common SLO = {factor} x the larger idle p50 of the targets; rates = fractions "
                 "of the slowest target's closed-loop capacity; "
                 f"{reps} repetitions, targets in turn, fresh prompts per run, warm-up prompts "
                 "not measured; medians over the repetitions",
       "slo": {"ttft_ms": float(slo_ttft), "tpot_ms": float(slo_tpot)},
       "llama_server_command": llama_cmd.split(), "targets": {}}
med = statistics.median
for n in names:
    idle = json.load(open(f"{work}/{n}.idle.json"))
    cap = json.load(open(f"{work}/{n}.capacity.json"))["runs"][0]
    out.setdefault("machine", idle["metadata"].get("machine"))
    by_rate = []
    for i, rate in enumerate(rates):
        runs = [json.load(open(f"{work}/{n}.rep{r}.rate{i}.json"))["runs"][0]
                for r in range(1, reps + 1)]
        g = [x["goodput"] or 0.0 for x in runs]
        by_rate.append({"request_rate": rate, "goodput_median": med(g), "goodput_min": min(g),
                        "goodput_max": max(g),
                        "p50_ttft_ms": med([x["ttft_ms"]["p50"] for x in runs]),
                        "p99_ttft_ms": med([x["ttft_ms"]["p99"] for x in runs]),
                        "p50_tpot_ms": med([x["tpot_ms"]["p50"] for x in runs]),
                        "p99_tpot_ms": med([x["tpot_ms"]["p99"] for x in runs]),
                        "completed": sum(x["completed"] for x in runs),
                        "failed": sum(x["failed"] for x in runs)})
    best = max(by_rate, key=lambda x: x["goodput_median"])
    out["targets"][n] = {"idle_p50_ttft_ms": idle["runs"][0]["ttft_ms"]["p50"],
                         "idle_p50_tpot_ms": idle["runs"][0]["tpot_ms"]["p50"],
                         "capacity_req_per_s": cap["request_throughput"],
                         "best_goodput_median": best["goodput_median"],
                         "at_rate": best["request_rate"], "by_rate": by_rate}
json.dump(out, open(result_path, "w"), indent=2)
print(f"SLO: TTFT <= {slo_ttft} ms, TPOT <= {slo_tpot} ms")
for n, t in out["targets"].items():
    print(f"{n}: idle TTFT p50 {t['idle_p50_ttft_ms']:.0f} ms, TPOT p50 "
          f"{t['idle_p50_tpot_ms']:.1f} ms, capacity {t['capacity_req_per_s']:.2f} req/s; best "
          f"median goodput {t['best_goodput_median']:.3f} req/s at {t['at_rate']:.3g} req/s")
print(f"wrote {result_path}")
PY
