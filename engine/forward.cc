#include "engine/forward.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>

#include "common/check.h"
#include "kernels/cpu/matmul.h"
#include "kernels/cpu/ops.h"
#include "kernels/quant.h"

namespace pdserve {

using kernels::ActFormat;
using kernels::SplitRange;
using kernels::WeightMatrix;

namespace {

// RoPE in GPT-NeoX order: dimension i of each head pairs with i + n_rot/2
// (Qwen2/Qwen3 files keep Q and K as trained). cos_sin as for kernels::Rope.
void RopeNeox(float* x, int n_heads, int head_dim, int n_rot, const float* cos_sin) {
  const int half = n_rot / 2;
  for (int h = 0; h < n_heads; ++h) {
    float* v = x + h * head_dim;  // (head_dim)
    for (int i = 0; i < half; ++i) {
      const float c = cos_sin[2 * i], s = cos_sin[2 * i + 1];
      const float a = v[i], b = v[i + half];
      v[i] = a * c - b * s;
      v[i + half] = a * s + b * c;
    }
  }
}

// Bias, per-head QK-norm and RoPE of one token's q (n_heads heads) or k
// (n_kv_heads heads): the steps between the projection and the cache.
void PositionHeads(float* x, const float* bias, const float* head_norm, int n_heads,
                   const ModelConfig& c, const float* cos_sin) {
  const int64_t dim = static_cast<int64_t>(n_heads) * c.head_dim;
  if (bias != nullptr) kernels::AddInplace(x, bias, dim);
  if (head_norm != nullptr) {
    for (int h = 0; h < n_heads; ++h) {
      kernels::RmsNorm(x + h * c.head_dim, x + h * c.head_dim, head_norm, c.head_dim, c.rms_eps);
    }
  }
  if (c.rope_style == RopeStyle::kNeox) {
    RopeNeox(x, n_heads, c.head_dim, c.n_rot, cos_sin);
  } else {
    kernels::Rope(x, n_heads, c.head_dim, c.n_rot, cos_sin);
  }
}

}  // namespace

PackedModelWeights::PackedModelWeights(const Model& model, kernels::ThreadPool* pool)
    : weights_(model.weights()) {
  std::vector<WeightMatrix*> matrices;
  matrices.push_back(&weights_.output);  // token_embd itself stays as mapped, for lookups
  for (LayerWeights& l : weights_.layers) {
    for (WeightMatrix* m : {&l.wq, &l.wk, &l.wv, &l.wo, &l.w_gate, &l.w_up, &l.w_down}) {
      matrices.push_back(m);
    }
  }
  std::vector<int64_t> offsets;
  for (WeightMatrix* m : matrices) {
    offsets.push_back(bytes_);
    bytes_ += (kernels::PackedWeightBytes(*m) + 63) / 64 * 64;
  }
  if (bytes_ == 0) return;
  storage_ = std::aligned_alloc(64, static_cast<size_t>(bytes_));
  PDS_CHECK(storage_ != nullptr) << "cannot allocate " << bytes_ << " bytes for packed weights";
  std::vector<WeightMatrix> packed(matrices.size());
  pool->Run([&](int ith, int nth) {
    for (size_t i = 0; i < matrices.size(); ++i) {
      if (kernels::PackedWeightBytes(*matrices[i]) == 0) continue;
      WeightMatrix p = kernels::PackWeights(static_cast<uint8_t*>(storage_) + offsets[i],
                                            *matrices[i], ith, nth);
      if (ith == 0) packed[i] = p;
    }
  });
  for (size_t i = 0; i < matrices.size(); ++i) {
    if (packed[i].data != nullptr) *matrices[i] = packed[i];
  }
}

PackedModelWeights::~PackedModelWeights() { std::free(storage_); }

ModelRunner::ModelRunner(const Model* model, KvCache* cache, kernels::ThreadPool* pool,
                         int32_t max_batch_tokens, int32_t max_logit_rows,
                         const ModelWeights* weights)
    : model_(model),
      weights_(weights != nullptr ? weights : &model->weights()),
      cache_(cache),
      pool_(pool),
      max_tokens_(max_batch_tokens),
      max_logit_rows_(max_logit_rows) {
  const ModelConfig& c = model->config();
  const size_t T = max_batch_tokens;
  x_.resize(T * c.n_embd);
  xn_.resize(T * std::max(c.n_embd, c.q_dim()));
  q_.resize(T * c.q_dim());
  k_.resize(T * c.kv_dim());
  v_.resize(T * c.kv_dim());
  tmp_.resize(T * c.n_embd);
  gate_.resize(T * c.n_ff);
  up_.resize(T * c.n_ff);
  out_rows_.resize(static_cast<size_t>(max_logit_rows) * c.n_embd);
  // Encoded activations: room for the widest input each format can encode.
  const size_t rows = std::max(max_batch_tokens, max_logit_rows);
  for (ActFormat f : {ActFormat::kQ8_1, ActFormat::kQ8_K}) {
    int64_t row_bytes = 0;
    for (int64_t n_in : {c.n_embd, c.q_dim(), c.n_ff}) {
      const int64_t block = f == ActFormat::kQ8_K ? kernels::kQKK : kernels::kQK;
      if (n_in % block == 0) row_bytes = std::max(row_bytes, kernels::ActRowBytes(f, n_in));
    }
    xq_[static_cast<int>(f)].resize(rows * row_bytes);
  }
  attn_scratch_.resize(static_cast<size_t>(pool->size()) *
                       kernels::AttentionScratchFloats(model->n_ctx()));
}

void ModelRunner::EncodeRows(const float* x, int64_t n_in, int64_t r0, int64_t r1,
                             std::initializer_list<const WeightMatrix*> ws) {
  bool done[3] = {false, false, false};
  for (const WeightMatrix* w : ws) {
    const ActFormat f = kernels::ActFormatFor(w->type);
    if (f == ActFormat::kF32 || done[static_cast<int>(f)]) continue;
    done[static_cast<int>(f)] = true;
    const int64_t rb = kernels::ActRowBytes(f, n_in);
    kernels::QuantizeActivations(xq_[static_cast<int>(f)].data() + r0 * rb, f, x + r0 * n_in, n_in,
                                 r1 - r0, 0, 1);
  }
}

void ModelRunner::NormEncodeRows(const float* x, const float* norm, float* xn, int64_t n,
                                 int64_t r0, int64_t r1,
                                 std::initializer_list<const WeightMatrix*> ws) {
  const float eps = model_->config().rms_eps;
  const ActFormat f = kernels::ActFormatFor((*ws.begin())->type);
  bool fused = f != ActFormat::kF32;
  for (const WeightMatrix* w : ws) fused = fused && kernels::ActFormatFor(w->type) == f;
  if (fused) {
    // One pass: norm and int8-encode each row; the float row is not needed.
    const int64_t rb = kernels::ActRowBytes(f, n);
    uint8_t* xq = xq_[static_cast<int>(f)].data();
    for (int64_t t = r0; t < r1; ++t)
      kernels::RmsNormQuantize(xq + t * rb, f, x + t * n, norm, n, eps);
    return;
  }
  for (int64_t t = r0; t < r1; ++t) kernels::RmsNorm(xn + t * n, x + t * n, norm, n, eps);
  EncodeRows(xn, n, r0, r1, ws);
}

const void* ModelRunner::Encoded(const float* x, const WeightMatrix& w) const {
  const ActFormat f = kernels::ActFormatFor(w.type);
  return f == ActFormat::kF32 ? static_cast<const void*>(x) : xq_[static_cast<int>(f)].data();
}

void ModelRunner::Forward(const ForwardBatch& batch, float* logits, LayerObserver* observer) {
  const ModelConfig& c = model_->config();
  const ModelWeights& w = *weights_;
  const int64_t n_tokens = batch.n_tokens();
  const int64_t n_logits = static_cast<int64_t>(batch.logit_rows.size());
  PDS_CHECK(n_tokens > 0 && n_tokens <= max_tokens_) << n_tokens;
  PDS_CHECK_LE(n_logits, max_logit_rows_);
  const int64_t E = c.n_embd, QD = c.q_dim(), KVD = c.kv_dim(), FF = c.n_ff;
  const float attn_scale = 1.0f / std::sqrt(static_cast<float>(c.head_dim));
  const int32_t n_seqs = static_cast<int32_t>(batch.seqs.size());

  float* x = x_.data();
  float* xn = xn_.data();
  float* q = q_.data();
  float* k = k_.data();
  float* v = v_.data();
  float* tmp = tmp_.data();
  float* gate = gate_.data();
  float* up = up_.data();

  pool_->Run([&](int ith, int nth) {
    int64_t r0, r1;  // this thread's token rows
    SplitRange(n_tokens, ith, nth, 1, &r0, &r1);

    // Token embeddings.
    const int64_t embd_row_bytes = kernels::RowBytes(w.token_embd.type, E);
    for (int64_t t = r0; t < r1; ++t) {
      const auto* row =
          static_cast<const uint8_t*>(w.token_embd.data) + batch.tokens[t] * embd_row_bytes;
      kernels::DequantizeRow(x + t * E, row, w.token_embd.type, E);
    }

    for (int32_t il = 0; il < c.n_layers; ++il) {
      const LayerWeights& lw = w.layers[il];
      const kernels::KvLayerView kv = cache_->Layer(il);

      // Attention input: x += previous FFN output (from layer 1 on), then
      // norm(x) encoded for Q, K and V. Each thread does its own rows; the
      // barrier publishes them.
      if (il > 0) {
        for (int64_t t = r0; t < r1; ++t) kernels::AddInplace(x + t * E, tmp + t * E, E);
      }
      NormEncodeRows(x, lw.attn_norm, xn, E, r0, r1, {&lw.wq, &lw.wk, &lw.wv});
      pool_->Barrier();

      // Q, K, V projections.
      kernels::MatMul(q, QD, lw.wq, Encoded(xn, lw.wq), n_tokens, ith, nth);
      kernels::MatMul(k, KVD, lw.wk, Encoded(xn, lw.wk), n_tokens, ith, nth);
      kernels::MatMul(v, KVD, lw.wv, Encoded(xn, lw.wv), n_tokens, ith, nth);
      pool_->Barrier();

      // Bias, QK-norm and RoPE on this thread's rows (Q and K), V's bias,
      // then store their K and V in the cache.
      for (int32_t s = 0; s < n_seqs; ++s) {
        const kernels::AttnSeq& seq = batch.seqs[s];
        int64_t a, b;
        SplitRange(seq.n_new, ith, nth, 1, &a, &b);
        if (a >= b) continue;
        for (int64_t i = a; i < b; ++i) {
          const int64_t row = seq.row0 + i;
          const float* cs = model_->RopeRow(seq.n_past + static_cast<int32_t>(i));
          PositionHeads(q + row * QD, lw.bq, lw.q_norm, c.n_heads, c, cs);
          PositionHeads(k + row * KVD, lw.bk, lw.k_norm, c.n_kv_heads, c, cs);
          if (lw.bv != nullptr) kernels::AddInplace(v + row * KVD, lw.bv, KVD);
        }
        kernels::AttnSeq part = seq;
        part.n_past = seq.n_past + static_cast<int32_t>(a);
        part.n_new = static_cast<int32_t>(b - a);
        part.row0 = seq.row0 + static_cast<int32_t>(a);
        kernels::StoreKv(kv, part, k + part.row0 * KVD, v + part.row0 * KVD, KVD);
      }
      pool_->Barrier();
      if (ith == 0 && observer != nullptr) observer->OnLayerStored(il);

      // Attention over the paged cache; output into xn (as (T, QD)).
      kernels::PagedAttention(xn, QD, q, QD, kv, batch.seqs.data(), n_seqs, c.n_heads, attn_scale,
                              model_->n_ctx(), attn_scratch_.data(), pool_, ith, nth);
      pool_->Barrier();

      // Output projection.
      EncodeRows(xn, QD, r0, r1, {&lw.wo});
      pool_->Barrier();
      kernels::MatMul(tmp, E, lw.wo, Encoded(xn, lw.wo), n_tokens, ith, nth);
      pool_->Barrier();

      // FFN input: x += attention output, then norm(x) encoded.
      for (int64_t t = r0; t < r1; ++t) kernels::AddInplace(x + t * E, tmp + t * E, E);
      NormEncodeRows(x, lw.ffn_norm, xn, E, r0, r1, {&lw.w_gate, &lw.w_up});
      pool_->Barrier();
      kernels::MatMul(gate, FF, lw.w_gate, Encoded(xn, lw.w_gate), n_tokens, ith, nth);
      kernels::MatMul(up, FF, lw.w_up, Encoded(xn, lw.w_up), n_tokens, ith, nth);
      pool_->Barrier();

      // SwiGLU, then the down projection (its output waits in tmp for the
      // next layer's residual add).
      if (const ActFormat f = kernels::ActFormatFor(lw.w_down.type); f != ActFormat::kF32) {
        const int64_t rb = kernels::ActRowBytes(f, FF);
        uint8_t* xq = xq_[static_cast<int>(f)].data();
        for (int64_t t = r0; t < r1; ++t) {
          kernels::SwiGluQuantize(xq + t * rb, f, gate + t * FF, up + t * FF, FF);
        }
      } else {
        for (int64_t t = r0; t < r1; ++t)
          kernels::SwiGlu(gate + t * FF, gate + t * FF, up + t * FF, FF);
      }
      pool_->Barrier();
      kernels::MatMul(tmp, E, lw.w_down, Encoded(gate, lw.w_down), n_tokens, ith, nth);
      pool_->Barrier();
    }

    // Final norm of the rows whose logits are wanted, then the output head.
    if (n_logits == 0) return;
    int64_t l0, l1;
    SplitRange(n_logits, ith, nth, 1, &l0, &l1);
    // Gather those rows (with the last residual add) and encode norm(x).
    float* rows = out_rows_.data();
    for (int64_t i = l0; i < l1; ++i) {
      const int64_t t = batch.logit_rows[i];
      for (int64_t k = 0; k < E; ++k) rows[i * E + k] = x[t * E + k] + tmp[t * E + k];
    }
    NormEncodeRows(rows, w.output_norm, rows, E, l0, l1, {&w.output});
    pool_->Barrier();
    kernels::MatMul(logits, c.n_vocab, w.output, Encoded(rows, w.output), n_logits, ith, nth);
  });
}

}  // namespace pdserve
