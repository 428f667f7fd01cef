// top1_agreement_bench: pdserve's side of bench/top1_agreement.sh. Runs a
// model teacher-forced over the token chunks of a llama-perplexity logits
// file (`llama-perplexity --kl-divergence-base FILE` without
// --kl-divergence writes one), so pdserve sees exactly the tokens llama.cpp
// saw, and scores its logits against that file's log-probabilities the way
// `llama-perplexity --kl-divergence` does: the same positions (the second
// half of each chunk), the same "Same top p" (argmax of the model's logits
// equals the argmax of the base's stored log-probabilities) and the same
// mean KL divergence. With --write it saves its own log-probabilities in that
// format, so llama-perplexity can score llama.cpp against pdserve's logits.
//
// Usage: top1_agreement_bench --model M.gguf --tokens-from F.kld
//                             [--base B.kld]... [--write OUT.kld]
//                             [--threads N] [--chunks N] [--kv-dtype f16|f32]
// --kv-dtype: the KV cache's type (default f16, pdserve's default; the F32
// truth runs use f32, as llama-perplexity's run with -ctk f32 -ctv f32).
// Prints one line per base:
//   top1_agreement: base=B.kld same_top=N count=M same_top_pct=P unc_pct=U kld_mean=K
// and one line for the model's own perplexity on the scored positions.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "engine/backend.h"
#include "engine/forward.h"
#include "engine/kv_cache.h"
#include "engine/model.h"
#include "engine/tokenizer/tokenizer.h"
#include "kernels/cpu/attention.h"
#include "kernels/cpu/thread_pool.h"
#include "kernels/dtype.h"

namespace pdserve {
namespace {

struct Flags {
  std::string model, tokens_from, write;
  std::vector<std::string> bases;
  int threads = 0, chunks = 0;
  bool kv_f32 = false;
};

// llama.cpp's logits file (tools/perplexity/perplexity.cpp): "_logits_",
// n_ctx (u32), n_vocab (i32), n_chunk (i32), tokens (i32, n_chunk * n_ctx),
// then for each chunk the rows of positions n_ctx/2 .. n_ctx-2, each nv u16:
// two floats (scale, min_log_prob), then one u16 q per vocabulary entry with
// log p = scale * q + min_log_prob.
struct LogitsFile {
  std::string path;
  uint32_t n_ctx = 0;
  int32_t n_vocab = 0, n_chunk = 0;
  std::vector<int32_t> tokens;  // (n_chunk, n_ctx)
  std::ifstream in;             // at the next chunk's rows

  int32_t first() const { return static_cast<int32_t>(n_ctx / 2); }
  int32_t rows_per_chunk() const { return static_cast<int32_t>(n_ctx) - 1 - first(); }
  int32_t nv() const { return 2 * ((n_vocab + 1) / 2) + 4; }
};

constexpr char kMagic[8] = {'_', 'l', 'o', 'g', 'i', 't', 's', '_'};

absl::StatusOr<std::unique_ptr<LogitsFile>> OpenLogitsFile(const std::string& path) {
  auto f = std::make_unique<LogitsFile>();
  f->path = path;
  f->in.open(path, std::ios::binary);
  if (!f->in) return absl::NotFoundError(absl::StrCat(path, ": cannot open"));
  char magic[8];
  if (!f->in.read(magic, 8) || std::memcmp(magic, kMagic, 8) != 0) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": not a llama-perplexity logits file"));
  }
  f->in.read(reinterpret_cast<char*>(&f->n_ctx), sizeof(f->n_ctx));
  f->in.read(reinterpret_cast<char*>(&f->n_vocab), sizeof(f->n_vocab));
  f->in.read(reinterpret_cast<char*>(&f->n_chunk), sizeof(f->n_chunk));
  if (!f->in) return absl::InvalidArgumentError(absl::StrCat(path, ": truncated header"));
  if (f->n_ctx < 4 || f->n_ctx > (1u << 20) || f->n_vocab < 2 || f->n_vocab > (1 << 24) ||
      f->n_chunk < 1 || f->n_chunk > (1 << 20)) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": implausible header n_ctx=", f->n_ctx,
                                                   " n_vocab=", f->n_vocab,
                                                   " n_chunk=", f->n_chunk));
  }
  const uint64_t n_tokens = static_cast<uint64_t>(f->n_ctx) * f->n_chunk;
  const uint64_t expect =
      20 + 4 * n_tokens + static_cast<uint64_t>(f->n_chunk) * f->rows_per_chunk() * f->nv() * 2;
  std::error_code ec;
  const uint64_t size = std::filesystem::file_size(path, ec);
  if (ec || size != expect) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": ", size, " bytes, the header implies ", expect));
  }
  f->tokens.resize(n_tokens);
  f->in.read(reinterpret_cast<char*>(f->tokens.data()),
             static_cast<std::streamsize>(n_tokens * sizeof(int32_t)));
  if (!f->in) return absl::InvalidArgumentError(absl::StrCat(path, ": truncated tokens"));
  for (int32_t t : f->tokens) {
    if (t < 0 || t >= f->n_vocab) {
      return absl::InvalidArgumentError(
          absl::StrCat(path, ": token ", t, " outside the vocabulary"));
    }
  }
  return f;
}

absl::Status ReadChunk(LogitsFile& f, std::vector<uint16_t>* rows) {
  rows->resize(static_cast<size_t>(f.rows_per_chunk()) * f.nv());
  if (!f.in.read(reinterpret_cast<char*>(rows->data()),
                 static_cast<std::streamsize>(rows->size() * sizeof(uint16_t)))) {
    return absl::InvalidArgumentError(absl::StrCat(f.path, ": truncated log-probabilities"));
  }
  return absl::OkStatus();
}

// llama.cpp's nearest_int: round to nearest, ties to even, for |v| < 2^22.
int NearestInt(float v) {
  float x = v + 12582912.f;
  int32_t i;
  std::memcpy(&i, &x, sizeof(i));
  return (i & 0x007fffff) - 0x00400000;
}

// One row's log-probabilities compressed as llama-perplexity stores them
// (its log_softmax writing log_prob): out has nv u16.
void CompressRow(const float* logits, int32_t n_vocab, uint16_t* out) {
  float max_logit = logits[0], min_logit = logits[0];
  for (int32_t i = 1; i < n_vocab; ++i) {
    max_logit = std::max(max_logit, logits[i]);
    min_logit = std::min(min_logit, logits[i]);
  }
  min_logit = std::max(min_logit, max_logit - 16);
  double sum_exp = 0;
  for (int32_t i = 0; i < n_vocab; ++i) sum_exp += std::exp(logits[i] - max_logit);
  const float log_sum_exp = static_cast<float>(std::log(sum_exp));
  const float min_log_prob = min_logit - max_logit - log_sum_exp;
  const float scale = (max_logit - min_logit) / 65535.f;
  std::memcpy(out, &scale, sizeof(float));
  std::memcpy(out + 2, &min_log_prob, sizeof(float));
  uint16_t* q = out + 4;
  if (scale != 0) {
    const float inv_scale = 1 / scale;
    for (int32_t i = 0; i < n_vocab; ++i) {
      q[i] = logits[i] > min_logit
                 ? static_cast<uint16_t>(NearestInt(inv_scale * (logits[i] - min_logit)))
                 : 0;
    }
  } else {
    std::fill(q, q + n_vocab, uint16_t{0});
  }
}

struct Agreement {
  int64_t same_top = 0, count = 0;
  double sum_kld = 0;
};

// The comparison llama-perplexity --kl-divergence makes for one position
// (its log_softmax against base_log_prob): top-1 of the model's logits (the
// first maximum) against the first maximum of the base's stored log-probs,
// and KL(base || model) over the base's entries above e^-16.
void Compare(const float* logits, const uint16_t* base_row, int32_t n_vocab, Agreement* a) {
  float max_logit = logits[0];
  int32_t imax = 0;
  for (int32_t i = 1; i < n_vocab; ++i) {
    if (logits[i] > max_logit) {
      max_logit = logits[i];
      imax = i;
    }
  }
  double sum_exp = 0;
  for (int32_t i = 0; i < n_vocab; ++i) sum_exp += std::exp(logits[i] - max_logit);
  const float log_norm = max_logit + static_cast<float>(std::log(sum_exp));
  float scale, min_log_prob;
  std::memcpy(&scale, base_row, sizeof(float));
  std::memcpy(&min_log_prob, base_row + 2, sizeof(float));
  const uint16_t* q = base_row + 4;
  double kld = 0;
  int32_t imax_base = 0;
  float base_max = 0;
  for (int32_t i = 0; i < n_vocab; ++i) {
    const float lp_base = scale * q[i] + min_log_prob;
    if (i == 0 || lp_base > base_max) {
      base_max = lp_base;
      imax_base = i;
    }
    if (lp_base > -16.f) kld += std::exp(lp_base) * (lp_base - logits[i] + log_norm);
  }
  a->sum_kld += kld;
  a->same_top += imax == imax_base;
  ++a->count;
}

int Fail(const std::string& why) {
  std::fprintf(stderr, "top1_agreement_bench: %s\n", why.c_str());
  return 2;
}

int Run(const Flags& f) {
  if (f.model.empty() || f.tokens_from.empty())
    return Fail("--model and --tokens-from are required");
  absl::StatusOr<std::unique_ptr<LogitsFile>> tok = OpenLogitsFile(f.tokens_from);
  if (!tok.ok()) return Fail(tok.status().ToString());
  const LogitsFile& src = **tok;
  std::vector<std::unique_ptr<LogitsFile>> bases;
  for (const std::string& path : f.bases) {
    absl::StatusOr<std::unique_ptr<LogitsFile>> b = OpenLogitsFile(path);
    if (!b.ok()) return Fail(b.status().ToString());
    if ((*b)->n_ctx != src.n_ctx || (*b)->n_vocab != src.n_vocab || (*b)->tokens != src.tokens) {
      return Fail(absl::StrCat(path, ": other tokens, context or vocabulary than ", src.path));
    }
    bases.push_back(std::move(*b));
  }
  absl::StatusOr<std::unique_ptr<Model>> model = Model::Load(f.model);
  if (!model.ok()) return Fail(model.status().ToString());
  const ModelConfig& c = (*model)->config();
  if (c.n_vocab != src.n_vocab) {
    return Fail(absl::StrCat("the model has ", c.n_vocab, " tokens, ", src.path, " ", src.n_vocab));
  }
  const int32_t n_ctx = static_cast<int32_t>(src.n_ctx);
  if (n_ctx > (*model)->n_ctx()) return Fail("the logits file's context exceeds the model's");
  const int32_t n_chunk = f.chunks > 0 ? std::min(f.chunks, src.n_chunk) : src.n_chunk;
  const int32_t first = src.first(), n_rows = src.rows_per_chunk();
  const Tokenizer& tokenizer = (*model)->tokenizer();
  const bool add_bos = tokenizer.add_bos() && tokenizer.bos_id() >= 0;

  const int threads = f.threads > 0
                          ? f.threads
                          : std::max(1, static_cast<int>(std::thread::hardware_concurrency()));
  kernels::ThreadPool pool(threads);
  absl::StatusOr<std::unique_ptr<Backend>> backend = CreateBackend("cpu");
  if (!backend.ok()) return Fail(backend.status().ToString());
  KvCacheConfig kc;
  kc.n_layers = c.n_layers;
  kc.n_kv_heads = c.n_kv_heads;
  kc.head_dim = c.head_dim;
  kc.block_size = 16;
  kc.dtype = f.kv_f32 ? kernels::DType::kF32 : kernels::DType::kF16;
  kc.n_blocks = (n_ctx + kc.block_size - 1) / kc.block_size;
  kc.prefix_cache = false;
  absl::StatusOr<std::unique_ptr<KvCache>> cache = KvCache::Create(kc, (*backend)->kv_allocator());
  if (!cache.ok()) return Fail(cache.status().ToString());
  absl::StatusOr<std::unique_ptr<Runner>> runner =
      (*backend)->CreateRunner(model->get(), cache->get(), &pool, n_ctx, n_rows);
  if (!runner.ok()) return Fail(runner.status().ToString());
  std::vector<int32_t> table(kc.n_blocks);
  for (int32_t i = 0; i < kc.n_blocks; ++i) table[i] = i;

  std::ofstream out;
  if (!f.write.empty()) {
    out.open(f.write, std::ios::binary);
    out.write(kMagic, 8);
    out.write(reinterpret_cast<const char*>(&src.n_ctx), sizeof(src.n_ctx));
    out.write(reinterpret_cast<const char*>(&src.n_vocab), sizeof(src.n_vocab));
    out.write(reinterpret_cast<const char*>(&n_chunk), sizeof(n_chunk));
    out.write(reinterpret_cast<const char*>(src.tokens.data()),
              static_cast<std::streamsize>(static_cast<size_t>(n_chunk) * n_ctx * sizeof(int32_t)));
    if (!out) return Fail("cannot write " + f.write);
  }

  std::vector<Agreement> agree(bases.size());
  std::vector<float> logits(static_cast<size_t>(n_rows) * c.n_vocab);  // (n_rows, n_vocab)
  std::vector<uint16_t> base_rows, out_rows(static_cast<size_t>(n_rows) * src.nv());
  double sum_nll = 0;
  const auto t0 = std::chrono::steady_clock::now();
  for (int32_t chunk = 0; chunk < n_chunk; ++chunk) {
    const int32_t* chunk_tokens = src.tokens.data() + static_cast<size_t>(chunk) * n_ctx;
    ForwardBatch batch;
    batch.tokens.assign(chunk_tokens, chunk_tokens + n_ctx);
    if (add_bos) batch.tokens[0] = tokenizer.bos_id();  // as llama-perplexity does
    kernels::AttnSeq seq;
    seq.block_table = table.data();
    seq.n_past = 0;
    seq.n_new = n_ctx;
    seq.row0 = 0;
    batch.seqs.push_back(seq);
    for (int32_t r = first; r < first + n_rows; ++r) batch.logit_rows.push_back(r);
    (*runner)->Forward(batch, logits.data(), nullptr);
    for (int32_t r = 0; r < n_rows; ++r) {
      const float* row = logits.data() + static_cast<size_t>(r) * c.n_vocab;
      float max_logit = row[0];
      for (int32_t v = 1; v < c.n_vocab; ++v) max_logit = std::max(max_logit, row[v]);
      double sum_exp = 0;
      for (int32_t v = 0; v < c.n_vocab; ++v) sum_exp += std::exp(row[v] - max_logit);
      sum_nll += max_logit + std::log(sum_exp) - row[chunk_tokens[first + r + 1]];
    }
    for (size_t b = 0; b < bases.size(); ++b) {
      if (absl::Status s = ReadChunk(*bases[b], &base_rows); !s.ok()) return Fail(s.ToString());
      for (int32_t r = 0; r < n_rows; ++r) {
        Compare(logits.data() + static_cast<size_t>(r) * c.n_vocab,
                base_rows.data() + static_cast<size_t>(r) * src.nv(), c.n_vocab, &agree[b]);
      }
    }
    if (out.is_open()) {
      for (int32_t r = 0; r < n_rows; ++r) {
        CompressRow(logits.data() + static_cast<size_t>(r) * c.n_vocab, c.n_vocab,
                    out_rows.data() + static_cast<size_t>(r) * src.nv());
      }
      out.write(reinterpret_cast<const char*>(out_rows.data()),
                static_cast<std::streamsize>(out_rows.size() * sizeof(uint16_t)));
      if (!out) return Fail("cannot write " + f.write);
    }
  }
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  const int64_t count = static_cast<int64_t>(n_chunk) * n_rows;
  std::printf(
      "top1_agreement: model=%s chunks=%d n_ctx=%d scored=%lld ppl=%.4f threads=%d seconds=%.1f\n",
      f.model.c_str(), n_chunk, n_ctx, static_cast<long long>(count),
      std::exp(sum_nll / static_cast<double>(count)), threads, seconds);
  for (size_t b = 0; b < bases.size(); ++b) {
    const Agreement& a = agree[b];
    const double p = static_cast<double>(a.same_top) / static_cast<double>(a.count);
    const double unc = a.count > 1 ? std::sqrt(p * (1 - p) / static_cast<double>(a.count - 1)) : 0;
    std::printf(
        "top1_agreement: base=%s same_top=%lld count=%lld same_top_pct=%.3f unc_pct=%.3f "
        "kld_mean=%.6f\n",
        bases[b]->path.c_str(), static_cast<long long>(a.same_top), static_cast<long long>(a.count),
        100 * p, 100 * unc, a.sum_kld / static_cast<double>(a.count));
  }
  if (out.is_open()) {
    out.close();
    if (!out) return Fail("cannot write " + f.write);
  }
  return 0;
}

}  // namespace
}  // namespace pdserve

int main(int argc, char** argv) {
  pdserve::Flags f;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto next = [&]() -> std::string {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "top1_agreement_bench: %s needs a value\n", a.c_str());
        std::exit(2);
      }
      return argv[++i];
    };
    if (a == "--model") {
      f.model = next();
    } else if (a == "--tokens-from") {
      f.tokens_from = next();
    } else if (a == "--base") {
      f.bases.push_back(next());
    } else if (a == "--write") {
      f.write = next();
    } else if (a == "--threads") {
      f.threads = std::atoi(next().c_str());
    } else if (a == "--chunks") {
      f.chunks = std::atoi(next().c_str());
    } else if (a == "--kv-dtype") {
      const std::string v = next();
      if (v != "f16" && v != "f32") {
        std::fprintf(stderr, "top1_agreement_bench: --kv-dtype is f16 or f32\n");
        return 2;
      }
      f.kv_f32 = v == "f32";
    } else {
      std::fprintf(stderr, "top1_agreement_bench: unknown flag %s (see the header)\n", a.c_str());
      return 2;
    }
  }
  return pdserve::Run(f);
}
