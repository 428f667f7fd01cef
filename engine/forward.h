// The Llama forward pass over one flat batch of tokens that mixes prefill
// chunks and decode tokens of many sequences (continuous batching). Reads
// top to bottom like llama2.c; every thread of the pool walks the same
// steps, does its share of each and meets the others at a barrier.
#pragma once

#include <cstdint>
#include <vector>

#include "engine/kv_cache.h"
#include "engine/model.h"
#include "kernels/cpu/attention.h"
#include "kernels/cpu/thread_pool.h"

namespace pdserve {

struct ForwardBatch {
  std::vector<TokenId> tokens;         // (n_tokens) new tokens, sequence after sequence
  std::vector<kernels::AttnSeq> seqs;  // per sequence: block table, n_past, n_new, row0
  std::vector<int32_t> logit_rows;     // rows whose logits the caller wants, in order

  void Clear() {
    tokens.clear();
    seqs.clear();
    logit_rows.clear();
  }
  int32_t n_tokens() const { return static_cast<int32_t>(tokens.size()); }
};

// Told when a layer's K and V for the whole batch are in the cache, so the
// prefill node can ship that layer while later layers compute. Called on
// the pool's calling thread; must return quickly.
class LayerObserver {
 public:
  virtual ~LayerObserver() = default;
  virtual void OnLayerStored(int32_t layer) = 0;
  // GPU runners: when true, the runner calls OnLayerStoredOnDevice with the
  // device event of the layer's KV store instead of waiting for it on the
  // host and calling OnLayerStored, so the host never synchronizes per
  // layer (the consumer orders its own GPU work after the event).
  virtual bool TakesDeviceEvents() const { return false; }
  // stored_event: a cudaEvent_t (void* keeps CUDA headers out), valid until
  // the runner's next Forward records it again.
  virtual void OnLayerStoredOnDevice(int32_t layer, void* /*stored_event*/) {
    OnLayerStored(layer);
  }
};

// The model's quantized matrices repacked once at load into the kernels'
// interleaved layout (kernels::PackWeights): about 1.5x faster matmuls for
// one more copy of those weights in memory. Matrices the kernels cannot pack
// keep pointing into the mapped file, as do the embedding rows.
class PackedModelWeights {
 public:
  PackedModelWeights(const Model& model, kernels::ThreadPool* pool);
  ~PackedModelWeights();
  const ModelWeights& weights() const { return weights_; }
  int64_t packed_bytes() const { return bytes_; }

 private:
  ModelWeights weights_;
  void* storage_ = nullptr;
  int64_t bytes_ = 0;
};

class ModelRunner {
 public:
  // Scratch is sized once for batches of up to max_batch_tokens tokens and
  // max_logit_rows logit rows: no allocation per step. `weights` defaults to
  // the model's own (mmapped); PackedModelWeights gives faster matmuls.
  ModelRunner(const Model* model, KvCache* cache, kernels::ThreadPool* pool,
              int32_t max_batch_tokens, int32_t max_logit_rows,
              const ModelWeights* weights = nullptr);

  // logits: (batch.logit_rows.size(), n_vocab). The batch must fit the
  // limits above and its sequences' block tables must cover every position.
  void Forward(const ForwardBatch& batch, float* logits, LayerObserver* observer = nullptr);

  int32_t max_batch_tokens() const { return max_tokens_; }
  int32_t max_logit_rows() const { return max_logit_rows_; }

 private:
  // Encodes rows [r0, r1) of x (rows of n_in floats) into xq_ for every
  // activation format the weights in `ws` need.
  void EncodeRows(const float* x, int64_t n_in, int64_t r0, int64_t r1,
                  std::initializer_list<const kernels::WeightMatrix*> ws);
  // norm(x) for rows [r0, r1), encoded for the weights in `ws`: fused into
  // one pass when they share an int8 format, else via xn (rows of n floats).
  void NormEncodeRows(const float* x, const float* norm, float* xn, int64_t n, int64_t r0,
                      int64_t r1, std::initializer_list<const kernels::WeightMatrix*> ws);
  // The encoded input a weight multiplies (x itself for float weights).
  const void* Encoded(const float* x, const kernels::WeightMatrix& w) const;

  const Model* model_;
  const ModelWeights* weights_;
  KvCache* cache_;
  kernels::ThreadPool* pool_;
  int32_t max_tokens_;
  int32_t max_logit_rows_;

  std::vector<float> x_;             // (T, n_embd) residual stream
  std::vector<float> xn_;            // (T, max(n_embd, q_dim)) normed input / attention output
  std::vector<float> q_;             // (T, q_dim)
  std::vector<float> k_;             // (T, kv_dim)
  std::vector<float> v_;             // (T, kv_dim)
  std::vector<float> tmp_;           // (T, n_embd) projection output before the residual add
  std::vector<float> gate_;          // (T, n_ff)
  std::vector<float> up_;            // (T, n_ff)
  std::vector<float> out_rows_;      // (R, n_embd) final-norm rows for logits
  std::vector<uint8_t> xq_[3];       // encoded activations per ActFormat
  std::vector<float> attn_scratch_;  // (nth, AttentionScratchFloats(n_ctx))
};

}  // namespace pdserve
