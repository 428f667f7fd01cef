#!/usr/bin/env bash
# One node's decode cost by batch size, as it serves: a colocated node
# (`pdserve cluster --mixed 1 --threads THREADS --pin`) with its step log,
# driven by `pdserve loadgen` at CONCURRENCY requests at a time (1, then 2,
# ...). Prints per concurrency the client's TPOT and, from the node's step
# log, each decode batch size's median forward pass, time outside it
# (scheduling, sampling, streaming) and context per sequence.
#
# On a VM whose speed moves over minutes, compare ratios within one run
# (TPOT at concurrency 2 over concurrency 1) rather than figures across runs.
#
#   bench/decode_concurrency.sh                 # THREADS=2 CONCURRENCY="1 2 3 4"
#   OUT_DIR=/tmp/dc INPUT_LEN=512 OUTPUT_LEN=128 bench/decode_concurrency.sh
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=${PDSERVE_BIN:-$ROOT/build/bin/pdserve}
MODEL=${MODEL:-$ROOT/models/SmolLM2-135M-Instruct.Q4_1.gguf}
THREADS=${THREADS:-2}
read -ra CONCURRENCY <<<"${CONCURRENCY:-1 2 3 4}"
PROMPTS_PER_SLOT=${PROMPTS_PER_SLOT:-6}
INPUT_LEN=${INPUT_LEN:-512}
OUTPUT_LEN=${OUTPUT_LEN:-128}
PORT=${PORT:-18555}
OUT_DIR=${OUT_DIR:-$(mktemp -d /tmp/decode_concurrency.XXXXXX)}

die() { echo "decode_concurrency: $*" >&2; exit 1; }
[ -x "$BIN" ] || die "no pdserve binary at $BIN (scripts/build.sh, or set PDSERVE_BIN)"
[ -f "$MODEL" ] || die "no model at $MODEL: run scripts/fetch_model.sh"
rm -rf "$OUT_DIR/steps" && mkdir -p "$OUT_DIR/steps"

"$BIN" cluster --model "$MODEL" --port "$PORT" --log-level warning --mixed 1 --threads "$THREADS" \
  --pin --node-flags "--step-log-dir $OUT_DIR/steps" >"$OUT_DIR/cluster.log" 2>&1 &
CLUSTER_PID=$!
trap 'kill "$CLUSTER_PID" 2>/dev/null || true; wait "$CLUSTER_PID" 2>/dev/null || true' EXIT
for _ in $(seq 300); do
  grep -q "cluster ready" "$OUT_DIR/cluster.log" && break
  kill -0 "$CLUSTER_PID" 2>/dev/null || die "the cluster exited; see $OUT_DIR/cluster.log"
  sleep 1
done
grep -q "cluster ready" "$OUT_DIR/cluster.log" || die "the cluster was not ready after 300 s"

echo "$(lscpu | sed -n 's/^Model name: *//p'), $THREADS threads; prompts $INPUT_LEN, outputs $OUTPUT_LEN tokens"
for c in "${CONCURRENCY[@]}"; do
  "$BIN" loadgen --target "grpc://127.0.0.1:$PORT" --random-input-len "$INPUT_LEN" \
    --random-output-len "$OUTPUT_LEN" --random-range-ratio 0.1 --ignore-eos --no-progress \
    --seed "$((c + 7))" --num-prompts "$((c * PROMPTS_PER_SLOT))" --max-concurrency "$c" \
    --result-json "$OUT_DIR/c$c.json" >"$OUT_DIR/c$c.txt"
done
kill "$CLUSTER_PID" 2>/dev/null || true
wait "$CLUSTER_PID" 2>/dev/null || true

python3 - "$OUT_DIR" "${CONCURRENCY[@]}" <<'PY'
import collections, glob, json, statistics, sys
out, conc = sys.argv[1], sys.argv[2:]
tpot1 = None
for c in conc:
    t = json.load(open(f"{out}/c{c}.json"))["runs"][0]["tpot_ms"]["p50"]
    tpot1 = tpot1 or t
    print(f"concurrency {c}: TPOT p50 {t:.2f} ms ({t / tpot1:.2f}x concurrency {conc[0]})")
by_batch = collections.defaultdict(list)
for path in glob.glob(f"{out}/steps/*.steps.jsonl"):
    for line in open(path):
        s = json.loads(line)
        if s["prefill_tokens"] == 0 and s["decode_seqs"] > 0:
            by_batch[s["decode_seqs"]].append(s)
print("batch  steps  forward ms p50  outside ms p50  context/seq p50")
for b in sorted(by_batch):
    v = by_batch[b]
    if len(v) < 20:
        continue
    med = lambda f: statistics.median(f(s) for s in v)
    print(f"{b:5d} {len(v):6d} {med(lambda s: s['forward_ns'] / 1e6):15.2f} "
          f"{med(lambda s: (s['total_ns'] - s['forward_ns']) / 1e6):15.2f} "
          f"{med(lambda s: s['decode_context'] / s['decode_seqs']):16.0f}")
print(f"files: {out}")
PY
