// CPU emulation of the CUDA subset pdserve's kernels and runner use, for
// tests on machines without a GPU (include kernels/cuda/cuda_compat.h with
// PDS_CUDA_EMU defined; never in production builds).
//
// Kernels: every block of a launch runs in turn on the calling thread; its
// threads are cooperative fibers that switch only at __syncthreads, warp
// shuffles and __syncwarp. A barrier that not every thread of the block (or
// warp) reaches is reported as a deadlock and aborts, as divergent barriers
// are bugs on a GPU too. Blocks must be whole warps.
//
// Memory: cudaMalloc'd ranges are tracked; kernel pointer arguments and
// cudaMemcpy directions are checked against them, and fresh allocations and
// dynamic shared memory are filled with 0xFF bytes (NaN floats) so that reads
// of memory nobody wrote show up in results. Streams run synchronously.
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <tuple>
#include <type_traits>
#include <utility>

#include "kernels/dtype.h"

// ---- Built-in types -------------------------------------------------------

struct dim3 {
  unsigned x = 1, y = 1, z = 1;
  constexpr dim3(unsigned vx = 1, unsigned vy = 1, unsigned vz = 1) : x(vx), y(vy), z(vz) {}
};
struct uint3 {
  unsigned x, y, z;
};
struct float2 {
  float x, y;
};
struct alignas(16) float4 {
  float x, y, z, w;
};
struct alignas(8) uint2 {
  unsigned x, y;
};
struct alignas(16) uint4 {
  unsigned x, y, z, w;
};
struct alignas(8) int2 {
  int x, y;
};
struct alignas(16) int4 {
  int x, y, z, w;
};
inline float2 make_float2(float x, float y) { return {x, y}; }
inline float4 make_float4(float x, float y, float z, float w) { return {x, y, z, w}; }

// Storage-only half: kernels convert with the intrinsics below.
struct __half {
  uint16_t bits;
};
struct alignas(4) __half2 {
  __half x, y;
};
inline __half __float2half_rn(float f) { return {pdserve::kernels::F32ToF16(f)}; }
inline __half __float2half(float f) { return __float2half_rn(f); }
inline float __half2float(__half h) { return pdserve::kernels::F16ToF32(h.bits); }
inline unsigned short __half_as_ushort(__half h) { return h.bits; }
inline __half __ushort_as_half(unsigned short u) { return {u}; }
struct __nv_bfloat16 {
  uint16_t bits;
};
inline float __bfloat162float(__nv_bfloat16 h) { return pdserve::kernels::BF16ToF32(h.bits); }

// ---- Qualifiers -----------------------------------------------------------

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __noinline__
#define __launch_bounds__(...)
#define __align__(n) alignas(n)
// Blocks run one after another, so one static copy per kernel serves them all.
#define __shared__ static
#define __constant__ static

// ---- Math and bit intrinsics ----------------------------------------------

inline float __expf(float x) { return std::exp(x); }
inline float __logf(float x) { return std::log(x); }
inline float rsqrtf(float x) { return 1.0f / std::sqrt(x); }
inline float __fdividef(float a, float b) { return a / b; }
inline int __float2int_rn(float x) { return static_cast<int>(std::nearbyint(x)); }
inline float __int_as_float(int i) {
  float f;
  std::memcpy(&f, &i, 4);
  return f;
}
inline int __float_as_int(float f) {
  int i;
  std::memcpy(&i, &f, 4);
  return i;
}
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fsub_rn(float a, float b) { return a - b; }
inline float __fdiv_rn(float a, float b) { return a / b; }
// Dot product of the four signed bytes of a and b, plus c.
inline int __dp4a(int a, int b, int c) {
  for (int i = 0; i < 4; ++i) {
    c += static_cast<int8_t>(static_cast<uint32_t>(a) >> (8 * i)) *
         static_cast<int8_t>(static_cast<uint32_t>(b) >> (8 * i));
  }
  return c;
}
template <typename T>
inline T __ldg(const T* p) {
  return *p;
}
// Fibers never interleave inside an operation, so plain updates are atomic.
template <typename T>
inline T atomicAdd(T* p, T v) {
  T old = *p;
  *p = old + v;
  return old;
}
template <typename T>
inline T atomicMax(T* p, T v) {
  T old = *p;
  if (v > old) *p = v;
  return old;
}

// ---- Host runtime API -----------------------------------------------------

enum cudaError_t {
  cudaSuccess = 0,
  cudaErrorInvalidValue = 1,
  cudaErrorMemoryAllocation = 2,
  cudaErrorInitializationError = 3,
  cudaErrorInvalidConfiguration = 9,
  cudaErrorInvalidDevice = 101,
  cudaErrorNoDevice = 100,
  cudaErrorInvalidResourceHandle = 400,
  cudaErrorNotReady = 600,
  cudaErrorLaunchFailure = 719,
  cudaErrorNotSupported = 801,
};
using cudaError = cudaError_t;
enum cudaMemcpyKind {
  cudaMemcpyHostToHost = 0,
  cudaMemcpyHostToDevice = 1,
  cudaMemcpyDeviceToHost = 2,
  cudaMemcpyDeviceToDevice = 3,
  cudaMemcpyDefault = 4,
};
struct CUstream_st;
struct CUevent_st;
using cudaStream_t = CUstream_st*;
using cudaEvent_t = CUevent_st*;
inline constexpr unsigned cudaStreamNonBlocking = 1;
inline constexpr unsigned cudaEventDefault = 0;
inline constexpr unsigned cudaEventDisableTiming = 2;
inline constexpr unsigned cudaEventInterprocess = 4;
inline constexpr unsigned cudaIpcMemLazyEnablePeerAccess = 1;
// CUDA IPC handles (64 opaque bytes, as in the real runtime). The emulation
// puts the exporting process id and the pointer itself in them, so a handle
// opens only in the process that exported it: cross-process IPC cannot be
// emulated (the memory is plain host memory of that process), and
// cudaIpcOpenMemHandle from another process fails with
// cudaErrorInvalidResourceHandle. Tests of the IPC transport run both roles
// in one process; the cross-process test is gpu-labelled.
struct cudaIpcMemHandle_t {
  char reserved[64];
};
struct cudaIpcEventHandle_t {
  char reserved[64];
};
inline constexpr unsigned cudaHostAllocDefault = 0;
enum cudaFuncAttribute { cudaFuncAttributeMaxDynamicSharedMemorySize = 8 };
enum cudaDeviceAttr {
  cudaDevAttrMultiProcessorCount = 16,
  cudaDevAttrMaxSharedMemoryPerBlockOptin = 97,
  cudaDevAttrComputeCapabilityMajor = 75,
  cudaDevAttrComputeCapabilityMinor = 76,
};

struct cudaDeviceProp {
  char name[256];
  size_t totalGlobalMem;
  size_t sharedMemPerBlock;
  size_t sharedMemPerBlockOptin;
  int multiProcessorCount;
  int major;
  int minor;
  int l2CacheSize;
  int pciBusID;
  int pciDeviceID;
  int pciDomainID;
};

const char* cudaGetErrorString(cudaError_t e);
const char* cudaGetErrorName(cudaError_t e);
cudaError_t cudaGetLastError();
cudaError_t cudaPeekAtLastError();
cudaError_t cudaGetDeviceCount(int* n);
cudaError_t cudaSetDevice(int d);
cudaError_t cudaGetDevice(int* d);
cudaError_t cudaGetDeviceProperties(cudaDeviceProp* p, int d);
cudaError_t cudaDeviceGetAttribute(int* v, cudaDeviceAttr a, int d);
cudaError_t cudaMemGetInfo(size_t* free_bytes, size_t* total_bytes);
cudaError_t cudaMalloc(void** p, size_t bytes);
template <typename T>
cudaError_t cudaMalloc(T** p, size_t bytes) {
  return cudaMalloc(reinterpret_cast<void**>(p), bytes);
}
cudaError_t cudaFree(void* p);
cudaError_t cudaMallocHost(void** p, size_t bytes);
template <typename T>
cudaError_t cudaMallocHost(T** p, size_t bytes) {
  return cudaMallocHost(reinterpret_cast<void**>(p), bytes);
}
cudaError_t cudaHostAlloc(void** p, size_t bytes, unsigned flags);
cudaError_t cudaFreeHost(void* p);
cudaError_t cudaMemcpy(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind);
cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind,
                            cudaStream_t stream = nullptr);
cudaError_t cudaMemcpy2DAsync(void* dst, size_t dpitch, const void* src, size_t spitch,
                              size_t width, size_t height, cudaMemcpyKind kind,
                              cudaStream_t stream = nullptr);
cudaError_t cudaMemset(void* p, int value, size_t bytes);
cudaError_t cudaMemsetAsync(void* p, int value, size_t bytes, cudaStream_t stream = nullptr);
cudaError_t cudaStreamCreate(cudaStream_t* s);
cudaError_t cudaStreamCreateWithFlags(cudaStream_t* s, unsigned flags);
cudaError_t cudaStreamDestroy(cudaStream_t s);
cudaError_t cudaStreamSynchronize(cudaStream_t s);
cudaError_t cudaStreamWaitEvent(cudaStream_t s, cudaEvent_t e, unsigned flags = 0);
cudaError_t cudaEventCreate(cudaEvent_t* e);
cudaError_t cudaEventCreateWithFlags(cudaEvent_t* e, unsigned flags);
cudaError_t cudaEventDestroy(cudaEvent_t e);
cudaError_t cudaEventRecord(cudaEvent_t e, cudaStream_t s = nullptr);
cudaError_t cudaEventSynchronize(cudaEvent_t e);
cudaError_t cudaEventQuery(cudaEvent_t e);
cudaError_t cudaEventElapsedTime(float* ms, cudaEvent_t start, cudaEvent_t end);
cudaError_t cudaDeviceSynchronize();
// As the real runtime: a pointer inside an allocation exports the whole
// allocation, and the importer's cudaIpcOpenMemHandle returns its start.
cudaError_t cudaIpcGetMemHandle(cudaIpcMemHandle_t* handle, void* dev_ptr);
cudaError_t cudaIpcOpenMemHandle(void** dev_ptr, cudaIpcMemHandle_t handle, unsigned flags);
cudaError_t cudaIpcCloseMemHandle(void* dev_ptr);
cudaError_t cudaIpcGetEventHandle(cudaIpcEventHandle_t* handle, cudaEvent_t event);
cudaError_t cudaIpcOpenEventHandle(cudaEvent_t* event, cudaIpcEventHandle_t handle);
// The driver API through the runtime's entry-point lookup, for the one
// driver call pdserve makes (cuMemGetAddressRange): the emulation answers it
// from its allocation table; any other symbol is not found.
using CUdeviceptr = unsigned long long;
enum CUresult { CUDA_SUCCESS = 0, CUDA_ERROR_INVALID_VALUE = 1 };
enum cudaDriverEntryPointQueryResult {
  cudaDriverEntryPointSuccess = 0,
  cudaDriverEntryPointSymbolNotFound = 1,
  cudaDriverEntryPointVersionNotSufficent = 2,
};
inline constexpr unsigned long long cudaEnableDefault = 0;
cudaError_t cudaGetDriverEntryPointByVersion(const char* symbol, void** fn, unsigned int version,
                                             unsigned long long flags,
                                             cudaDriverEntryPointQueryResult* status);
namespace pdserve::cuda_emu {
// Dynamic shared memory a kernel may launch with: 48 KiB unless
// cudaFuncSetAttribute(cudaFuncAttributeMaxDynamicSharedMemorySize) raised
// it, as on a GPU (up to 227 KiB on sm_90), where a launch that asks for
// more fails.
inline constexpr int kDefaultDynamicSmem = 48 << 10;
inline constexpr int kMaxDynamicSmem = 227 << 10;
void SetMaxDynamicSmem(const void* kernel, int bytes);
int MaxDynamicSmem(const void* kernel);
}  // namespace pdserve::cuda_emu
template <typename F>
cudaError_t cudaFuncSetAttribute(F* kernel, cudaFuncAttribute attr, int value) {
  if (attr == cudaFuncAttributeMaxDynamicSharedMemorySize) {
    if (value < 0 || value > pdserve::cuda_emu::kMaxDynamicSmem) return cudaErrorInvalidValue;
    pdserve::cuda_emu::SetMaxDynamicSmem(reinterpret_cast<const void*>(kernel), value);
  }
  return cudaSuccess;
}

namespace pdserve::cuda_emu {

// ---- Fibers ---------------------------------------------------------------

// The running fiber's coordinates.
struct ThreadCoords {
  uint3 thread_idx;
  uint3 block_idx;
  dim3 block_dim;
  dim3 grid_dim;
};
const ThreadCoords& Current();
void SyncThreads();
void SyncWarp();
// Exchanges one 64-bit value per lane through the warp; returns lane src's.
uint64_t WarpExchange(uint64_t v, int src_lane);
int LaneId();
void* DynamicSmem();

// Whether p (with `bytes` after it) lies inside one cudaMalloc'd allocation.
bool IsDevicePointer(const void* p, size_t bytes = 1);
// Aborts with a message naming the kernel argument that is not device memory.
[[noreturn]] void BadPointerArg(int index, const void* p);
// Runs body once per thread of every block, then records the launch status.
void RunGrid(dim3 grid, dim3 block, size_t smem_bytes, void (*body)(void*), void* ctx);
// Sets the error a later cudaGetLastError returns (bad launch configuration).
void SetLastError(cudaError_t e);

template <typename T>
void CheckArg(int index, const T& arg) {
  if constexpr (std::is_pointer_v<T>) {
    if (arg != nullptr && !IsDevicePointer(arg)) BadPointerArg(index, arg);
  }
}

template <typename... KArgs>
class Launcher {
 public:
  Launcher(dim3 grid, dim3 block, size_t smem, cudaStream_t, void (*kernel)(KArgs...))
      : grid_(grid), block_(block), smem_(smem), kernel_(kernel) {}

  template <typename... Args>
  void operator()(Args&&... args) {
    static_assert(sizeof...(Args) == sizeof...(KArgs), "kernel argument count");
    if (smem_ > static_cast<size_t>(MaxDynamicSmem(reinterpret_cast<const void*>(kernel_)))) {
      SetLastError(cudaErrorInvalidValue);  // the GPU refuses the launch
      return;
    }
    std::tuple<KArgs...> params(std::forward<Args>(args)...);
    CheckArgs(params, std::index_sequence_for<KArgs...>{});
    struct Ctx {
      void (*kernel)(KArgs...);
      std::tuple<KArgs...>* params;
    } ctx{kernel_, &params};
    RunGrid(
        grid_, block_, smem_,
        [](void* p) {
          Ctx* c = static_cast<Ctx*>(p);
          std::tuple<KArgs...> copy = *c->params;  // each thread gets its own parameters
          std::apply(c->kernel, copy);
        },
        &ctx);
  }

 private:
  template <size_t... I>
  static void CheckArgs(const std::tuple<KArgs...>& t, std::index_sequence<I...>) {
    (CheckArg(static_cast<int>(I), std::get<I>(t)), ...);
  }
  dim3 grid_, block_;
  size_t smem_;
  void (*kernel_)(KArgs...);
};
template <typename... KArgs>
Launcher(dim3, dim3, size_t, cudaStream_t, void (*)(KArgs...)) -> Launcher<KArgs...>;

template <typename T>
T ShflSync(T v, int src_lane) {
  static_assert(sizeof(T) <= 8 && std::is_trivially_copyable_v<T>);
  uint64_t bits = 0;
  std::memcpy(&bits, &v, sizeof(T));
  bits = WarpExchange(bits, src_lane);
  T r;
  std::memcpy(&r, &bits, sizeof(T));
  return r;
}

}  // namespace pdserve::cuda_emu

#define threadIdx (::pdserve::cuda_emu::Current().thread_idx)
#define blockIdx (::pdserve::cuda_emu::Current().block_idx)
#define blockDim (::pdserve::cuda_emu::Current().block_dim)
#define gridDim (::pdserve::cuda_emu::Current().grid_dim)
#define warpSize 32
#define __syncthreads() ::pdserve::cuda_emu::SyncThreads()

inline void __syncwarp(unsigned = 0xffffffffu) { ::pdserve::cuda_emu::SyncWarp(); }
template <typename T>
T __shfl_xor_sync(unsigned, T v, int lane_mask, int width = 32) {
  const int lane = ::pdserve::cuda_emu::LaneId();
  const int src = (lane & ~(width - 1)) | ((lane ^ lane_mask) & (width - 1));
  return ::pdserve::cuda_emu::ShflSync(v, src);
}
template <typename T>
T __shfl_sync(unsigned, T v, int src_lane, int width = 32) {
  const int lane = ::pdserve::cuda_emu::LaneId();
  return ::pdserve::cuda_emu::ShflSync(v, (lane & ~(width - 1)) + (src_lane & (width - 1)));
}
template <typename T>
T __shfl_down_sync(unsigned, T v, unsigned delta, int width = 32) {
  const int lane = ::pdserve::cuda_emu::LaneId();
  const int seg = lane & (width - 1);
  const int src = seg + static_cast<int>(delta) < width ? lane + static_cast<int>(delta) : lane;
  return ::pdserve::cuda_emu::ShflSync(v, src);
}
