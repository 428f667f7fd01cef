// Kernel micro-benchmark: matmuls for SmolLM2-135M's shapes in Q4_1 and
// Q8_0, attention, thread-pool overheads, and a memory-bandwidth reference
// measured in the same run. Prints a table; asserts nothing.
//
//   kernels_bench [--quick] [--isa=scalar|avx2|avx512]
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "kernels/cpu/attention.h"
#include "kernels/cpu/isa.h"
#include "kernels/cpu/matmul.h"
#include "kernels/cpu/thread_pool.h"
#include "kernels/quant.h"

namespace pdserve::kernels {
namespace {

using Clock = std::chrono::steady_clock;

double Seconds(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double>(b - a).count();
}

// Median seconds per call of fn over batches lasting about min_s in total.
double TimePerCall(const std::function<void()>& fn, double min_s) {
  fn();  // warm up
  const auto t0 = Clock::now();
  fn();
  const double once = std::max(Seconds(t0, Clock::now()), 1e-7);
  const int per_batch = std::max(1, static_cast<int>(min_s / 7 / once));
  std::vector<double> batches;
  for (int b = 0; b < 7; ++b) {
    const auto s = Clock::now();
    for (int i = 0; i < per_batch; ++i) fn();
    batches.push_back(Seconds(s, Clock::now()) / per_batch);
  }
  std::sort(batches.begin(), batches.end());
  return batches[batches.size() / 2];
}

struct AlignedBuffer {
  uint8_t* p = nullptr;
  size_t n = 0;
  explicit AlignedBuffer(size_t bytes) : n(bytes) {
    p = static_cast<uint8_t*>(std::aligned_alloc(64, (bytes + 63) / 64 * 64));
  }
  ~AlignedBuffer() { std::free(p); }
  AlignedBuffer(const AlignedBuffer&) = delete;
  AlignedBuffer& operator=(const AlignedBuffer&) = delete;
};

// Streaming read of buf split across the pool's threads; returns GB/s.
double ReadBandwidth(ThreadPool& pool, const AlignedBuffer& buf, double min_s) {
  std::vector<uint64_t> sinks(pool.size() * 8);
  const double s = TimePerCall(
      [&] {
        pool.Run([&](int ith, int nth) {
          int64_t b, e;
          SplitRange(static_cast<int64_t>(buf.n / 8), ith, nth, 64, &b, &e);
          const uint64_t* p = reinterpret_cast<const uint64_t*>(buf.p);
          uint64_t a0 = 0, a1 = 0, a2 = 0, a3 = 0, a4 = 0, a5 = 0, a6 = 0, a7 = 0;
          for (int64_t i = b; i < e; i += 8) {
            a0 += p[i];
            a1 += p[i + 1];
            a2 += p[i + 2];
            a3 += p[i + 3];
            a4 += p[i + 4];
            a5 += p[i + 5];
            a6 += p[i + 6];
            a7 += p[i + 7];
          }
          sinks[ith * 8] = a0 + a1 + a2 + a3 + a4 + a5 + a6 + a7;
        });
      },
      min_s);
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

struct Options {
  bool quick = false;
  double min_s = 0.4;
};

double g_dram_gbs[3] = {};  // by thread count

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
  // Cold copies: enough replicas to cover 1 GiB so that each decode call
  // streams its weights from DRAM, not from cache.
  const int64_t copies = std::max<int64_t>(2, (int64_t{1} << 30) / weight_bytes);
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
      for (bool cold : {true, false}) {
        if (cold && n_tokens > 8) continue;  // compute-bound: cache state does not matter
        int64_t next = 0;
        const double s = TimePerCall(
            [&] {
              const WeightMatrix& wm = ws[cold ? (next++ % copies) : 0];
              pool.Run([&](int ith, int n) {
                MatMul(y.data(), shape.n_out, wm, xq.p, n_tokens, ith, n);
              });
            },
            opt.min_s);
        const double gbs = weight_bytes / s / 1e9;
        const double gflops = 2.0 * shape.n_out * shape.n_in * n_tokens / s / 1e9;
        std::printf("%-5s %-11s %5lldx%-5lld %-6s %4lld tok %-4s %dT %9.1f us %7.1f GB/s",
                    GetDType(type).name, shape.name, static_cast<long long>(shape.n_out),
                    static_cast<long long>(shape.n_in), packed ? "packed" : "ggml",
                    static_cast<long long>(n_tokens), cold ? "cold" : "hot", nth, s * 1e6, gbs);
        if (cold) {
          std::printf(" (%3.0f%% DRAM)", 100.0 * gbs / g_dram_gbs[nth]);
        } else {
          std::printf("            ");
        }
        std::printf(" %7.1f GFLOP/s\n", gflops);
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
                    opt.min_s / 4);
    std::printf("QuantizeActivations q8_1 576 x %3lld rows, 1T: %8.2f us\n",
                static_cast<long long>(n), s * 1e6);
  }
}

void BenchAttention(const Options& opt) {
  // SmolLM2: 9 q heads, 3 kv heads of 64, F16 KV, blocks of 16.
  const int n_heads = 9, n_kv_heads = 3, head_dim = 64, block_size = 16;
  const int32_t max_ctx = 1024;
  KvLayerView kv;
  kv.block_size = block_size;
  kv.n_kv_heads = n_kv_heads;
  kv.head_dim = head_dim;
  const int n_blocks = 64 * (max_ctx / block_size);
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
  const Case cases[] = {{"decode 1 seq ctx 512", 1, 511, 1},
                        {"decode 16 seqs ctx 512", 16, 511, 1},
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
                             0.125f, max_ctx, scratch.data(), ith, n);
            });
          },
          opt.min_s / 2);
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
    } else if (a.rfind("--isa=", 0) == 0) {
      const std::string name = a.substr(6);
      for (Isa isa : {Isa::kScalar, Isa::kAvx2, Isa::kAvx512}) {
        if (name == IsaName(isa) && !SetIsa(isa)) {
          std::fprintf(stderr, "this CPU cannot run %s\n", name.c_str());
          return 1;
        }
      }
    } else {
      std::fprintf(stderr, "usage: %s [--quick] [--isa=scalar|avx2|avx512]\n", argv[0]);
      return 2;
    }
  }
  std::printf("ISA path: %s (best on this CPU: %s)\n", IsaName(ActiveIsa()), IsaName(DetectIsa()));
  {
    AlignedBuffer big(size_t{1} << 30), l3(size_t{64} << 20);
    std::memset(big.p, 1, big.n);
    std::memset(l3.p, 1, l3.n);
    for (int nth : {1, 2}) {
      ThreadPool pool(nth);
      g_dram_gbs[nth] = ReadBandwidth(pool, big, 1.0);
      std::printf("memory read bandwidth %dT: 1 GiB buffer %6.1f GB/s, 64 MiB buffer %6.1f GB/s\n",
                  nth, g_dram_gbs[nth], ReadBandwidth(pool, l3, 0.5));
    }
  }
  BenchThreadPool(opt);
  BenchQuantize(opt);
  std::printf(
      "\nmatmul: GB/s counts weight bytes read per call; cold = weights rotate through "
      "1 GiB of copies (DRAM), hot = one copy (cache)\n");
  for (DType type : {DType::kQ4_1, DType::kQ8_0}) {
    for (const Shape& shape : kShapes) {
      if (opt.quick && shape.n_out == 192) continue;
      for (bool packed : {true, false}) {
        if (opt.quick && !packed) continue;
        BenchMatMul(opt, type, shape, packed);
      }
    }
  }
  std::printf("\n");
  BenchAttention(opt);
  return 0;
}
