#!/usr/bin/env bash
# The engine against llama.cpp on the shapes and weight types users run:
# random-weight GGUFs (real vocabulary) of SmolLM2-135M, Llama-3.2-1B and
# Llama-3-8B shapes, quantized by llama-quantize, each benchmarked by
# llama-bench and by `pdserve bench` alternately in one run.
#
#   bench/engine_matrix.sh                     # SmolLM2 + 1B shapes, all types
#   SHAPES="llama-3.2-1b" TYPES="Q4_0 Q8_0" bench/engine_matrix.sh
#
# Environment (defaults in brackets):
#   SHAPES    [smollm2-135m llama-3.2-1b]  also: llama-3-8b (F16 source, ~15 GB + quants)
#   TYPES     [Q4_0 Q4_K_M Q5_K_M Q6_K Q8_0]
#   THREADS   [2]   REPS [3] (each program's repetitions)   ROUNDS [1] (peer, pdserve) pairs
#   BATCHES   [1 8] pdserve decode batch sizes (the table shows batch 8 / batch 1)
#   SCALING   [1]   also time pdserve's batch-1 decode on 1 thread (the table's
#                   "Nt/1t" column: THREADS threads over 1, when THREADS > 1)
#   PP, TG    [512, 128] prompt and generated tokens of each program's run
#   PDSERVE   [build/bin/pdserve]   MODELS_DIR [~/.cache/pdserve/models]
#   OUT       [bench/results/engine_matrix]  writes $OUT.json and $OUT.md
#   PEER_MIN_BW_FRACTION [0.5] see "Peer check" below
#   SKIP      [] shape.type pairs not to make or run, e.g. "llama-3.2-1b.Q5_K_M"
#
# Peer check. The peer is built by bench/build_llama_cpp.sh (Release,
# GGML_NATIVE=ON, its record in build_info.json). Before any figure is
# written, llama-bench's tg128 on the bundled SmolLM2 Q4_1 file must move at
# least PEER_MIN_BW_FRACTION of the DRAM read bandwidth `pdserve bench`
# measures in the same run (tg128 x bytes one decode step reads >= 0.5 x
# bandwidth). A peer built without native flags, in Debug, or starved by
# other jobs falls far below that (an unoptimized build reads at a few GB/s);
# llama.cpp's own decode of a model this small runs from the caches, above
# DRAM bandwidth. If the check fails the script exits 2 and writes nothing.
#
# Types pdserve cannot load show as "unsupported" with the loader's error;
# the run goes on. Peak RSS: llama-bench's from /usr/bin/time; pdserve's from
# its own JSON (getrusage before its bandwidth test allocates 1 GiB).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
SHAPES=${SHAPES:-smollm2-135m llama-3.2-1b}
TYPES=${TYPES:-Q4_0 Q4_K_M Q5_K_M Q6_K Q8_0}
THREADS=${THREADS:-2}
REPS=${REPS:-3}
ROUNDS=${ROUNDS:-1}
BATCHES=${BATCHES:-1 8}
SCALING=${SCALING:-1}
PDSERVE=${PDSERVE:-$ROOT/build/bin/pdserve}
MODELS_DIR=${MODELS_DIR:-$HOME/.cache/pdserve/models}
OUT=${OUT:-$ROOT/bench/results/engine_matrix}
PEER_MIN_BW_FRACTION=${PEER_MIN_BW_FRACTION:-0.5}
SKIP=${SKIP:-}
skipped() { [[ " $SKIP " == *" $1 "* ]]; }
REF_MODEL=${REF_MODEL:-$ROOT/models/SmolLM2-135M-Instruct.Q4_1.gguf}
PP=${PP:-512}
TG=${TG:-128}
# One program run may take this long (8B pp512 on 2 threads is minutes).
RUN_TIMEOUT=${RUN_TIMEOUT:-1800}

log() { echo "engine_matrix: $*" >&2; }
[ -x "$PDSERVE" ] || { log "no $PDSERVE (build it: ninja -C build pdserve)"; exit 1; }
[ -x /usr/bin/time ] || { log "/usr/bin/time is missing (apt-get install time)"; exit 1; }

LLAMA_BIN=$("$ROOT/bench/build_llama_cpp.sh" | tail -1)
[ -f "$LLAMA_BIN/build_info.json" ] || { log "peer build failed"; exit 1; }
mkdir -p "$MODELS_DIR"
WORK=$(mktemp -d -t engine_matrix.XXXXXX)
trap 'rm -rf "$WORK"' EXIT

# --- models ----------------------------------------------------------------
model_path() { echo "$MODELS_DIR/dummy-$1.$2.gguf"; }  # shape type
for shape in $SHAPES; do
  src_type=F32
  [ "$shape" = llama-3-8b ] && src_type=F16
  src=$(model_path "$shape" "$src_type")
  if [ ! -f "$src" ]; then
    log "writing $src"
    nice -n 5 python3 "$ROOT/tools/make_dummy_gguf.py" "$shape" "$src"
  fi
  for t in $TYPES; do
    skipped "$shape.$t" && continue
    dst=$(model_path "$shape" "$t")
    if [ ! -f "$dst" ]; then
      log "quantizing $shape to $t"
      nice -n 5 "$LLAMA_BIN/llama-quantize" "$src" "$dst.tmp" "$t" "$THREADS" \
        >"$WORK/quantize.log" 2>&1 || { tail -5 "$WORK/quantize.log" >&2; exit 1; }
      mv "$dst.tmp" "$dst"
    fi
  done
done

# --- one run of each program -------------------------------------------------
# Writes $WORK/<tag>.peer.json (llama-bench -o json) and .peer.rss (KiB), or .peer.err.
run_peer() {  # tag model
  local rc=0
  timeout "$RUN_TIMEOUT" /usr/bin/time -f '%M' -o "$WORK/$1.peer.rss" \
    "$LLAMA_BIN/llama-bench" -m "$2" -p "$PP" -n "$TG" -r "$REPS" -t "$THREADS" -o json \
    >"$WORK/$1.peer.json" 2>"$WORK/$1.peer.log" || rc=$?
  [ $rc = 0 ] && return 0
  echo "exit $rc: $(grep -v '^\s*$' "$WORK/$1.peer.log" | grep -v '^Command' | tail -1)" >"$WORK/$1.peer.err"
}
# Writes $WORK/<tag>.pds.json (pdserve bench --json), or .pds.err.
run_pdserve() {  # tag model
  local rc=0
  # shellcheck disable=SC2086
  timeout "$RUN_TIMEOUT" "$PDSERVE" bench --model "$2" --prompt-tokens "$PP" --gen-tokens "$TG" \
    --threads "$THREADS" --reps "$REPS" --batch $BATCHES --json --log-level warning \
    >"$WORK/$1.pds.json" 2>"$WORK/$1.pds.log" || rc=$?
  [ $rc = 0 ] && return 0
  echo "exit $rc: $(grep -v '^\s*$' "$WORK/$1.pds.log" | tail -1)" >"$WORK/$1.pds.err"
}
# Batch-1 decode on one thread, for the thread-scaling column: writes
# $WORK/<tag>.pds1t.json (a short prompt: only the decode figure is used).
run_pdserve_1t() {  # tag model
  timeout "$RUN_TIMEOUT" "$PDSERVE" bench --model "$2" --prompt-tokens 16 --gen-tokens "$TG" \
    --threads 1 --reps "$REPS" --batch 1 --bandwidth-mib 1 --json --log-level warning \
    >"$WORK/$1.pds1t.json" 2>"$WORK/$1.pds1t.log" || rm -f "$WORK/$1.pds1t.json"
}
run_pair() {  # tag model
  for r in $(seq 1 "$ROUNDS"); do
    log "$1 round $r: llama-bench"
    run_peer "$1.$r" "$2" || true
    log "$1 round $r: pdserve bench"
    run_pdserve "$1.$r" "$2" || true
    if [ "$THREADS" -gt 1 ] && [ "$SCALING" = 1 ] && [ -f "$WORK/$1.$r.pds.json" ]; then
      log "$1 round $r: pdserve bench, 1 thread"
      run_pdserve_1t "$1.$r" "$2" || true
    fi
  done
}

# --- peer check first: no figures from a crippled peer -----------------------
LOAD_START=$(uptime)
run_pair ref "$REF_MODEL"
python3 - "$WORK" "$ROUNDS" "$PEER_MIN_BW_FRACTION" "$TG" <<'EOF' || exit 2
import json, os, statistics, sys
work, rounds, frac, tg = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
peer, bw, bpt = [], [], []
for r in range(1, rounds + 1):
    for row in json.load(open(f"{work}/ref.{r}.peer.json")):
        if row["n_gen"] == tg:
            peer.append(row["avg_ts"])
    p = json.load(open(f"{work}/ref.{r}.pds.json"))
    bw.append(p["mem_read_bw_gb_s"])
    bpt.append(p["decode_bytes_per_token"])
tg_ts, bw_gbs, bytes_tok = statistics.median(peer), statistics.median(bw), statistics.median(bpt)
floor = frac * bw_gbs * 1e9 / bytes_tok
verdict = "ok" if tg_ts >= floor else "REFUSED"
print(f"engine_matrix: peer check: llama-bench tg{tg} on the SmolLM2 Q4_1 file {tg_ts:.1f} tok/s "
      f"({tg_ts * bytes_tok / 1e9:.1f} GB/s of weights+KV); floor {floor:.1f} tok/s = {frac} x "
      f"{bw_gbs:.1f} GB/s measured read bandwidth / {bytes_tok / 1e6:.1f} MB per token: {verdict}",
      file=sys.stderr)
json.dump({"peer_tg_tok_s": tg_ts, "floor_tok_s": floor, "read_bw_gb_s": bw_gbs,
           "bytes_per_token": bytes_tok, "min_bw_fraction": frac, "verdict": verdict},
          open(f"{work}/peer_check.json", "w"))
sys.exit(0 if verdict == "ok" else 1)
EOF

# --- the matrix ---------------------------------------------------------------
rows=()
for shape in $SHAPES; do
  for t in $TYPES; do
    tag="$shape.$t"
    skipped "$tag" && continue
    run_pair "$tag" "$(model_path "$shape" "$t")"
    rows+=("$tag")
  done
done

LOAD_END=$(uptime)
PPTG=""
[ "$PP" = 512 ] && [ "$TG" = 128 ] || PPTG=" PP=$PP TG=$TG"
CMD="SHAPES=\"$SHAPES\" TYPES=\"$TYPES\" THREADS=$THREADS REPS=$REPS ROUNDS=$ROUNDS BATCHES=\"$BATCHES\"$PPTG${SKIP:+ SKIP=\"$SKIP\"} bench/engine_matrix.sh"
python3 - "$WORK" "$ROUNDS" "$OUT" "$LLAMA_BIN/build_info.json" "$CMD" "$PP" "$TG" "$THREADS" \
  "$REF_MODEL" "$MODELS_DIR" "$LOAD_START" "$LOAD_END" ref "${rows[@]}" <<'EOF'
import datetime, json, os, platform, statistics, subprocess, sys
work, rounds, out, info_path, cmd, pp, tg, threads, ref_model, models_dir = sys.argv[1:11]
load_start, load_end = sys.argv[11].strip(), sys.argv[12].strip()
tags = sys.argv[13:]
rounds, pp, tg = int(rounds), int(pp), int(tg)

def load(path):
    try:
        return json.load(open(path))
    except (OSError, ValueError):
        return None

def err(path):
    try:
        return open(path).read().strip() or "failed (no message)"
    except OSError:
        return "failed (no output)"

def med(v):
    v = [x for x in v if x is not None]
    return statistics.median(v) if v else None

lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
cpu = next((l.split(":", 1)[1].strip() for l in lscpu.splitlines() if l.startswith("Model name")), "?")
flags = next((l.split(":", 1)[1].split() for l in lscpu.splitlines() if l.startswith("Flags")), [])
isa = [f for f in ("avx2", "fma", "f16c", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile") if f in flags]
rows = []
for tag in tags:
    shape, _, wtype = tag.rpartition(".")  # shapes have dots (llama-3.2-1b)
    model = ref_model if tag == "ref" else os.path.join(models_dir, f"dummy-{tag}.gguf")
    row = {"shape": "smollm2-135m (real weights)" if tag == "ref" else shape,
           "type": "Q4_1" if tag == "ref" else wtype, "model": model,
           "file_mib": os.path.getsize(model) / 2**20}
    peer_pp, peer_tg, peer_rss, pds = [], [], [], []
    for r in range(1, rounds + 1):
        pj = load(f"{work}/{tag}.{r}.peer.json")
        if pj:
            for x in pj:
                if x["n_prompt"] == pp and x["n_gen"] == 0: peer_pp.append(x["avg_ts"])
                if x["n_gen"] == tg and x["n_prompt"] == 0: peer_tg.append(x["avg_ts"])
            row["peer_build"] = {"commit": pj[0].get("build_commit"), "number": pj[0].get("build_number"),
                                 "cpu_info": pj[0].get("cpu_info"), "backends": pj[0].get("backends")}
            try:
                peer_rss.append(int(open(f"{work}/{tag}.{r}.peer.rss").read().split()[-1]) / 1024)
            except (OSError, ValueError, IndexError):
                pass
        else:
            row["peer_error"] = err(f"{work}/{tag}.{r}.peer.err")
        dj = load(f"{work}/{tag}.{r}.pds.json")
        if dj:
            pds.append(dj)
        else:
            row["pdserve_error"] = err(f"{work}/{tag}.{r}.pds.err")
    row["peer_pp_tok_s"], row["peer_tg_tok_s"] = med(peer_pp), med(peer_tg)
    row["peer_peak_rss_mib"] = med(peer_rss)
    row["peer_runs"] = {"pp": peer_pp, "tg": peer_tg}
    if pds:
        row["pdserve_pp_tok_s"] = med([d["prefill_tok_s"] for d in pds])
        row["pdserve_tg_tok_s"] = med([d["decode_tok_s"] for d in pds])
        row["pdserve_tg_by_batch"] = {b: med([d["decode_tok_s_by_batch"].get(b) for d in pds])
                                      for b in pds[0]["decode_tok_s_by_batch"]}
        row["pdserve_bw_fraction"] = med([d["decode_bw_fraction"] for d in pds])
        row["read_bw_gb_s"] = med([d["mem_read_bw_gb_s"] for d in pds])
        row["pdserve_peak_rss_mib"] = med([d["peak_rss_mib"] for d in pds])
        row["pdserve_isa"] = pds[0]["isa"]
        row["pdserve_runs"] = {"pp": [d["prefill_tok_s"] for d in pds], "tg": [d["decode_tok_s"] for d in pds]}
        one = [d for d in (load(f"{work}/{tag}.{r}.pds1t.json") for r in range(1, rounds + 1)) if d]
        if one:
            row["pdserve_tg_1t_tok_s"] = med([d["decode_tok_s"] for d in one])
        row.pop("pdserve_error", None)
    rows.append(row)

info = json.load(open(info_path))
check = json.load(open(f"{work}/peer_check.json"))
result = {
    "command": cmd,
    "date_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M"),
    "machine": {"cpu": cpu, "logical_cpus": os.cpu_count(), "isa_flags": isa,
                "kernel": platform.release()},
    "threads": int(threads), "pp": pp, "tg": tg, "rounds": rounds,
    "load": {"start": load_start, "end": load_end},
    "peer": info, "peer_check": check, "rows": rows,
}
os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
json.dump(result, open(out + ".json", "w"), indent=1)

def f(x, fmt="{:.1f}"):
    return "–" if x is None else fmt.format(x)

def ratio(a, b):
    return "–" if a is None or b is None or b == 0 else f"{a / b:.2f}×"

lines = [
    f"# Engine matrix: pdserve against llama.cpp ({threads} threads)", "",
    f"`{cmd}`, {result['date_utc']} UTC, on {cpu} ({os.cpu_count()} logical CPUs; "
    f"{' '.join(isa)}). Load at start: `{load_start}`; at end: `{load_end}`.", "",
    f"Peer: {info['source']}, {info.get('llama_bench_version', '').strip() or '?'}; "
    f"{info['cxx_version']}; `{' '.join(info['cmake_flags'])}`; {info.get('native_flags', '')}"
    f"{'; ISA ' + ' '.join(info['native_isa']) if info.get('native_isa') else ''}. "
    f"Peer check: llama-bench tg{tg} on the real SmolLM2 Q4_1 file {check['peer_tg_tok_s']:.1f} tok/s "
    f">= floor {check['floor_tok_s']:.1f} tok/s ({check['min_bw_fraction']} × "
    f"{check['read_bw_gb_s']:.1f} GB/s read bandwidth / {check['bytes_per_token'] / 1e6:.1f} MB per token): "
    f"{check['verdict']}.", "",
    f"pp{pp}/tg{tg}: tokens/s, median over {rounds} round(s) of each program's figure "
    "(llama-bench: mean of its -r repetitions; pdserve bench: median of its --reps). "
    "% BW: pdserve's batch-1 decode bytes per token × tok/s over the read bandwidth it measures. "
    "b8/b1: pdserve's batch-8 aggregate decode over batch 1. "
    f"{threads}t/1t: pdserve's batch-1 decode on {threads} threads over 1 thread. RSS: peak, MiB.", "",
    "| shape | type | MiB | llama.cpp pp | pdserve pp | ratio | llama.cpp tg | pdserve tg | ratio "
    f"| pdserve % BW | b8/b1 | {threads}t/1t | RSS llama.cpp | RSS pdserve |",
    "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
]
for r in rows:
    if "pdserve_error" in r:
        # exit 1: pdserve refused the file (its message is listed below);
        # 124: timed out; >= 128: killed by a signal.
        code = r["pdserve_error"].split(":", 1)[0]
        pds_pp = pds_tg = {"exit 1": "unsupported", "exit 124": "timeout"}.get(code, "failed")
        bwf = b81 = rss = scale = "–"
    else:
        pds_pp, pds_tg = f(r["pdserve_pp_tok_s"]), f(r["pdserve_tg_tok_s"])
        bwf = f(100 * r["pdserve_bw_fraction"], "{:.0f}%")
        by = r.get("pdserve_tg_by_batch", {})
        b81 = ratio(by.get("8"), by.get("1"))
        scale = ratio(r.get("pdserve_tg_tok_s"), r.get("pdserve_tg_1t_tok_s"))
        rss = f(r["pdserve_peak_rss_mib"], "{:.0f}")
    lines.append(
        f"| {r['shape']} | {r['type']} | {r['file_mib']:.0f} | {f(r['peer_pp_tok_s'])} | {pds_pp} | "
        f"{ratio(r.get('pdserve_pp_tok_s'), r['peer_pp_tok_s'])} | {f(r['peer_tg_tok_s'])} | {pds_tg} | "
        f"{ratio(r.get('pdserve_tg_tok_s'), r['peer_tg_tok_s'])} | {bwf} | {b81} | {scale} | "
        f"{f(r['peer_peak_rss_mib'], '{:.0f}')} | {rss} |")
errors = [r for r in rows if "pdserve_error" in r or "peer_error" in r]
if errors:
    lines += ["", "Not measured:"]
    for r in errors:
        for who in ("pdserve", "peer"):
            if f"{who}_error" in r:
                lines.append(f"- {r['shape']} {r['type']}, {who}: `{r[who + '_error']}`")
bw = [r["read_bw_gb_s"] for r in rows if r.get("read_bw_gb_s")]
if bw:
    lines += ["", f"Read bandwidth measured by `pdserve bench` ({threads} threads, 1 GiB): "
              f"{min(bw):.1f}–{max(bw):.1f} GB/s across the runs."]
open(out + ".md", "w").write("\n".join(lines) + "\n")
print("\n".join(lines))
EOF
log "wrote $OUT.json and $OUT.md"
