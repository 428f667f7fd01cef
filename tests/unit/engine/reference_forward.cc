#include "tests/unit/engine/reference_forward.h"

#include <cmath>

#include "kernels/quant.h"

namespace pdserve::testing {
namespace {

using Matrix = std::vector<float>;  // row-major (n_out, n_in)

Matrix Dequant(const kernels::WeightMatrix& w) {
  Matrix m(static_cast<size_t>(w.n_out * w.n_in));
  const int64_t rb = kernels::RowBytes(w.type, w.n_in);
  for (int64_t r = 0; r < w.n_out; ++r) {
    kernels::DequantizeRow(m.data() + r * w.n_in, static_cast<const uint8_t*>(w.data) + r * rb,
                           w.type, w.n_in);
  }
  return m;
}

std::vector<float> MatVec(const Matrix& m, int64_t n_out, int64_t n_in,
                          const std::vector<float>& x) {
  std::vector<float> y(n_out);
  for (int64_t r = 0; r < n_out; ++r) {
    double acc = 0;
    for (int64_t k = 0; k < n_in; ++k) acc += static_cast<double>(m[r * n_in + k]) * x[k];
    y[r] = static_cast<float>(acc);
  }
  return y;
}

std::vector<float> RmsNorm(const std::vector<float>& x, const float* w, float eps) {
  double ss = 0;
  for (float v : x) ss += static_cast<double>(v) * v;
  const double scale = 1.0 / std::sqrt(ss / x.size() + eps);
  std::vector<float> y(x.size());
  for (size_t i = 0; i < x.size(); ++i) y[i] = static_cast<float>(x[i] * scale * w[i]);
  return y;
}

// Adjacent-pair rotation, angle pos * base^(-2i/n_rot).
void Rope(std::vector<float>& v, int n_heads, int head_dim, int n_rot, int pos,
          const Model& model) {
  const float* cs = model.RopeRow(pos);
  for (int h = 0; h < n_heads; ++h) {
    for (int i = 0; i < n_rot / 2; ++i) {
      float& a = v[h * head_dim + 2 * i];
      float& b = v[h * head_dim + 2 * i + 1];
      const double c = cs[2 * i], s = cs[2 * i + 1];
      const double na = a * c - b * s, nb = a * s + b * c;
      a = static_cast<float>(na);
      b = static_cast<float>(nb);
    }
  }
}

}  // namespace

std::vector<std::vector<float>> ReferenceForward(const Model& model,
                                                 const std::vector<TokenId>& tokens) {
  const ModelConfig& c = model.config();
  const ModelWeights& w = model.weights();
  const int n = static_cast<int>(tokens.size());
  const int E = c.n_embd, HD = c.head_dim, QD = c.q_dim(), KVD = c.kv_dim();
  const Matrix embd = Dequant(w.token_embd);
  const Matrix out = Dequant(w.output);

  std::vector<std::vector<float>> x(n, std::vector<float>(E));
  for (int t = 0; t < n; ++t) {
    std::copy(embd.begin() + static_cast<int64_t>(tokens[t]) * E,
              embd.begin() + static_cast<int64_t>(tokens[t] + 1) * E, x[t].begin());
  }
  for (int l = 0; l < c.n_layers; ++l) {
    const LayerWeights& lw = w.layers[l];
    const Matrix wq = Dequant(lw.wq), wk = Dequant(lw.wk), wv = Dequant(lw.wv), wo = Dequant(lw.wo);
    const Matrix wg = Dequant(lw.w_gate), wu = Dequant(lw.w_up), wd = Dequant(lw.w_down);
    std::vector<std::vector<float>> q(n), k(n), v(n);
    for (int t = 0; t < n; ++t) {
      const std::vector<float> xn = RmsNorm(x[t], lw.attn_norm, c.rms_eps);
      q[t] = MatVec(wq, QD, E, xn);
      k[t] = MatVec(wk, KVD, E, xn);
      v[t] = MatVec(wv, KVD, E, xn);
      Rope(q[t], c.n_heads, HD, c.n_rot, t, model);
      Rope(k[t], c.n_kv_heads, HD, c.n_rot, t, model);
    }
    const int group = c.n_heads / c.n_kv_heads;
    for (int t = 0; t < n; ++t) {
      std::vector<float> att(QD, 0.0f);
      for (int h = 0; h < c.n_heads; ++h) {
        const int kvh = h / group;
        std::vector<double> s(t + 1);
        double mx = -1e300;
        for (int j = 0; j <= t; ++j) {
          double dot = 0;
          for (int d = 0; d < HD; ++d) {
            // The cache stores K and V in f16: round like it does.
            const float kj = kernels::F16ToF32(kernels::F32ToF16(k[j][kvh * HD + d]));
            dot += static_cast<double>(q[t][h * HD + d]) * kj;
          }
          s[j] = dot / std::sqrt(static_cast<double>(HD));
          mx = std::max(mx, s[j]);
        }
        double sum = 0;
        for (double& e : s) sum += (e = std::exp(e - mx));
        for (int d = 0; d < HD; ++d) {
          double acc = 0;
          for (int j = 0; j <= t; ++j) {
            acc += s[j] / sum * kernels::F16ToF32(kernels::F32ToF16(v[j][kvh * HD + d]));
          }
          att[h * HD + d] = static_cast<float>(acc);
        }
      }
      const std::vector<float> o = MatVec(wo, E, QD, att);
      for (int i = 0; i < E; ++i) x[t][i] += o[i];
      const std::vector<float> xn = RmsNorm(x[t], lw.ffn_norm, c.rms_eps);
      std::vector<float> g = MatVec(wg, c.n_ff, E, xn);
      const std::vector<float> u = MatVec(wu, c.n_ff, E, xn);
      for (int i = 0; i < c.n_ff; ++i)
        g[i] = static_cast<float>(g[i] / (1.0 + std::exp(-g[i])) * u[i]);
      const std::vector<float> d = MatVec(wd, E, c.n_ff, g);
      for (int i = 0; i < E; ++i) x[t][i] += d[i];
    }
  }
  std::vector<std::vector<float>> logits(n);
  for (int t = 0; t < n; ++t) {
    logits[t] = MatVec(out, c.n_vocab, E, RmsNorm(x[t], w.output_norm, c.rms_eps));
  }
  return logits;
}

}  // namespace pdserve::testing
