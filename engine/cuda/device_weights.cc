#include "engine/cuda/device_weights.h"

#include <algorithm>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "kernels/cuda/quantize.h"

namespace pdserve::cuda {
namespace {

using kernels::WeightMatrix;

class Uploader {
 public:
  Uploader(DeviceWeights* w, cudaStream_t stream) : w_(w), stream_(stream) {}

  // Copies host bytes into a new device buffer.
  absl::StatusOr<void*> Copy(const void* host, size_t bytes, const std::string& what) {
    PDS_ASSIGN_OR_RETURN(DeviceBuffer buf, DeviceBuffer::Allocate(bytes, what));
    PDS_CUDA_RETURN_IF_ERROR(cudaMemcpy(buf.get(), host, bytes, cudaMemcpyHostToDevice),
                             absl::StrCat("uploading ", what));
    void* p = buf.get();
    w_->buffers.push_back(std::move(buf));
    return p;
  }

  // Rows of several matrices of one type, concatenated, as one product; or
  // one part per matrix when their types differ.
  absl::StatusOr<DeviceLinear> Linear(std::vector<const WeightMatrix*> ms,
                                      const std::string& what) {
    DeviceLinear lin;
    lin.n_in = ms[0]->n_in;
    const bool same_type = std::all_of(
        ms.begin(), ms.end(), [&](const WeightMatrix* m) { return m->type == ms[0]->type; });
    if (same_type) {
      const int64_t row_bytes = kernels::RowBytes(ms[0]->type, lin.n_in);
      int64_t rows = 0;
      for (const WeightMatrix* m : ms) rows += m->n_out;
      std::vector<uint8_t> host;
      if (ms.size() > 1) {
        host.resize(static_cast<size_t>(rows * row_bytes));
        size_t at = 0;
        for (const WeightMatrix* m : ms) {
          std::memcpy(host.data() + at, m->data, m->n_out * row_bytes);
          at += m->n_out * row_bytes;
        }
      }
      PDS_ASSIGN_OR_RETURN(void* d, Copy(ms.size() > 1 ? host.data() : ms[0]->data,
                                         static_cast<size_t>(rows * row_bytes), what));
      lin.parts.push_back({d, nullptr, ms[0]->type, rows, lin.n_in, 0});
      lin.n_out = rows;
      w_->quant_bytes += rows * row_bytes;
    } else {
      for (const WeightMatrix* m : ms) {
        const int64_t bytes = kernels::RowBytes(m->type, m->n_in) * m->n_out;
        PDS_ASSIGN_OR_RETURN(void* d, Copy(m->data, bytes, what));
        lin.parts.push_back({d, nullptr, m->type, m->n_out, m->n_in, lin.n_out});
        lin.n_out += m->n_out;
        w_->quant_bytes += bytes;
      }
    }
    for (const DeviceMatrix& p : lin.parts) {
      w_->max_matrix_elems = std::max(w_->max_matrix_elems, p.n_out * p.n_in);
    }
    return lin;
  }

  absl::Status CacheF16(DeviceMatrix* m, const std::string& what) {
    const size_t bytes = static_cast<size_t>(m->n_out * m->n_in) * 2;
    PDS_ASSIGN_OR_RETURN(DeviceBuffer buf, DeviceBuffer::Allocate(bytes, what + " (f16 copy)"));
    PDS_CUDA_RETURN_IF_ERROR(kernels::cuda::DequantizeToF16(buf.as<__half>(), m->data, m->type,
                                                            m->n_out, m->n_in, stream_),
                             "dequantizing " + what);
    m->f16 = buf.as<__half>();
    w_->f16_bytes += bytes;
    w_->buffers.push_back(std::move(buf));
    return absl::OkStatus();
  }

 private:
  DeviceWeights* w_;
  cudaStream_t stream_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<DeviceWeights>> UploadWeights(const Model& model, F16Weights f16,
                                                             size_t reserve_bytes,
                                                             cudaStream_t stream) {
  const ModelConfig& c = model.config();
  const ModelWeights& mw = model.weights();
  auto w = std::make_unique<DeviceWeights>();
  Uploader up(w.get(), stream);

  // Norms in one buffer: per layer attn then ffn, then the output norm.
  const int64_t E = c.n_embd;
  std::vector<float> norms(static_cast<size_t>((2 * c.n_layers + 1) * E));
  for (int32_t l = 0; l < c.n_layers; ++l) {
    std::memcpy(&norms[(2 * l) * E], mw.layers[l].attn_norm, E * sizeof(float));
    std::memcpy(&norms[(2 * l + 1) * E], mw.layers[l].ffn_norm, E * sizeof(float));
  }
  std::memcpy(&norms[2 * c.n_layers * E], mw.output_norm, E * sizeof(float));
  PDS_ASSIGN_OR_RETURN(void* d_norms, up.Copy(norms.data(), norms.size() * sizeof(float), "norms"));
  const float* nf = static_cast<const float*>(d_norms);
  w->output_norm = nf + 2 * c.n_layers * E;
  PDS_ASSIGN_OR_RETURN(
      void* d_rope,
      up.Copy(model.RopeRow(0), static_cast<size_t>(model.n_ctx()) * c.n_rot * sizeof(float),
              "rope table"));
  w->rope = static_cast<const float*>(d_rope);

  PDS_ASSIGN_OR_RETURN(DeviceLinear embd, up.Linear({&mw.token_embd}, "token_embd"));
  w->token_embd = embd.parts[0];
  if (c.tied_embeddings) {
    w->output = embd;
  } else {
    PDS_ASSIGN_OR_RETURN(w->output, up.Linear({&mw.output}, "output"));
  }
  w->layers.resize(c.n_layers);
  for (int32_t l = 0; l < c.n_layers; ++l) {
    const LayerWeights& lw = mw.layers[l];
    DeviceLayer& d = w->layers[l];
    const std::string p = absl::StrCat("blk.", l, ".");
    d.attn_norm = nf + (2 * l) * E;
    d.ffn_norm = nf + (2 * l + 1) * E;
    PDS_ASSIGN_OR_RETURN(d.qkv, up.Linear({&lw.wq, &lw.wk, &lw.wv}, p + "attn_qkv"));
    PDS_ASSIGN_OR_RETURN(d.wo, up.Linear({&lw.wo}, p + "attn_output"));
    PDS_ASSIGN_OR_RETURN(d.gate_up, up.Linear({&lw.w_gate, &lw.w_up}, p + "ffn_gate_up"));
    PDS_ASSIGN_OR_RETURN(d.down, up.Linear({&lw.w_down}, p + "ffn_down"));
  }

  // cudaMemcpy from pageable memory may return before its DMA finished, on
  // the legacy stream, which the runner's non-blocking stream does not wait
  // for: finish the uploads here.
  PDS_CUDA_RETURN_IF_ERROR(cudaDeviceSynchronize(), "uploading weights");

  // f16 copies for the cuBLAS path.
  int64_t f16_need = 0;
  auto for_each_product = [&](auto fn) -> absl::Status {
    for (DeviceLayer& d : w->layers) {
      for (DeviceLinear* lin : {&d.qkv, &d.wo, &d.gate_up, &d.down}) {
        for (DeviceMatrix& m : lin->parts) PDS_RETURN_IF_ERROR(fn(&m, "layer matrix"));
      }
    }
    for (DeviceMatrix& m : w->output.parts) PDS_RETURN_IF_ERROR(fn(&m, "output"));
    return absl::OkStatus();
  };
  PDS_RETURN_IF_ERROR(for_each_product([&](DeviceMatrix* m, const char*) {
    f16_need += m->n_out * m->n_in * 2;
    return absl::OkStatus();
  }));
  bool cache = f16 == F16Weights::kOn;
  if (f16 == F16Weights::kAuto) {
    size_t free_bytes = 0, total_bytes = 0;
    PDS_CUDA_RETURN_IF_ERROR(cudaMemGetInfo(&free_bytes, &total_bytes), "reading free GPU memory");
    cache =
        free_bytes > reserve_bytes && static_cast<size_t>(f16_need) <= free_bytes - reserve_bytes;
  }
  if (cache) {
    PDS_RETURN_IF_ERROR(
        for_each_product([&](DeviceMatrix* m, const char* what) { return up.CacheF16(m, what); }));
    if (c.tied_embeddings) w->token_embd.f16 = w->output.parts[0].f16;
    PDS_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(stream), "dequantizing weights to f16");
    w->f16_cached = true;
  }
  return w;
}

}  // namespace pdserve::cuda
