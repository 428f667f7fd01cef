// Instruction-set paths of the CPU kernels, chosen at run time from the CPU's
// features; tests and benchmarks may force a lower one.
#pragma once

namespace pdserve::kernels {

enum class Isa {
  kScalar = 0,  // portable C++, any CPU
  kAvx2 = 1,    // AVX2 + FMA + F16C (+ AVX-VNNI when present)
  kAvx512 = 2,  // AVX-512 F/BW/VL/DQ/VNNI
};

const char* IsaName(Isa isa);
// The best path this CPU supports.
Isa DetectIsa();
// The path the kernels use now: DetectIsa() unless SetIsa() lowered it.
Isa ActiveIsa();
// Forces a path for tests and benchmarks; returns false (and changes nothing)
// when the CPU lacks it. Not thread-safe against running kernels.
bool SetIsa(Isa isa);

}  // namespace pdserve::kernels
