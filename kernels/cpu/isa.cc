#include "kernels/cpu/isa.h"

#include <atomic>
#include <cstdint>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <cpuid.h>
#endif

namespace pdserve::kernels {
namespace {

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
// CPUID and XGETBV directly: __builtin_cpu_supports lacks "f16c" and
// "avx512vnni" in some compilers (clang 14), and the OS must also save the
// wider registers (XCR0).
bool CpuHasAvx2(uint32_t* ebx7, uint32_t* ecx7) {
  uint32_t a = 0, b = 0, c = 0, d = 0;
  if (!__get_cpuid(1, &a, &b, &c, &d)) return false;
  const bool fma = c & (1u << 12), osxsave = c & (1u << 27), avx = c & (1u << 28),
             f16c = c & (1u << 29);
  if (!(fma && osxsave && avx && f16c)) return false;
  uint32_t xcr0_lo, xcr0_hi;
  __asm__("xgetbv" : "=a"(xcr0_lo), "=d"(xcr0_hi) : "c"(0));
  if ((xcr0_lo & 0x6) != 0x6) return false;  // XMM and YMM state
  if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return false;
  *ebx7 = b;
  *ecx7 = c;
  return (b & (1u << 5)) != 0;  // AVX2
}

Isa Detect() {
  uint32_t b = 0, c = 0;
  if (!CpuHasAvx2(&b, &c)) return Isa::kScalar;
  uint32_t xcr0_lo, xcr0_hi;
  __asm__("xgetbv" : "=a"(xcr0_lo), "=d"(xcr0_hi) : "c"(0));
  const bool os_zmm = (xcr0_lo & 0xE0) == 0xE0;  // opmask and ZMM state
  const bool f = b & (1u << 16), dq = b & (1u << 17), bw = b & (1u << 30), vl = b & (1u << 31);
  const bool vnni = c & (1u << 11);
  if (os_zmm && f && dq && bw && vl && vnni) return Isa::kAvx512;
  return Isa::kAvx2;
}
#else
Isa Detect() { return Isa::kScalar; }
#endif

std::atomic<int>& Active() {
  static std::atomic<int> active{static_cast<int>(DetectIsa())};
  return active;
}

}  // namespace

const char* IsaName(Isa isa) {
  switch (isa) {
    case Isa::kScalar:
      return "scalar";
    case Isa::kAvx2:
      return "avx2";
    case Isa::kAvx512:
      return "avx512";
  }
  return "?";
}

Isa DetectIsa() {
  static const Isa detected = Detect();
  return detected;
}

Isa ActiveIsa() { return static_cast<Isa>(Active().load(std::memory_order_relaxed)); }

bool SetIsa(Isa isa) {
  if (static_cast<int>(isa) > static_cast<int>(DetectIsa())) return false;
  Active().store(static_cast<int>(isa), std::memory_order_relaxed);
  return true;
}

}  // namespace pdserve::kernels
