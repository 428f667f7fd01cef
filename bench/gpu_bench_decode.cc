#ifdef PDSERVE_HAVE_CUDA
#include "bench/gpu_bench_decode.h"

#include <algorithm>
#include <chrono>
#include <cstring>
#include <random>
#include <vector>

#include "absl/strings/str_format.h"
#include "bench/gpu_bench_util.h"
#include "kernels/cpu/matmul.h"
#include "kernels/cuda/matvec.h"
#include "kernels/quant.h"

namespace pdserve::gpu_bench {

using kernels::DType;

void BenchDecodeSweep(cuda::CudaRunner& runner, int32_t n_vocab, const int32_t* prefix_blocks,
                      int32_t prefix, int32_t block_size, int32_t private_block0) {
  constexpr int kMaxBatch = 16;
  constexpr int kWarmup = 2, kTimed = 8;
  static_assert(kWarmup + kTimed <= 16, "the steps of one batch fit one private block");
  std::vector<std::vector<int32_t>> tables(kMaxBatch);
  for (int i = 0; i < kMaxBatch; ++i) {
    tables[i].assign(prefix_blocks, prefix_blocks + prefix / block_size);
    tables[i].push_back(private_block0 + i);
  }
  std::vector<float> logits(size_t{kMaxBatch} * n_vocab);
  std::mt19937 rng(11);
  auto step_ms = [&](int batch, int matvec_rows) {
    runner.set_max_matvec_rows(matvec_rows);
    std::vector<double> ms;
    for (int step = 0; step < kWarmup + kTimed; ++step) {
      ForwardBatch b;
      for (int i = 0; i < batch; ++i) {
        b.tokens.push_back(static_cast<TokenId>(rng() % n_vocab));
        kernels::AttnSeq s;
        s.block_table = tables[i].data();
        s.n_past = prefix + step;
        s.n_new = 1;
        s.row0 = i;
        b.seqs.push_back(s);
        b.logit_rows.push_back(i);
      }
      const auto t0 = std::chrono::steady_clock::now();
      runner.Forward(b, logits.data(), nullptr);
      const auto t1 = std::chrono::steady_clock::now();
      if (step >= kWarmup) ms.push_back(std::chrono::duration<double, std::milli>(t1 - t0).count());
    }
    return Median(ms);
  };
  const int default_rows = runner.max_matvec_rows();
  std::printf("\ndecode step by batch size (context %d), MatVec against cuBLAS f16:\n", prefix);
  for (int batch : {1, 2, 4, 8, kMaxBatch}) {
    if (batch <= kernels::cuda::kMaxMatVecTokens) {
      Record(absl::StrFormat("decode step, batch %d, MatVec", batch),
             step_ms(batch, kernels::cuda::kMaxMatVecTokens), "ms");
    }
    Record(absl::StrFormat("decode step, batch %d, cuBLAS", batch), step_ms(batch, 0), "ms");
  }
  runner.set_max_matvec_rows(default_rows);
}

void BenchMatVec(cudaStream_t stream, double copy_bw) {
  struct Shape {
    const char* name;
    DType type;
    int64_t n_out, n_in;
    int per_step;  // times one decode step reads it
  };
  const Shape shapes[] = {{"qkv", DType::kQ4_0, 6144, 4096, 32},
                          {"wo", DType::kQ4_0, 4096, 4096, 32},
                          {"gate_up", DType::kQ4_0, 28672, 4096, 32},
                          {"down", DType::kQ4_0, 4096, 14336, 32},
                          {"output", DType::kQ8_0, 128256, 4096, 1}};
  constexpr int kMaxTokens = 4;
  // One buffer of at least 512 MiB holds several copies of each matrix
  // (the output head's 558 MB once): consecutive launches read different
  // copies, so L2 (50 MiB) serves none of them.
  int64_t buffer_bytes = int64_t{512} << 20, widest = 0, most_rows = 0;
  for (const Shape& s : shapes) {
    buffer_bytes = std::max(buffer_bytes, s.n_out * kernels::RowBytes(s.type, s.n_in));
    widest = std::max(widest, s.n_in);
    most_rows = std::max(most_rows, s.n_out);
  }
  uint8_t *w, *act;
  float* y;
  const int64_t act_row_bytes = kernels::ActRowBytes(kernels::ActFormat::kQ8_1, widest);
  BENCH_CUDA(cudaMalloc(&w, buffer_bytes));
  BENCH_CUDA(cudaMalloc(&act, kMaxTokens * act_row_bytes));
  BENCH_CUDA(cudaMalloc(&y, kMaxTokens * most_rows * sizeof(float)));
  // Random bytes (scales included: the integer work does not depend on them).
  std::vector<uint8_t> host(size_t{16} << 20);
  std::mt19937_64 rng(3);
  for (size_t i = 0; i < host.size(); i += 8) {
    const uint64_t v = rng();
    std::memcpy(&host[i], &v, 8);
  }
  for (int64_t at = 0; at < buffer_bytes; at += static_cast<int64_t>(host.size())) {
    const size_t n = static_cast<size_t>(std::min<int64_t>(host.size(), buffer_bytes - at));
    BENCH_CUDA(cudaMemcpy(w + at, host.data(), n, cudaMemcpyHostToDevice));
  }
  BENCH_CUDA(cudaMemcpy(act, host.data(), kMaxTokens * act_row_bytes, cudaMemcpyHostToDevice));
  BENCH_CUDA(cudaDeviceSynchronize());  // the benchmark stream does not wait for it

  std::printf("\nMatVec alone (weights not in L2):\n");
  for (int n_tokens : {1, kMaxTokens}) {
    double step_ms = 0, step_bytes = 0;
    for (const Shape& s : shapes) {
      const int64_t bytes = s.n_out * kernels::RowBytes(s.type, s.n_in);
      const int64_t copies = std::clamp<int64_t>(buffer_bytes / bytes, 1, 16);
      const double ms =
          TimeMs(stream, 2, 5,
                 [&] {
                   for (int64_t c = 0; c < copies; ++c) {
                     BENCH_CUDA(kernels::cuda::MatVec(y, s.n_out, w + c * bytes, s.type, s.n_out,
                                                      s.n_in, act, n_tokens, false, stream));
                   }
                 }) /
          copies;
      Record(absl::StrFormat("MatVec %s %s %lldx%lld, %d token%s", s.name,
                             kernels::GetDType(s.type).name, static_cast<long long>(s.n_out),
                             static_cast<long long>(s.n_in), n_tokens, n_tokens > 1 ? "s" : ""),
             bytes / (ms * 1e-3) / 1e9, "GB/s");
      step_ms += ms * s.per_step;
      step_bytes += static_cast<double>(bytes) * s.per_step;
    }
    const double bw = step_bytes / (step_ms * 1e-3);
    Record(absl::StrFormat("MatVec, one step's weights, %d token%s", n_tokens,
                           n_tokens > 1 ? "s" : ""),
           bw / 1e9, "GB/s");
    Record(absl::StrFormat("MatVec bandwidth / copy bandwidth, %d token%s", n_tokens,
                           n_tokens > 1 ? "s" : ""),
           bw / copy_bw, "ratio");
  }
  cudaFree(w);
  cudaFree(act);
  cudaFree(y);
}

}  // namespace pdserve::gpu_bench
#endif  // PDSERVE_HAVE_CUDA
