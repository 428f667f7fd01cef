#include "engine/cuda/cuda_runner.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "common/check.h"
#include "common/log.h"
#include "common/status_macros.h"
#include "kernels/cpu/matmul.h"
#include "kernels/cuda/gemm.h"
#include "kernels/cuda/matvec.h"
#include "kernels/cuda/ops.h"
#include "kernels/quant.h"

namespace pdserve::cuda {

using kernels::AttnSeq;
using kernels::DType;
using kernels::cuda::ActOp;
using kernels::cuda::ActOutputs;
using kernels::cuda::ActRounding;
using kernels::cuda::ActSource;
using kernels::cuda::AttnSplitRow;
using kernels::cuda::AttnTile;
using kernels::cuda::AttnWorkItem;

namespace {

// memcpy that copies nothing for n == 0: an empty vector's data() may be
// null, and memcpy's arguments must not be even then (UBSan: nonnull).
void CopyBytes(void* dst, const void* src, size_t n) {
  if (n != 0) std::memcpy(dst, src, n);
}

// How a weight type's CPU counterpart encodes its input, as the rounding the
// GPU applies to float or f16 activations (exact mirror on the matvec path).
ActRounding RoundingFor(DType type) {
  switch (kernels::ActFormatFor(type)) {
    case kernels::ActFormat::kQ8_1:
      return ActRounding::kQ8_1;
    case kernels::ActFormat::kQ8_K:
      return ActRounding::kQ8_K;
    default:
      return ActRounding::kNone;
  }
}

constexpr size_t kAlign = 256;
size_t AlignUp(size_t n) { return (n + kAlign - 1) / kAlign * kAlign; }

// Bytes of the per-step metadata region for the limits.
size_t MetaBytes(int64_t T, int64_t R, int64_t n_ctx, int32_t block_size) {
  const int64_t max_items = T * ((n_ctx + 63) / 64);
  const int64_t max_table = T * ((n_ctx + block_size - 1) / block_size);
  return AlignUp(T * 4) + AlignUp(T * 4) + AlignUp(R * 4) + AlignUp(T * 8) +
         AlignUp(T * sizeof(AttnSeq)) + AlignUp(max_items * sizeof(AttnWorkItem)) +
         AlignUp(max_items * sizeof(AttnTile)) + AlignUp(T * sizeof(AttnSplitRow)) +
         AlignUp(max_table * 4);
}

}  // namespace

CudaRunner::CudaRunner(int device, const Model* model, KvCache* cache, int32_t max_tokens,
                       int32_t max_logit_rows)
    : device_(device),
      model_(model),
      cache_(cache),
      max_tokens_(max_tokens),
      max_logit_rows_(max_logit_rows) {}

CudaRunner::~CudaRunner() {
  cudaSetDevice(device_);
  if (stream_ != nullptr) cudaStreamSynchronize(stream_);
  for (cudaEvent_t e : layer_events_) cudaEventDestroy(e);
  if (cublas_ != nullptr) cublasDestroy(cublas_);
  if (stream_ != nullptr) cudaStreamDestroy(stream_);
}

absl::StatusOr<std::unique_ptr<CudaRunner>> CudaRunner::Create(int device, const Model* model,
                                                               KvCache* cache, int32_t max_tokens,
                                                               int32_t max_logit_rows,
                                                               const CudaRunnerOptions& options) {
  if (max_tokens < 1 || max_logit_rows < 0) {
    return absl::InvalidArgumentError("CUDA runner: max_tokens must be >= 1");
  }
  if (options.max_matvec_rows < 0 || options.max_matvec_rows > kernels::cuda::kMaxMatVecTokens) {
    return absl::InvalidArgumentError(absl::StrCat("CUDA runner: max_matvec_rows ",
                                                   options.max_matvec_rows, " is outside 0..",
                                                   kernels::cuda::kMaxMatVecTokens));
  }
  const ModelConfig& c = model->config();
  if (c.head_dim > kernels::cuda::kMaxAttnHeadDim || c.head_dim % 2 != 0) {
    return absl::InvalidArgumentError(absl::StrCat("CUDA runner: head_dim ", c.head_dim,
                                                   " is not supported (even, at most ",
                                                   kernels::cuda::kMaxAttnHeadDim, ")"));
  }
  if (c.architecture != "llama" ||
      model->weights().layers[0].bq != nullptr) {  // no bias/QK-norm/NeoX RoPE here
    return absl::UnimplementedError(absl::StrCat("CUDA runner: architecture '", c.architecture,
                                                 "' (or Q/K/V biases) runs on the CPU only"));
  }
  std::unique_ptr<CudaRunner> r(new CudaRunner(device, model, cache, max_tokens, max_logit_rows));
  r->max_matvec_rows_ = options.max_matvec_rows;
  PDS_RETURN_IF_ERROR(r->Init(options));
  return r;
}

absl::Status CudaRunner::Init(const CudaRunnerOptions& options) {
  PDS_CUDA_RETURN_IF_ERROR(cudaSetDevice(device_), absl::StrCat("selecting GPU ", device_));
  PDS_CUDA_RETURN_IF_ERROR(cudaDeviceGetAttribute(&n_sm_, cudaDevAttrMultiProcessorCount, device_),
                           "reading the GPU's multiprocessor count");
  PDS_CUDA_RETURN_IF_ERROR(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking),
                           "creating a CUDA stream");
  PDS_RETURN_IF_ERROR(CublasStatus(cublasCreate(&cublas_), "creating the cuBLAS handle"));
  const ModelConfig& c = model_->config();
  layer_events_.resize(c.n_layers, nullptr);
  for (cudaEvent_t& e : layer_events_) {
    PDS_CUDA_RETURN_IF_ERROR(cudaEventCreateWithFlags(&e, cudaEventDisableTiming),
                             "creating CUDA events");
  }

  const int64_t T = max_tokens_, R = std::max(max_logit_rows_, 1);
  const int64_t E = c.n_embd, QD = c.q_dim(), KVD = c.kv_dim(), FF = c.n_ff;
  const int64_t widest = std::max({E, QD, FF});
  const int64_t act_rows = std::max(T, R);
  // Activations first, so that kAuto's f16 decision sees what is left.
  PDS_ASSIGN_OR_RETURN(x_, DeviceBuffer::Allocate(T * E * 4, "the residual stream"));
  PDS_ASSIGN_OR_RETURN(qkv_, DeviceBuffer::Allocate(T * (QD + 2 * KVD) * 4, "Q, K and V"));
  PDS_ASSIGN_OR_RETURN(attn_, DeviceBuffer::Allocate(T * QD * 4, "attention output"));
  PDS_ASSIGN_OR_RETURN(gate_up_, DeviceBuffer::Allocate(T * 2 * FF * 4, "FFN activations"));
  PDS_ASSIGN_OR_RETURN(act_q8_,
                       DeviceBuffer::Allocate(act_rows * (widest + widest / kernels::kQK * 8 + 8),
                                              "encoded activations"));
  PDS_ASSIGN_OR_RETURN(act_f32_, DeviceBuffer::Allocate(act_rows * widest * 4, "activations"));
  PDS_ASSIGN_OR_RETURN(act_f16_, DeviceBuffer::Allocate(act_rows * widest * 2, "f16 activations"));
  PDS_ASSIGN_OR_RETURN(logits_, DeviceBuffer::Allocate(R * c.n_vocab * 4, "logits"));
  const int group = c.n_heads / c.n_kv_heads;
  max_partials_ = kernels::cuda::AttnPartialSlots(max_tokens_, model_->n_ctx(), group, c.head_dim);
  PDS_ASSIGN_OR_RETURN(
      partials_,
      DeviceBuffer::Allocate(static_cast<size_t>(max_partials_) *
                                 kernels::cuda::AttnPartialFloats(c.n_heads, c.head_dim) * 4,
                             "attention partial results"));
  const size_t meta = MetaBytes(T, R, model_->n_ctx(), cache_->config().block_size);
  PDS_ASSIGN_OR_RETURN(meta_host_, PinnedBuffer::Allocate(meta, "batch metadata"));
  PDS_ASSIGN_OR_RETURN(meta_dev_, DeviceBuffer::Allocate(meta, "batch metadata"));

  PDS_ASSIGN_OR_RETURN(weights_,
                       UploadWeights(*model_, options.f16_weights, options.reserve_bytes, stream_));
  if (!weights_->f16_cached) {
    PDS_ASSIGN_OR_RETURN(
        w16_, DeviceBuffer::Allocate(weights_->max_matrix_elems * 2, "f16 weight scratch"));
  }
  PDS_LOG(INFO) << "CUDA runner on GPU " << device_ << ": " << FormatBytes(weights_->quant_bytes)
                << " of weights"
                << (weights_->f16_cached
                        ? absl::StrCat(" + ", FormatBytes(weights_->f16_bytes), " f16 copies")
                        : std::string(" (f16 per product, not cached)"));
  return absl::OkStatus();
}

void CudaRunner::set_max_matvec_rows(int rows) {
  PDS_CHECK(rows >= 0 && rows <= kernels::cuda::kMaxMatVecTokens)
      << "max_matvec_rows " << rows << " is outside 0.." << kernels::cuda::kMaxMatVecTokens;
  max_matvec_rows_ = rows;
}

void CudaRunner::Check(cudaError_t e, const char* what) const {
  PDS_CHECK(e == cudaSuccess) << "CUDA error on GPU " << device_ << " during " << what << ": "
                              << cudaGetErrorString(e);
}

void CudaRunner::UploadBatch(const ForwardBatch& batch) {
  const int32_t T = batch.n_tokens();
  const int32_t n_seqs = static_cast<int32_t>(batch.seqs.size());
  const int32_t n_logits = static_cast<int32_t>(batch.logit_rows.size());
  const int32_t bs = cache_->config().block_size;
  uint8_t* host = meta_host_.as<uint8_t>();
  uint8_t* dev = meta_dev_.as<uint8_t>();
  size_t at = 0;
  auto take = [&](size_t bytes) {
    const size_t off = at;
    at += AlignUp(bytes);
    PDS_CHECK_LE(at, meta_host_.bytes());
    return off;
  };

  // Tokens, positions and KV slots per row.
  const size_t tok_off = take(T * 4), pos_off = take(T * 4), slot_off = take(T * 8);
  CopyBytes(host + tok_off, batch.tokens.data(), T * 4);
  auto* pos = reinterpret_cast<int32_t*>(host + pos_off);
  auto* slots = reinterpret_cast<int64_t*>(host + slot_off);
  // Block tables: the blocks each sequence's positions need.
  size_t table_elems = 0;
  for (const AttnSeq& s : batch.seqs) table_elems += (s.n_past + s.n_new + bs - 1) / bs;
  const size_t table_off = take(table_elems * 4);
  host_seqs_.resize(n_seqs);
  size_t t_at = 0;
  for (int32_t si = 0; si < n_seqs; ++si) {
    const AttnSeq& s = batch.seqs[si];
    const int32_t n_blocks = (s.n_past + s.n_new + bs - 1) / bs;
    CopyBytes(host + table_off + t_at * 4, s.block_table, n_blocks * 4);
    host_seqs_[si] = s;
    host_seqs_[si].block_table = reinterpret_cast<const int32_t*>(dev + table_off + t_at * 4);
    t_at += n_blocks;
    for (int32_t i = 0; i < s.n_new; ++i) {
      const int32_t p = s.n_past + i;
      pos[s.row0 + i] = p;
      slots[s.row0 + i] = static_cast<int64_t>(s.block_table[p / bs]) * bs + p % bs;
    }
  }
  const size_t seq_off = take(n_seqs * sizeof(AttnSeq));
  CopyBytes(host + seq_off, host_seqs_.data(), n_seqs * sizeof(AttnSeq));

  // Attention plan.
  const ModelConfig& c = model_->config();
  PDS_CHECK(kernels::cuda::PlanAttention(batch.seqs.data(), n_seqs, c.n_heads / c.n_kv_heads,
                                         c.head_dim, c.n_kv_heads, n_sm_, max_partials_, &plan_))
      << "attention plan exceeds " << max_partials_ << " partial slots";
  const size_t item_off = take(plan_.items.size() * sizeof(AttnWorkItem));
  CopyBytes(host + item_off, plan_.items.data(), plan_.items.size() * sizeof(AttnWorkItem));
  const size_t tile_off = take(plan_.tiles.size() * sizeof(AttnTile));
  CopyBytes(host + tile_off, plan_.tiles.data(), plan_.tiles.size() * sizeof(AttnTile));
  const size_t split_off = take(plan_.split_rows.size() * sizeof(AttnSplitRow));
  CopyBytes(host + split_off, plan_.split_rows.data(),
            plan_.split_rows.size() * sizeof(AttnSplitRow));
  const size_t logit_off = take(n_logits * 4);
  CopyBytes(host + logit_off, batch.logit_rows.data(), n_logits * 4);

  Check(cudaMemcpyAsync(dev, host, at, cudaMemcpyHostToDevice, stream_), "batch upload");
  d_tokens_ = reinterpret_cast<const int32_t*>(dev + tok_off);
  d_pos_ = reinterpret_cast<const int32_t*>(dev + pos_off);
  d_slots_ = reinterpret_cast<const int64_t*>(dev + slot_off);
  d_seqs_ = reinterpret_cast<const AttnSeq*>(dev + seq_off);
  d_items_ = reinterpret_cast<const AttnWorkItem*>(dev + item_off);
  d_tiles_ = reinterpret_cast<const AttnTile*>(dev + tile_off);
  d_split_ = reinterpret_cast<const AttnSplitRow*>(dev + split_off);
  d_logit_rows_ = reinterpret_cast<const int32_t*>(dev + logit_off);
}

void CudaRunner::Apply(const DeviceLinear& lin, const ActSource& src, int64_t n_rows, float* y,
                       int64_t ldy, bool accumulate) {
  const bool matvec = n_rows <= max_matvec_rows_;
  // Parts sharing an encoding share one PrepareActivations.
  bool done[3] = {false, false, false};
  for (size_t i = 0; i < lin.parts.size(); ++i) {
    const ActRounding rounding = RoundingFor(lin.parts[i].type);
    if (done[static_cast<int>(rounding)]) continue;
    done[static_cast<int>(rounding)] = true;
    ActOutputs out;
    out.rounding = rounding;
    const bool q8 = matvec && kernels::cuda::MatVecTakesQ8_1(lin.parts[i].type);
    if (q8) {
      out.q8_1 = act_q8_.get();
    } else if (matvec) {
      out.f32 = act_f32_.as<float>();
    } else {
      out.f16 = act_f16_.as<__half>();
    }
    Check(kernels::cuda::PrepareActivations(out, src, n_rows, lin.n_in, stream_), "activations");
    for (size_t j = i; j < lin.parts.size(); ++j) {
      const DeviceMatrix& m = lin.parts[j];
      if (RoundingFor(m.type) != rounding) continue;
      float* yp = y + m.col;
      if (matvec) {
        const void* act = q8 ? act_q8_.get() : static_cast<const void*>(act_f32_.get());
        Check(kernels::cuda::MatVec(yp, ldy, m.data, m.type, m.n_out, m.n_in, act, n_rows,
                                    accumulate, stream_),
              "matvec");
      } else {
        const __half* w16 = m.f16;
        if (w16 == nullptr) {
          Check(kernels::cuda::DequantizeToF16(w16_.as<__half>(), m.data, m.type, m.n_out, m.n_in,
                                               stream_),
                "weight dequantization");
          w16 = w16_.as<__half>();
        }
        const cublasStatus_t s =
            kernels::cuda::GemmF16(cublas_, yp, ldy, w16, m.n_out, m.n_in, act_f16_.as<__half>(),
                                   n_rows, accumulate, stream_);
        PDS_CHECK(s == CUBLAS_STATUS_SUCCESS)
            << "cuBLAS GEMM failed on GPU " << device_ << ": " << cublasGetStatusString(s);
      }
    }
  }
}

void CudaRunner::Forward(const ForwardBatch& batch, float* logits, LayerObserver* observer) {
  const ModelConfig& c = model_->config();
  const DeviceWeights& w = *weights_;
  const int64_t T = batch.n_tokens();
  const int64_t n_logits = static_cast<int64_t>(batch.logit_rows.size());
  PDS_CHECK(T > 0 && T <= max_tokens_) << T;
  PDS_CHECK_LE(n_logits, max_logit_rows_);
  const int64_t E = c.n_embd, QD = c.q_dim(), KVD = c.kv_dim(), FF = c.n_ff;
  const int64_t QKVD = QD + 2 * KVD;
  const float attn_scale = 1.0f / std::sqrt(static_cast<float>(c.head_dim));
  Check(cudaSetDevice(device_), "device selection");
  UploadBatch(batch);

  float* x = x_.as<float>();
  float* qkv = qkv_.as<float>();
  float* attn = attn_.as<float>();
  float* gate_up = gate_up_.as<float>();

  // Token embeddings.
  Check(kernels::cuda::EmbedRows(x, w.token_embd.data, w.token_embd.type, d_tokens_, T, E, stream_),
        "embedding");

  for (int32_t il = 0; il < c.n_layers; ++il) {
    const DeviceLayer& lw = w.layers[il];
    const kernels::KvLayerView kv = cache_->Layer(il);

    // Q, K, V of norm(x).
    ActSource norm_in;
    norm_in.op = ActOp::kRmsNorm;
    norm_in.x = x;
    norm_in.ldx = E;
    norm_in.norm_w = lw.attn_norm;
    norm_in.eps = c.rms_eps;
    Apply(lw.qkv, norm_in, T, qkv, QKVD, false);

    // RoPE on Q and K; K and V into the cache.
    Check(kernels::cuda::RopeStoreKv(qkv, QKVD, qkv + QD, qkv + QD + KVD, QKVD, kv, d_pos_,
                                     d_slots_, w.rope, T, c.n_heads, c.n_rot, stream_),
          "RoPE and KV store");
    if (observer != nullptr) {
      Check(cudaEventRecord(layer_events_[il], stream_), "event record");
      if (observer->TakesDeviceEvents()) {
        observer->OnLayerStoredOnDevice(il, layer_events_[il]);
      } else {
        Check(cudaEventSynchronize(layer_events_[il]), "layer KV store");
        observer->OnLayerStored(il);
      }
    }

    // Attention over the paged cache.
    Check(kernels::cuda::PagedAttention(attn, QD, qkv, QKVD, kv, d_seqs_, d_items_,
                                        static_cast<int32_t>(plan_.items.size()), d_tiles_,
                                        static_cast<int32_t>(plan_.tiles.size()), d_split_,
                                        static_cast<int32_t>(plan_.split_rows.size()), plan_.chunk,
                                        partials_.as<float>(), c.n_heads, attn_scale, stream_),
          "attention");

    // x += attention output · Woᵀ.
    ActSource attn_in;
    attn_in.x = attn;
    attn_in.ldx = QD;
    Apply(lw.wo, attn_in, T, x, E, true);

    // Gate and up of norm(x); x += SwiGLU(gate, up) · W_downᵀ.
    norm_in.norm_w = lw.ffn_norm;
    Apply(lw.gate_up, norm_in, T, gate_up, 2 * FF, false);
    ActSource ffn_in;
    ffn_in.op = ActOp::kSwiGlu;
    ffn_in.x = gate_up;
    ffn_in.up = gate_up + FF;
    ffn_in.ldx = 2 * FF;
    Apply(lw.down, ffn_in, T, x, E, true);
  }

  // Final norm of the rows whose logits are wanted, then the output head.
  if (n_logits > 0) {
    ActSource out_in;
    out_in.op = ActOp::kRmsNorm;
    out_in.x = x;
    out_in.ldx = E;
    out_in.row_index = d_logit_rows_;
    out_in.norm_w = w.output_norm;
    out_in.eps = c.rms_eps;
    Apply(w.output, out_in, n_logits, logits_.as<float>(), c.n_vocab, false);
    Check(cudaMemcpyAsync(logits, logits_.get(), n_logits * c.n_vocab * sizeof(float),
                          cudaMemcpyDeviceToHost, stream_),
          "logits download");
  }
  Check(cudaStreamSynchronize(stream_), "forward pass");
}

}  // namespace pdserve::cuda
