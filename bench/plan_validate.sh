#!/usr/bin/env bash
# Validates `pdserve plan` against measured runs on this machine:
#   1. profiles this machine's engine (`pdserve bench --profile`): one CPU
#      thread (a disaggregated node's share) alone (with a peer engine on the
#      other CPUs for its decode steps after another node's prompt:
#      --peer-cpus), the same again while a
#      representative load (`pdserve bench` in a loop: 512-token prefills,
#      then batch-8 decode) runs on the other CPUs, stored as the profile's
#      co-run cost (the 1P1D nodes share this machine's L3 and memory), and
#      all CPUs (a colocated node); with PROFILE_EACH_REP=1 (default) measured
#      again before every repetition after the first, into rep<K>/, and that
#      repetition's runs are predicted with them (the machine drifts),
#      and once more after the last: a repetition whose profiles before and
#      after differ by more than DRIFT_MAX (10%: the fitted 512-token
#      prefill and batch-1 decode at 512 tokens of context) is marked as
#      drifted in drift.json, and the summary adds the bounds over the
#      repetitions that did not drift, beside those over all of them;
#   2. sizes the deployments with `pdserve plan` (DEPLOYMENTS=auto): every
#      deployment that fits this machine's CPUs (colocated1: one node on all
#      CPUs; colocated2: two nodes, half each; 1P1D: half each) gets a
#      simulated goodput-against-rate sweep at the comparison SLO
#      (CMP_TTFT_SCALE x and CMP_TPOT_SCALE x the slower candidate's idle
#      p50s: bench/disagg_vs_colocated.sh's rule), written to sizing.json;
#      the best colocated and the best disaggregated one are measured;
#   3. measures those deployments with `pdserve loadgen` at each rate, REPS
#      times (repetitions interleaved: every deployment and rate once, then
#      again), each rate: RATES, or with
#      RATES=auto (default) RATE_FRACTIONS of each deployment's capacity
#      (the profile's simulated throughput with every request queued at
#      once); Poisson arrivals, fresh prompts per run (seed SEED + rate
#      index + 1000 x repetition), a warm-up run with prompts of another seed
#      first, then a probe (PROBE_PROMPTS, default 3, of a third seed, one
#      at a time, timed by the nodes' step logs); per rate
#      rate x RUN_SECONDS prompts (auto: SWEEP_SECONDS of arrivals per
#      deployment, shared evenly by its rates), at least MIN_PROMPTS and at
#      most NUM_PROMPTS; SLO_TTFT/SLO_TPOT=auto: 3x the slower deployment's
#      simulated idle p50 (1P1D's, one thread);
#   4. runs `pdserve plan` with the same profile on each measured run as it
#      was sent (--replay-csv: loadgen's per-request start offsets and
#      lengths), writing the simulated requests beside the measured ones;
#      and once more with each node's speed during the run (its step log,
#      `--step-log-dir`, against the profile: bench/step_log_report.py),
#      which sets the machine's drift apart from the simulator's own error;
#      and with each node's speed over the probe just before the run: a
#      prediction made before the run with the machine's speed of that
#      minute (this VM's speed moves by up to 1.6x within minutes); and
#      with each node's speed during the deployment's previous run (a
#      prediction from the recent past, as a planner fed by the cluster's
#      step logs would make);
#   5. writes $OUT_DIR/plan_validation.json: for each deployment and rate,
#      the medians over its repetitions of predicted and measured goodput,
#      p50/p99 TTFT and TPOT, their relative errors, whether each is within
#      the issue's bounds (goodput 15%, latencies 20%), the measured range,
#      and every run's own figures; and, at the comparison SLO, each
#      measured deployment's best goodput (measured and predicted, from the
#      per-request records) and the disaggregated/colocated goodput ratio.
#
# COMMITTED=1 measures nothing: it predicts the committed quiet-machine sweep
# of bench/disagg_vs_colocated.sh (bench/results/disagg_vs_colocated/, its
# runs replayed from the per-request CSV, the 2 warm-up prompts it replayed
# as prefix-cache hits) with the idle-calibrated profiles in
# $OUT_DIR/plan_validation/profile_quiet_t{1,2}.json.
#
# PREDICT_ONLY=1 measures nothing either: it predicts the runs already
# measured in $OUT_DIR/plan_validation/$TAG/ (at their SLO) again with the
# profiles in PROFILE_DIR (default: that directory), writing the predictions
# beside those profiles; for profiles re-measured after a sweep
# (PROFILES_ONLY=1 measures them into $TAG/$PROFILES_SUBDIR). RESULT names
# the summary file (default $OUT_DIR/plan_validation.json).
#
# Files go to $OUT_DIR/plan_validation/$TAG/ (TAG: this machine's CPU model,
# family/model and CPU count, so sweeps of different machines sit side by
# side) and the summary to $OUT_DIR/plan_validation.json, with lscpu's model
# and the load average before and after.
#
# Every knob is an environment variable (defaults below); a smoke run:
#   NUM_PROMPTS=8 MIN_PROMPTS=8 RATE_FRACTIONS="0.5" INPUT_LEN=64 OUTPUT_LEN=8 OUT_DIR=/tmp/pv \
#     bench/plan_validate.sh
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=${PDSERVE_BIN:-$ROOT/build/bin/pdserve}
MODEL=${MODEL:-$ROOT/models/SmolLM2-135M-Instruct.Q4_1.gguf}
INPUT_LEN=${INPUT_LEN:-512}
OUTPUT_LEN=${OUTPUT_LEN:-64}
RANGE_RATIO=${RANGE_RATIO:-0.1}
NUM_PROMPTS=${NUM_PROMPTS:-40}
MIN_PROMPTS=${MIN_PROMPTS:-10}
RUN_SECONDS=${RUN_SECONDS:-auto}
SWEEP_SECONDS=${SWEEP_SECONDS:-420}
RATES=${RATES:-auto}
RATE_FRACTIONS=${RATE_FRACTIONS:-"0.1 0.3 0.5 0.7 0.9 1.2"}
SLO_TTFT=${SLO_TTFT:-auto}
SLO_TPOT=${SLO_TPOT:-auto}
SEED=${SEED:-100}
PORT=${PORT:-47100}
MAX_DURATION=${MAX_DURATION:-600}
DEPLOYMENTS=${DEPLOYMENTS:-auto}
REPS=${REPS:-3}
CMP_TTFT_SCALE=${CMP_TTFT_SCALE:-3}
CMP_TPOT_SCALE=${CMP_TPOT_SCALE:-1.5}
PROFILE_EACH_REP=${PROFILE_EACH_REP:-1}
DRIFT_MAX=${DRIFT_MAX:-0.1}
PROBE_PROMPTS=${PROBE_PROMPTS:-3}
CPUS=$(nproc)
THREADS_PER_NODE=${THREADS_PER_NODE:-$((CPUS / 2 > 0 ? CPUS / 2 : 1))}
OUT_DIR=${OUT_DIR:-$ROOT/bench/results}
WORK=$OUT_DIR/plan_validation
RESULT=${RESULT:-$OUT_DIR/plan_validation.json}
cpu_model=$(lscpu | sed -n 's/^Model name: *//p' | head -1)
cpu_fam=$(lscpu | sed -n 's/^CPU family: *//p' | head -1)
cpu_mod=$(lscpu | sed -n 's/^Model: *//p' | head -1)
TAG=${TAG:-$(echo "${cpu_model}-f${cpu_fam}m${cpu_mod}-${CPUS}cpu" | tr 'A-Z ' 'a-z-' | tr -cd 'a-z0-9.-')}
MACHINE_FILE=$(mktemp)
python3 - "$MACHINE_FILE" "$cpu_model" "$cpu_fam" "$cpu_mod" "$TAG" "$(uptime)" "$(date -u +%FT%TZ)" <<'PY'
import json, sys
json.dump({"lscpu_model_name": sys.argv[2], "cpu_family": sys.argv[3], "cpu_model": sys.argv[4], "tag": sys.argv[5],
           "uptime_before": sys.argv[6], "started_utc": sys.argv[7]}, open(sys.argv[1], "w"))
PY

die() { echo "plan_validate: $*" >&2; exit 1; }
[ -x "$BIN" ] || die "no pdserve binary at $BIN (scripts/build.sh, or set PDSERVE_BIN)"
[ -f "$MODEL" ] || die "no model at $MODEL: run scripts/fetch_model.sh"
command -v python3 >/dev/null || die "python3 is needed to combine the results"
mkdir -p "$WORK"

declare -A CLUSTER_FLAGS=(
  [colocated1]="--mixed 1 --threads $((2 * THREADS_PER_NODE)) --pin"
  [colocated2]="--mixed 2 --threads $THREADS_PER_NODE --pin"
  [1P1D]="--prefill 1 --decode 1 --threads $THREADS_PER_NODE --pin"
)
declare -A PROFILE=(
  [colocated1]=$WORK/profile_t$((2 * THREADS_PER_NODE)).json
  [colocated2]=$WORK/profile_t$THREADS_PER_NODE.json
  [1P1D]=$WORK/profile_t$THREADS_PER_NODE.json
)
# The deployments that fit this machine's CPUs, as `pdserve plan` names them.
CANDIDATES="colocated1 colocated2 1P1D"
CLUSTER_PID=
stop_cluster() {
  if [ -n "$CLUSTER_PID" ] && kill -0 "$CLUSTER_PID" 2>/dev/null; then
    kill -TERM "$CLUSTER_PID"
    wait "$CLUSTER_PID" 2>/dev/null || true
  fi
  CLUSTER_PID=
}
CO_LOAD_PID=
stop_co_load() {
  if [ -n "$CO_LOAD_PID" ]; then kill -TERM "$CO_LOAD_PID" 2>/dev/null || true; wait "$CO_LOAD_PID" 2>/dev/null || true; fi
  CO_LOAD_PID=
}
trap 'stop_co_load; stop_cluster; rm -f "$POINTS" "$MACHINE_FILE"' EXIT

# The run replayed again with the profile scaled by the nodes' speed over a
# window of their step logs (bench/step_log_report.py: each node's steps
# timed against the profile give its speed factor):
#   speed: over the run itself ($base.speed_corrected.*, from $base.steps.*):
#     against the plain prediction this separates the machine's speed
#     during the run (a VM's drift) from what the simulator's queueing,
#     batching and routing get wrong; it uses the run's own timings, so it
#     is no prediction;
#   probe: over the probe requests sent just before the run
#     ($base.probe_corrected.*, from $base.probe_steps.*): a prediction
#     made before the run, with the machine's speed of that moment.
# Each scaled profile takes two factors (--by-kind): the prompt's terms that
# of the steps with prompt tokens, the rest that of the decode-only steps.
# The step logs go unless KEEP_STEP_LOGS=1; the .json/.txt keep the figures.
scaled_predict() {  # name base speed|probe since_ns until_ns
  local name=$1 base=$2 kind=$3 since=$4 until=$5 logs plan_profiles report out
  logs=("$base".steps/*.steps.jsonl)
  [ -e "${logs[0]}" ] || die "$name: no step logs in $base.steps"
  if [ "$kind" = speed ]; then report=$base.steps out=$base.speed_corrected; else report=$base.probe_steps out=$base.probe_corrected; fi
  local scale=()
  if [[ $name == colocated* ]]; then
    scale=(--scaled-profile "all:$base.$kind.json")
    plan_profiles=(--profile "$base.$kind.json")
  else
    local p d
    p=$(printf '%s\n' "${logs[@]}" | grep '/prefill-' | paste -sd,)
    d=$(printf '%s\n' "${logs[@]}" | grep '/decode-' | paste -sd,)
    scale=(--scaled-profile "$p:$base.${kind}_prefill.json" --scaled-profile "$d:$base.${kind}_decode.json")
    plan_profiles=(--profile "$base.${kind}_prefill.json" --decode-profile "$base.${kind}_decode.json")
  fi
  python3 "$ROOT/bench/step_log_report.py" --profile "${PROFILE[$name]}" --since-ns "$since" --until-ns "$until" \
    --by-kind --json "$report.json" "${scale[@]}" "${logs[@]}" >"$report.txt"
  "$BIN" plan "${plan_profiles[@]}" --deployments "$name" --replay-csv "$base.measured.csv" \
    --goodput "ttft:$SLO_TTFT" "tpot:$SLO_TPOT" \
    --result-json "$out.json" --detailed-csv "$out.csv" >"$out.txt"
}

# The run predicted with the step costs its deployment's nodes had during
# the previous run of that deployment (its speed-scaled profiles, measured
# a few minutes before): a prediction from the machine's recent past, as a
# planner fed by the cluster's own step logs would make
# ($base.history_corrected.*).
declare -A LAST_RUN
history_predict() {  # name base previous_base
  local name=$1 base=$2 prev=$3 plan_profiles
  if [[ $name == colocated* ]]; then
    plan_profiles=(--profile "$prev.speed.json")
  else
    plan_profiles=(--profile "$prev.speed_prefill.json" --decode-profile "$prev.speed_decode.json")
  fi
  "$BIN" plan "${plan_profiles[@]}" --deployments "$name" --replay-csv "$base.measured.csv" \
    --goodput "ttft:$SLO_TTFT" "tpot:$SLO_TPOT" \
    --result-json "$base.history_corrected.json" --detailed-csv "$base.history_corrected.csv" \
    >"$base.history_corrected.txt"
}

start_cluster() {  # name [step log dir]
  local name=$1 log=$WORK/$1.cluster.log steps=()
  [ -n "${2:-}" ] && steps=(--node-flags "--step-log-dir $2")
  # shellcheck disable=SC2086  # the deployment flags are words
  "$BIN" cluster --model "$MODEL" --port "$PORT" --log-level warning ${CLUSTER_FLAGS[$name]} "${steps[@]}" >"$log" 2>&1 &
  CLUSTER_PID=$!
  for _ in $(seq 1 600); do
    grep -q "cluster ready" "$log" && return 0
    kill -0 "$CLUSTER_PID" 2>/dev/null || die "$name cluster exited; see $log"
    sleep 0.5
  done
  die "$name cluster not ready after 300 s; see $log"
}

# pairs of "deployment rate measured.json run-index predicted.json", one a line
POINTS=$(mktemp)
: >"$POINTS"

if [ "${COMMITTED:-0}" = 1 ]; then
  SWEEP_DIR=$OUT_DIR/disagg_vs_colocated
  SLO_TTFT=$(python3 -c "import json;print(json.load(open('$SWEEP_DIR/colocated.sweep.json'))['slo']['ttft_ms'])")
  SLO_TPOT=$(python3 -c "import json;print(json.load(open('$SWEEP_DIR/colocated.sweep.json'))['slo']['tpot_ms'])")
  for pair in colocated1:colocated:profile_quiet_t2 1P1D:disaggregated:profile_quiet_t1; do
    IFS=: read -r name file profile <<<"$pair"
    measured=$SWEEP_DIR/$file.sweep.json
    sweep=$(python3 -c "import json;print(json.load(open('$measured'))['metadata']['arguments']['sweep'])")
    # That loadgen's warm-ups replayed the first measured prompts, so those
    # were prefix-cache hits at every rate; checked against each run's
    # cached_input_tokens (full 16-token blocks before the last token).
    cached=$(python3 - "$measured" "$SWEEP_DIR/$file.sweep.csv" <<'PY'
import csv, json, sys
m = json.load(open(sys.argv[1]))
n = int(m["metadata"]["arguments"].get("num-warmups", 0))
rows = [r for r in csv.DictReader(open(sys.argv[2])) if r["run"] == "0"]
first = {int(r["id"].rsplit("-", 1)[1]): int(r["input_tokens"]) for r in rows}
expect = sum((first[i] - 1) // 16 * 16 for i in range(n))
ok = all(run["cached_input_tokens"] == expect for run in m["runs"])
print(n if ok else 0)
if not ok: print(f"cached tokens are not the {n} replayed warm-ups' ({expect}): simulating none", file=sys.stderr)
PY
)
    predicted=$WORK/$name.committed_sweep.predicted.json
    # The measured runs replayed as they were sent (start offsets and
    # lengths from the per-request records): today's loadgen draws other
    # lengths from seed 0 after the 16th prompt than the one that measured.
    "$BIN" plan --profile "$WORK/$profile.json" --deployments "$name" \
      --replay-csv "$SWEEP_DIR/$file.sweep.csv" --cached-prompts "$cached" \
      --goodput "ttft:$SLO_TTFT" "tpot:$SLO_TPOT" --result-json "$predicted" \
      --detailed-csv "$WORK/$name.committed_sweep.predicted.csv" >/dev/null
    i=0
    for rate in ${sweep//,/ }; do
      echo "$name $rate $measured $i $predicted $i" >>"$POINTS"
      i=$((i + 1))
    done
  done
elif [ "${PREDICT_ONLY:-0}" = 1 ]; then
  MEASURED=$WORK/$TAG
  PDIR=${PROFILE_DIR:-$MEASURED}
  first=$(find "$MEASURED" -maxdepth 1 -name '*.measured.json' | sort | head -1)
  [ -n "$first" ] || die "no measured runs in $MEASURED"
  SLO_TTFT=$(python3 -c "import json,sys;print(json.load(open(sys.argv[1]))['slo']['ttft_ms'])" "$first")
  SLO_TPOT=$(python3 -c "import json,sys;print(json.load(open(sys.argv[1]))['slo']['tpot_ms'])" "$first")
  [ -f "$MEASURED/sizing.json" ] && SIZING=$MEASURED/sizing.json
  # The measured runs: NAME.rateRATE[.repK].measured.json.
  python3 - "$MEASURED" >"$POINTS.runs" <<'PY'
import glob, os, re, sys
for f in sorted(glob.glob(os.path.join(sys.argv[1], "*.measured.json"))):
    m = re.fullmatch(r"(.+)\.rate([0-9.]+)(?:\.rep([0-9]+))?\.measured\.json", os.path.basename(f))
    if m: print(m.group(1), m.group(2), m.group(3) or 0, f[:-len(".measured.json")])
PY
  while read -r name rate rep base; do
    [ "$DEPLOYMENTS" = auto ] || [[ " $DEPLOYMENTS " == *" $name "* ]] || continue
    profile=${PROFILE[$name]/$WORK/$PDIR}
    out=$PDIR/$(basename "$base").predicted
    "$BIN" plan --profile "$profile" --deployments "$name" --replay-csv "$base.measured.csv" \
      --goodput "ttft:$SLO_TTFT" "tpot:$SLO_TPOT" --result-json "$out.json" --detailed-csv "$out.csv" >"$out.txt"
    echo "$name $rate $base.measured.json 0 $out.json 0 $rep" >>"$POINTS"
  done <"$POINTS.runs"
  rm -f "$POINTS.runs"
else

WORK=$WORK/$TAG
# PROFILES_ONLY=1: measure the profiles into $WORK/$PROFILES_SUBDIR and stop
# (then PREDICT_ONLY=1 PROFILE_DIR=that directory predicts the measured runs
# with them).
[ "${PROFILES_ONLY:-0}" = 1 ] && WORK=$WORK/${PROFILES_SUBDIR:-reprofiled}
mkdir -p "$WORK"
PROFILE[colocated1]=$WORK/profile_t$((2 * THREADS_PER_NODE)).json
PROFILE[colocated2]=$WORK/profile_t$THREADS_PER_NODE.json
PROFILE[1P1D]=$WORK/profile_t$THREADS_PER_NODE.json
# The load beside the co-run profile: what the other node of a 1P1D pair
# does, 512-token prefills and batch-8 decode (about a third of the time in
# prefill), in a loop, on the CPUs this node leaves.
CO_LOAD_DESC="pdserve bench --threads $((CPUS - THREADS_PER_NODE)) --prompt-tokens 512 --gen-tokens 64 --batch 8 --reps 3 looped on the other CPUs (cpu $THREADS_PER_NODE-$((CPUS - 1)))"
# Each engine thread pinned to its own CPU, as `pdserve cluster --pin` pins
# a node's (thread i to CPU i of the node's range): unpinned, the 2-thread
# profile's small decode batches ran 1-23% slower than pinned on the
# f6m167 VM (2026-12-05 10:31 UTC, three of each, alternated).
profile() {  # threads output [bench flags...]
  local threads=$1 file=$2
  shift 2
  local pin=""
  [ "$threads" -lt "$CPUS" ] && pin="taskset -c 0-$((threads - 1))"
  $pin "$BIN" bench --model "$MODEL" --threads "$threads" --pin-cpus "$(seq -s, 0 $((threads - 1)))" \
    --profile "$file" "$@" >"${file%.json}.log"
}
# Measures the three profiles into directory $1 (the 1P1D node's alone and
# beside the co-load, the colocated node's).
measure_profiles() {
  local dir=$1
  mkdir -p "$dir"
  # With a peer engine on the other CPUs: the decode steps after another
  # node's prompt (post_peer_prefill).
  profile "$t1" "$dir/profile_t${t1}_alone.json" --peer-cpus "$(seq -s, "$t1" $((CPUS - 1)))"
  (
    child=
    trap '[ -n "$child" ] && kill "$child" 2>/dev/null; exit 0' TERM
    while :; do
      taskset -c "$t1-$((CPUS - 1))" "$BIN" bench --model "$MODEL" --threads $((CPUS - t1)) \
        --prompt-tokens 512 --gen-tokens 64 --batch 8 --reps 3 --bandwidth-mib 1 >/dev/null 2>&1 &
      child=$!
      wait "$child" || exit 1
    done
  ) &
  CO_LOAD_PID=$!
  sleep 2
  profile "$t1" "$dir/profile_t${t1}.json" --profile-alone "$dir/profile_t${t1}_alone.json" --co-run-load "$CO_LOAD_DESC"
  stop_co_load
  profile "$t2" "$dir/profile_t${t2}.json"
}
echo "== profiles ($THREADS_PER_NODE thread alone and beside a load, $((2 * THREADS_PER_NODE)) threads) $(date -u +%T) =="
t1=$THREADS_PER_NODE t2=$((2 * THREADS_PER_NODE))
if [ -z "${REUSE_PROFILES:-}" ] || [ ! -f "${PROFILE[1P1D]}" ] || [ ! -f "${PROFILE[colocated1]}" ]; then
  measure_profiles "$WORK"
fi
if [ "${PROFILES_ONLY:-0}" = 1 ]; then
  echo "profiles in $WORK"
  exit 0
fi

common_plan=(--random-input-len "$INPUT_LEN" --random-output-len "$OUTPUT_LEN" --random-range-ratio "$RANGE_RATIO"
             --avoid-token-ids "0,1" --json)
# The simulated figure at one rate: plan_figure PROFILE DEPLOYMENT RATE PROMPTS EXPR (python on the point p).
plan_figure() {
  "$BIN" plan --profile "$1" --deployments "$2" --request-rate "$3" --num-prompts "$4" --seed 1 \
    --goodput ttft:100000000 tpot:100000000 \
    "${common_plan[@]}" | python3 -c "import json,sys; p=json.load(sys.stdin)['deployments'][0]['rates'][0]; print($5)"
}
# Idle p50s (one request at a time, 0.01 req/s) of every candidate.
declare -A IDLE_TTFT IDLE_TPOT
for d in $CANDIDATES; do
  read -r IDLE_TTFT[$d] IDLE_TPOT[$d] < <(plan_figure "${PROFILE[$d]}" "$d" 0.01 40 "f\"{p['ttft_ms']['p50']} {p['tpot_ms']['p50']}\"")
done
# Sizing: the comparison SLO is the disaggregated-versus-colocated
# experiment's rule (CMP_TTFT_SCALE x the slower candidate's idle TTFT p50,
# CMP_TPOT_SCALE x its idle TPOT p50). `pdserve plan` predicts each
# candidate's goodput against rate at that SLO; DEPLOYMENTS=auto measures the
# best colocated and the best disaggregated deployment it finds.
CMP_TTFT=$(for d in $CANDIDATES; do echo "${IDLE_TTFT[$d]}"; done | awk -v s="$CMP_TTFT_SCALE" '{if ($1 > m) m = $1} END {printf "%.0f", s * m}')
CMP_TPOT=$(for d in $CANDIDATES; do echo "${IDLE_TPOT[$d]}"; done | awk -v s="$CMP_TPOT_SCALE" '{if ($1 > m) m = $1} END {printf "%.1f", s * m}')
SIZING=$WORK/sizing.json
: >"$SIZING.lines"
declare -A CAP  # simulated capacity: every request queued at once
for d in $CANDIDATES; do
  CAP[$d]=$(plan_figure "${PROFILE[$d]}" "$d" 1000 200 "p['request_throughput']")
  sweep=$(python3 -c "import sys; c=float(sys.argv[1]); print(','.join(f'{c*i/10:.3g}' for i in range(1, 13)))" "${CAP[$d]}")
  "$BIN" plan --profile "${PROFILE[$d]}" --deployments "$d" --sweep "$sweep" --num-prompts 400 --seed 1 \
    --goodput "ttft:$CMP_TTFT" "tpot:$CMP_TPOT" "${common_plan[@]}" >"$WORK/sizing.$d.json"
  echo "$d $WORK/sizing.$d.json" >>"$SIZING.lines"
done
picked=$(python3 - "$SIZING.lines" "$SIZING" "$CMP_TTFT" "$CMP_TPOT" "$CPUS" <<'PY'
import json, sys
cands = {}
for line in open(sys.argv[1]):
    name, path = line.split()
    rates = json.load(open(path))["deployments"][0]["rates"]
    best = max(rates, key=lambda r: r["goodput"])
    cands[name] = {"predicted_best_goodput": best["goodput"], "at_rate": best["request_rate"],
                   "goodput_by_rate": {str(r["request_rate"]): r["goodput"] for r in rates}}
colo = max((n for n in cands if n.startswith("colocated")), key=lambda n: cands[n]["predicted_best_goodput"])
disagg = max((n for n in cands if not n.startswith("colocated")), key=lambda n: cands[n]["predicted_best_goodput"])
json.dump({"rule": "pdserve plan: each deployment that fits this machine's CPUs, goodput against rate at the "
                   "comparison SLO; the best colocated and the best disaggregated one are measured",
           "cpus": int(sys.argv[5]), "slo": {"ttft_ms": float(sys.argv[3]), "tpot_ms": float(sys.argv[4])},
           "candidates": cands, "best_colocated": colo, "best_disaggregated": disagg,
           "predicted_goodput_ratio": cands[disagg]["predicted_best_goodput"] / cands[colo]["predicted_best_goodput"]},
          open(sys.argv[2], "w"), indent=2)
print(colo, disagg)
PY
)
rm -f "$SIZING.lines"
echo "sizing at TTFT <= $CMP_TTFT ms, TPOT <= $CMP_TPOT ms: plan picks $picked ($SIZING)"
[ "$DEPLOYMENTS" = auto ] && DEPLOYMENTS=$picked
for name in $DEPLOYMENTS; do
  [[ " $CANDIDATES " == *" $name "* ]] || die "unknown deployment $name ($CANDIDATES)"
done
if [ "$SLO_TTFT" = auto ] || [ "$SLO_TPOT" = auto ]; then
  # The validation SLO: 3x the slower measured deployment's idle p50s, so
  # both meet it idle.
  idle=$(for d in $DEPLOYMENTS; do echo "${IDLE_TTFT[$d]} ${IDLE_TPOT[$d]}"; done)
  [ "$SLO_TTFT" = auto ] && SLO_TTFT=$(echo "$idle" | awk '{if ($1 > m) m = $1} END {printf "%.0f", 3 * m}')
  [ "$SLO_TPOT" = auto ] && SLO_TPOT=$(echo "$idle" | awk '{if ($2 > m) m = $2} END {printf "%.1f", 3 * m}')
fi
echo "SLO: TTFT <= $SLO_TTFT ms, TPOT <= $SLO_TPOT ms"
declare -A RATES_OF
for name in $DEPLOYMENTS; do
  if [ "$RATES" = auto ]; then
    cap=${CAP[$name]}
    RATES_OF[$name]=$(python3 -c "import sys; c=float(sys.argv[1]); print(' '.join(f'{float(f)*c:.3g}' for f in sys.argv[2].split()))" "$cap" "$RATE_FRACTIONS")
    echo "$name: simulated capacity $cap req/s; rates ${RATES_OF[$name]}"
  else
    RATES_OF[$name]=$RATES
  fi
done

# REPS repetitions, interleaved (every deployment and rate once, then again,
# the deployments' order reversed on odd repetitions), so a drift of the
# machine spreads over all points instead of landing on one; fresh prompts
# per run (seed SEED + rate index + 1000 x repetition).
for rep in $(seq 0 $((REPS - 1))); do
  if [ "$PROFILE_EACH_REP" = 1 ] && [ "$rep" -gt 0 ]; then
    # This machine drifts (profiles 50 minutes apart differed by 25%): each
    # repetition's runs are predicted with profiles measured right before it.
    echo "== profiles for repetition $((rep + 1)) $(date -u +%T) =="
    measure_profiles "$WORK/rep$rep"
    PROFILE[colocated1]=$WORK/rep$rep/profile_t$t2.json
    PROFILE[colocated2]=$WORK/rep$rep/profile_t$t1.json
    PROFILE[1P1D]=$WORK/rep$rep/profile_t$t1.json
  fi
  order=$DEPLOYMENTS
  [ $((rep % 2)) = 1 ] && order=$(echo "$DEPLOYMENTS" | tr ' ' '\n' | tac | tr '\n' ' ')
  for name in $order; do
  idx=0
  for rate in ${RATES_OF[$name]}; do
    seed=$((SEED + idx + 1000 * rep))
    idx=$((idx + 1))
    n_rates=$(echo "${RATES_OF[$name]}" | wc -w)
    run_s=$RUN_SECONDS
    [ "$run_s" = auto ] && run_s=$((SWEEP_SECONDS / n_rates))
    prompts=$(python3 -c "import math,sys; print(max($MIN_PROMPTS, min($NUM_PROMPTS, math.ceil(float(sys.argv[1]) * $run_s))))" "$rate")
    base=$WORK/$name.rate$rate.rep$rep
    echo "== $name at $rate req/s, repetition $((rep + 1))/$REPS, $prompts prompts (seed $seed) $(date -u +%T) =="
    rm -rf "$base.steps" && mkdir -p "$base.steps"
    start_cluster "$name" "$base.steps"
    common=(--target "grpc://127.0.0.1:$PORT" --random-input-len "$INPUT_LEN"
            --random-output-len "$OUTPUT_LEN" --random-range-ratio "$RANGE_RATIO" --ignore-eos
            --max-duration "$MAX_DURATION" --no-progress)
    # Warm-up: prompts of another seed, so no measured prompt is cached.
    "$BIN" loadgen "${common[@]}" --seed $((seed + 100000)) --num-prompts 2 --max-concurrency 1 \
      >/dev/null
    # The probe: PROBE_PROMPTS more of yet another seed, one at a time; the
    # nodes' speed over them predicts the run once more. Times are on the
    # nodes' clock (CLOCK_MONOTONIC, as their step logs).
    probe_ns=$(python3 -c 'import time; print(time.monotonic_ns())')
    "$BIN" loadgen "${common[@]}" --seed $((seed + 200000)) --num-prompts "$PROBE_PROMPTS" --max-concurrency 1 \
      >/dev/null
    t0_ns=$(python3 -c 'import time; print(time.monotonic_ns())')
    "$BIN" loadgen "${common[@]}" --seed "$seed" --num-prompts "$prompts" --request-rate "$rate" \
      --label "$name" --goodput "ttft:$SLO_TTFT" "tpot:$SLO_TPOT" \
      --result-json "$base.measured.json" --detailed-csv "$base.measured.csv" >"$base.measured.txt"
    kill -0 "$CLUSTER_PID" 2>/dev/null || die "$name cluster died during the run"
    stop_cluster
    # The run replayed as it was sent (its start offsets and lengths).
    "$BIN" plan --profile "${PROFILE[$name]}" --deployments "$name" \
      --replay-csv "$base.measured.csv" \
      --goodput "ttft:$SLO_TTFT" "tpot:$SLO_TPOT" \
      --result-json "$base.predicted.json" \
      --detailed-csv "$base.predicted.csv" >"$base.predicted.txt"
    scaled_predict "$name" "$base" speed "$t0_ns" "$(python3 -c 'import time; print(time.monotonic_ns())')"
    scaled_predict "$name" "$base" probe "$probe_ns" "$t0_ns"
    [ "${KEEP_STEP_LOGS:-0}" = 1 ] || rm -rf "$base.steps"
    history=-
    if [ -n "${LAST_RUN[$name]:-}" ]; then
      history_predict "$name" "$base" "${LAST_RUN[$name]}"
      history=$base.history_corrected.json
    fi
    LAST_RUN[$name]=$base
    echo "$name $rate $base.measured.json 0 $base.predicted.json 0 $rep $base.speed_corrected.json $base.probe_corrected.json $history" >>"$POINTS"
  done
  done
done
fi

DRIFT_FILE=
if [ "${COMMITTED:-0}" != 1 ] && [ "${PREDICT_ONLY:-0}" != 1 ] && [ "$PROFILE_EACH_REP" = 1 ]; then
  # Profiles once more after the last repetition: each repetition then has
  # profiles from right before and right after it. Their difference is how
  # far the machine drifted during it (DRIFT_MAX: a repetition whose
  # profiles differ by more is reported as drifted, beside the rest).
  echo "== profiles after the last repetition $(date -u +%T) =="
  measure_profiles "$WORK/after"
  DRIFT_FILE=$WORK/drift.json
  dirs=("$WORK")
  for rep in $(seq 1 $((REPS - 1))); do dirs+=("$WORK/rep$rep"); done
  dirs+=("$WORK/after")
  python3 - "$DRIFT_FILE" "$DRIFT_MAX" "$t1" "$t2" "${dirs[@]}" <<'PY'
import json, sys
out_file, limit, t1, t2, dirs = sys.argv[1], float(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5:]
def figures(d):
    # Each profile's fitted 512-token prefill step and batch-1 decode step
    # at 512 tokens of context.
    f = {}
    for t in (t1, t2):
        s = json.load(open(f"{d}/profile_t{t}.json"))["step"]
        f[f"prefill512_t{t}_s"] = s["base_s"] + 512 * s["prefill_token_s"] + s["attention_pair_s"] * 512 * 513 / 2
        f[f"decode_ctx512_t{t}_s"] = s["base_s"] + s["decode_seq_s"] + 512 * s["decode_context_token_s"]
    return f
reps = {}
for k in range(len(dirs) - 1):
    a, b = figures(dirs[k]), figures(dirs[k + 1])
    change = {key: b[key] / a[key] - 1 for key in a}
    drift = max(abs(v) for v in change.values())
    reps[str(k)] = {"profiles_before": dirs[k], "profiles_after": dirs[k + 1], "before": a, "after": b,
                    "relative_change": change, "drift": drift, "stable": drift <= limit}
json.dump({"rule": f"a repetition is stable when every figure of its profiles before and after it differs by at most {limit:.0%}",
           "repetitions": reps}, open(out_file, "w"), indent=2)
print("drift per repetition:", {k: f"{v['drift']:+.0%}{'' if v['stable'] else ' (drifted)'}" for k, v in reps.items()})
PY
fi

cd "$ROOT"
python3 - "$POINTS" "$RESULT" "${COMMITTED:-0}" "$SLO_TTFT" "$SLO_TPOT" "$MACHINE_FILE" "$(uptime)" "${SIZING:-}" "${DRIFT_FILE:-}" <<'PY'
import csv, json, math, os, platform, statistics, sys
points_file, result, committed = sys.argv[1], sys.argv[2], sys.argv[3] == "1"
machine = json.load(open(sys.argv[6])) if os.path.getsize(sys.argv[6]) else {}
machine["uptime_after"] = sys.argv[7]
sizing_file = sys.argv[8]
bounds = {"goodput": 0.15, "ttft_p50": 0.20, "ttft_p99": 0.20, "tpot_p50": 0.20, "tpot_p99": 0.20}
def figures_measured(run):
    return {"goodput": run["goodput"], "ttft_p50": run["ttft_ms"]["p50"], "ttft_p99": run["ttft_ms"]["p99"],
            "tpot_p50": run["tpot_ms"]["p50"], "tpot_p99": run["tpot_ms"]["p99"],
            "request_throughput": run["request_throughput"]}
def figures_predicted(point):
    return {"goodput": point["goodput"], "ttft_p50": point["ttft_ms"]["p50"], "ttft_p99": point["ttft_ms"]["p99"],
            "tpot_p50": point["tpot_ms"]["p50"], "tpot_p99": point["tpot_ms"]["p99"],
            "request_throughput": point["request_throughput"]}
out = {"experiment": "pdserve plan predictions against pdserve loadgen measurements" +
       (" (the committed quiet-machine sweep of bench/disagg_vs_colocated.sh)" if committed else ", this machine"),
       "slo": {"ttft_ms": float(sys.argv[4]), "tpot_ms": float(sys.argv[5])},
       "bounds_relative": bounds,
       "comparison": "each point's figures are the medians over its repetitions (each repetition a fresh run with "
                     "fresh prompts, replayed by the simulator as it was sent); relative error = predicted median / "
                     "measured median - 1; each point's runs keep their own figures and errors",
       "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), **machine},
       "points": []}
def isolated(mfile, run):
    # Requests with no other request in flight over their whole life: what
    # the machine did for one request alone during this run, to set beside
    # the idle run the profile was calibrated on (drift of the machine, not
    # of the load).
    path = mfile.replace(".json", ".csv")
    if not os.path.exists(path): return {}
    rows = [r for r in csv.DictReader(open(path)) if r["run"] == str(run) and r["success"] == "true"]
    span = [(float(r["start_offset_s"]), float(r["start_offset_s"]) + float(r["e2e_ms"]) / 1e3) for r in rows]
    alone = [r for i, r in enumerate(rows)
             if not any(j != i and b[0] < span[i][1] and b[1] > span[i][0] for j, b in enumerate(span))
             and not r["id"].endswith(("-0", "-1"))]  # the committed sweep's prefix-cache hits
    if not alone: return {"isolated_requests": {"count": 0}}
    return {"isolated_requests": {
        "count": len(alone),
        "ttft_ms_per_prompt_token_p50": statistics.median(float(r["ttft_ms"]) / int(r["input_tokens"]) for r in alone),
        "tpot_ms_p50": statistics.median(float(r["tpot_ms"]) for r in alone)}}
def per_request(mfile, run, pfile, rate):
    # Request by request (a replay simulates the very requests measured):
    # predicted - measured TTFT and TPOT, and predicted / measured E2E, as
    # p10/p50/p90 over the run's requests.
    mpath, ppath = mfile.replace(".json", ".csv"), pfile.replace(".json", ".csv")
    if not (os.path.exists(mpath) and os.path.exists(ppath)): return {}
    m = sorted((r for r in csv.DictReader(open(mpath)) if r["run"] == str(run) and r["success"] == "true"),
               key=lambda r: float(r["start_offset_s"]))
    p = [r for r in csv.DictReader(open(ppath)) if abs(float(r["request_rate"]) - float(rate)) < 1e-9]
    if len(m) != len(p) or any(a["input_tokens"] != b["input_tokens"] for a, b in zip(m, p)): return {}
    def q(v):
        d = statistics.quantiles(v, n=10)
        return {"p10": d[0], "p50": statistics.median(v), "p90": d[8]}
    pairs = [(a, b) for a, b in zip(m, p) if a["tpot_ms"] and b["tpot_ms"]]
    return {"per_request": {
        "ttft_ms_predicted_minus_measured": q([float(b["ttft_ms"]) - float(a["ttft_ms"]) for a, b in zip(m, p)]),
        "tpot_ms_predicted_minus_measured": q([float(b["tpot_ms"]) - float(a["tpot_ms"]) for a, b in pairs]),
        "e2e_predicted_over_measured": q([float(b["e2e_ms"]) / float(a["e2e_ms"]) for a, b in zip(m, p)])}}
def compare(measured, predicted, rate):
    errors, ok, kinds = {}, {}, {}
    for k in bounds:
        mv, pv = measured[k], predicted[k]
        if mv is None or pv is None:
            errors[k] = None; ok[k] = False; continue
        if mv == 0 and k == "goodput":
            # No relative error of a measured 0: the difference as a share
            # of the offered rate instead (marked in the file).
            errors[k] = (pv - mv) / float(rate)
            kinds[k] = "absolute, share of the request rate (measured 0)"
        elif mv == 0:
            errors[k] = 0.0 if pv == 0 else None
        else:
            errors[k] = pv / mv - 1
        ok[k] = errors[k] is not None and abs(errors[k]) <= bounds[k]
    return errors, ok, kinds
def med(vals):
    vals = [v for v in vals if v is not None]
    return statistics.median(vals) if vals else None
groups = {}
for line in open(points_file):
    f = line.split()
    name, rate, mfile, mi, pfile, pi = f[:6]
    rep = int(f[6]) if len(f) > 6 else 0
    sfile = f[7] if len(f) > 7 and os.path.exists(f[7]) else None
    pbfile = f[8] if len(f) > 8 and os.path.exists(f[8]) else None
    hfile = f[9] if len(f) > 9 and os.path.exists(f[9]) else None
    m = json.load(open(mfile))
    p = json.load(open(pfile))
    run = m["runs"][int(mi)]
    measured = figures_measured(run)
    predicted = figures_predicted(p["deployments"][0]["rates"][int(pi)])
    errors, ok, kinds = compare(measured, predicted, rate)
    groups.setdefault((name, rate), []).append({
        "repetition": rep, "seed": m["metadata"]["arguments"].get("seed"),
        "measured_file": os.path.relpath(mfile), "predicted_file": os.path.relpath(pfile),
        "window_s": run.get("window_s"), "measured": measured, "predicted": predicted,
        "relative_error": errors, "within_bound": ok, **({"error_kind": kinds} if kinds else {}),
        **isolated(mfile, int(mi)), **per_request(mfile, int(mi), pfile, rate)})
    # The same run replayed with the nodes' measured speed during it, and
    # with their speed over the probe just before it.
    # And with the speed its nodes had during the deployment's previous run.
    for key, cfile, steps_suffix in (("speed_corrected", sfile, ".steps.json"),
                                     ("probe_corrected", pbfile, ".probe_steps.json"),
                                     ("history_corrected", hfile, None)):
        if not cfile: continue
        sp = figures_predicted(json.load(open(cfile))["deployments"][0]["rates"][int(pi)])
        serr, sok, _ = compare(measured, sp, rate)
        steps_file = cfile.replace(f".{key}.json", steps_suffix) if steps_suffix else ""
        scaled = (json.load(open(steps_file)).get("scaled_profiles", {})
                  if steps_file and os.path.exists(steps_file) else {})
        factors = {os.path.basename(k): v["speed_factor"] for k, v in scaled.items()}
        kind_factors = {os.path.basename(k): {"prefill": v.get("prefill_factor"), "decode": v.get("decode_factor")}
                        for k, v in scaled.items()}
        groups[(name, rate)][-1][key] = {
            "predicted_file": os.path.relpath(cfile), "speed_factors": factors,
            "kind_factors": kind_factors, "predicted": sp,
            "relative_error": serr, "within_bound": sok, **per_request(mfile, int(mi), cfile, rate)}
    out.setdefault("profiles", {})[name] = p["profile"]["name"]
within = {k: 0 for k in bounds}
within_runs = {k: 0 for k in bounds}
total = total_runs = 0
for (name, rate), runs in groups.items():
    keys = list(runs[0]["measured"])
    measured = {k: med([r["measured"][k] for r in runs]) for k in keys}
    predicted = {k: med([r["predicted"][k] for r in runs]) for k in keys}
    errors, ok, kinds = compare(measured, predicted, rate)
    total += 1
    for k in bounds:
        within[k] += ok[k]
        within_runs[k] += sum(r["within_bound"][k] for r in runs)
    total_runs += len(runs)
    spread = {k: [min(v), max(v)] for k in keys
              if (v := [r["measured"][k] for r in runs if r["measured"][k] is not None])}
    out["points"].append({"deployment": name, "request_rate": float(rate), "repetitions": len(runs),
                          "measured": measured, "predicted": predicted, "measured_range": spread,
                          "relative_error": errors, "within_bound": ok,
                          **({"error_kind": kinds} if kinds else {}), "runs": runs})
def tally(key, view, with_measured):
    # The bounds over a subset of each point's runs: `view(run)` is the
    # run's own figures for it ("predicted", "within_bound"), or None to
    # leave the run out. Each point gets its medians under `key`; returns
    # the counts over points and over single runs (None: no run counted).
    within = {k: 0 for k in bounds}; within_runs = {k: 0 for k in bounds}; n_points = n_runs = 0
    for pt in out["points"]:
        runs = [r for r in pt["runs"] if view(r) is not None]
        if not runs: continue
        keys = list(runs[0]["measured"])
        m = {k: med([r["measured"][k] for r in runs]) for k in keys}
        p = {k: med([view(r)["predicted"][k] for r in runs]) for k in keys}
        errors, ok, kinds = compare(m, p, pt["request_rate"])
        pt[key] = {"repetitions": len(runs), **({"measured": m} if with_measured else {}), "predicted": p,
                   "relative_error": errors, "within_bound": ok}
        n_points += 1; n_runs += len(runs)
        for k in bounds:
            within[k] += ok[k]; within_runs[k] += sum(view(r)["within_bound"][k] for r in runs)
    return ({k: f"{v}/{n_points}" for k, v in within.items()},
            {k: f"{v}/{n_runs}" for k, v in within_runs.items()}) if n_points else (None, None)
# With the nodes' speed during each run (runs that have it): what is left is
# the simulator's own error (queueing, batching, routing), apart from how
# fast the machine was.
sc, sc_runs = tally("speed_corrected", lambda r: r.get("speed_corrected"), with_measured=False)
if sc:
    out["within_bound_count_speed_corrected"] = sc
    out["within_bound_count_single_runs_speed_corrected"] = sc_runs
# With their speed over the probe just before each run, and during the
# deployment's previous run: predictions (made before the run).
for key in ("probe_corrected", "history_corrected"):
    pc, pc_runs = tally(key, lambda r: r.get(key), with_measured=False)
    if pc:
        out[f"within_bound_count_{key}"] = pc
        out[f"within_bound_count_single_runs_{key}"] = pc_runs
out["within_bound_count"] = {k: f"{v}/{total}" for k, v in within.items()}
out["within_bound_count_single_runs"] = {k: f"{v}/{total_runs}" for k, v in within_runs.items()}
out["all_within_bounds"] = all(v == total for v in within.values())
drift_file = sys.argv[9] if len(sys.argv) > 9 else ""
if drift_file:
    # The same comparison over the repetitions the machine did not drift
    # through (profiles before and after within the drift limit): how well
    # the simulator predicts when its profile describes the machine.
    drift = json.load(open(drift_file))
    stable = {int(k) for k, v in drift["repetitions"].items() if v["stable"]}
    out["drift"] = drift
    out["stable_repetitions"] = sorted(stable)
    st, st_runs = tally("stable", lambda r: r if r["repetition"] in stable else None, with_measured=True)
    out["within_bound_count_stable"] = st or {k: "0/0" for k in bounds}
    out["within_bound_count_single_runs_stable"] = st_runs or {k: "0/0" for k in bounds}

# Disaggregated against colocated, at the sizing step's comparison SLO: each
# run's goodput recomputed from its per-request records (measured: loadgen's
# --detailed-csv over the run's window; predicted: the replay's), the median
# over repetitions at each rate, and each deployment's best rate.
if sizing_file and os.path.exists(sizing_file):
    sizing = json.load(open(sizing_file))
    slo = sizing["slo"]
    def good(rows, ok_key):
        n = 0
        for r in rows:
            if r[ok_key] != "true": continue
            tpot = r["tpot_ms"]
            if float(r["ttft_ms"]) <= slo["ttft_ms"] and (not tpot or float(tpot) <= slo["tpot_ms"]): n += 1
        return n
    cmp = {}
    for (name, rate), runs in groups.items():
        mg, pg = [], []
        for r in runs:
            mrows = list(csv.DictReader(open(r["measured_file"].replace(".json", ".csv"))))
            prows = list(csv.DictReader(open(r["predicted_file"].replace(".json", ".csv"))))
            if r["window_s"]: mg.append(good(mrows, "success") / r["window_s"])
            thr = r["predicted"]["request_throughput"]
            done = sum(1 for x in prows if x["completed"] == "true")
            if thr: pg.append(good(prows, "completed") * thr / done)
        cmp.setdefault(name, []).append({"request_rate": float(rate), "measured_goodput": med(mg),
                                         "measured_range": [min(mg), max(mg)] if mg else None,
                                         "predicted_goodput": med(pg)})
    best = {}
    for name, rates in cmp.items():
        bm = max(rates, key=lambda r: r["measured_goodput"] or 0)
        bp = max(rates, key=lambda r: r["predicted_goodput"] or 0)
        best[name] = {"measured_best_goodput": bm["measured_goodput"], "measured_at_rate": bm["request_rate"],
                      "predicted_best_goodput": bp["predicted_goodput"], "predicted_at_rate": bp["request_rate"],
                      "by_rate": sorted(rates, key=lambda r: r["request_rate"])}
    d, c = sizing["best_disaggregated"], sizing["best_colocated"]
    res = {"slo": slo, "sizing": sizing, "deployments": best}
    if d in best and c in best and best[c]["measured_best_goodput"]:
        res["measured_goodput_ratio"] = best[d]["measured_best_goodput"] / best[c]["measured_best_goodput"]
        res["predicted_goodput_ratio_at_measured_rates"] = (
            best[d]["predicted_best_goodput"] / best[c]["predicted_best_goodput"])
    out["disagg_vs_colocated"] = res
json.dump(out, open(result, "w"), indent=2)
print(f"{'deployment':<11} {'rate':>5} {'n':>2} | {'goodput m/p':>13} {'err':>6} | {'TTFT p50 m/p':>15} {'err':>6} | "
      f"{'TTFT p99 m/p':>15} {'err':>6} | {'TPOT p50 m/p':>13} {'err':>6} | {'TPOT p99 m/p':>13} {'err':>6}")
def e(v): return "   n/a" if v is None else f"{100*v:+5.0f}%"
for pt in out["points"]:
    m, p, r = pt["measured"], pt["predicted"], pt["relative_error"]
    print(f"{pt['deployment']:<11} {pt['request_rate']:>5} {pt['repetitions']:>2} | {m['goodput']:6.3f}/{p['goodput']:6.3f} {e(r['goodput'])} | "
          f"{m['ttft_p50']:7.0f}/{p['ttft_p50']:7.0f} {e(r['ttft_p50'])} | {m['ttft_p99']:7.0f}/{p['ttft_p99']:7.0f} {e(r['ttft_p99'])} | "
          f"{m['tpot_p50']:6.1f}/{p['tpot_p50']:6.1f} {e(r['tpot_p50'])} | {m['tpot_p99']:6.1f}/{p['tpot_p99']:6.1f} {e(r['tpot_p99'])}")
print("within bounds (medians over repetitions):", out["within_bound_count"])
print("within bounds (single runs):", out["within_bound_count_single_runs"])
if "within_bound_count_speed_corrected" in out:
    print("with each run's own node speeds (step logs): medians", out["within_bound_count_speed_corrected"])
    print("  single runs", out["within_bound_count_single_runs_speed_corrected"])
for key, what in (("probe_corrected", "each node's speed over the probe before each run"),
                  ("history_corrected", "each node's speed during its deployment's previous run")):
    if f"within_bound_count_{key}" in out:
        print(f"with {what}: medians", out[f"within_bound_count_{key}"])
        print("  single runs", out[f"within_bound_count_single_runs_{key}"])
if "stable_repetitions" in out:
    print("repetitions without drift:", out["stable_repetitions"] or "none")
    print("within bounds (medians over those):", out["within_bound_count_stable"])
    print("within bounds (their single runs):", out["within_bound_count_single_runs_stable"])
if "disagg_vs_colocated" in out:
    res = out["disagg_vs_colocated"]
    print(f"disaggregated vs colocated at TTFT <= {res['slo']['ttft_ms']} ms, TPOT <= {res['slo']['tpot_ms']} ms:")
    for name, b in res["deployments"].items():
        print(f"  {name:<11} best goodput measured {b['measured_best_goodput']:.3f} (at {b['measured_at_rate']}), "
              f"predicted {b['predicted_best_goodput']:.3f} (at {b['predicted_at_rate']})")
    if "measured_goodput_ratio" in res:
        print(f"  goodput ratio measured {res['measured_goodput_ratio']:.2f}, predicted at the measured rates "
              f"{res['predicted_goodput_ratio_at_measured_rates']:.2f}, "
              f"plan's sizing sweep {res['sizing']['predicted_goodput_ratio']:.2f}")
PY
echo "wrote $RESULT"
