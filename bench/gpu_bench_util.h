// What gpu_bench's source files share (bench/gpu_bench.cc, gpu_bench_decode.cc).
// CUDA builds only.
#pragma once

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "kernels/cuda/cuda_compat.h"

#define BENCH_CUDA(expr)                                                                      \
  do {                                                                                        \
    const cudaError_t bench_e = (expr);                                                       \
    if (bench_e != cudaSuccess) {                                                             \
      std::fprintf(stderr, "gpu_bench: %s failed: %s\n", #expr, cudaGetErrorString(bench_e)); \
      std::exit(1);                                                                           \
    }                                                                                         \
  } while (false)

namespace pdserve::gpu_bench {

// Prints one figure and keeps it for gpu_bench.json.
void Record(std::string name, double value, std::string unit);

inline double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

// Median milliseconds of fn() over reps runs on stream, after warm-ups,
// timed with events.
template <typename F>
double TimeMs(cudaStream_t stream, int warmup, int reps, F fn) {
  cudaEvent_t a, b;
  BENCH_CUDA(cudaEventCreate(&a));
  BENCH_CUDA(cudaEventCreate(&b));
  for (int i = 0; i < warmup; ++i) fn();
  std::vector<double> ms;
  for (int i = 0; i < reps; ++i) {
    BENCH_CUDA(cudaEventRecord(a, stream));
    fn();
    BENCH_CUDA(cudaEventRecord(b, stream));
    BENCH_CUDA(cudaEventSynchronize(b));
    float t = 0;
    BENCH_CUDA(cudaEventElapsedTime(&t, a, b));
    ms.push_back(t);
  }
  cudaEventDestroy(a);
  cudaEventDestroy(b);
  return Median(ms);
}

}  // namespace pdserve::gpu_bench
