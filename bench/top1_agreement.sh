#!/usr/bin/env bash
# Greedy top-1 agreement of each quantized copy of one real model with its F32
# original, for pdserve and for llama.cpp, on the same tokens (issue 13, item 3).
#
#   bench/top1_agreement.sh            # writes bench/results/top1_agreement.{json,md}
#   TYPES="Q4_0 Q8_0" CHUNKS=4 OUT=/tmp/t bench/top1_agreement.sh
#
# The truth. The bundled SmolLM2-135M-Instruct is the only real model here and
# it ships as Q4_1; its F32 dequantization (tools/dequantize_gguf.py, by the
# `gguf` package) is the model's function exactly as that file defines it.
# llama-quantize makes every type from that F32 file, as it would from a
# converted checkpoint. (The tiny transformers-made models of tests/data have
# random weights: their top-1 is a near-tie coin toss, it says nothing about
# a type's fidelity.) SmolLM2's 576-wide rows are not a multiple of 256, so in
# the K-quant mixes llama-quantize falls back to Q5_0/Q5_1/Q8_0 for those
# tensors; only ffn_down (1536 wide) and the like get K-quants. The md lists
# each file's tensor types.
#
# The measurement (teacher-forced, so one early difference cannot decide every
# later position): llama-perplexity tokenizes the text and saves the F32
# model's log-probabilities with their tokens (--kl-divergence-base; 512-token
# chunks, the second half of each scored). Each quantized file is then scored
# by `llama-perplexity --kl-divergence` ("Same top p": the argmax of its
# logits equals the base's) and by build/bin/top1_agreement_bench, pdserve's
# forward pass over the very same tokens with llama.cpp's statistic ported.
# Two truths, so neither engine is scored only against its own rounding:
# llama.cpp's F32 run and pdserve's F32 run (written in the same file format),
# both with an F32 KV cache; the quantized runs use each engine's default
# (F16 KV cache), as users run them. The F32 runs' agreement with each other
# is the noise floor. The bar: pdserve's agreement >= llama.cpp's per type.
#
# Environment (defaults in brackets):
#   TYPES   [Q4_0 Q4_1 Q5_0 Q5_1 Q8_0 Q4_K_M Q5_K_M Q6_K F16 BF16]
#   THREADS [2]  CHUNKS [16] (x 512 tokens; 255 scored positions each)
#   TEXT    [bench/results/top1_agreement_text.txt] (README.md, docs/deploy.md and
#           docs/openai.md at the commit that added it: prose the model cannot
#           have memorized)
#   SRC     [models/SmolLM2-135M-Instruct.Q4_1.gguf]
#   BENCH   [build/bin/top1_agreement_bench]   WORK_DIR [~/.cache/pdserve/top1]
#   OUT     [bench/results/top1_agreement]  writes $OUT.json and $OUT.md
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
TYPES=${TYPES:-Q4_0 Q4_1 Q5_0 Q5_1 Q8_0 Q4_K_M Q5_K_M Q6_K F16 BF16}
THREADS=${THREADS:-2}
CHUNKS=${CHUNKS:-16}
CTX=512
TEXT=${TEXT:-$ROOT/bench/results/top1_agreement_text.txt}
SRC=${SRC:-$ROOT/models/SmolLM2-135M-Instruct.Q4_1.gguf}
BENCH=${BENCH:-$ROOT/build/bin/top1_agreement_bench}
WORK_DIR=${WORK_DIR:-$HOME/.cache/pdserve/top1}
OUT=${OUT:-$ROOT/bench/results/top1_agreement}
RUN_TIMEOUT=${RUN_TIMEOUT:-1800}

log() { echo "top1_agreement: $*" >&2; }
[ -x "$BENCH" ] || { log "no $BENCH (build it: TARGETS=top1_agreement_bench scripts/build.sh)"; exit 1; }
[ -f "$TEXT" ] || { log "no $TEXT"; exit 1; }
LLAMA_BIN=$("$ROOT/bench/build_llama_cpp.sh" | tail -1)
[ -x "$LLAMA_BIN/llama-perplexity" ] || { log "peer build failed (no llama-perplexity)"; exit 1; }
mkdir -p "$WORK_DIR"
LOGS=$(mktemp -d -t top1_agreement.XXXXXX)
trap 'rm -rf "$LOGS"' EXIT
LOAD_START=$(uptime)

# --- models --------------------------------------------------------------------
name=$(basename "$SRC" .gguf)
F32="$WORK_DIR/$name.F32.gguf"
if [ ! -f "$F32" ] || [ "$SRC" -nt "$F32" ]; then
  log "dequantizing $SRC to F32"
  nice -n 5 python3 "$ROOT/tools/dequantize_gguf.py" "$SRC" "$F32"
fi
for t in $TYPES; do
  dst="$WORK_DIR/$name.$t.gguf"
  if [ ! -f "$dst" ] || [ "$F32" -nt "$dst" ]; then
    log "quantizing to $t"
    nice -n 5 "$LLAMA_BIN/llama-quantize" "$F32" "$dst.tmp" "$t" "$THREADS" \
      >"$LOGS/quantize.log" 2>&1 || { tail -5 "$LOGS/quantize.log" >&2; exit 1; }
    mv "$dst.tmp" "$dst"
  fi
done

# --- runs ------------------------------------------------------------------------
LLAMA_BASE="$WORK_DIR/llama.F32.kld"
PDS_BASE="$WORK_DIR/pdserve.F32.kld"
lp() {  # log model args...: llama-perplexity, its output in $LOGS/log
  local out=$1 model=$2
  shift 2
  timeout "$RUN_TIMEOUT" "$LLAMA_BIN/llama-perplexity" -m "$model" -c "$CTX" -b "$CTX" \
    -t "$THREADS" "$@" >"$LOGS/$out" 2>&1 || { tail -5 "$LOGS/$out" >&2; exit 1; }
}
pds() {  # log model args...: top1_agreement_bench
  local out=$1 model=$2
  shift 2
  timeout "$RUN_TIMEOUT" "$BENCH" --model "$model" --tokens-from "$LLAMA_BASE" \
    --threads "$THREADS" "$@" >"$LOGS/$out" 2>&1 || { tail -5 "$LOGS/$out" >&2; exit 1; }
}
log "llama.cpp F32: the base log-probabilities"
lp F32.llama.base "$F32" -f "$TEXT" --chunks "$CHUNKS" -ctk f32 -ctv f32 --kl-divergence-base "$LLAMA_BASE"
log "pdserve F32: its log-probabilities, scored against llama.cpp's"
pds F32.pds "$F32" --kv-dtype f32 --base "$LLAMA_BASE" --write "$PDS_BASE"
log "llama.cpp F32 scored against pdserve's"
lp F32.llama.vs_pds "$F32" -ctk f32 -ctv f32 --kl-divergence-base "$PDS_BASE" --kl-divergence
for t in $TYPES; do
  model="$WORK_DIR/$name.$t.gguf"
  log "$t: llama.cpp against both truths, then pdserve"
  lp "$t.llama.vs_llama" "$model" --kl-divergence-base "$LLAMA_BASE" --kl-divergence
  lp "$t.llama.vs_pds" "$model" --kl-divergence-base "$PDS_BASE" --kl-divergence
  pds "$t.pds" "$model" --base "$LLAMA_BASE" --base "$PDS_BASE"
done
LOAD_END=$(uptime)

CMD="TYPES=\"$TYPES\" THREADS=$THREADS CHUNKS=$CHUNKS bench/top1_agreement.sh"
python3 - "$LOGS" "$OUT" "$LLAMA_BIN/build_info.json" "$CMD" "$WORK_DIR" "$name" "$SRC" "$TEXT" \
  "$LLAMA_BASE" "$PDS_BASE" "$LOAD_START" "$LOAD_END" "$ROOT" $TYPES <<'EOF'
import datetime, hashlib, json, os, re, subprocess, sys
(logs, out, info_path, cmd, work, name, src, text, llama_base, pds_base, load_start, load_end,
 root) = sys.argv[1:14]
types = sys.argv[14:]
import gguf

def read(tag):
    return open(os.path.join(logs, tag)).read()

def llama(tag):
    s = read(tag)
    m = re.search(r"Same top p:\s*([\d.]+)\s*±\s*([\d.]+)\s*%", s)
    k = re.search(r"Mean\s+KLD:\s*([-\d.]+)", s)
    p = re.search(r"Mean PPL\(Q\)\s*:\s*([\d.]+)", s)
    if not m:
        raise SystemExit(f"top1_agreement: no 'Same top p' in {tag}:\n{s[-2000:]}")
    return {"same_top_pct": float(m.group(1)), "unc_pct": float(m.group(2)),
            "kld_mean": float(k.group(1)) if k else None, "ppl": float(p.group(1)) if p else None}

def pds(tag):
    s = read(tag)
    res = {}
    head = re.search(r"model=\S+ chunks=(\d+) n_ctx=(\d+) scored=(\d+) ppl=([\d.]+).*seconds=([\d.]+)", s)
    for m in re.finditer(r"base=(\S+) same_top=(\d+) count=(\d+) same_top_pct=([\d.]+) "
                         r"unc_pct=([\d.]+) kld_mean=([-\d.]+)", s):
        key = "vs_llama" if m.group(1) == llama_base else "vs_pds"
        res[key] = {"same_top": int(m.group(2)), "count": int(m.group(3)),
                    "same_top_pct": float(m.group(4)), "unc_pct": float(m.group(5)),
                    "kld_mean": float(m.group(6)), "ppl": float(head.group(4))}
    if not head or not res:
        raise SystemExit(f"top1_agreement: no result in {tag}:\n{s[-2000:]}")
    res["scored"] = int(head.group(3))
    res["seconds"] = float(head.group(5))
    return res

def census(path):
    counts = {}
    for t in gguf.GGUFReader(path).tensors:
        if len(t.shape) < 2 or t.shape[1] == 1:
            continue  # norms
        n = t.tensor_type.name
        counts[n] = counts.get(n, 0) + 1
    return counts

base_log = read("F32.llama.base")
sysinfo = next((l.split("|", 1)[1].strip() for l in base_log.splitlines() if l.startswith("system_info")), "")
rows = []
f32 = {"type": "F32", "llama_vs_llama": None, "llama_vs_pds": llama("F32.llama.vs_pds"),
       "pds": pds("F32.pds"), "tensors": census(os.path.join(work, f"{name}.F32.gguf")),
       "file_mib": os.path.getsize(os.path.join(work, f"{name}.F32.gguf")) / 2**20}
for t in types:
    path = os.path.join(work, f"{name}.{t}.gguf")
    rows.append({"type": t, "file_mib": os.path.getsize(path) / 2**20, "tensors": census(path),
                 "llama_vs_llama": llama(f"{t}.llama.vs_llama"), "llama_vs_pds": llama(f"{t}.llama.vs_pds"),
                 "pds": pds(f"{t}.pds")})
info = json.load(open(info_path))
commit = subprocess.run(["git", "-C", root, "rev-parse", "--short", "HEAD"], capture_output=True,
                        text=True).stdout.strip()
lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
cpu = next((l.split(":", 1)[1].strip() for l in lscpu.splitlines() if l.startswith("Model name")), "?")
sha = lambda p: hashlib.sha256(open(p, "rb").read()).hexdigest()
result = {"command": cmd,
          "date_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M"),
          "machine": {"cpu": cpu, "logical_cpus": os.cpu_count()},
          "load": {"start": load_start.strip(), "end": load_end.strip()},
          "pdserve_commit": commit, "peer": info, "peer_system_info": sysinfo,
          "source_model": os.path.basename(src), "source_sha256": sha(src),
          "text": os.path.relpath(text, root), "text_sha256": sha(text),
          "f32": f32, "rows": rows}
json.dump(result, open(out + ".json", "w"), indent=1)

def pct(r):
    return f"{r['same_top_pct']:.2f} ± {r['unc_pct']:.2f}"

def verdict(p, l):
    d = p["same_top_pct"] - l["same_top_pct"]
    return f"{d:+.2f}" + (" ok" if d >= 0 else " **below**")

def tensors(c):
    return ", ".join(f"{k.lower()} {v}" for k, v in sorted(c.items(), key=lambda kv: -kv[1]))

scored = f32["pds"]["scored"]
lines = [
    "# Greedy top-1 agreement with the F32 model, pdserve against llama.cpp", "",
    f"`{cmd}`, {result['date_utc']} UTC, pdserve {commit}, on {cpu} ({os.cpu_count()} logical CPUs). "
    f"Load at start: `{load_start.strip()}`; at end: `{load_end.strip()}` (shared machine; "
    "the figures here are counts, the load changes none of them).", "",
    f"Model: {os.path.basename(src)} dequantized to F32 by tools/dequantize_gguf.py (the truth), "
    "each type made from it by llama-quantize. Text: "
    f"`{os.path.relpath(text, root)}` (sha256 {result['text_sha256'][:12]}), tokenized by llama.cpp, "
    f"{f32['pds']['scored'] // 255} chunks of 512 tokens, the second half of each scored: "
    f"{scored} teacher-forced positions, the same tokens for both engines.", "",
    f"Peer: {info['source']}, {info.get('llama_bench_version', '').strip()}; {info['cxx_version']}; "
    f"`{' '.join(info['cmake_flags'])}`; {info.get('native_flags', '')}"
    f"{'; ISA ' + ' '.join(info['native_isa']) if info.get('native_isa') else ''}. "
    f"llama.cpp system_info: `{sysinfo}`.", "",
    "Same top-1 %: positions where the argmax of the quantized model's logits equals the argmax "
    "of the F32 run's, ± the binomial standard error (llama-perplexity's \"Same top p\"; pdserve's "
    "side ports its statistic). vs llama F32: the truth is llama.cpp's F32 run; vs pdserve F32: "
    "pdserve's. KLD: mean KL(F32 || quantized), nats. Δ: pdserve minus llama.cpp, percentage points.", "",
    "| type | MiB | llama.cpp vs llama F32 | pdserve vs llama F32 | Δ | llama.cpp vs pdserve F32 "
    "| pdserve vs pdserve F32 | Δ | KLD llama.cpp / pdserve (vs own F32) | PPL llama.cpp / pdserve |",
    "|---|---|---|---|---|---|---|---|---|---|",
]
ll, lp_ = f32["llama_vs_pds"], f32["pds"]["vs_llama"]
lines.append(f"| F32 (noise floor) | {f32['file_mib']:.0f} | 100 (itself) | {pct(lp_)} | – | {pct(ll)} | "
             f"100 (itself) | – | {ll['kld_mean']:.5f} / {lp_['kld_mean']:.5f} (each vs the other's) | "
             f"{ll['ppl']:.3f} / {lp_['ppl']:.3f} |")
ok = True
for r in rows:
    l1, l2, p1, p2 = r["llama_vs_llama"], r["llama_vs_pds"], r["pds"]["vs_llama"], r["pds"]["vs_pds"]
    ok &= p1["same_top_pct"] >= l1["same_top_pct"] and p2["same_top_pct"] >= l2["same_top_pct"]
    lines.append(f"| {r['type']} | {r['file_mib']:.0f} | {pct(l1)} | {pct(p1)} | {verdict(p1, l1)} | "
                 f"{pct(l2)} | {pct(p2)} | {verdict(p2, l2)} | {l1['kld_mean']:.5f} / {p2['kld_mean']:.5f} | "
                 f"{l1['ppl']:.3f} / {p1['ppl']:.3f} |")
lines += ["", f"Bar (pdserve >= llama.cpp for every type, against both truths): "
          f"{'met' if ok else 'NOT met'}.", "", "Tensor types of each file (2-D tensors):", ""]
for r in [f32] + rows:
    lines.append(f"- {r['type']}: {tensors(r['tensors'])}")
open(out + ".md", "w").write("\n".join(lines) + "\n")
print("\n".join(lines))
EOF
log "wrote $OUT.json and $OUT.md"
