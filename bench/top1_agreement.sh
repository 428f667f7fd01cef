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
python3 "$ROOT/tools/top1_agreement_report.py" "$LOGS" "$OUT" "$LLAMA_BIN/build_info.json" "$CMD" "$WORK_DIR" "$name" "$SRC" "$TEXT" \
  "$LLAMA_BASE" "$PDS_BASE" "$LOAD_START" "$LOAD_END" "$ROOT" $TYPES
log "wrote $OUT.json and $OUT.md"
