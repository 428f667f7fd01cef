// gpu_bench: pdserve's GPU path against ceilings measured in the same run.
//
//   decode   batch-1 step time on a dummy model; (weight + KV bytes read per
//            step) / step time against a device-to-device copy's bandwidth
//            (bytes read + written), target >= 70%
//   prefill  prompt tokens/s against cuBLAS running the same GEMMs alone
//            (f16 in, f32 out, the model's shapes), target >= 50%
//   sweep    decode step time at batch 1, 2, 4, 8, 16, through MatVec (up
//            to kMaxMatVecTokens rows) and through cuBLAS on f16 weights
//   matvec   MatVec alone on llama-3-8b's shapes at 1 and 4 tokens: GB/s of
//            weight bytes (gpu_bench_decode.cc)
//   kv       IPC KV transfer (same GPU, as a 1P1D cluster on one device
//            runs it) against raw device-to-device copies of the same blocks;
//            NCCL KV transfer (gather blocks, send/recv, scatter) against raw
//            NCCL send/recv of the same bytes; one GPU sends to itself in one
//            communicator group, two GPUs use the transport end to end
//
// Usage: gpu_bench [--config llama-3-8b] [--model FILE] [--prompt 512] [--decode 64]
//                  [--skip-model] [--skip-matvec] [--skip-kv] [--out DIR]
// Prints a table; writes DIR/gpu_bench.json (DIR defaults to $OUT if set).
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#ifndef PDSERVE_HAVE_CUDA
int main() {
  std::printf("gpu_bench: this build has no CUDA (nvcc was not found); nothing to measure\n");
  return 0;
}
#else

#include <chrono>
#include <cmath>
#include <future>
#include <memory>
#include <numeric>
#include <random>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "bench/gpu_bench_decode.h"
#include "bench/gpu_bench_util.h"
#include "engine/cuda/cuda_runner.h"
#include "engine/dummy_model.h"
#include "engine/gguf/gguf.h"
#include "engine/kv_cache.h"
#include "engine/model.h"
#include "kernels/cuda/gemm.h"
#include "kernels/cuda/kv_pack.h"
#ifdef PDSERVE_HAVE_CUDA_IPC
#include "transport/ipc_receiver.h"
#include "transport/ipc_sender.h"
#endif
#ifdef PDSERVE_HAVE_NCCL
#include "transport/nccl_compat.h"
#include "transport/nccl_receiver.h"
#include "transport/nccl_sender.h"
#endif

namespace pdserve::gpu_bench {

struct Result {
  std::string name;
  double value;
  std::string unit;
};
std::vector<Result> g_results;
void Record(std::string name, double value, std::string unit) {
  g_results.push_back({std::move(name), value, std::move(unit)});
  std::printf("  %-44s %14.3f %s\n", g_results.back().name.c_str(), value,
              g_results.back().unit.c_str());
  std::fflush(stdout);
}

namespace {

struct Options {
  std::string config = "llama-3-8b";
  std::string model;  // a GGUF file of --config's shape (the dummy written once), else built here
  int prompt = 512;
  int decode = 64;
  bool skip_model = false;
  bool skip_kv = false;
  bool skip_matvec = false;
  std::string out_dir;
};

// Random f16 values in [-1, 1] (never zeros: they run faster than data).
void FillRandomHalves(__half* dev, size_t n, uint64_t seed) {
  std::vector<uint16_t> host(n);
  uint64_t x = seed * 0x9E3779B97F4A7C15ull + 1;
  for (size_t i = 0; i < n; ++i) {
    x ^= x << 13, x ^= x >> 7, x ^= x << 17;
    const float f = static_cast<float>(static_cast<int64_t>(x >> 40) - (1 << 23)) / (1 << 23);
    host[i] = kernels::F32ToF16(f);
  }
  BENCH_CUDA(cudaMemcpy(dev, host.data(), n * 2, cudaMemcpyHostToDevice));
  BENCH_CUDA(cudaDeviceSynchronize());  // the benchmark streams do not wait for it
}

double CopyBandwidth(cudaStream_t stream) {
  const size_t bytes = size_t{1} << 30;
  void *src, *dst;
  BENCH_CUDA(cudaMalloc(&src, bytes));
  BENCH_CUDA(cudaMalloc(&dst, bytes));
  BENCH_CUDA(cudaMemset(src, 1, bytes));
  BENCH_CUDA(cudaDeviceSynchronize());
  const double ms = TimeMs(stream, 3, 20, [&] {
    BENCH_CUDA(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, stream));
  });
  cudaFree(src);
  cudaFree(dst);
  return 2.0 * bytes / (ms * 1e-3);  // bytes read + written per second
}

struct GemmShape {
  const char* name;
  int64_t n_out, n_in;
};

// Seconds cuBLAS alone needs for one prefill of n_tokens through every
// layer's products (the output head runs on one row: left out).
double CublasPrefillSeconds(const ModelConfig& c, int n_tokens, cudaStream_t stream) {
  const std::vector<GemmShape> shapes = {{"qkv", c.q_dim() + 2LL * c.kv_dim(), c.n_embd},
                                         {"wo", c.n_embd, c.q_dim()},
                                         {"gate_up", 2LL * c.n_ff, c.n_embd},
                                         {"down", c.n_embd, c.n_ff}};
  cublasHandle_t h;
  if (cublasCreate(&h) != CUBLAS_STATUS_SUCCESS) {
    std::fprintf(stderr, "gpu_bench: cublasCreate failed\n");
    std::exit(1);
  }
  double per_layer_ms = 0;
  for (const GemmShape& s : shapes) {
    __half *w, *x;
    float* y;
    BENCH_CUDA(cudaMalloc(&w, s.n_out * s.n_in * 2));
    BENCH_CUDA(cudaMalloc(&x, int64_t{n_tokens} * s.n_in * 2));
    BENCH_CUDA(cudaMalloc(&y, int64_t{n_tokens} * s.n_out * 4));
    FillRandomHalves(w, s.n_out * s.n_in, 1);
    FillRandomHalves(x, int64_t{n_tokens} * s.n_in, 2);
    const double ms = TimeMs(stream, 3, 10, [&] {
      kernels::cuda::GemmF16(h, y, s.n_out, w, s.n_out, s.n_in, x, n_tokens, false, stream);
    });
    const double tflops = 2.0 * n_tokens * s.n_out * s.n_in / (ms * 1e-3) / 1e12;
    Record(absl::StrFormat("cublas %s %lldx%lldx%d", s.name, static_cast<long long>(s.n_out),
                           static_cast<long long>(s.n_in), n_tokens),
           tflops, "TFLOP/s");
    per_layer_ms += ms;
    cudaFree(w);
    cudaFree(x);
    cudaFree(y);
  }
  cublasDestroy(h);
  return per_layer_ms * c.n_layers * 1e-3;
}

int BenchModel(const Options& o, double copy_bw, cudaStream_t stream) {
  const int32_t n_ctx = o.prompt + o.decode + 64;
  absl::StatusOr<std::unique_ptr<Model> > model = absl::UnknownError("no model");
  if (!o.model.empty()) {
    std::printf("model %s\n", o.model.c_str());
    model = Model::Load(o.model, n_ctx);
  } else {
    std::printf("model %s: building dummy weights...\n", o.config.c_str());
    std::fflush(stdout);
    absl::StatusOr<DummyModelSpec> spec = NamedDummyConfig(o.config);
    if (!spec.ok()) {
      std::fprintf(stderr, "gpu_bench: %s\n", std::string(spec.status().message()).c_str());
      return 1;
    }
    auto bytes = BuildDummyModelGguf(*spec);
    if (!bytes.ok()) return 1;
    auto file = gguf::GgufFile::FromBytes(*bytes);
    bytes->clear();
    bytes->shrink_to_fit();
    if (!file.ok()) return 1;
    model = Model::FromGguf(std::move(*file), n_ctx);
  }
  if (!model.ok()) {
    std::fprintf(stderr, "gpu_bench: %s\n", std::string(model.status().message()).c_str());
    return 1;
  }
  const ModelConfig& c = (*model)->config();
  auto backend = cuda::CreateCudaBackend("cuda:0");
  if (!backend.ok()) {
    std::fprintf(stderr, "gpu_bench: %s\n", std::string(backend.status().message()).c_str());
    return 1;
  }
  KvCacheConfig kc;
  kc.n_layers = c.n_layers;
  kc.n_kv_heads = c.n_kv_heads;
  kc.head_dim = c.head_dim;
  kc.block_size = 16;
  const int32_t sweep_block0 = (n_ctx + 15) / 16;  // then 16 for the decode sweep
  kc.n_blocks = sweep_block0 + 16;
  kc.prefix_cache = false;
  auto cache = KvCache::Create(kc, (*backend)->kv_allocator());
  if (!cache.ok()) {
    std::fprintf(stderr, "gpu_bench: %s\n", std::string(cache.status().message()).c_str());
    return 1;
  }
  auto runner = cuda::CudaRunner::Create(0, model->get(), cache->get(), std::max(o.prompt, 16), 16,
                                         cuda::CudaRunnerOptions{});
  if (!runner.ok()) {
    std::fprintf(stderr, "gpu_bench: %s\n", std::string(runner.status().message()).c_str());
    return 1;
  }
  const cuda::DeviceWeights& dw = (*runner)->weights();
  std::vector<int32_t> table(kc.n_blocks);
  std::iota(table.begin(), table.end(), 0);
  std::vector<float> logits(c.n_vocab);
  std::mt19937 rng(7);
  auto batch_of = [&](int32_t n_past, int32_t n_new) {
    ForwardBatch b;
    for (int32_t i = 0; i < n_new; ++i) b.tokens.push_back(static_cast<TokenId>(rng() % c.n_vocab));
    kernels::AttnSeq s;
    s.block_table = table.data();
    s.n_past = n_past;
    s.n_new = n_new;
    b.seqs.push_back(s);
    b.logit_rows.push_back(n_new - 1);
    return b;
  };
  using Clock = std::chrono::steady_clock;

  // Prefill: the whole prompt in one step (wall time of Forward, which
  // waits for the logits).
  const ForwardBatch prefill = batch_of(0, o.prompt);
  (*runner)->Forward(prefill, logits.data(), nullptr);
  std::vector<double> pre_s;
  for (int i = 0; i < 3; ++i) {
    const auto t0 = Clock::now();
    (*runner)->Forward(prefill, logits.data(), nullptr);
    pre_s.push_back(std::chrono::duration<double>(Clock::now() - t0).count());
  }
  const double prefill_tps = o.prompt / Median(pre_s);
  const double cublas_s = CublasPrefillSeconds(c, o.prompt, stream);
  const double cublas_tps = o.prompt / cublas_s;

  // Decode: batch-1 steps after the prompt.
  std::vector<double> step_s;
  for (int i = 0; i < o.decode; ++i) {
    const ForwardBatch step = batch_of(o.prompt + i, 1);
    const auto t0 = Clock::now();
    (*runner)->Forward(step, logits.data(), nullptr);
    if (i >= 3) step_s.push_back(std::chrono::duration<double>(Clock::now() - t0).count());
  }
  const double step = Median(step_s);
  // Bytes a step must read: every layer matrix and the output head once,
  // plus the KV cache of the context (f16) at the middle of the run.
  int64_t weight_bytes = dw.quant_bytes;
  if (!c.tied_embeddings) {
    weight_bytes -= kernels::RowBytes(dw.token_embd.type, c.n_embd) * c.n_vocab;  // one row read
  }
  const int64_t ctx = o.prompt + o.decode / 2;
  const int64_t kv_bytes = int64_t{c.n_layers} * ctx * 2 * c.kv_dim() * 2;
  const double decode_bw = (weight_bytes + kv_bytes) / step;

  std::printf("\nresults (%s, prompt %d, %d decode steps):\n", o.config.c_str(), o.prompt,
              o.decode);
  Record("device-to-device copy (read+write)", copy_bw / 1e9, "GB/s");
  Record("decode step, batch 1", step * 1e3, "ms");
  Record("decode bytes per step (weights + KV)", (weight_bytes + kv_bytes) / 1e9, "GB");
  Record("decode effective bandwidth", decode_bw / 1e9, "GB/s");
  Record("decode bandwidth / copy bandwidth (target 0.70)", decode_bw / copy_bw, "ratio");
  Record("decode tokens/s, batch 1", 1.0 / step, "tok/s");
  Record("prefill tokens/s", prefill_tps, "tok/s");
  Record("cuBLAS-only tokens/s (same GEMMs)", cublas_tps, "tok/s");
  Record("prefill / cuBLAS (target 0.50)", prefill_tps / cublas_tps, "ratio");
  Record("weights on GPU (quantized)", dw.quant_bytes / 1e9, "GB");
  Record("f16 weight copies (prefill)", dw.f16_bytes / 1e9, "GB");
  BenchDecodeSweep(**runner, c.n_vocab, table.data(), o.prompt / 16 * 16, 16, sweep_block0);
  return 0;
}

// KV of a prompt as it travels: n_layers layers of n_blocks blocks.
struct KvShape {
  int n_layers, n_blocks;
  int64_t block_bytes;
  int64_t layer_bytes() const { return n_blocks * block_bytes; }
  int64_t total() const { return n_layers * layer_bytes(); }
};

#ifdef PDSERVE_HAVE_CUDA_IPC
// One GPU, as a 1P1D cluster on one device runs it: the IPC transport
// (control over loopback TCP, the receiver copying device to device out of
// the sender's exported pool), end to end per transfer, against the same
// block copies issued raw on one stream.
void BenchKvIpc(const KvShape& s, cudaStream_t stream) {
  const int64_t pool_blocks = 2LL * s.n_blocks;
  const size_t pool_bytes = s.n_layers * pool_blocks * s.block_bytes;
  uint8_t *pool_src, *pool_dst;
  BENCH_CUDA(cudaMalloc(&pool_src, pool_bytes));
  BENCH_CUDA(cudaMalloc(&pool_dst, pool_bytes));
  BENCH_CUDA(cudaMemset(pool_src, 7, pool_bytes));
  BENCH_CUDA(cudaDeviceSynchronize());
  std::vector<std::vector<transport::ConstBlockView> > src(s.n_layers);
  std::vector<std::vector<transport::BlockView> > dst(s.n_layers);
  for (int l = 0; l < s.n_layers; ++l) {
    for (int b = 0; b < s.n_blocks; ++b) {
      const int64_t at = (l * pool_blocks + 2 * b) * s.block_bytes;  // every other block
      src[l].push_back({pool_src + at, static_cast<size_t>(s.block_bytes)});
      dst[l].push_back({pool_dst + at, static_cast<size_t>(s.block_bytes)});
    }
  }
  const double raw_ms = TimeMs(stream, 3, 10, [&] {
    for (int l = 0; l < s.n_layers; ++l) {
      for (int b = 0; b < s.n_blocks; ++b) {
        BENCH_CUDA(cudaMemcpyAsync(dst[l][b].data, src[l][b].data, s.block_bytes,
                                   cudaMemcpyDeviceToDevice, stream));
      }
    }
  });
  auto receiver = transport::IpcKvReceiver::Create({});
  auto sender = transport::IpcKvSender::Create({});
  if (!receiver.ok() || !sender.ok() || !(*sender)->RegisterRegion(pool_src, pool_bytes).ok()) {
    std::fprintf(stderr, "gpu_bench: cannot set up the IPC transport\n");
    std::exit(1);
  }
  const transport::TransferSecret secret = transport::TransferSecret::Random();
  std::vector<double> ms;
  for (uint64_t rep = 1; rep <= 8; ++rep) {
    const auto deadline = MonoClock::now() + std::chrono::seconds(30);
    std::promise<absl::Status> landed;
    auto posted = (*receiver)->Post(transport::TransferId{rep}, secret, dst, deadline,
                                    [&landed](absl::Status st, std::string,
                                              transport::ReceiveTiming) { landed.set_value(st); });
    const auto t0 = std::chrono::steady_clock::now();
    auto h = (*sender)->StartTransfer(transport::TransferId{rep}, secret, (*receiver)->endpoint(),
                                      s.n_layers, deadline);
    if (!posted.ok() || !h.ok()) {
      std::fprintf(stderr, "gpu_bench: IPC transfer did not start\n");
      std::exit(1);
    }
    for (int l = 0; l < s.n_layers; ++l) (*h)->SendLayer(l, src[l]).IgnoreError();
    (*h)->Finish("").IgnoreError();
    const absl::Status st = (*h)->Wait();
    const absl::Status got = landed.get_future().get();
    const auto t1 = std::chrono::steady_clock::now();
    if (!st.ok() || !got.ok()) {
      std::fprintf(stderr, "gpu_bench: IPC transfer failed: %s / %s\n", st.ToString().c_str(),
                   got.ToString().c_str());
      std::exit(1);
    }
    if (rep > 2) ms.push_back(std::chrono::duration<double, std::milli>(t1 - t0).count());
  }
  const double ipc_ms = Median(ms);
  std::vector<uint8_t> check(s.block_bytes);
  BENCH_CUDA(
      cudaMemcpy(check.data(), dst.back().back().data, s.block_bytes, cudaMemcpyDeviceToHost));
  if (std::any_of(check.begin(), check.end(), [](uint8_t b) { return b != 7; })) {
    std::fprintf(stderr, "gpu_bench: IPC KV blocks arrived corrupted\n");
    std::exit(1);
  }
  Record("raw D2D block copies (one stream)", s.total() / (raw_ms * 1e-3) / 1e9, "GB/s");
  Record("IPC KV transfer, end to end", s.total() / (ipc_ms * 1e-3) / 1e9, "GB/s");
  Record("IPC KV / raw copy", raw_ms / ipc_ms, "ratio");
  sender->reset();
  receiver->reset();
  cudaFree(pool_src);
  cudaFree(pool_dst);
}
#endif

#ifdef PDSERVE_HAVE_NCCL
#define BENCH_NCCL(expr)                                                                      \
  do {                                                                                        \
    const ncclResult_t bench_r = (expr);                                                      \
    if (bench_r != ncclSuccess) {                                                             \
      std::fprintf(stderr, "gpu_bench: %s failed: %s\n", #expr, ncclGetErrorString(bench_r)); \
      std::exit(1);                                                                           \
    }                                                                                         \
  } while (false)

// One GPU: pack + self send/recv + unpack per layer, against the raw
// send/recv of the same messages, in one 1-rank communicator.
void BenchKvOneGpu(const KvShape& s, cudaStream_t stream) {
  ncclUniqueId id;
  BENCH_NCCL(ncclGetUniqueId(&id));
  ncclComm_t comm;
  BENCH_NCCL(ncclCommInitRank(&comm, 1, id, 0));
  uint8_t *pool_src, *pool_dst, *send, *recv;
  const int64_t pool_blocks = 2LL * s.n_blocks;  // blocks picked out of a larger cache
  BENCH_CUDA(cudaMalloc(&pool_src, s.n_layers * pool_blocks * s.block_bytes));
  BENCH_CUDA(cudaMalloc(&pool_dst, s.n_layers * pool_blocks * s.block_bytes));
  BENCH_CUDA(cudaMalloc(&send, s.layer_bytes()));
  BENCH_CUDA(cudaMalloc(&recv, s.layer_bytes()));
  BENCH_CUDA(cudaMemset(pool_src, 7, s.n_layers * pool_blocks * s.block_bytes));
  std::vector<uint8_t*> src_ptrs, dst_ptrs;
  for (int l = 0; l < s.n_layers; ++l) {
    for (int b = 0; b < s.n_blocks; ++b) {
      const int64_t at = (l * pool_blocks + 2 * b) * s.block_bytes;  // every other block
      src_ptrs.push_back(pool_src + at);
      dst_ptrs.push_back(pool_dst + at);
    }
  }
  uint8_t **d_src, **d_dst;
  BENCH_CUDA(cudaMalloc(&d_src, src_ptrs.size() * sizeof(void*)));
  BENCH_CUDA(cudaMalloc(&d_dst, dst_ptrs.size() * sizeof(void*)));
  BENCH_CUDA(
      cudaMemcpy(d_src, src_ptrs.data(), src_ptrs.size() * sizeof(void*), cudaMemcpyHostToDevice));
  BENCH_CUDA(
      cudaMemcpy(d_dst, dst_ptrs.data(), dst_ptrs.size() * sizeof(void*), cudaMemcpyHostToDevice));
  BENCH_CUDA(cudaDeviceSynchronize());
  auto send_recv = [&] {
    BENCH_NCCL(ncclGroupStart());
    BENCH_NCCL(ncclSend(send, s.layer_bytes(), ncclUint8, 0, comm, stream));
    BENCH_NCCL(ncclRecv(recv, s.layer_bytes(), ncclUint8, 0, comm, stream));
    BENCH_NCCL(ncclGroupEnd());
  };
  const double raw_ms = TimeMs(stream, 3, 10, [&] {
    for (int l = 0; l < s.n_layers; ++l) send_recv();
  });
  const double kv_ms = TimeMs(stream, 3, 10, [&] {
    for (int l = 0; l < s.n_layers; ++l) {
      BENCH_CUDA(kernels::cuda::GatherBlocks(
          send, reinterpret_cast<const void* const*>(d_src + l * s.n_blocks), s.block_bytes,
          s.n_blocks, stream));
      send_recv();
      BENCH_CUDA(
          kernels::cuda::ScatterBlocks(reinterpret_cast<void* const*>(d_dst + l * s.n_blocks), recv,
                                       s.block_bytes, s.n_blocks, stream));
    }
  });
  BENCH_CUDA(cudaStreamSynchronize(stream));
  // The blocks arrived where they belong.
  std::vector<uint8_t> check(s.block_bytes);
  BENCH_CUDA(cudaMemcpy(check.data(), dst_ptrs.back(), s.block_bytes, cudaMemcpyDeviceToHost));
  if (std::any_of(check.begin(), check.end(), [](uint8_t b) { return b != 7; })) {
    std::fprintf(stderr, "gpu_bench: KV blocks arrived corrupted\n");
    std::exit(1);
  }
  Record("raw NCCL self send/recv (per-layer messages)", s.total() / (raw_ms * 1e-3) / 1e9, "GB/s");
  Record("KV pack + send/recv + unpack", s.total() / (kv_ms * 1e-3) / 1e9, "GB/s");
  Record("KV transfer / raw NCCL", raw_ms / kv_ms, "ratio");
  ncclCommDestroy(comm);
  cudaFree(pool_src);
  cudaFree(pool_dst);
  cudaFree(send);
  cudaFree(recv);
  cudaFree(d_src);
  cudaFree(d_dst);
}

// Two GPUs: the NCCL transport from GPU 0 to GPU 1, against raw 2-rank
// send/recv of the same per-layer messages.
void BenchKvTwoGpus(const KvShape& s) {
  // Raw: one thread per rank.
  ncclUniqueId id;
  BENCH_NCCL(ncclGetUniqueId(&id));
  double raw_s = 0;
  auto rank = [&](int r) {
    BENCH_CUDA(cudaSetDevice(r));
    ncclComm_t comm;
    BENCH_NCCL(ncclCommInitRank(&comm, 2, id, r));
    cudaStream_t st;
    BENCH_CUDA(cudaStreamCreate(&st));
    void* buf;
    BENCH_CUDA(cudaMalloc(&buf, s.layer_bytes()));
    std::vector<double> times;
    for (int rep = 0; rep < 8; ++rep) {
      BENCH_CUDA(cudaStreamSynchronize(st));
      const auto t0 = std::chrono::steady_clock::now();
      for (int l = 0; l < s.n_layers; ++l) {
        if (r == 0) {
          BENCH_NCCL(ncclSend(buf, s.layer_bytes(), ncclUint8, 1, comm, st));
        } else {
          BENCH_NCCL(ncclRecv(buf, s.layer_bytes(), ncclUint8, 0, comm, st));
        }
      }
      BENCH_CUDA(cudaStreamSynchronize(st));
      if (rep >= 2)
        times.push_back(
            std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
    }
    if (r == 1) raw_s = Median(times);
    cudaFree(buf);
    ncclCommDestroy(comm);
    cudaStreamDestroy(st);
  };
  std::thread r1([&] { rank(1); });
  rank(0);
  r1.join();

  // Transport.
  transport::NcclReceiverOptions ro;
  ro.device = 1;
  auto receiver = transport::NcclKvReceiver::Create(ro);
  transport::NcclSenderOptions so;
  so.device = 0;
  auto sender = transport::NcclKvSender::Create(so);
  if (!receiver.ok() || !sender.ok()) {
    std::fprintf(stderr, "gpu_bench: cannot create the NCCL transport\n");
    std::exit(1);
  }
  BENCH_CUDA(cudaSetDevice(0));
  void* src;
  BENCH_CUDA(cudaMalloc(&src, s.total()));
  BENCH_CUDA(cudaMemset(src, 3, s.total()));
  BENCH_CUDA(cudaDeviceSynchronize());
  BENCH_CUDA(cudaSetDevice(1));
  void* dst;
  BENCH_CUDA(cudaMalloc(&dst, s.total()));
  std::vector<std::vector<transport::ConstBlockView> > views(s.n_layers);
  std::vector<std::vector<transport::BlockView> > dviews(s.n_layers);
  for (int l = 0; l < s.n_layers; ++l) {
    for (int b = 0; b < s.n_blocks; ++b) {
      const int64_t at = (int64_t{l} * s.n_blocks + b) * s.block_bytes;
      views[l].push_back({static_cast<uint8_t*>(src) + at, static_cast<size_t>(s.block_bytes)});
      dviews[l].push_back({static_cast<uint8_t*>(dst) + at, static_cast<size_t>(s.block_bytes)});
    }
  }
  std::vector<double> times;
  for (int rep = 0; rep < 8; ++rep) {
    const transport::TransferId x{static_cast<uint64_t>(rep + 1)};
    const transport::TransferSecret secret = transport::TransferSecret::Random();
    const auto deadline = MonoClock::now() + std::chrono::seconds(60);
    std::promise<absl::Status> got;
    auto fut = got.get_future();
    if (!(*receiver)
             ->Post(
                 x, secret, dviews, deadline,
                 [&](absl::Status st, std::string, transport::ReceiveTiming) { got.set_value(st); })
             .ok()) {
      std::exit(1);
    }
    const auto t0 = std::chrono::steady_clock::now();
    auto h = (*sender)->StartTransfer(x, secret, (*receiver)->endpoint(), s.n_layers, deadline);
    if (!h.ok()) {
      std::fprintf(stderr, "gpu_bench: %s\n", std::string(h.status().message()).c_str());
      std::exit(1);
    }
    for (int l = 0; l < s.n_layers; ++l) (*h)->SendLayer(l, views[l]).IgnoreError();
    (*h)->Finish("").IgnoreError();
    const absl::Status st = (*h)->Wait();
    const absl::Status rs = fut.get();
    if (!st.ok() || !rs.ok()) {
      std::fprintf(stderr, "gpu_bench: transfer failed: %s / %s\n",
                   std::string(st.message()).c_str(), std::string(rs.message()).c_str());
      std::exit(1);
    }
    if (rep >= 2)
      times.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  const double kv_s = Median(times);
  Record("raw NCCL send/recv GPU0->GPU1", s.total() / raw_s / 1e9, "GB/s");
  Record("NCCL KV transport GPU0->GPU1", s.total() / kv_s / 1e9, "GB/s");
  Record("KV transport / raw NCCL", raw_s / kv_s, "ratio");
  cudaFree(dst);
  BENCH_CUDA(cudaSetDevice(0));
  cudaFree(src);
}
#endif  // PDSERVE_HAVE_NCCL

void WriteJson(const std::string& dir, const std::string& device) {
  if (dir.empty()) return;
  const std::string path = dir + "/gpu_bench.json";
  FILE* f = std::fopen(path.c_str(), "w");
  if (f == nullptr) {
    std::fprintf(stderr, "gpu_bench: cannot write %s\n", path.c_str());
    return;
  }
  std::fprintf(f, "{\n  \"device\": \"%s\",\n  \"results\": [\n", device.c_str());
  for (size_t i = 0; i < g_results.size(); ++i) {
    std::fprintf(f, "    {\"name\": \"%s\", \"value\": %.6g, \"unit\": \"%s\"}%s\n",
                 g_results[i].name.c_str(), g_results[i].value, g_results[i].unit.c_str(),
                 i + 1 < g_results.size() ? "," : "");
  }
  std::fprintf(f, "  ]\n}\n");
  std::fclose(f);
  std::printf("wrote %s\n", path.c_str());
}

int Run(const Options& o) {
  int n_gpus = 0;
  if (cudaGetDeviceCount(&n_gpus) != cudaSuccess || n_gpus == 0) {
    std::printf("gpu_bench: no usable CUDA GPU here; nothing to measure\n");
    return 0;
  }
  BENCH_CUDA(cudaSetDevice(0));
  cudaDeviceProp prop;
  BENCH_CUDA(cudaGetDeviceProperties(&prop, 0));
  const std::string device =
      absl::StrFormat("%s (%d SMs, %.0f GiB, %d GPU(s))", prop.name, prop.multiProcessorCount,
                      prop.totalGlobalMem / 1073741824.0, n_gpus);
  std::printf("gpu_bench on %s\n", device.c_str());
  cudaStream_t stream;
  BENCH_CUDA(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  const double copy_bw = CopyBandwidth(stream);
  if (!o.skip_model) {
    if (int rc = BenchModel(o, copy_bw, stream); rc != 0) return rc;
  } else {
    Record("device-to-device copy (read+write)", copy_bw / 1e9, "GB/s");
  }
  if (!o.skip_matvec) BenchMatVec(stream, copy_bw);
  if (!o.skip_kv) {
    absl::StatusOr<DummyModelSpec> spec = NamedDummyConfig(o.config);
    if (spec.ok()) {
      const int head_dim = spec->n_embd / spec->n_heads;
      KvShape s{spec->n_layers, (o.prompt + 15) / 16, 2LL * spec->n_kv_heads * 16 * head_dim * 2};
      std::printf("\nKV transfer of a %d-token prompt: %d layers x %d blocks x %lld bytes:\n",
                  o.prompt, s.n_layers, s.n_blocks, static_cast<long long>(s.block_bytes));
#ifdef PDSERVE_HAVE_CUDA_IPC
      BenchKvIpc(s, stream);
#endif
#ifdef PDSERVE_HAVE_NCCL
      BenchKvOneGpu(s, stream);
      if (n_gpus >= 2) BenchKvTwoGpus(s);
#else
      std::printf("(built without NCCL: no NCCL KV figures)\n");
#endif
    }
  }
  WriteJson(o.out_dir, device);
  return 0;
}

}  // namespace
}  // namespace pdserve::gpu_bench

int main(int argc, char** argv) {
  pdserve::gpu_bench::Options o;
  if (const char* out = std::getenv("OUT"); out != nullptr) o.out_dir = out;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto next = [&]() -> std::string {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "gpu_bench: %s needs a value\n", a.c_str());
        std::exit(2);
      }
      return argv[++i];
    };
    if (a == "--config") {
      o.config = next();
    } else if (a == "--model") {
      o.model = next();
    } else if (a == "--prompt") {
      o.prompt = std::max(1, std::atoi(next().c_str()));
    } else if (a == "--decode") {
      o.decode = std::max(4, std::atoi(next().c_str()));
    } else if (a == "--out") {
      o.out_dir = next();
    } else if (a == "--skip-model") {
      o.skip_model = true;
    } else if (a == "--skip-kv") {
      o.skip_kv = true;
    } else if (a == "--skip-matvec") {
      o.skip_matvec = true;
    } else {
      std::fprintf(stderr,
                   "usage: gpu_bench [--config NAME] [--model FILE] [--prompt N] [--decode N] "
                   "[--skip-model] [--skip-matvec] [--skip-kv] [--out DIR]\n");
      return 2;
    }
  }
  return pdserve::gpu_bench::Run(o);
}

#endif  // PDSERVE_HAVE_CUDA
