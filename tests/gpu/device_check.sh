#!/usr/bin/env bash
# The GPU check in one command, sized for the device machine: one H200, at
# most 600 s per command and 15 minutes of device time per session. Run from
# the repository root, with .device_carry/ (tests/gpu/prepare_device_bundle.sh)
# carried along:
#
#   bash tests/gpu/device_check.sh            # the real check (GPU)
#   bash tests/gpu/device_check.sh --dry-run  # or DRY_RUN=1: the same steps on
#                                             # the CPU, emulated binaries and
#                                             # tiny shapes, in seconds (CI)
#
# Steps (per-step timeouts on a GPU, 525 s in all):
#   1 kernels vs CPU references         cuda_kernels_test             45 s
#   2 CUDA runner vs CPU runner         cuda_runner_test              45 s
#   3 KV transports                     ipc_/host_staged_/nccl_transport_test 45 s
#   4 llama-3-8b dummy weights, once    logit_parity_bench --save-dummy 45 s
#   5 logit parity with the CPU runner  top-1 >= 95%, NMSE <= 1e-2     75 s
#   6 1P1D cluster on one GPU over IPC  pdserve cluster + loadgen: TTFT, TPOT, stages 120 s
#   7 gpu_bench                         decode/copy, prefill/cuBLAS, KV vs raw 75 s
#   8 device profile for pdserve plan   pdserve bench --profile        75 s
# $OUT (default /tmp/pdserve_device_check) receives at most four files, far
# under the device tool's 64 MiB: summary.txt (one line per step, appended
# as each step ends, so a run cut short still says how far it got),
# device_check.log (every step's output, each capped at 400 lines), and
# gpu_bench.json, profile_DEVICE_CONFIG.json. Exit status 0 when no step failed.
set -uo pipefail

dry=${DRY_RUN:-0}
for a in "$@"; do
  case $a in
    --dry-run) dry=1 ;;
    *)
      echo "usage: device_check.sh [--dry-run]" >&2
      exit 2
      ;;
  esac
done

root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
if ((dry)); then
  OUT=${OUT:-$(mktemp -d "${TMPDIR:-/tmp}/pdserve_device_check_dry.XXXXXX")}
else
  OUT=${OUT:-/tmp/pdserve_device_check}
fi
mkdir -p "$OUT"
log=$OUT/device_check.log
summary=$OUT/summary.txt
: >"$log"
work=$(mktemp -d "${TMPDIR:-/tmp}/pdserve_device_check.XXXXXX")
children=()
cleanup() {
  for p in "${children[@]}"; do kill -TERM "$p" 2>/dev/null; done
  for p in "${children[@]}"; do wait "$p" 2>/dev/null; done
  rm -rf "$work"
}
trap cleanup EXIT
say() { echo "$*" | tee -a "$log"; }
keep() { # file: append a step's output to the log, at most 400 lines
  {
    echo "---- $(basename "$1")"
    if (($(wc -l <"$1") > 400)); then
      head -100 "$1"
      echo "... ($(wc -l <"$1") lines; the first 100 and last 300 kept)"
      tail -300 "$1"
    else
      cat "$1"
    fi
  } >>"$log" 2>/dev/null
}
started=$(date +%s)
failed=0
echo "device_check $( ((dry)) && echo "DRY RUN (CPU, emulated, tiny shapes)" || echo "on the GPU"), $(date -u +%FT%TZ)" >"$summary"
record() { # step status detail: one line in summary.txt, written now
  local line
  line=$(printf '%-28s %-5s %s  [%ds]' "$1" "$2" "$3" $(($(date +%s) - started)))
  echo "$line" >>"$summary"
  [[ $2 == FAIL ]] && failed=1
  say "-- $line"
}

# --- Binaries ----------------------------------------------------------------
if ((dry)); then
  bin=${BIN_DIR:-$root/build/bin}
  device=cpu
  config=tiny
  kv_transport=tcp
  gpus=0
  T_GTEST=60 T_WEIGHTS=20 T_PARITY=20 T_CLUSTER=60 T_PROFILE=60
else
  device=cuda
  config=llama-3-8b
  kv_transport=ipc
  T_GTEST=45 T_WEIGHTS=45 T_PARITY=75 T_CLUSTER=120 T_PROFILE=75
  carry=$root/.device_carry
  if [[ -f $carry/bundle.tar.xz ]]; then
    unpacked=${TMPDIR:-/tmp}/pdserve_device_carry
    rm -rf "$unpacked" && mkdir -p "$unpacked"
    if ! tar -C "$unpacked" -xJf "$carry/bundle.tar.xz" 2>>"$log"; then
      python3 -c 'import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2])' \
        "$carry/bundle.tar.xz" "$unpacked" || {
        record "0 setup" FAIL "cannot unpack $carry/bundle.tar.xz"
        exit 1
      }
    fi
    carry=$unpacked
  fi
  if [[ ! -x $carry/bin/pdserve ]]; then
    record "0 setup" FAIL "no bundle: run tests/gpu/prepare_device_bundle.sh first"
    exit 1
  fi
  say "bundle: $(head -1 "$carry/commit.txt" 2>/dev/null)"
  # cuBLAS and NCCL from the machine (PyTorch's pip packages, or a CUDA
  # toolkit), by the sonames the binaries need.
  lib_dirs=()
  search=()
  if command -v python3 >/dev/null; then
    while IFS= read -r d; do search+=("$d"); done < <(python3 - <<'EOF' 2>/dev/null
import site
for d in site.getsitepackages() + [site.getusersitepackages()]:
    print(d)
try:
    import nvidia
    for d in nvidia.__path__:
        print(d)
except Exception:
    pass
EOF
    )
  fi
  search+=(/usr/local/cuda/lib64 /usr/local/cuda/lib /usr/local/cuda/targets/x86_64-linux/lib
    /usr/lib/x86_64-linux-gnu /opt)
  while IFS= read -r soname; do
    [[ -z $soname ]] && continue
    found=""
    for d in "${search[@]}"; do
      [[ -d $d ]] || continue
      found=$(find "$d" -maxdepth 6 -name "$soname" \( -type f -o -type l \) 2>/dev/null | head -1)
      [[ -n $found ]] && break
    done
    if [[ -z $found ]]; then
      say "device_check: $soname not found on this machine"
    else
      lib_dirs+=("$(dirname "$found")")
    fi
  done <"$carry/needs_from_machine.txt"
  extra=$(printf '%s:' "${lib_dirs[@]}" | sed 's/:$//')
  export LD_LIBRARY_PATH="$carry/lib${extra:+:$extra}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  bin=$carry/bin
  gpus=0
  if command -v nvidia-smi >/dev/null && nvidia-smi -L >"$work/gpus.txt" 2>&1; then
    gpus=$(grep -c '^GPU ' "$work/gpus.txt")
  fi
  if ((gpus == 0)); then
    record "0 setup" FAIL "no GPU (nvidia-smi finds none); for a CPU check use --dry-run"
    exit 1
  fi
  say "GPUs: $(tr '\n' ';' <"$work/gpus.txt")"
  export PDSERVE_REQUIRE_GPU=1 # a skip would hide a broken setup: make it fail
fi
# A CUDA test binary, or its CPU-emulated build in a dry run (NAME_emu_test).
t() { if ((dry)); then echo "${1%_test}_emu_test"; else echo "$1"; fi; }
for b in pdserve logit_parity_bench "$(t cuda_kernels_test)" "$(t cuda_runner_test)"; do
  if [[ ! -x $bin/$b ]]; then
    record "0 setup" FAIL "$bin/$b is missing (build it first)"
    exit 1
  fi
done
# pdserve links no CUDA library: the CUDA backend and the GPU KV transports
# are in libpdserve_cuda.so beside it, dlopened at --device cuda
# (common/dynamic_module.h). On the GPU the module must be there and resolve.
if ldd "$bin/pdserve" 2>&1 | grep -qE 'libcudart|libcublas|libnccl'; then
  record "0 setup" FAIL "$bin/pdserve links a CUDA library (it must only dlopen libpdserve_cuda.so)"
  exit 1
fi
if ((!dry)); then
  if [[ ! -f $bin/libpdserve_cuda.so ]]; then
    record "0 setup" FAIL "$bin/libpdserve_cuda.so is missing (the bundle must ship it beside pdserve)"
    exit 1
  fi
  if ldd "$bin/libpdserve_cuda.so" >"$work/ldd_module.txt" 2>&1 && ! grep -q "not found" "$work/ldd_module.txt"; then
    :
  else
    record "0 setup" FAIL "libpdserve_cuda.so: unresolved: $(grep "not found" "$work/ldd_module.txt" | awk '{print $1}' | tr '\n' ' ')"
    exit 1
  fi
fi
record "0 setup" PASS "binaries in $bin, $( ((dry)) && echo "dry run" || echo "$gpus GPU(s)")"

# --- 1-3: test binaries ------------------------------------------------------------
run_gtests() { # step timeout binary... : PASS when every binary passes (all run)
  local step=$1 limit=$2
  shift 2
  local passed=0 skipped=0 detail="" fails="" b out rc
  local deadline=$(($(date +%s) + limit))
  for b in "$@"; do
    if [[ ! -x $bin/$b ]]; then
      detail+=" $b missing;"
      continue
    fi
    out=$work/$b.txt
    local left=$((deadline - $(date +%s)))
    ((left < 5)) && left=5
    timeout "$left" "$bin/$b" >"$out" 2>&1
    rc=$?
    keep "$out"
    passed=$((passed + $(grep -c '^\[       OK \]' "$out")))
    skipped=$((skipped + $(grep -c '^\[  SKIPPED \] .*(' "$out")))
    if ((rc == 124)); then
      fails+=" $b timed out (the step has ${limit}s);"
    elif ((rc != 0)); then
      fails+=" $b rc $rc: $(grep -m3 '^\[  FAILED  \] .*(' "$out" | tr '\n' ' ' | cut -c1-200);"
    fi
  done
  if [[ -n $fails ]]; then
    record "$step" FAIL "$passed passed;$fails$detail"
  elif [[ -n $detail ]]; then
    record "$step" FAIL "$passed passed;$detail"
  else
    record "$step" PASS "$passed passed, $skipped skipped"
  fi
}
say "== 1. kernels vs CPU references"
run_gtests "1 kernels vs CPU" "$T_GTEST" "$(t cuda_kernels_test)"
say "== 2. CUDA runner vs CPU runner"
if ((dry)); then # the emulation is slow: one shape of three
  GTEST_FILTER='*tiny_q4_1_tied:CudaBackendTest.*' \
    run_gtests "2 runner vs CPU runner" "$T_GTEST" "$(t cuda_runner_test)"
else
  run_gtests "2 runner vs CPU runner" "$T_GTEST" "$(t cuda_runner_test)"
fi
say "== 3. KV transports (IPC, host-staged tcp, NCCL)"
run_gtests "3 KV transports" "$T_GTEST" "$(t ipc_transport_test)" "$(t host_staged_test)" \
  "$(t nccl_transport_test)"

# --- 4: weights, once ------------------------------------------------------------
say "== 4. $config dummy weights (built once, used by every later step)"
model=$work/$config.gguf
timeout "$T_WEIGHTS" "$bin/logit_parity_bench" --dummy-config "$config" --dummy-seed 1 \
  --save-dummy "$model" >"$work/weights.txt" 2>&1
rc=$?
keep "$work/weights.txt"
if ((rc != 0)); then
  record "4 weights" FAIL "rc $rc: $(tail -1 "$work/weights.txt")"
  model=""
else
  record "4 weights" PASS "$(tail -1 "$work/weights.txt" | cut -c1-120)"
fi

# --- 5: parity ---------------------------------------------------------------------
say "== 5. logits, $device vs cpu, teacher-forced"
if [[ -z $model ]]; then
  record "5 parity" FAIL "no weights (step 4)"
else
  tokens=64
  ((dry)) && tokens=32
  timeout "$T_PARITY" "$bin/logit_parity_bench" --model "$model" --device "$device" \
    --tokens "$tokens" --min-top1 0.95 --max-nmse 0.01 >"$work/parity.txt" 2>&1
  rc=$?
  keep "$work/parity.txt"
  line=$(grep -m1 '^parity' "$work/parity.txt" | cut -c1-230)
  if ((rc == 0)); then
    record "5 parity" PASS "$line"
  elif ((rc == 124)); then
    record "5 parity" FAIL "timed out after ${T_PARITY}s"
  else
    record "5 parity" FAIL "rc $rc: ${line:-$(tail -1 "$work/parity.txt")}"
  fi
fi

# --- 6: a 1P1D cluster on one device ---------------------------------------------
say "== 6. 1P1D cluster on one $device, KV over $kv_transport, through the router"
cluster_step() {
  [[ -z $model ]] && {
    record "6 cluster 1P1D" FAIL "no weights (step 4)"
    return
  }
  local port=$((52000 + RANDOM % 800))
  local deadline=$(($(date +%s) + T_CLUSTER))
  local node_flags="--device $device --kv-cache-mib 1024 --ctx-size 2048"
  local threads=0
  ((dry)) && node_flags="--device cpu --kv-cache-mib 64" threads=1
  setsid "$bin/pdserve" cluster --model "$model" --prefill 1 --decode 1 --port "$port" \
    --threads "$threads" \
    --kv-transport "$kv_transport" --node-flags "$node_flags" --startup-timeout $((T_CLUSTER / 2)) \
    >"$work/cluster.txt" 2>&1 &
  local cpid=$!
  children+=("$cpid")
  while ! grep -q "cluster ready" "$work/cluster.txt" 2>/dev/null; do
    if ! kill -0 "$cpid" 2>/dev/null || (($(date +%s) > deadline - 20)); then
      keep "$work/cluster.txt"
      record "6 cluster 1P1D" FAIL "the cluster did not start: $(grep -m1 -iE 'error|fail' "$work/cluster.txt" | cut -c1-160)"
      kill -TERM -- -"$cpid" 2>/dev/null
      return
    fi
    sleep 1
  done
  local n=16 in=256 outl=32
  ((dry)) && n=4 in=16 outl=4
  local left=$((deadline - $(date +%s)))
  ((left < 10)) && left=10
  timeout "$left" "$bin/pdserve" loadgen --target "grpc://127.0.0.1:$port" --num-prompts "$n" \
    --random-input-len "$in" --random-output-len "$outl" --ignore-eos --max-concurrency 4 \
    --max-duration "$left" --no-progress --result-json "$work/loadgen.json" \
    >"$work/loadgen.txt" 2>&1
  local rc=$?
  kill -TERM -- -"$cpid" 2>/dev/null
  wait "$cpid" 2>/dev/null
  keep "$work/cluster.txt"
  keep "$work/loadgen.txt"
  if ((rc != 0)); then
    record "6 cluster 1P1D" FAIL "loadgen rc $rc: $(grep -m1 -iE 'error' "$work/loadgen.txt" | cut -c1-160)"
    return
  fi
  local ttft tpot kv
  ttft=$(awk '$1 == "TTFT" {print "mean " $2 " p50 " $4 " ms"}' "$work/loadgen.txt")
  tpot=$(awk '$1 == "TPOT" {print "mean " $2 " p50 " $4 " ms"}' "$work/loadgen.txt")
  kv=$(grep -m1 -E 'KV over' "$work/cluster.txt" | sed 's/.*KV over/KV over/')
  record "6 cluster 1P1D" PASS "$n requests ${in}+${outl} tokens: TTFT $ttft, TPOT $tpot; ${kv:-KV over $kv_transport}"
  grep -A12 '^stage ms' "$work/loadgen.txt" | sed 's/^/    /' >>"$summary"
}
cluster_step

# --- 7: gpu_bench ------------------------------------------------------------------
say "== 7. gpu_bench"
if ((dry)); then
  record "7 gpu_bench" SKIP "dry run: needs a GPU (decode/copy, prefill/cuBLAS, KV vs raw)"
elif [[ ! -x $bin/gpu_bench ]]; then
  record "7 gpu_bench" FAIL "gpu_bench missing from the bundle"
else
  timeout 75 "$bin/gpu_bench" --config llama-3-8b ${model:+--model "$model"} --prompt 512 --decode 32 --out "$OUT" \
    >"$work/gpu_bench.txt" 2>&1
  rc=$?
  keep "$work/gpu_bench.txt"
  if ((rc != 0)); then
    record "7 gpu_bench" FAIL "rc $rc (see the log)"
  else
    dec=$(grep 'decode bandwidth / copy' "$work/gpu_bench.txt" | awk '{print $(NF-1)}')
    mv=$(grep 'MatVec bandwidth / copy bandwidth, 1 token ' "$work/gpu_bench.txt" | awk '{print $(NF-1)}')
    pre=$(grep 'prefill / cuBLAS' "$work/gpu_bench.txt" | awk '{print $(NF-1)}')
    kv=$(grep -E 'KV transfer / raw|KV transport / raw|IPC KV / raw' "$work/gpu_bench.txt" | awk '{print $(NF-1)}' | tr '\n' ' ')
    record "7 gpu_bench" PASS "decode/copy $dec (target 0.70), MatVec alone/copy $mv, prefill/cuBLAS $pre (target 0.50), KV/raw $kv"
    grep -E 'GB/s|tok/s|ratio| ms$|TFLOP' "$work/gpu_bench.txt" | sed 's/^/    /' >>"$summary"
  fi
fi

# --- 8: device profile for pdserve plan ---------------------------------------------
say "== 8. pdserve bench --profile ($config on $device)"
if [[ -z $model ]]; then
  record "8 profile" FAIL "no weights (step 4)"
else
  prof_flags=(--device "$device" --kv-cache-mib 32768)
  ((dry)) && prof_flags=(--device cpu --threads 1 --kv-cache-mib 64 --ctx-size 2048)
  timeout "$T_PROFILE" "$bin/pdserve" bench --model "$model" "${prof_flags[@]}" \
    --profile "$OUT/profile_${device}_${config}.json" >"$work/profile.txt" 2>&1
  rc=$?
  keep "$work/profile.txt"
  if ((rc != 0)); then
    record "8 profile" FAIL "rc $rc: $(tail -1 "$work/profile.txt" | cut -c1-160)"
  else
    rms=$(grep -m1 '"fit_rms_relative_error"' "$work/profile.txt" | tr -d ' ,')
    secs=$(grep -m1 '"measure_seconds"' "$work/profile.txt" | tr -d ' ,')
    record "8 profile" PASS "profile_${device}_${config}.json: $rms $secs"
  fi
fi

echo "total $(($(date +%s) - started)) s; $( ((failed)) && echo "FAILED" || echo "no step failed")" >>"$summary"
echo
tee -a "$log" <"$summary"
exit $failed
