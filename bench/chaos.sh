#!/usr/bin/env bash
# Faults under load, measured with `pdserve loadgen` (Poisson arrivals):
#   kill-decode:  SIGKILL decode-1 of 2 (pdserve cluster restarts it)
#   kill-prefill: SIGKILL prefill-1 of 2 (pdserve cluster restarts it)
#   stop-decode:  SIGSTOP decode-1 of 2 for STOP_FOR seconds, then SIGCONT
#   kill-router:  SIGKILL the router (processes started one by one here, as
#                 `pdserve cluster` stops everything when its router dies),
#                 restarted on the same port after RESTART_AFTER seconds
# Each scenario gets a fresh deployment and one loadgen run; the fault comes
# FAULT_AT seconds into the run. Per scenario: requests lost (loadgen
# failures), retried and migrated (the router's pdserve:router_retries_total
# and pdserve:router_migrations_total; for kill-router, the restarted
# router's), and p50/p99 TTFT and TPOT of the requests that ended before the
# fault, that were in flight at it or started within WINDOW seconds after it
# ("during"), and that started later ("after").
#
# Writes $OUT_DIR/chaos.json (with the command line and the machine) and the
# loadgen files and logs in $OUT_DIR/chaos/. Every knob is an environment
# variable (defaults below), e.g. one scenario only:
#   SCENARIOS=kill-decode bench/chaos.sh
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=${PDSERVE_BIN:-$ROOT/build/bin/pdserve}
MODEL=${MODEL:-$ROOT/models/SmolLM2-135M-Instruct.Q4_1.gguf}
SCENARIOS=${SCENARIOS:-"kill-decode kill-prefill stop-decode kill-router"}
RATE=${RATE:-0.5}
NUM_PROMPTS=${NUM_PROMPTS:-36}
INPUT_LEN=${INPUT_LEN:-64}
OUTPUT_LEN=${OUTPUT_LEN:-128}
FAULT_AT=${FAULT_AT:-30}
WINDOW=${WINDOW:-8}
STOP_FOR=${STOP_FOR:-5}
RESTART_AFTER=${RESTART_AFTER:-1}
THREADS=${THREADS:-1}
SEED=${SEED:-0}
PORT=${PORT:-53100}
METRICS_PORT=${METRICS_PORT:-53300}  # nodes: the next ports; decode KV: PORT+100..
ROUTER_FLAGS=${ROUTER_FLAGS:-"--heartbeat-ms 250 --node-expiry-ms 1500"}
OUT_DIR=${OUT_DIR:-$ROOT/bench/results}
WORK=$OUT_DIR/chaos
RESULT=$OUT_DIR/chaos.json
COMMAND="$0 $*"
ENV_LINE="SCENARIOS='$SCENARIOS' RATE=$RATE NUM_PROMPTS=$NUM_PROMPTS INPUT_LEN=$INPUT_LEN OUTPUT_LEN=$OUTPUT_LEN FAULT_AT=$FAULT_AT WINDOW=$WINDOW STOP_FOR=$STOP_FOR THREADS=$THREADS SEED=$SEED"

die() { echo "chaos: $*" >&2; exit 1; }
[ -x "$BIN" ] || die "no pdserve binary at $BIN (scripts/build.sh, or set PDSERVE_BIN)"
[ -f "$MODEL" ] || die "no model at $MODEL: run scripts/fetch_model.sh"
command -v python3 >/dev/null || die "python3 is needed to combine the results"
mkdir -p "$WORK"
# The node token: nodes register with it and /metrics wants it.
TOKEN_FILE=$WORK/node-token
(umask 077 && python3 -c 'import secrets; print(secrets.token_hex(16))' >"$TOKEN_FILE")

PIDS=()  # everything this script started, stopped on exit
stop_all() {
  for pid in "${PIDS[@]}"; do
    kill -CONT "$pid" 2>/dev/null || true
    kill -TERM "$pid" 2>/dev/null || true
  done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  PIDS=()
}
trap 'stop_all; rm -f "${TOKEN_FILE:-}"' EXIT

wait_for_log() {  # FILE PATTERN PID
  for _ in $(seq 1 480); do
    grep -q "$2" "$1" && return 0
    kill -0 "$3" 2>/dev/null || die "process $3 exited; see $1"
    sleep 0.5
  done
  die "'$2' not in $1 after 240 s"
}

# The pid of the child of $1 whose command line holds $2.
child_with() {
  local c
  for c in $(pgrep -P "$1"); do
    if tr '\0' ' ' <"/proc/$c/cmdline" | grep -q -- "$2"; then
      echo "$c"
      return 0
    fi
  done
  return 1
}

# When the fault came, in seconds from the loadgen's launch (its own clock
# starts after its setup, a fraction of a second later).
fault_mark() {
  python3 -c "print(round($(now) - $LOADGEN_T0, 3))" >"$WORK/$1.fault"
}

metric() {  # NAME: the router's counter, -1 when unreachable
  python3 - "$METRICS_PORT" "$1" "$TOKEN_FILE" <<'EOF'
import sys, urllib.request
port, name, token = sys.argv[1], sys.argv[2], open(sys.argv[3]).read().strip()
try:
    req = urllib.request.Request(f"http://127.0.0.1:{port}/metrics",
                                 headers={"Authorization": f"Bearer {token}"})
    text = urllib.request.urlopen(req, timeout=5).read().decode()
except Exception as e:
    print(-1); sys.exit()
for line in text.splitlines():
    if line.startswith(name + " "):
        print(float(line.split()[1])); break
else:
    print(0)
EOF
}

now() { date +%s.%N; }

start_loadgen() {  # NAME
  LOADGEN_T0=$(now)
  "$BIN" loadgen --target "grpc://127.0.0.1:$PORT" --label "$1" --seed "$SEED" \
    --random-input-len "$INPUT_LEN" --random-output-len "$OUTPUT_LEN" --ignore-eos \
    --request-rate "$RATE" --num-prompts "$NUM_PROMPTS" --num-warmups 0 --no-progress \
    --result-json "$WORK/$1.json" --detailed-csv "$WORK/$1.csv" >"$WORK/$1.loadgen.log" 2>&1 &
  LOADGEN_PID=$!
}

# Node faults on `pdserve cluster` (2 prefill + 2 decode nodes).
run_cluster_scenario() {
  local name=$1 log=$WORK/$1.cluster.log
  # shellcheck disable=SC2086  # flags are words
  "$BIN" cluster --model "$MODEL" --port "$PORT" --metrics-port "$METRICS_PORT" --prefill 2 \
    --decode 2 --threads "$THREADS" --log-level info --node-token-file "$TOKEN_FILE" \
    --router-flags "$ROUTER_FLAGS" >"$log" 2>&1 &
  local cluster=$!
  PIDS+=("$cluster")
  wait_for_log "$log" "cluster ready" "$cluster"
  start_loadgen "$name"
  sleep "$FAULT_AT"
  fault_mark "$name"
  local victim
  case $name in
    kill-decode) victim=$(child_with "$cluster" "--node-id decode-1") && kill -KILL "$victim" ;;
    kill-prefill) victim=$(child_with "$cluster" "--node-id prefill-1") && kill -KILL "$victim" ;;
    stop-decode)
      victim=$(child_with "$cluster" "--node-id decode-1") && kill -STOP "$victim"
      sleep "$STOP_FOR"
      kill -CONT "$victim"
      ;;
  esac
  echo "$name: fault on pid $victim at ${FAULT_AT}s"
  wait "$LOADGEN_PID" || true
  echo "$(metric pdserve:router_retries_total) $(metric pdserve:router_migrations_total)" \
    >"$WORK/$name.counters"
  stop_all
}

# Router death: the router and its nodes as separate processes.
run_router_scenario() {
  local name=$1 token=$TOKEN_FILE
  local router_args=("$BIN" router --model "$MODEL" --listen "127.0.0.1:$PORT"
    --metrics-port "$METRICS_PORT" --node-token-file "$token" --log-level info)
  # shellcheck disable=SC2206  # flags are words
  router_args+=($ROUTER_FLAGS)
  "${router_args[@]}" >"$WORK/$name.router.log" 2>&1 &
  local router=$!
  PIDS+=("$router")
  local i=0 role index
  for role in prefill decode decode; do
    index=$([ "$role" = decode ] && echo $((i - 1)) || echo 0)
    local args=("$BIN" "$role" --model "$MODEL" --listen "127.0.0.1:$((PORT + 1 + i))"
      --advertise-host 127.0.0.1 --router "127.0.0.1:$PORT" --node-id "$role-$index"
      --threads "$THREADS" --node-token-file "$token" --log-level info)
    [ "$role" = decode ] && args+=(--kv-port "$((PORT + 101 + i))")
    "${args[@]}" >"$WORK/$name.$role-$index.log" 2>&1 &
    PIDS+=($!)
    i=$((i + 1))
  done
  for _ in $(seq 1 480); do
    [ "$(grep -c "registered" "$WORK/$name.router.log" || true)" -ge 3 ] && break
    sleep 0.5
  done
  sleep 1
  start_loadgen "$name"
  sleep "$FAULT_AT"
  fault_mark "$name"
  kill -KILL "$router"
  wait "$router" 2>/dev/null || true
  echo "$name: router killed at ${FAULT_AT}s, restarting in ${RESTART_AFTER}s"
  sleep "$RESTART_AFTER"
  "${router_args[@]}" >>"$WORK/$name.router.log" 2>&1 &
  PIDS+=($!)
  wait "$LOADGEN_PID" || true
  echo "$(metric pdserve:router_retries_total) $(metric pdserve:router_migrations_total)" \
    >"$WORK/$name.counters"
  stop_all
}

for s in $SCENARIOS; do
  echo "== $s: $NUM_PROMPTS requests at $RATE req/s ($INPUT_LEN in, $OUTPUT_LEN out), fault at ${FAULT_AT}s =="
  case $s in
    kill-decode | kill-prefill | stop-decode) run_cluster_scenario "$s" ;;
    kill-router) run_router_scenario "$s" ;;
    *) die "unknown scenario $s" ;;
  esac
done

python3 - "$WORK" "$RESULT" "$WINDOW" "$ENV_LINE $COMMAND" "$SCENARIOS" <<'EOF'
import csv, json, sys
work, result, window, command, scenarios = sys.argv[1:6]
window = float(window)
def pct(xs, p):
    xs = sorted(x for x in xs if x is not None)
    if not xs: return None
    return round(xs[min(len(xs) - 1, int(p / 100 * len(xs)))], 1)
def num(x):
    try: return float(x)
    except (TypeError, ValueError): return None
out = {"experiment": "faults under Poisson load (bench/chaos.sh)", "command": command,
       "deployments": {"kill-decode, kill-prefill, stop-decode":
                           "pdserve cluster --prefill 2 --decode 2 (pdserve cluster restarts a "
                           "killed node)",
                       "kill-router": "router + 1 prefill + 2 decode processes"},
       "during_window_s": window, "scenarios": {}}
for name in scenarios.split():
    meta = json.load(open(f"{work}/{name}.json"))["metadata"]
    out.setdefault("model", meta.get("model")); out.setdefault("machine", meta.get("machine"))
    rows = list(csv.DictReader(open(f"{work}/{name}.csv")))
    retried, migrated = (float(x) for x in open(f"{work}/{name}.counters").read().split())
    fault_at = float(open(f"{work}/{name}.fault").read())
    phases = {"before": [], "during": [], "after": []}
    for r in rows:
        start, e2e = num(r["start_offset_s"]) or 0.0, (num(r["e2e_ms"]) or 0.0) / 1000
        if start + e2e < fault_at: phases["before"].append(r)
        elif start < fault_at + window: phases["during"].append(r)
        else: phases["after"].append(r)
    s = {"fault_at_s": fault_at, "requests": len(rows),
         "lost": sum(r["success"] != "true" for r in rows),
         "retried": int(retried), "migrated": int(migrated),
         "errors": sorted({r["error"] for r in rows if r["success"] != "true"})[:5]}
    for ph, rs in phases.items():
        ok = [r for r in rs if r["success"] == "true"]
        s[ph] = {"requests": len(rs), "lost": len(rs) - len(ok),
                 "p50_ttft_ms": pct([num(r["ttft_ms"]) for r in ok], 50),
                 "p99_ttft_ms": pct([num(r["ttft_ms"]) for r in ok], 99),
                 "p50_tpot_ms": pct([num(r["tpot_ms"]) for r in ok], 50),
                 "p99_tpot_ms": pct([num(r["tpot_ms"]) for r in ok], 99)}
    out["scenarios"][name] = s
    print(f"{name}: {s['requests']} requests, lost {s['lost']}, retried {s['retried']}, "
          f"migrated {s['migrated']}")
    for ph in phases:
        p = s[ph]
        print(f"  {ph:6s} n={p['requests']:3d} lost={p['lost']} ttft p50/p99 "
              f"{p['p50_ttft_ms']}/{p['p99_ttft_ms']} ms, tpot p50/p99 "
              f"{p['p50_tpot_ms']}/{p['p99_tpot_ms']} ms")
json.dump(out, open(result, "w"), indent=2)
print(f"wrote {result}")
EOF
