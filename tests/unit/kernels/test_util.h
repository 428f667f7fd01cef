// Shared helpers of the kernel tests.
#pragma once

#include <cmath>
#include <cstdint>
#include <random>
#include <vector>

#include "kernels/cpu/isa.h"

namespace pdserve::kernels::testing {

inline std::vector<float> RandomVector(int64_t n, uint32_t seed, float stddev = 1.0f) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist(0.0f, stddev);
  std::vector<float> v(n);
  for (float& x : v) x = dist(rng);
  return v;
}

// Normalized mean squared error: Σ(a-b)² / Σb².
inline double Nmse(const float* a, const float* b, int64_t n) {
  double num = 0, den = 0;
  for (int64_t i = 0; i < n; ++i) {
    num += (static_cast<double>(a[i]) - b[i]) * (static_cast<double>(a[i]) - b[i]);
    den += static_cast<double>(b[i]) * b[i];
  }
  return den > 0 ? num / den : num;
}

// Max |a-b| relative to max |b|.
inline double MaxRelErr(const float* a, const float* b, int64_t n) {
  double num = 0, den = 0;
  for (int64_t i = 0; i < n; ++i) {
    num = std::fmax(num, std::fabs(static_cast<double>(a[i]) - b[i]));
    den = std::fmax(den, std::fabs(static_cast<double>(b[i])));
  }
  return den > 0 ? num / den : num;
}

// Every ISA path this CPU can run, scalar first.
inline std::vector<Isa> SupportedIsas() {
  std::vector<Isa> isas;
  for (Isa isa : {Isa::kScalar, Isa::kAvx2, Isa::kAvx512}) {
    if (static_cast<int>(isa) <= static_cast<int>(DetectIsa())) isas.push_back(isa);
  }
  return isas;
}

// Forces an ISA for the scope of a test, restoring the best one after.
class ScopedIsa {
 public:
  explicit ScopedIsa(Isa isa) { SetIsa(isa); }
  ~ScopedIsa() { SetIsa(DetectIsa()); }
};

}  // namespace pdserve::kernels::testing
