#!/usr/bin/env bash
# Builds what tests/gpu/device_check.sh runs, here (where nvcc, Abseil,
# GoogleTest, gRPC ... are), and packs the binaries with the shared libraries
# they need into .device_carry/ (git-ignored; name it in the device tool's
# `carry`). The GPU machine has the CUDA driver, CMake and PyTorch (whose
# pip packages hold cuBLAS and NCCL for CUDA 13) but no package registry,
# and at most 64 MiB of the working tree reaches it: so cuBLAS (~600 MB) and
# NCCL (~200 MB) are not packed (device_check.sh finds PyTorch's copies), the
# driver and glibc/libstdc++ are the machine's own, and everything else is
# compressed into one archive.
#
# Usage (from the repository root): tests/gpu/prepare_device_bundle.sh [BUILD_DIR]
#   BUILD_DIR defaults to build-cuda (configured here if missing).
set -euo pipefail

root=$(git rev-parse --show-toplevel)
cd "$root"
build=${1:-build-cuda}
carry=.device_carry
limit_mib=56 # 64 MiB minus the working tree (~6 MiB) and slack

targets=(cuda_kernels_test cuda_runner_test nccl_transport_test ipc_transport_test host_staged_test
  gpu_bench logit_parity_bench pdserve pdserve_cuda_module)
# What goes into bin/: the programs, and the CUDA module pdserve dlopens at
# --device cuda (common/dynamic_module.h), which must sit beside it.
files=(cuda_kernels_test cuda_runner_test nccl_transport_test ipc_transport_test host_staged_test
  gpu_bench logit_parity_bench pdserve libpdserve_cuda.so)

if [[ ! -f $build/build.ninja ]]; then
  cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release
fi
if ! grep -q pdserve_kernels_cuda "$build/build.ninja"; then
  echo "prepare_device_bundle: $build was configured without CUDA (nvcc not found?)" >&2
  exit 1
fi
echo "== building ${targets[*]} in $build"
cmake --build "$build" -j"$(nproc)" --target "${targets[@]}"

stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
mkdir -p "$stage/bin" "$stage/lib"
for t in "${files[@]}"; do
  cp "$build/bin/$t" "$stage/bin/"
  strip --strip-unneeded "$stage/bin/$t" 2>/dev/null || true
done

# Shared libraries: everything ldd resolves, except what the GPU machine has
# (or must provide itself): glibc, libstdc++/libgcc (its own are newer), the
# driver, and cuBLAS/NCCL (too large; taken from PyTorch's pip packages).
skip='^(linux-vdso|ld-linux|libc\.so|libm\.so|libpthread|libdl\.so|librt\.so|libresolv|libutil\.so|libstdc\+\+|libgcc_s|libcuda\.so|libnvidia|libcublas|libcublasLt|libnccl)'
missing=0
for t in "${files[@]}"; do
  while read -r name arrow path _; do
    [[ $arrow == "=>" ]] || continue
    base=$(basename "$name")
    [[ $base =~ $skip ]] && continue
    if [[ $path == "not" ]]; then
      echo "prepare_device_bundle: $t needs $name, which is not found here" >&2
      missing=1
      continue
    fi
    [[ -f $stage/lib/$base ]] || cp -L "$path" "$stage/lib/$base"
  done < <(ldd "$build/bin/$t")
done
[[ $missing == 0 ]] || exit 1
strip --strip-unneeded "$stage"/lib/*.so* 2>/dev/null || true

# What device_check.sh must find on the machine, by soname.
{
  for t in "${files[@]}"; do ldd "$build/bin/$t"; done |
    awk '{print $1}' | grep -E '^(libcublas|libcublasLt|libnccl)' | sort -u
} >"$stage/needs_from_machine.txt"
git rev-parse HEAD >"$stage/commit.txt"
git status --short >>"$stage/commit.txt"

rm -rf "$carry"
mkdir -p "$carry"
tar -C "$stage" -cf - bin lib needs_from_machine.txt commit.txt | xz -T0 -9 >"$carry/bundle.tar.xz"
size=$(stat -c %s "$carry/bundle.tar.xz")
echo "== $carry/bundle.tar.xz: $((size / 1048576)) MiB ($(du -sh "$stage" | cut -f1) unpacked)"
echo "   binaries: ${targets[*]}"
echo "   libraries: $(ls "$stage/lib" | wc -l); from the GPU machine: $(tr '\n' ' ' <"$stage/needs_from_machine.txt")"
if ((size > limit_mib * 1048576)); then
  echo "prepare_device_bundle: the bundle exceeds $limit_mib MiB" >&2
  exit 1
fi
echo "run on the GPU machine (device tool, carry [\"$carry\"]): bash tests/gpu/device_check.sh"
