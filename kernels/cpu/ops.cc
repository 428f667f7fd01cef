#include "kernels/cpu/ops.h"

#include <cmath>

#include "kernels/cpu/isa.h"

namespace pdserve::kernels {
namespace internal {
void SwiGluAvx512(float* y, const float* gate, const float* up, int64_t n);
void SoftmaxAvx512(float* x, int64_t n);
float RmsNormScale(const float* x, int64_t n, float eps);
}  // namespace internal

namespace internal {
float RmsNormScale(const float* x, int64_t n, float eps) {
  float acc[8] = {};
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    for (int j = 0; j < 8; ++j) acc[j] += x[i + j] * x[i + j];
  }
  for (; i < n; ++i) acc[0] += x[i] * x[i];
  const float ss =
      ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
  return 1.0f / std::sqrt(ss / n + eps);
}
}  // namespace internal

void RmsNorm(float* y, const float* x, const float* w, int64_t n, float eps) {
  const float scale = internal::RmsNormScale(x, n, eps);
  for (int64_t i = 0; i < n; ++i) y[i] = x[i] * scale * w[i];
}

void Rope(float* x, int n_heads, int head_dim, int n_rot, const float* cos_sin) {
  for (int h = 0; h < n_heads; ++h) {
    float* v = x + h * head_dim;  // (head_dim)
    for (int i = 0; i < n_rot / 2; ++i) {
      const float c = cos_sin[2 * i], s = cos_sin[2 * i + 1];
      const float a = v[2 * i], b = v[2 * i + 1];
      v[2 * i] = a * c - b * s;
      v[2 * i + 1] = a * s + b * c;
    }
  }
}

void SwiGlu(float* y, const float* gate, const float* up, int64_t n) {
  if (ActiveIsa() == Isa::kAvx512) return internal::SwiGluAvx512(y, gate, up, n);
  for (int64_t i = 0; i < n; ++i) {
    const float g = gate[i];
    y[i] = g / (1.0f + std::exp(-g)) * up[i];
  }
}

void Softmax(float* x, int64_t n) {
  if (ActiveIsa() == Isa::kAvx512) return internal::SoftmaxAvx512(x, n);
  float max = -INFINITY;
  for (int64_t i = 0; i < n; ++i) max = x[i] > max ? x[i] : max;
  float sum = 0;
  for (int64_t i = 0; i < n; ++i) {
    x[i] = std::exp(x[i] - max);
    sum += x[i];
  }
  const float inv = 1.0f / sum;
  for (int64_t i = 0; i < n; ++i) x[i] *= inv;
}

void AddInplace(float* y, const float* x, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] += x[i];
}

void RmsNormRef(float* y, const float* x, const float* w, int64_t n, float eps) {
  double ss = 0;
  for (int64_t i = 0; i < n; ++i) ss += static_cast<double>(x[i]) * x[i];
  const double scale = 1.0 / std::sqrt(ss / n + eps);
  for (int64_t i = 0; i < n; ++i) y[i] = static_cast<float>(x[i] * scale * w[i]);
}

void RopeRef(float* x, int n_heads, int head_dim, int n_rot, const float* cos_sin) {
  for (int h = 0; h < n_heads; ++h) {
    for (int i = 0; i < n_rot; i += 2) {
      const double c = cos_sin[i], s = cos_sin[i + 1];
      const double a = x[h * head_dim + i], b = x[h * head_dim + i + 1];
      x[h * head_dim + i] = static_cast<float>(a * c - b * s);
      x[h * head_dim + i + 1] = static_cast<float>(a * s + b * c);
    }
  }
}

void SwiGluRef(float* y, const float* gate, const float* up, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    const double g = gate[i];
    y[i] = static_cast<float>(g / (1.0 + std::exp(-g)) * up[i]);
  }
}

void SoftmaxRef(float* x, int64_t n) {
  double max = -INFINITY;
  for (int64_t i = 0; i < n; ++i) max = x[i] > max ? x[i] : max;
  double sum = 0;
  for (int64_t i = 0; i < n; ++i) sum += std::exp(x[i] - max);
  for (int64_t i = 0; i < n; ++i) x[i] = static_cast<float>(std::exp(x[i] - max) / sum);
}

}  // namespace pdserve::kernels
