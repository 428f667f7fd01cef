// The forward pass on one GPU: the same steps and semantics as ModelRunner
// (engine/forward.h), over weights uploaded once and a KV cache in device
// memory. Decode-sized batches (at most max_matvec_rows rows, by default
// kMaxMatVecTokens) multiply against the quantized weights with integer dot
// products on activations encoded exactly as the CPU encodes them; larger
// batches use cuBLAS on f16 copies.
// Every step ends with the logits copied to the host buffer the engine
// passes.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/backend.h"
#include "engine/cuda/cuda_backend.h"
#include "engine/cuda/cuda_status.h"
#include "engine/cuda/device_weights.h"
#include "kernels/cuda/attention.h"
#include "kernels/cuda/matvec.h"
#include "kernels/cuda/quantize.h"

namespace pdserve::cuda {

struct CudaRunnerOptions {
  F16Weights f16_weights = F16Weights::kAuto;
  // Free memory left after the f16 copies under kAuto (activations, cuBLAS).
  size_t reserve_bytes = size_t{2} << 30;
  // The most batch rows whose products run as MatVec on the quantized
  // weights (0 to kMaxMatVecTokens); more rows run cuBLAS on f16 weights.
  // Default: every size MatVec supports. Our estimate puts the crossover
  // above 8 rows: MatVec reads 4.5 bits per weight where cuBLAS reads 16,
  // and its dp4a work (which grows with the rows while the bytes do not)
  // still fits under the weight stream at 8 rows on an H200; cuBLAS also
  // pays a poorly shaped GEMM at so few rows. gpu_bench's decode sweep
  // measures both paths at 1-8 rows.
  int max_matvec_rows = kernels::cuda::kMaxMatVecTokens;
};

class CudaRunner final : public Runner {
 public:
  // The KV cache must live on `device` (CudaBackend's allocator).
  static absl::StatusOr<std::unique_ptr<CudaRunner>> Create(int device, const Model* model,
                                                            KvCache* cache, int32_t max_tokens,
                                                            int32_t max_logit_rows,
                                                            const CudaRunnerOptions& options);
  ~CudaRunner() override;

  // A CUDA error here means a broken device or a bug: it aborts with the
  // error (Runner::Forward cannot return one).
  void Forward(const ForwardBatch& batch, float* logits, LayerObserver* observer) override;

  // Changes CudaRunnerOptions::max_matvec_rows between steps (benchmarks
  // compare both paths on one copy of the weights). 0..kMaxMatVecTokens.
  void set_max_matvec_rows(int rows);
  int max_matvec_rows() const { return max_matvec_rows_; }

  const DeviceWeights& weights() const { return *weights_; }
  cudaStream_t stream() const { return stream_; }
  int device() const { return device_; }

 private:
  CudaRunner(int device, const Model* model, KvCache* cache, int32_t max_tokens,
             int32_t max_logit_rows);
  absl::Status Init(const CudaRunnerOptions& options);
  // y (rows, ldy) (+)= activations(src) · Wᵀ for every part of lin.
  void Apply(const DeviceLinear& lin, const kernels::cuda::ActSource& src, int64_t n_rows, float* y,
             int64_t ldy, bool accumulate);
  // Copies the batch's tokens, positions, slots, sequences and attention
  // plan to the device in one transfer.
  void UploadBatch(const ForwardBatch& batch);
  void Check(cudaError_t e, const char* what) const;

  const int device_;
  const Model* model_;
  KvCache* cache_;
  const int32_t max_tokens_;
  const int32_t max_logit_rows_;
  int n_sm_ = 0;
  int max_matvec_rows_ = kernels::cuda::kMaxMatVecTokens;

  cudaStream_t stream_ = nullptr;
  cublasHandle_t cublas_ = nullptr;
  std::vector<cudaEvent_t> layer_events_;  // (n_layers) KV of the layer stored
  std::unique_ptr<DeviceWeights> weights_;

  DeviceBuffer x_;         // (T, n_embd) residual stream
  DeviceBuffer qkv_;       // (T, q_dim + 2 kv_dim)
  DeviceBuffer attn_;      // (T, q_dim) attention output
  DeviceBuffer gate_up_;   // (T, 2 n_ff)
  DeviceBuffer act_q8_;    // (max(T, R), ActRowBytes(kQ8_1, widest input))
  DeviceBuffer act_f32_;   // (max(T, R), widest input)
  DeviceBuffer act_f16_;   // (max(T, R), widest input) f16
  DeviceBuffer w16_;       // (largest matrix) f16 scratch when weights are not cached
  DeviceBuffer logits_;    // (R, n_vocab)
  DeviceBuffer partials_;  // (partial slots, AttnPartialFloats)
  int32_t max_partials_ = 0;

  // Per-step metadata: built in pinned memory, copied in one transfer.
  PinnedBuffer meta_host_;
  DeviceBuffer meta_dev_;
  kernels::cuda::AttnPlan plan_;
  std::vector<kernels::AttnSeq> host_seqs_;
  // Device pointers into meta_dev_ for the current step.
  const int32_t* d_tokens_ = nullptr;
  const int32_t* d_pos_ = nullptr;
  const int32_t* d_logit_rows_ = nullptr;
  const int64_t* d_slots_ = nullptr;
  const kernels::AttnSeq* d_seqs_ = nullptr;
  const kernels::cuda::AttnWorkItem* d_items_ = nullptr;
  const kernels::cuda::AttnTile* d_tiles_ = nullptr;
  const kernels::cuda::AttnSplitRow* d_split_ = nullptr;
};

}  // namespace pdserve::cuda
