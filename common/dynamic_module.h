// Loading the CUDA half of pdserve. Everything that maps the CUDA libraries
// (cudart, cuBLAS, cuBLASLt, NCCL: ~155 MB resident) lives in one shared
// module, libpdserve_cuda.so, installed beside the pdserve binary and opened
// (dlopen) only at the first use of a GPU, so CPU runs and the router never
// map them. The module exports one C entry point per table of factories:
// engine/cuda_module.h (the CUDA backend) and transport/cuda_transports.h
// (the GPU KV transports); this is the loader both use.
#pragma once

#include <string>

#include "absl/status/statusor.h"

namespace pdserve {

inline constexpr char kCudaModuleFile[] = "libpdserve_cuda.so";

// kCudaModuleFile in the directory of the running executable
// (/proc/self/exe); the bare file name (the library path) if that is unknown.
std::string DefaultCudaModulePath();

// dlopens `path` (opening it again only counts a reference; it is never
// unloaded) and returns its symbol `entry`. Every failure
// is FailedPrecondition naming the path, what `purpose` (e.g. "the CUDA
// backend") needs, and the way out: the module is missing (a build without
// nvcc, or not installed beside the binary), a library it needs is missing
// (dlerror's text: the NVIDIA driver, CUDA runtime, cuBLAS or NCCL), or the
// file is not a pdserve module (no `entry`).
absl::StatusOr<void*> LoadModuleEntry(const std::string& path, const char* entry,
                                      const char* purpose);

}  // namespace pdserve
