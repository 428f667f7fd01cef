// The CUDA runtime for pdserve's kernels and the CUDA runner: the real
// headers under nvcc / the CUDA toolkit, or, when PDS_CUDA_EMU is defined, a
// CPU emulation of the subset pdserve uses (kernels/cuda/emu/cuda_emu.h). The
// emulation lets the same kernel and runner sources build with g++ and run in
// tests on machines without a GPU; it checks barrier discipline and memory
// spaces, not speed.
#pragma once

#ifdef PDS_CUDA_EMU
#include "kernels/cuda/emu/cuda_emu.h"
// Emulated builds put pdserve's `cuda` namespaces (kernels::cuda, cuda::)
// under another name, so that a test binary may link the emulated and the
// real CUDA code side by side without clashing symbols.
#define cuda cuda_emulated
// PDS_LAUNCH(grid, block, smem_bytes, stream, kernel)(args...)
#define PDS_LAUNCH(grid, block, smem, stream, ...) \
  ::pdserve::cuda_emu::Launcher(grid, block, smem, stream, __VA_ARGS__)
// Dynamic shared memory of the running kernel, as an array of `type`.
#define PDS_DYNAMIC_SMEM(type, name) \
  type* name = static_cast<type*>(::pdserve::cuda_emu::DynamicSmem())
// Unrolls the next loop on the GPU only: clang would honour it in the
// emulation too, and deeply nested unrolled kernels then take minutes to
// compile under the sanitizers.
#define PDS_UNROLL
#else
#include <cuda.h>  // driver API types, for cudaGetDriverEntryPointByVersion lookups
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#define PDS_LAUNCH(grid, block, smem, stream, ...) __VA_ARGS__<<<grid, block, smem, stream>>>
#define PDS_DYNAMIC_SMEM(type, name)                                \
  extern __shared__ __align__(16) unsigned char pds_dynamic_smem[]; \
  type* name = reinterpret_cast<type*>(pds_dynamic_smem)
#define PDS_UNROLL _Pragma("unroll")
#endif
