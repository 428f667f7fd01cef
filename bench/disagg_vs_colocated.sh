#!/usr/bin/env bash
# Disaggregated vs colocated serving on this machine, measured with
# `pdserve loadgen`:
#   colocated:     one mixed node on all the cores (--mixed 1), pinned
#   disaggregated: one prefill and one decode node, half the cores each
#                  (one each on a 2-core machine), pinned
# Workload: Poisson arrivals, prompts of ~INPUT_LEN random tokens, ~OUTPUT_LEN
# generated tokens (--ignore-eos).
#
# 1. Idle: each deployment serves IDLE_PROMPTS requests one at a time; the
#    SLOs are TTFT_SLO_SCALE x (default 3) and TPOT_SLO_SCALE x (default 1.5)
#    the slower deployment's idle p50 TTFT and TPOT, so both meet them
#    when unloaded.
# 2. Peak: each deployment gets NUM_PROMPTS at once; the sweep's rates are
#    RATE_FRACTIONS of the higher request throughput (past 1: saturation),
#    unless RATES lists them.
# 3. Sweep: both deployments, the same rates, prompts, seed and SLOs.
#
# Writes $OUT_DIR/disagg_vs_colocated.json (goodput of each = its highest
# goodput over the sweep, goodput_ratio = disaggregated / colocated, p99 TPOT
# of each at that rate, and every rate's figures), the loadgen result files,
# and SVG plots in $OUT_DIR/disagg_vs_colocated/.
#
# Every knob is an environment variable (defaults below), e.g. a quick smoke
# run:  INPUT_LEN=64 OUTPUT_LEN=8 NUM_PROMPTS=8 IDLE_PROMPTS=2 \
#       RATE_FRACTIONS="0.5 1.5" bench/disagg_vs_colocated.sh
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=${PDSERVE_BIN:-$ROOT/build/bin/pdserve}
MODEL=${MODEL:-$ROOT/models/SmolLM2-135M-Instruct.Q4_1.gguf}
INPUT_LEN=${INPUT_LEN:-512}
OUTPUT_LEN=${OUTPUT_LEN:-64}
RANGE_RATIO=${RANGE_RATIO:-0.1}
NUM_PROMPTS=${NUM_PROMPTS:-100}
IDLE_PROMPTS=${IDLE_PROMPTS:-8}
RATE_FRACTIONS=${RATE_FRACTIONS:-"0.25 0.5 0.75 1.0 1.25 1.5"}
RATES=${RATES:-}
TTFT_SLO_SCALE=${TTFT_SLO_SCALE:-3}
TPOT_SLO_SCALE=${TPOT_SLO_SCALE:-1.5}
MAX_DURATION=${MAX_DURATION:-900}
SEED=${SEED:-0}
PORT=${PORT:-47000}
CPUS=$(nproc)
THREADS_PER_NODE=${THREADS_PER_NODE:-$((CPUS / 2 > 0 ? CPUS / 2 : 1))}
OUT_DIR=${OUT_DIR:-$ROOT/bench/results}
WORK=$OUT_DIR/disagg_vs_colocated
RESULT=$OUT_DIR/disagg_vs_colocated.json

die() { echo "disagg_vs_colocated: $*" >&2; exit 1; }
[ -x "$BIN" ] || die "no pdserve binary at $BIN (scripts/build.sh, or set PDSERVE_BIN)"
[ -f "$MODEL" ] || die "no model at $MODEL: run scripts/fetch_model.sh"
command -v python3 >/dev/null || die "python3 is needed to combine the results"
mkdir -p "$WORK"

declare -A DEPLOY=(
  [colocated]="--mixed 1 --threads $((2 * THREADS_PER_NODE)) --pin"
  [disaggregated]="--prefill 1 --decode 1 --threads $THREADS_PER_NODE --pin"
)
CLUSTER_PID=

stop_cluster() {
  if [ -n "$CLUSTER_PID" ] && kill -0 "$CLUSTER_PID" 2>/dev/null; then
    kill -TERM "$CLUSTER_PID"
    wait "$CLUSTER_PID" 2>/dev/null || true
  fi
  CLUSTER_PID=
}
trap stop_cluster EXIT

# start_cluster NAME: a fresh cluster (no warm caches carried between phases).
start_cluster() {
  local name=$1 log=$WORK/$1.cluster.log
  # shellcheck disable=SC2086  # the deployment flags are words
  "$BIN" cluster --model "$MODEL" --port "$PORT" --log-level warning ${DEPLOY[$name]} \
    >"$log" 2>&1 &
  CLUSTER_PID=$!
  for _ in $(seq 1 600); do
    grep -q "cluster ready" "$log" && return 0
    kill -0 "$CLUSTER_PID" 2>/dev/null || die "$name cluster exited; see $log"
    sleep 0.5
  done
  die "$name cluster not ready after 300 s; see $log"
}

# run_loadgen NAME FILE FLAGS...: one loadgen invocation on the running cluster.
run_loadgen() {
  local name=$1 file=$2
  shift 2
  "$BIN" loadgen --target "grpc://127.0.0.1:$PORT" --label "$name" --seed "$SEED" \
    --random-input-len "$INPUT_LEN" --random-output-len "$OUTPUT_LEN" \
    --random-range-ratio "$RANGE_RATIO" --ignore-eos --max-duration "$MAX_DURATION" \
    --no-progress --result-json "$file" "$@"
  kill -0 "$CLUSTER_PID" 2>/dev/null || die "$name cluster died during the run; see $WORK/$name.cluster.log"
}

echo "== idle and peak ($INPUT_LEN in, $OUTPUT_LEN out, $CPUS CPUs) =="
for name in colocated disaggregated; do
  start_cluster "$name"
  run_loadgen "$name" "$WORK/$name.idle.json" --num-prompts "$IDLE_PROMPTS" --max-concurrency 1 \
    --num-warmups 1
  run_loadgen "$name" "$WORK/$name.peak.json" --num-prompts "$NUM_PROMPTS" --request-rate inf
  stop_cluster
done

read -r SLO_TTFT SLO_TPOT SWEEP < <(python3 - "$WORK" "$TTFT_SLO_SCALE" "$TPOT_SLO_SCALE" "$RATE_FRACTIONS" "$RATES" <<'EOF'
import json, sys
work, ttft_scale, tpot_scale = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
fractions, rates = sys.argv[4].split(), sys.argv[5]
def run(name, phase):
    return json.load(open(f"{work}/{name}.{phase}.json"))["runs"][0]
names = ["colocated", "disaggregated"]
ttft = max(run(n, "idle")["ttft_ms"]["p50"] for n in names) * ttft_scale
tpot = max(run(n, "idle")["tpot_ms"]["p50"] for n in names) * tpot_scale
if rates.strip():
    sweep = ",".join(rates.replace(",", " ").split())
else:
    peak = max(run(n, "peak")["request_throughput"] for n in names)
    sweep = ",".join(f"{peak * float(f):.3g}" for f in fractions)
print(f"{ttft:.1f} {tpot:.1f} {sweep}")
EOF
)
echo "== sweep: rates $SWEEP req/s; SLOs ttft <= $SLO_TTFT ms, tpot <= $SLO_TPOT ms =="
for name in colocated disaggregated; do
  start_cluster "$name"
  run_loadgen "$name" "$WORK/$name.sweep.json" --num-prompts "$NUM_PROMPTS" --sweep "$SWEEP" \
    --burstiness 1 --num-warmups 2 --goodput "ttft:$SLO_TTFT" "tpot:$SLO_TPOT" \
    --detailed-csv "$WORK/$name.sweep.csv" --plot-dir "$WORK/$name"
  stop_cluster
done
"$BIN" loadgen --compare "$WORK/colocated.sweep.json" "$WORK/disaggregated.sweep.json" \
  --plot-dir "$WORK"

python3 - "$WORK" "$RESULT" "$TTFT_SLO_SCALE $TPOT_SLO_SCALE" "${DEPLOY[colocated]}" "${DEPLOY[disaggregated]}" <<'EOF'
import json, sys
work, result_path = sys.argv[1], sys.argv[2]
ttft_scale, tpot_scale = (float(x) for x in sys.argv[3].split())
names = ["colocated", "disaggregated"]
def load(name, phase):
    return json.load(open(f"{work}/{name}.{phase}.json"))
out = {"experiment": "disaggregated vs colocated serving, Poisson arrivals"}
sweep = {n: load(n, "sweep") for n in names}
meta = sweep["colocated"]["metadata"]
args = meta["arguments"]
out["model"] = meta["model"]
out["machine"] = meta["machine"]
out["workload"] = {k: args[k] for k in ("random-input-len", "random-output-len",
                                        "random-range-ratio", "num-prompts", "seed")}
out["deployments"] = {n: f"pdserve cluster {flags}" for n, flags in zip(names, sys.argv[4:6])}
out["slo"] = dict(sweep["colocated"]["slo"])
out["slo"]["derived_from"] = {
    n: {"idle_ttft_p50_ms": load(n, "idle")["runs"][0]["ttft_ms"]["p50"],
        "idle_tpot_p50_ms": load(n, "idle")["runs"][0]["tpot_ms"]["p50"],
        "idle_itl_p99_ms": load(n, "idle")["runs"][0]["itl_ms"]["p99"],
        "peak_request_throughput": load(n, "peak")["runs"][0]["request_throughput"]}
    for n in names}
out["slo"]["ttft_scale"] = ttft_scale
out["slo"]["tpot_scale"] = tpot_scale
for n in names:
    runs = sweep[n]["runs"]
    by_rate = [{"request_rate": r["request_rate"], "request_throughput": r["request_throughput"],
                "goodput": r["goodput"], "slo_attainment": r["slo_attainment"],
                "p99_ttft_ms": r["ttft_ms"]["p99"], "p99_tpot_ms": r["tpot_ms"]["p99"],
                "p99_itl_ms": r["itl_ms"]["p99"],
                "completed": r["completed"], "failed": r["failed"], "cancelled": r["cancelled"]}
               for r in runs]
    best = max(by_rate, key=lambda r: r["goodput"] or 0.0)
    out[n] = {"goodput": best["goodput"], "goodput_at_rate": best["request_rate"],
              "p99_tpot_ms": best["p99_tpot_ms"], "p99_ttft_ms": best["p99_ttft_ms"],
              "p99_itl_ms": best["p99_itl_ms"],
              "idle_itl_p99_ms": load(n, "idle")["runs"][0]["itl_ms"]["p99"],
              "idle_itl_p50_ms": load(n, "idle")["runs"][0]["itl_ms"]["p50"],
              "max_rate_at_90pct_slo_attainment":
                  sweep[n].get("sweep", {}).get("max_rate_at_90pct_slo_attainment"),
              "by_rate": by_rate, "result_file": f"{work}/{n}.sweep.json"}
c, d = out["colocated"]["goodput"] or 0.0, out["disaggregated"]["goodput"] or 0.0
out["goodput_ratio"] = d / c if c > 0 else None
out["p99_tpot_ms"] = {n: out[n]["p99_tpot_ms"] for n in names}
# Under load (at the best-goodput rate), p99 ITL against the idle p50 ITL.
out["itl_load_over_idle"] = {n: out[n]["p99_itl_ms"] / out[n]["idle_itl_p50_ms"]
                             if out[n]["idle_itl_p50_ms"] else None for n in names}
out["plots"] = work
json.dump(out, open(result_path, "w"), indent=2)
print(f"goodput: colocated {c:.3f} req/s, disaggregated {d:.3f} req/s, ratio "
      f"{out['goodput_ratio'] if out['goodput_ratio'] is None else round(out['goodput_ratio'], 3)}")
print(f"p99 TPOT at those rates: colocated {out['p99_tpot_ms']['colocated']} ms, "
      f"disaggregated {out['p99_tpot_ms']['disaggregated']} ms")
print(f"p99 ITL under load / idle p50 ITL: {out['itl_load_over_idle']}")
print(f"wrote {result_path} and plots in {work}/")
EOF
