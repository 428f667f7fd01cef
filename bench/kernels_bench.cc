// Kernel micro-benchmark: matmuls for SmolLM2-135M's (or Llama-3.2-1B's)
// shapes in Q4_1 and Q8_0 (or the --types given), attention, thread-pool
// overheads, and a memory-bandwidth reference measured in the same run.
// Prints a table; asserts nothing.
//
//   kernels_bench [--quick] [--wall] [--hugepages] [--isa=scalar|avx2|avx512]
//                 [--only=bw|pool|quant|model|matmul|attention]
//                 [--types=q4_K,q5_K,q6_K,...] [--shapes=smollm2|llama-3.2-1b]
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <functional>
#include <iterator>
#include <memory>
#include <random>
#include <string>
#include <vector>

#if defined(__linux__)
#include <sys/mman.h>
#endif

#include "kernels/cpu/attention.h"
#include "kernels/cpu/isa.h"
#include "kernels/cpu/matmul.h"
#include "kernels/cpu/ops.h"
#include "kernels/cpu/thread_pool.h"
#include "kernels/quant.h"

#if defined(__x86_64__)
#include <immintrin.h>
#endif

namespace pdserve::kernels {
namespace {

// Wall time, or this thread's CPU time: single-threaded figures use CPU time
// so that time spent descheduled on a shared, oversubscribed machine does not
// count (cache and memory contention from neighbours still does).
bool g_wall = false;  // --wall: wall time everywhere

double Now(bool cpu_time) {
  cpu_time = cpu_time && !g_wall;
  timespec ts;
  clock_gettime(cpu_time ? CLOCK_THREAD_CPUTIME_ID : CLOCK_MONOTONIC, &ts);
  return ts.tv_sec + ts.tv_nsec * 1e-9;
}

// Median seconds per call of fn over 7 batches lasting about min_s in total.
double TimePerCall(const std::function<void()>& fn, double min_s, bool cpu_time = false) {
  fn();  // warm up
  const double t0 = Now(cpu_time);
  fn();
  const double once = std::max(Now(cpu_time) - t0, 1e-7);
  const int per_batch = std::max(1, static_cast<int>(min_s / 7 / once));
  std::vector<double> batches;
  for (int b = 0; b < 7; ++b) {
    const double s = Now(cpu_time);
    for (int i = 0; i < per_batch; ++i) fn();
    batches.push_back((Now(cpu_time) - s) / per_batch);
  }
  std::sort(batches.begin(), batches.end());
  return batches[batches.size() / 2];
}

bool g_hugepages = false;  // --hugepages: back big buffers with transparent huge pages

struct AlignedBuffer {
  uint8_t* p = nullptr;
  size_t n = 0;
  explicit AlignedBuffer(size_t bytes) : n(bytes) {
    const size_t align = g_hugepages && bytes >= (size_t{2} << 20) ? (size_t{2} << 20) : 64;
    p = static_cast<uint8_t*>(std::aligned_alloc(align, (bytes + align - 1) / align * align));
#if defined(__linux__)
    if (align > 64) madvise(p, (bytes + align - 1) / align * align, MADV_HUGEPAGE);
#endif
  }
  ~AlignedBuffer() { std::free(p); }
  AlignedBuffer(const AlignedBuffer&) = delete;
  AlignedBuffer& operator=(const AlignedBuffer&) = delete;
};

// Sums bytes [b, e) of p with the widest loads this CPU has; returns a value
// the caller keeps so the loads are not optimized away.
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
__attribute__((target("avx512f"))) float SumAvx512(const uint8_t* p, int64_t b, int64_t e) {
  __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
  for (int64_t i = b; i < e; i += 256) {
    a0 = _mm512_add_ps(a0, _mm512_load_ps(reinterpret_cast<const float*>(p + i)));
    a1 = _mm512_add_ps(a1, _mm512_load_ps(reinterpret_cast<const float*>(p + i + 64)));
    a2 = _mm512_add_ps(a2, _mm512_load_ps(reinterpret_cast<const float*>(p + i + 128)));
    a3 = _mm512_add_ps(a3, _mm512_load_ps(reinterpret_cast<const float*>(p + i + 192)));
  }
  float lanes[16];
  _mm512_storeu_ps(lanes, _mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3)));
  return lanes[0] + lanes[15];
}
#endif

float SumPortable(const uint8_t* p, int64_t b, int64_t e) {
  const uint64_t* q = reinterpret_cast<const uint64_t*>(p);
  uint64_t a[8] = {};
  for (int64_t i = b / 8; i < e / 8; i += 8) {
    for (int j = 0; j < 8; ++j) a[j] += q[i + j];
  }
  return static_cast<float>(a[0] + a[1] + a[2] + a[3] + a[4] + a[5] + a[6] + a[7]);
}

// Streaming read of buf split across the pool's threads; returns GB/s.
double ReadBandwidth(ThreadPool& pool, const AlignedBuffer& buf, double min_s) {
  std::vector<float> sinks(pool.size() * 16);
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
  const bool avx512 = __builtin_cpu_supports("avx512f");
#else
  const bool avx512 = false;
#endif
  const double s = TimePerCall(
      [&] {
        pool.Run([&](int ith, int nth) {
          int64_t b, e;
          SplitRange(static_cast<int64_t>(buf.n), ith, nth, 4096, &b, &e);
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
          sinks[ith * 16] = avx512 ? SumAvx512(buf.p, b, e) : SumPortable(buf.p, b, e);
#else
          sinks[ith * 16] = SumPortable(buf.p, b, e);
#endif
        });
      },
      min_s, pool.size() == 1);
  return static_cast<double>(buf.n) / s / 1e9;
}

struct Shape {
  const char* name;
  int64_t n_out, n_in;
};

// SmolLM2-135M: q/o, k/v, gate/up, down, tied output.
constexpr Shape kShapes[] = {{"attn_q/o", 576, 576},
                             {"attn_k/v", 192, 576},
                             {"ffn_gate/up", 1536, 576},
                             {"ffn_down", 576, 1536},
                             {"output", 49152, 576}};
// Llama-3.2-1B: q/o, k/v, gate/up, down (the 128256-row output left out).
constexpr Shape kShapes1B[] = {{"attn_q/o", 2048, 2048},
                               {"attn_k/v", 512, 2048},
                               {"ffn_gate/up", 8192, 2048},
                               {"ffn_down", 2048, 8192}};

struct Options {
  bool quick = false;
  std::string only;  // run one section: bw, pool, quant, model, matmul, attention
  double min_s = 0.4;
  std::vector<DType> types = {DType::kQ4_1, DType::kQ8_0};  // matmul weight types
  bool shapes_1b = false;                                   // Llama-3.2-1B shapes
};

// Measured read bandwidth by thread count: DRAM (1 GiB) and model-sized
// (96 MiB: where decode's weights live when the last-level cache holds them).
double g_dram_gbs[3] = {};
double g_model_gbs[3] = {};

// Where a benchmark's weights come from: rotating through 1 GiB of copies
// (DRAM), through 96 MiB of copies (like a decode step over the whole model),
// or one copy (cache-hot).
enum class Residency { kDram, kModel, kHot };
const char* ResidencyName(Residency r) {
  return r == Residency::kDram ? "dram" : r == Residency::kModel ? "model" : "hot";
}

void BenchMatMul(const Options& opt, DType type, const Shape& shape, bool packed) {
  const int64_t row_bytes = RowBytes(type, shape.n_in);
  std::vector<uint8_t> ggml(shape.n_out * row_bytes);
  {
    std::mt19937 rng(1);
    std::normal_distribution<float> dist(0.0f, 0.05f);
    std::vector<float> row(shape.n_in);
    for (int64_t r = 0; r < shape.n_out; ++r) {
      for (float& v : row) v = dist(rng);
      QuantizeRow(ggml.data() + r * row_bytes, row.data(), type, shape.n_in);
    }
  }
  WeightMatrix w{ggml.data(), type, shape.n_out, shape.n_in};
  const int64_t weight_bytes = packed ? PackedWeightBytes(w) : shape.n_out * row_bytes;
  const int64_t copies = std::max<int64_t>(2, (int64_t{1} << 30) / weight_bytes);
  const int64_t model_copies = std::max<int64_t>(2, (int64_t{96} << 20) / weight_bytes);
  AlignedBuffer rot(copies * weight_bytes);
  std::vector<WeightMatrix> ws(copies);
  if (packed) {
    ws[0] = PackWeights(rot.p, w, 0, 1);
  } else {
    std::memcpy(rot.p, ggml.data(), weight_bytes);
    ws[0] = w;
    ws[0].data = rot.p;
  }
  for (int64_t c = 1; c < copies; ++c) {
    std::memcpy(rot.p + c * weight_bytes, rot.p, weight_bytes);
    ws[c] = ws[0];
    ws[c].data = rot.p + c * weight_bytes;
  }
  const ActFormat f = ActFormatFor(type);
  const int64_t max_tokens = 512;
  std::vector<float> x(max_tokens * shape.n_in);
  {
    std::mt19937 rng(2);
    std::normal_distribution<float> dist(0.0f, 1.0f);
    for (float& v : x) v = dist(rng);
  }
  AlignedBuffer xq(ActRowBytes(f, shape.n_in) * max_tokens);
  QuantizeActivations(xq.p, f, x.data(), shape.n_in, max_tokens, 0, 1);
  std::vector<float> y(max_tokens * shape.n_out);

  for (int nth : {1, 2}) {
    ThreadPool pool(nth);
    std::vector<int64_t> token_counts = {1, 8, 512};
    if (shape.n_out > 10000) token_counts = {1, 8, 64};
    for (int64_t n_tokens : token_counts) {
      for (Residency res : {Residency::kDram, Residency::kModel, Residency::kHot}) {
        // Batches of 8+ tokens are compute-bound: only the hot case matters.
        if (res != Residency::kHot && n_tokens > 8) continue;
        if (res == Residency::kDram && opt.quick) continue;
        const int64_t n_rot = res == Residency::kDram    ? copies
                              : res == Residency::kModel ? model_copies
                                                         : 1;
        int64_t next = 0;
        const double s = TimePerCall(
            [&] {
              const WeightMatrix& wm = ws[next++ % n_rot];
              pool.Run([&](int ith, int n) {
                MatMul(y.data(), shape.n_out, wm, xq.p, n_tokens, ith, n);
              });
            },
            opt.min_s, nth == 1);
        const double gbs = weight_bytes / s / 1e9;
        const double gflops = 2.0 * shape.n_out * shape.n_in * n_tokens / s / 1e9;
        std::printf("%-5s %-11s %5lldx%-5lld %-6s %4lld tok %-5s %dT %9.1f us %6.1f GB/s",
                    GetDType(type).name, shape.name, static_cast<long long>(shape.n_out),
                    static_cast<long long>(shape.n_in), packed ? "packed" : "ggml",
                    static_cast<long long>(n_tokens), ResidencyName(res), nth, s * 1e6, gbs);
        if (res == Residency::kDram) {
          std::printf(" (%3.0f%% of DRAM bw) ", 100.0 * gbs / g_dram_gbs[nth]);
        } else if (res == Residency::kModel) {
          std::printf(" (%3.0f%% of 96MiB bw)", 100.0 * gbs / g_model_gbs[nth]);
        } else {
          std::printf("                    ");
        }
        std::printf(" %6.1f GFLOP/s\n", gflops);
      }
    }
  }
}

void BenchQuantize(const Options& opt) {
  const int64_t n_in = 576, n_tokens = 512;
  std::vector<float> x(n_in * n_tokens, 0.5f);
  AlignedBuffer xq(ActRowBytes(ActFormat::kQ8_1, n_in) * n_tokens);
  for (int64_t n : {int64_t{1}, n_tokens}) {
    const double s =
        TimePerCall([&] { QuantizeActivations(xq.p, ActFormat::kQ8_1, x.data(), n_in, n, 0, 1); },
                    opt.min_s / 4, true);
    std::printf("QuantizeActivations q8_1 576 x %3lld rows, 1T: %8.2f us\n",
                static_cast<long long>(n), s * 1e6);
  }
}

void BenchAttention(const Options& opt) {
  // SmolLM2: 9 q heads, 3 kv heads of 64, F16 KV, blocks of 16.
  const int n_heads = 9, n_kv_heads = 3, head_dim = 64, block_size = 16;
  const int32_t max_ctx = 2048;
  KvLayerView kv;
  kv.block_size = block_size;
  kv.n_kv_heads = n_kv_heads;
  kv.head_dim = head_dim;
  const int n_blocks = 16 * (max_ctx / block_size);  // 16 sequences of max_ctx
  std::vector<uint8_t> cache(n_blocks * kv.BlockBytes());
  kv.base = cache.data();
  std::vector<int32_t> table(n_blocks);
  for (int i = 0; i < n_blocks; ++i) table[i] = i;
  const int64_t kv_dim = n_kv_heads * head_dim, q_dim = n_heads * head_dim;
  std::vector<float> k(512 * kv_dim, 0.1f), v(512 * kv_dim, 0.2f), q(512 * q_dim, 0.3f),
      out(512 * q_dim);
  struct Case {
    const char* name;
    int n_seqs;
    int32_t n_past, n_new;
  };
  // One sequence's decode at growing context: its 3 KV heads are fewer items
  // than 2 threads can share evenly.
  const Case cases[] = {
      {"decode 1 seq ctx 128", 1, 127, 1},   {"decode 1 seq ctx 512", 1, 511, 1},
      {"decode 1 seq ctx 2048", 1, 2047, 1}, {"decode 2 seqs ctx 512", 2, 511, 1},
      {"decode 3 seqs ctx 512", 3, 511, 1},  {"decode 16 seqs ctx 512", 16, 511, 1},
      {"prefill 512 tokens", 1, 0, 512}};
  for (const Case& c : cases) {
    std::vector<AttnSeq> seqs;
    for (int s = 0; s < c.n_seqs; ++s) {
      AttnSeq seq{table.data() + s * (max_ctx / block_size), 0, c.n_past + c.n_new, s * c.n_new};
      StoreKv(kv, seq, k.data(), v.data(), 0);  // fill the context (same row)
      seqs.push_back({seq.block_table, c.n_past, c.n_new, s * c.n_new});
    }
    for (int nth : {1, 2}) {
      ThreadPool pool(nth);
      std::vector<float> scratch(nth * AttentionScratchFloats(max_ctx));
      const double s = TimePerCall(
          [&] {
            pool.Run([&](int ith, int n) {
              PagedAttention(out.data(), q_dim, q.data(), q_dim, kv, seqs.data(), c.n_seqs, n_heads,
                             0.125f, max_ctx, scratch.data(), &pool, ith, n);
            });
          },
          opt.min_s / 2, nth == 1);
      double flops = 0;
      for (const AttnSeq& seq : seqs) {
        for (int32_t i = 0; i < seq.n_new; ++i)
          flops += 4.0 * n_heads * head_dim * (seq.n_past + i + 1);
      }
      std::printf("attention %-24s %dT %9.1f us %7.1f GFLOP/s\n", c.name, nth, s * 1e6,
                  flops / s / 1e9);
    }
  }
}

// A SmolLM2-135M-shaped forward pass from synthetic weights, calling the
// kernels in the order and with the barriers an engine would: decode steps
// (one sequence) and a 512-token prefill. Predicts what the kernels allow
// end to end, to compare with llama-bench's tg128 / pp512.
class SimModel {
 public:
  static constexpr int kLayers = 30, kEmbd = 576, kHeads = 9, kKvHeads = 3, kHeadDim = 64,
                       kFf = 1536, kVocab = 49152, kBlock = 16;
  static constexpr int32_t kMaxCtx = 1024;

  explicit SimModel(bool packed) {
    const int64_t q_dim = kHeads * kHeadDim, kv_dim = kKvHeads * kHeadDim;
    const Shape shapes[7] = {{"wq", q_dim, kEmbd}, {"wk", kv_dim, kEmbd}, {"wv", kv_dim, kEmbd},
                             {"wo", kEmbd, q_dim}, {"gate", kFf, kEmbd},  {"up", kFf, kEmbd},
                             {"down", kEmbd, kFf}};
    int64_t total = 0;
    for (const Shape& sh : shapes) total += kLayers * Bytes(DType::kQ4_1, sh, packed);
    total += Bytes(DType::kQ8_0, {"output", kVocab, kEmbd}, packed);
    weights_ = std::make_unique<AlignedBuffer>(total);
    weight_bytes_ = total;
    uint8_t* p = weights_->p;
    for (int s = 0; s < 7; ++s) {
      // One random matrix per shape, copied into every layer's own memory.
      const std::vector<uint8_t> m = Random(DType::kQ4_1, shapes[s]);
      for (int l = 0; l < kLayers; ++l)
        layers_[l][s] = Place(&p, DType::kQ4_1, shapes[s], m, packed);
    }
    const Shape out_shape{"output", kVocab, kEmbd};
    output_ = Place(&p, DType::kQ8_0, out_shape, Random(DType::kQ8_0, out_shape), packed);
    norm_.assign(kEmbd, 1.0f);
    kv_.kv_type = DType::kF16;
    kv_.block_size = kBlock;
    kv_.n_kv_heads = kKvHeads;
    kv_.head_dim = kHeadDim;
    const int blocks = kMaxCtx / kBlock;
    cache_.resize(kLayers * blocks * kv_.BlockBytes());
    table_.resize(blocks);
    for (int i = 0; i < blocks; ++i) table_[i] = i;
    rope_.resize(kMaxCtx * kHeadDim);
    for (int pos = 0; pos < kMaxCtx; ++pos) {
      for (int i = 0; i < kHeadDim / 2; ++i) {
        const double theta = pos * std::pow(100000.0, -2.0 * i / kHeadDim);
        rope_[pos * kHeadDim + 2 * i] = static_cast<float>(std::cos(theta));
        rope_[pos * kHeadDim + 2 * i + 1] = static_cast<float>(std::sin(theta));
      }
    }
    const int64_t rows = 512;
    x_.assign(rows * kEmbd, 0.1f);
    xn_.resize(rows * kEmbd);
    q_.resize(rows * q_dim);
    k_.resize(rows * kv_dim);
    v_.resize(rows * kv_dim);
    attn_.resize(rows * q_dim);
    tmp_.resize(rows * kEmbd);
    gate_.resize(rows * kFf);
    up_.resize(rows * kFf);
    logits_.resize(kVocab);
    xq_ = std::make_unique<AlignedBuffer>(rows * ActRowBytes(ActFormat::kQ8_1, kFf));
  }

  int64_t weight_bytes() const { return weight_bytes_; }

  // One forward over n_tokens new tokens of one sequence at n_past; logits
  // for the last token only.
  void Forward(ThreadPool& pool, int32_t n_past, int32_t n_tokens, std::vector<float>* scratch) {
    const int64_t q_dim = kHeads * kHeadDim, kv_dim = kKvHeads * kHeadDim;
    const float scale = 1.0f / std::sqrt(static_cast<float>(kHeadDim));
    const int64_t rb_e = ActRowBytes(ActFormat::kQ8_1, kEmbd);
    const int64_t rb_f = ActRowBytes(ActFormat::kQ8_1, kFf);
    scratch->resize(pool.size() * AttentionScratchFloats(kMaxCtx));
    pool.Run([&](int ith, int nth) {
      int64_t r0, r1;
      SplitRange(n_tokens, ith, nth, 1, &r0, &r1);
      for (int il = 0; il < kLayers; ++il) {
        const WeightMatrix* w = layers_[il];
        KvLayerView kv = kv_;
        kv.base = cache_.data() + il * (kMaxCtx / kBlock) * kv_.BlockBytes();
        for (int64_t t = r0; t < r1; ++t) {
          RmsNormQuantize(xq_->p + t * rb_e, ActFormat::kQ8_1, &x_[t * kEmbd], norm_.data(), kEmbd,
                          1e-5f);
        }
        pool.Barrier();
        MatMul(q_.data(), q_dim, w[0], xq_->p, n_tokens, ith, nth);
        MatMul(k_.data(), kv_dim, w[1], xq_->p, n_tokens, ith, nth);
        MatMul(v_.data(), kv_dim, w[2], xq_->p, n_tokens, ith, nth);
        pool.Barrier();
        for (int64_t t = r0; t < r1; ++t) {
          const float* cs = &rope_[(n_past + t) * kHeadDim];
          Rope(&q_[t * q_dim], kHeads, kHeadDim, kHeadDim, cs);
          Rope(&k_[t * kv_dim], kKvHeads, kHeadDim, kHeadDim, cs);
        }
        if (r1 > r0) {
          const AttnSeq part{table_.data(), static_cast<int32_t>(n_past + r0),
                             static_cast<int32_t>(r1 - r0), 0};
          StoreKv(kv, part, &k_[r0 * kv_dim], &v_[r0 * kv_dim], kv_dim);
        }
        pool.Barrier();
        const AttnSeq seq{table_.data(), n_past, n_tokens, 0};
        PagedAttention(attn_.data(), q_dim, q_.data(), q_dim, kv, &seq, 1, kHeads, scale, kMaxCtx,
                       scratch->data(), &pool, ith, nth);
        pool.Barrier();
        QuantizeActivations(xq_->p, ActFormat::kQ8_1, attn_.data(), q_dim, n_tokens, ith, nth);
        pool.Barrier();
        MatMul(tmp_.data(), kEmbd, w[3], xq_->p, n_tokens, ith, nth);
        pool.Barrier();
        for (int64_t t = r0; t < r1; ++t) {
          AddInplace(&x_[t * kEmbd], &tmp_[t * kEmbd], kEmbd);
          RmsNormQuantize(xq_->p + t * rb_e, ActFormat::kQ8_1, &x_[t * kEmbd], norm_.data(), kEmbd,
                          1e-5f);
        }
        pool.Barrier();
        MatMul(gate_.data(), kFf, w[4], xq_->p, n_tokens, ith, nth);
        MatMul(up_.data(), kFf, w[5], xq_->p, n_tokens, ith, nth);
        pool.Barrier();
        for (int64_t t = r0; t < r1; ++t) {
          SwiGluQuantize(xq_->p + t * rb_f, ActFormat::kQ8_1, &gate_[t * kFf], &up_[t * kFf], kFf);
        }
        pool.Barrier();
        MatMul(tmp_.data(), kEmbd, w[6], xq_->p, n_tokens, ith, nth);
        pool.Barrier();
        for (int64_t t = r0; t < r1; ++t) AddInplace(&x_[t * kEmbd], &tmp_[t * kEmbd], kEmbd);
      }
      if (ith == 0) {
        const int64_t last = n_tokens - 1;
        RmsNorm(&xn_[0], &x_[last * kEmbd], norm_.data(), kEmbd, 1e-5f);
        QuantizeActivations(xq_->p, ActFormat::kQ8_1, &xn_[0], kEmbd, 1, 0, 1);
      }
      pool.Barrier();
      MatMul(logits_.data(), kVocab, output_, xq_->p, 1, ith, nth);
    });
  }

 private:
  static int64_t Bytes(DType t, const Shape& s, bool packed) {
    const WeightMatrix w{nullptr, t, s.n_out, s.n_in};
    return packed ? PackedWeightBytes(w) : s.n_out * RowBytes(t, s.n_in);
  }
  static std::vector<uint8_t> Random(DType t, const Shape& s) {
    const int64_t rb = RowBytes(t, s.n_in);
    std::vector<uint8_t> m(s.n_out * rb);
    std::mt19937 rng(static_cast<uint32_t>(s.n_out * 7 + s.n_in));
    std::normal_distribution<float> dist(0.0f, 0.02f);
    std::vector<float> row(s.n_in);
    for (int64_t r = 0; r < s.n_out; ++r) {
      for (float& v : row) v = dist(rng);
      QuantizeRow(m.data() + r * rb, row.data(), t, s.n_in);
    }
    return m;
  }
  static WeightMatrix Place(uint8_t** p, DType t, const Shape& s, const std::vector<uint8_t>& m,
                            bool packed) {
    WeightMatrix w{m.data(), t, s.n_out, s.n_in};
    if (packed) {
      w = PackWeights(*p, w, 0, 1);
    } else {
      std::memcpy(*p, m.data(), m.size());
      w.data = *p;
    }
    *p += Bytes(t, s, packed);
    return w;
  }

  std::unique_ptr<AlignedBuffer> weights_, xq_;
  int64_t weight_bytes_ = 0;
  WeightMatrix layers_[kLayers][7];
  WeightMatrix output_;
  std::vector<float> norm_, rope_, x_, xn_, q_, k_, v_, attn_, tmp_, gate_, up_, logits_;
  KvLayerView kv_;
  std::vector<uint8_t> cache_;
  std::vector<int32_t> table_;
};

void BenchModel(const Options& opt) {
  for (bool packed : {true, false}) {
    SimModel model(packed);
    std::printf(
        "\nmodel simulation (SmolLM2-135M shapes, Q4_1 layers + Q8_0 output, %s, %.1f MiB):\n",
        packed ? "packed" : "ggml layout", model.weight_bytes() / 1048576.0);
    std::vector<float> scratch;
    for (int nth : {1, 2}) {
      ThreadPool pool(nth);
      for (int32_t ctx : {64, 512}) {
        const double s =
            TimePerCall([&] { model.Forward(pool, ctx, 1, &scratch); }, 3 * opt.min_s, nth == 1);
        std::printf("  decode 1 token at ctx %4d, %dT: %7.3f ms  -> %6.1f tok/s\n", ctx, nth,
                    s * 1e3, 1.0 / s);
      }
      const double s =
          TimePerCall([&] { model.Forward(pool, 0, 512, &scratch); }, 3 * opt.min_s, nth == 1);
      std::printf("  prefill 512 tokens, %dT:        %7.1f ms  -> %6.1f tok/s\n", nth, s * 1e3,
                  512 / s);
    }
  }
}

void BenchThreadPool(const Options& opt) {
  for (int nth : {1, 2}) {
    ThreadPool pool(nth);
    const double run = TimePerCall([&] { pool.Run([](int, int) {}); }, opt.min_s / 4);
    const double barrier = TimePerCall(
        [&] {
          pool.Run([&](int, int) {
            for (int i = 0; i < 100; ++i) pool.Barrier();
          });
        },
        opt.min_s / 4);
    std::printf("ThreadPool %dT: empty Run %6.0f ns, Barrier %6.0f ns\n", nth, run * 1e9,
                (barrier - run) / 100 * 1e9);
  }
}

}  // namespace
}  // namespace pdserve::kernels

int main(int argc, char** argv) {
  using namespace pdserve::kernels;
  Options opt;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--quick") {
      opt.quick = true;
      opt.min_s = 0.15;
    } else if (a == "--wall") {
      g_wall = true;
    } else if (a == "--hugepages") {
      g_hugepages = true;
    } else if (a.rfind("--only=", 0) == 0) {
      opt.only = a.substr(7);
    } else if (a.rfind("--types=", 0) == 0) {
      opt.types.clear();
      std::string list = a.substr(8) + ",";
      for (size_t at = 0, comma; (comma = list.find(',', at)) != std::string::npos;
           at = comma + 1) {
        const std::string name = list.substr(at, comma - at);
        const DTypeInfo* found = nullptr;
        for (uint32_t id = 0; id < 64 && found == nullptr; ++id) {
          const DTypeInfo* info = FindDType(id);
          if (info != nullptr && info->matmul && name == info->name) found = info;
        }
        if (found == nullptr) {
          std::fprintf(stderr, "--types: unknown or unsupported type '%s' (supported: %s)\n",
                       name.c_str(), SupportedMatmulTypes());
          return 2;
        }
        opt.types.push_back(found->type);
      }
    } else if (a == "--shapes=llama-3.2-1b") {
      opt.shapes_1b = true;
    } else if (a == "--shapes=smollm2") {
      opt.shapes_1b = false;
    } else if (a.rfind("--isa=", 0) == 0) {
      const std::string name = a.substr(6);
      for (Isa isa : {Isa::kScalar, Isa::kAvx2, Isa::kAvx512}) {
        if (name == IsaName(isa) && !SetIsa(isa)) {
          std::fprintf(stderr, "this CPU cannot run %s\n", name.c_str());
          return 1;
        }
      }
    } else {
      std::fprintf(stderr,
                   "usage: %s [--quick] [--wall] [--hugepages] [--isa=scalar|avx2|avx512] "
                   "[--only=bw|pool|quant|model|matmul|attention] [--types=q4_K,...] "
                   "[--shapes=smollm2|llama-3.2-1b]\n",
                   argv[0]);
      return 2;
    }
  }
  std::printf("ISA path: %s (best on this CPU: %s)\n", IsaName(ActiveIsa()), IsaName(DetectIsa()));
  auto run = [&](const char* section) { return opt.only.empty() || opt.only == section; };
  if (run("bw") || run("matmul")) {
    AlignedBuffer big(size_t{1} << 30), model(size_t{96} << 20), l2(size_t{512} << 10);
    std::memset(big.p, 1, big.n);
    std::memset(model.p, 1, model.n);
    std::memset(l2.p, 1, l2.n);
    for (int nth : {1, 2}) {
      ThreadPool pool(nth);
      g_dram_gbs[nth] = ReadBandwidth(pool, big, 1.0);
      g_model_gbs[nth] = ReadBandwidth(pool, model, 0.5);
      std::printf(
          "memory read bandwidth %dT: 1 GiB %6.1f GB/s, 96 MiB %6.1f GB/s, 512 KiB %6.1f GB/s\n",
          nth, g_dram_gbs[nth], g_model_gbs[nth], ReadBandwidth(pool, l2, 0.2));
    }
  }
  if (run("pool")) BenchThreadPool(opt);
  if (run("quant")) BenchQuantize(opt);
  if (run("model")) BenchModel(opt);
  if (!run("matmul")) {
    if (run("attention")) BenchAttention(opt);
    return 0;
  }
  std::printf(
      "\nmatmul: GB/s counts weight bytes per call; weights rotate through 1 GiB of copies "
      "(dram), 96 MiB of copies (model: the whole model's bytes, as in a decode step) or stay "
      "in cache (hot)\n");
  std::vector<Shape> shapes(std::begin(kShapes), std::end(kShapes));
  if (opt.shapes_1b) shapes.assign(std::begin(kShapes1B), std::end(kShapes1B));
  for (DType type : opt.types) {
    for (const Shape& shape : shapes) {
      if (opt.quick && (shape.n_out == 192 || shape.n_out == 512)) continue;
      const bool can_pack = PackedWeightBytes({nullptr, type, shape.n_out, shape.n_in}) > 0;
      for (bool packed : {true, false}) {
        if (packed ? !can_pack : opt.quick && can_pack) continue;
        BenchMatMul(opt, type, shape, packed);
      }
    }
  }
  std::printf("\n");
  BenchAttention(opt);
  return 0;
}
