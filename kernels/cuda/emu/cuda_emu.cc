// CPU emulation of the CUDA subset pdserve uses; see cuda_emu.h.
#include "kernels/cuda/emu/cuda_emu.h"

#if defined(__x86_64__) && !defined(__SANITIZE_ADDRESS__)
#define PDS_EMU_FAST_SWITCH 1
#else
#define PDS_EMU_FAST_SWITCH 0
#include <ucontext.h>
#endif

// ThreadSanitizer keeps per-thread state on the stack it sees: each fiber
// switch must be announced (its fiber API), or TSan crashes in its own
// runtime on the first access after a switch.
#if defined(__SANITIZE_THREAD__)
#define PDS_EMU_TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define PDS_EMU_TSAN 1
#endif
#endif
#ifndef PDS_EMU_TSAN
#define PDS_EMU_TSAN 0
#endif
#if PDS_EMU_TSAN
#include <sanitizer/tsan_interface.h>
#endif

#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <memory>
#include <mutex>
#include <numeric>
#include <random>
#include <vector>

namespace pdserve::cuda_emu {
namespace {

constexpr size_t kStackBytes = 256 << 10;
constexpr size_t kEmulatedDeviceBytes = size_t{16} << 30;

[[noreturn]] void Die(const char* what) {
  std::fprintf(stderr, "cuda_emu: %s\n", what);
  std::fflush(stderr);
  std::abort();
}

// ---- Memory tracking --------------------------------------------------------

std::mutex& MemMu() {
  static std::mutex mu;
  return mu;
}
std::map<uintptr_t, size_t>& DeviceAllocs() {  // start -> bytes
  static std::map<uintptr_t, size_t> m;
  return m;
}
size_t& DeviceBytesInUse() {
  static size_t n = 0;
  return n;
}

thread_local cudaError_t g_last_error = cudaSuccess;

cudaError_t Record(cudaError_t e) {
  if (e != cudaSuccess) g_last_error = e;
  return e;
}

// ---- Fibers -----------------------------------------------------------------

enum class FiberState { kReady, kBlockBarrier, kWarpBarrier, kDone };

struct Fiber {
#if PDS_EMU_FAST_SWITCH
  void* sp = nullptr;  // saved stack pointer while switched out
#else
  ucontext_t ctx;
#endif
  ThreadCoords coords;
  int linear = 0;
  FiberState state = FiberState::kReady;
  void* tsan = nullptr;  // TSan's fiber (PDS_EMU_TSAN), one per launch
};

struct BlockRun {
  std::vector<Fiber> fibers;
#if PDS_EMU_FAST_SWITCH
  void* scheduler_sp = nullptr;
#else
  ucontext_t scheduler;
#endif
  void* tsan_scheduler = nullptr;  // the launching thread, as TSan knows it
  void (*body)(void*) = nullptr;
  void* body_ctx = nullptr;
  int block_arrived = 0;
  std::vector<int> warp_arrived;
  std::vector<uint64_t> warp_slots;
  std::vector<char> smem;
};

#if PDS_EMU_FAST_SWITCH
// Saves the callee-saved registers on the current stack, stores its pointer
// in *save_sp, and resumes the stack load_sp (System V x86-64): a fiber
// switch without ucontext's signal-mask system calls.
extern "C" void pds_emu_swap(void** save_sp, void* load_sp);
asm(R"(
  .text
  .globl pds_emu_swap
  .type pds_emu_swap, @function
pds_emu_swap:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
  .size pds_emu_swap, .-pds_emu_swap
)");
#endif

thread_local BlockRun* g_run = nullptr;
thread_local Fiber* g_fiber = nullptr;

void Yield() {
  Fiber* self = g_fiber;
#if PDS_EMU_TSAN
  __tsan_switch_to_fiber(g_run->tsan_scheduler, 0);
#endif
#if PDS_EMU_FAST_SWITCH
  pds_emu_swap(&self->sp, g_run->scheduler_sp);
#else
  if (swapcontext(&self->ctx, &g_run->scheduler) != 0) Die("swapcontext failed");
#endif
}

void FiberMain() {
  g_run->body(g_run->body_ctx);
  g_fiber->state = FiberState::kDone;
#if PDS_EMU_FAST_SWITCH
  Yield();  // never resumed
  Die("finished fiber resumed");
#endif
  // ucontext: uc_link returns to the scheduler.
#if PDS_EMU_TSAN
  __tsan_switch_to_fiber(g_run->tsan_scheduler, 0);
#endif
}

// Out of line so that getcontext's registers never alias the caller's loop
// variables (it never returns a second time: makecontext replaces the entry).
#if PDS_EMU_FAST_SWITCH
void InitFiber(Fiber* f, char* stack, BlockRun*) {
  // A frame pds_emu_swap can return into: six zeroed registers, then
  // FiberMain as the return address, then a fake return address for
  // FiberMain so that its stack is aligned as after a call.
  uintptr_t top = (reinterpret_cast<uintptr_t>(stack) + kStackBytes) & ~uintptr_t{15};
  void** p = reinterpret_cast<void**>(top);
  p[-1] = nullptr;
  p[-2] = reinterpret_cast<void*>(&FiberMain);
  for (int i = 3; i <= 8; ++i) p[-i] = nullptr;
  f->sp = &p[-8];
}
#else
__attribute__((noinline)) void InitFiber(Fiber* f, char* stack, BlockRun* run) {
  getcontext(&f->ctx);
  f->ctx.uc_stack.ss_sp = stack;
  f->ctx.uc_stack.ss_size = kStackBytes;
  f->ctx.uc_link = &run->scheduler;
  makecontext(&f->ctx, FiberMain, 0);
}
#endif

void RunBlock(BlockRun& run) {
  for (;;) {
    bool all_done = true, progressed = false;
    for (Fiber& f : run.fibers) {
      if (f.state == FiberState::kDone) continue;
      all_done = false;
      if (f.state != FiberState::kReady) continue;
      g_fiber = &f;
#if PDS_EMU_TSAN
      __tsan_switch_to_fiber(f.tsan, 0);
#endif
#if PDS_EMU_FAST_SWITCH
      pds_emu_swap(&run.scheduler_sp, f.sp);
#else
      if (swapcontext(&run.scheduler, &f.ctx) != 0) Die("swapcontext failed");
#endif
      g_fiber = nullptr;
      progressed = true;
    }
    if (all_done) return;
    if (!progressed) {
      int at_block = 0, at_warp = 0, done = 0;
      for (const Fiber& f : run.fibers) {
        at_block += f.state == FiberState::kBlockBarrier;
        at_warp += f.state == FiberState::kWarpBarrier;
        done += f.state == FiberState::kDone;
      }
      std::fprintf(stderr,
                   "cuda_emu: deadlock in a kernel: %d threads wait at __syncthreads, %d at a "
                   "warp barrier (shuffle/__syncwarp), %d exited: a barrier inside divergent "
                   "code\n",
                   at_block, at_warp, done);
      std::abort();
    }
  }
}

}  // namespace

const ThreadCoords& Current() {
  if (g_fiber == nullptr) Die("threadIdx/blockIdx used outside a kernel");
  return g_fiber->coords;
}

int LaneId() {
  if (g_fiber == nullptr) Die("warp intrinsic used outside a kernel");
  return g_fiber->linear % 32;
}

void SyncThreads() {
  BlockRun& run = *g_run;
  const int n = static_cast<int>(run.fibers.size());
  if (++run.block_arrived == n) {
    run.block_arrived = 0;
    for (Fiber& f : run.fibers) {
      if (f.state == FiberState::kBlockBarrier) f.state = FiberState::kReady;
    }
    return;
  }
  g_fiber->state = FiberState::kBlockBarrier;
  Yield();
}

void SyncWarp() {
  BlockRun& run = *g_run;
  const int warp = g_fiber->linear / 32;
  if (++run.warp_arrived[warp] == 32) {
    run.warp_arrived[warp] = 0;
    for (int i = warp * 32; i < warp * 32 + 32; ++i) {
      if (run.fibers[i].state == FiberState::kWarpBarrier) run.fibers[i].state = FiberState::kReady;
    }
    return;
  }
  g_fiber->state = FiberState::kWarpBarrier;
  Yield();
}

uint64_t WarpExchange(uint64_t v, int src_lane) {
  BlockRun& run = *g_run;
  const int base = g_fiber->linear / 32 * 32;
  run.warp_slots[g_fiber->linear] = v;
  SyncWarp();  // every lane wrote
  const uint64_t r = run.warp_slots[base + src_lane];
  SyncWarp();  // every lane read before anyone writes again
  return r;
}

void* DynamicSmem() {
  if (g_run == nullptr) Die("dynamic shared memory used outside a kernel");
  return g_run->smem.data();
}

bool IsDevicePointer(const void* p, size_t bytes) {
  const uintptr_t a = reinterpret_cast<uintptr_t>(p);
  std::lock_guard<std::mutex> lock(MemMu());
  auto& m = DeviceAllocs();
  auto it = m.upper_bound(a);
  if (it == m.begin()) return false;
  --it;
  return a >= it->first && a + bytes <= it->first + std::max<size_t>(it->second, 1);
}

void BadPointerArg(int index, const void* p) {
  std::fprintf(stderr, "cuda_emu: kernel argument %d (%p) is not device memory\n", index, p);
  std::abort();
}

void SetLastError(cudaError_t e) { Record(e); }

namespace {
std::mutex& SmemMu() {
  static std::mutex mu;
  return mu;
}
std::map<const void*, int>& SmemLimits() {
  static std::map<const void*, int> m;
  return m;
}
}  // namespace

void SetMaxDynamicSmem(const void* kernel, int bytes) {
  std::lock_guard<std::mutex> lock(SmemMu());
  SmemLimits()[kernel] = bytes;
}

int MaxDynamicSmem(const void* kernel) {
  std::lock_guard<std::mutex> lock(SmemMu());
  auto it = SmemLimits().find(kernel);
  return it == SmemLimits().end() ? kDefaultDynamicSmem : std::max(it->second, kDefaultDynamicSmem);
}

void RunGrid(dim3 grid, dim3 block, size_t smem_bytes, void (*body)(void*), void* ctx) {
  const size_t n_threads = static_cast<size_t>(block.x) * block.y * block.z;
  if (n_threads == 0 || n_threads > 1024 || n_threads % 32 != 0 || grid.x == 0 || grid.y == 0 ||
      grid.z == 0 || grid.y > 65535 || grid.z > 65535 || smem_bytes > (227 << 10)) {
    std::fprintf(stderr,
                 "cuda_emu: bad launch configuration grid (%u,%u,%u) block (%u,%u,%u) smem %zu "
                 "(blocks must be whole warps here)\n",
                 grid.x, grid.y, grid.z, block.x, block.y, block.z, smem_bytes);
    Record(cudaErrorInvalidConfiguration);
    return;
  }
  if (g_run != nullptr) Die("kernel launched from inside a kernel");
  static thread_local std::vector<std::unique_ptr<char[]>> stacks;
  while (stacks.size() < n_threads) stacks.push_back(std::make_unique<char[]>(kStackBytes));

  BlockRun run;
  run.body = body;
  run.body_ctx = ctx;
  run.fibers.resize(n_threads);
  run.warp_arrived.assign(n_threads / 32, 0);
  run.warp_slots.assign(n_threads, 0);
  run.smem.assign(std::max<size_t>(smem_bytes, 16), static_cast<char>(0xFF));
#if PDS_EMU_TSAN
  run.tsan_scheduler = __tsan_get_current_fiber();
  for (Fiber& f : run.fibers) f.tsan = __tsan_create_fiber(0);
#endif
  g_run = &run;
  // Blocks run in a shuffled order (a different one per launch): a GPU
  // gives no order between blocks, so a kernel whose result depends on one
  // fails here instead of passing by the luck of a fixed order.
  const size_t n_blocks = static_cast<size_t>(grid.x) * grid.y * grid.z;
  std::vector<uint32_t> order(n_blocks);
  std::iota(order.begin(), order.end(), 0u);
  static std::atomic<uint64_t> launches{0};
  std::mt19937_64 rng(0x9e3779b97f4a7c15ull ^ launches.fetch_add(1));
  std::shuffle(order.begin(), order.end(), rng);
  for (const uint32_t linear_block : order) {
    const unsigned bx = linear_block % grid.x;
    const unsigned by = linear_block / grid.x % grid.y;
    const unsigned bz = linear_block / (grid.x * grid.y);
    // Dynamic shared memory starts as garbage (NaN floats) in every block.
    std::memset(run.smem.data(), 0xFF, run.smem.size());
    run.block_arrived = 0;
    std::fill(run.warp_arrived.begin(), run.warp_arrived.end(), 0);
    size_t i = 0;
    for (unsigned tz = 0; tz < block.z; ++tz) {
      for (unsigned ty = 0; ty < block.y; ++ty) {
        for (unsigned tx = 0; tx < block.x; ++tx, ++i) {
          Fiber& f = run.fibers[i];
          f.coords = {{tx, ty, tz}, {bx, by, bz}, block, grid};
          f.linear = static_cast<int>(i);
          f.state = FiberState::kReady;
          InitFiber(&f, stacks[i].get(), &run);
        }
      }
    }
    RunBlock(run);
  }
  g_run = nullptr;
#if PDS_EMU_TSAN
  for (Fiber& f : run.fibers) __tsan_destroy_fiber(f.tsan);
#endif
}

}  // namespace pdserve::cuda_emu

using pdserve::cuda_emu::DeviceAllocs;
using pdserve::cuda_emu::DeviceBytesInUse;
using pdserve::cuda_emu::IsDevicePointer;
using pdserve::cuda_emu::MemMu;
using pdserve::cuda_emu::Record;

const char* cudaGetErrorString(cudaError_t e) {
  switch (e) {
    case cudaSuccess:
      return "no error";
    case cudaErrorInvalidValue:
      return "invalid argument";
    case cudaErrorMemoryAllocation:
      return "out of memory";
    case cudaErrorInvalidConfiguration:
      return "invalid configuration argument";
    case cudaErrorNoDevice:
      return "no CUDA-capable device is detected";
    case cudaErrorInvalidDevice:
      return "invalid device ordinal";
    case cudaErrorNotReady:
      return "device not ready";
    default:
      return "unknown error";
  }
}
const char* cudaGetErrorName(cudaError_t e) {
  switch (e) {
    case cudaSuccess:
      return "cudaSuccess";
    case cudaErrorMemoryAllocation:
      return "cudaErrorMemoryAllocation";
    case cudaErrorNoDevice:
      return "cudaErrorNoDevice";
    default:
      return "cudaError";
  }
}
cudaError_t cudaGetLastError() {
  const cudaError_t e = pdserve::cuda_emu::g_last_error;
  pdserve::cuda_emu::g_last_error = cudaSuccess;
  return e;
}
cudaError_t cudaPeekAtLastError() { return pdserve::cuda_emu::g_last_error; }
cudaError_t cudaGetDeviceCount(int* n) {
  *n = 1;
  return cudaSuccess;
}
cudaError_t cudaSetDevice(int d) { return d == 0 ? cudaSuccess : Record(cudaErrorInvalidDevice); }
cudaError_t cudaGetDevice(int* d) {
  *d = 0;
  return cudaSuccess;
}
cudaError_t cudaGetDeviceProperties(cudaDeviceProp* p, int d) {
  if (d != 0) return Record(cudaErrorInvalidDevice);
  std::memset(p, 0, sizeof(*p));
  std::snprintf(p->name, sizeof(p->name), "pdserve CPU emulation");
  p->totalGlobalMem = pdserve::cuda_emu::kEmulatedDeviceBytes;
  p->sharedMemPerBlock = 48 << 10;
  p->sharedMemPerBlockOptin = 227 << 10;
  p->multiProcessorCount = 4;
  p->major = 9;
  p->minor = 0;
  p->l2CacheSize = 1 << 20;
  return cudaSuccess;
}
cudaError_t cudaDeviceGetAttribute(int* v, cudaDeviceAttr a, int d) {
  cudaDeviceProp p;
  if (cudaError_t e = cudaGetDeviceProperties(&p, d); e != cudaSuccess) return e;
  switch (a) {
    case cudaDevAttrMultiProcessorCount:
      *v = p.multiProcessorCount;
      break;
    case cudaDevAttrMaxSharedMemoryPerBlockOptin:
      *v = static_cast<int>(p.sharedMemPerBlockOptin);
      break;
    case cudaDevAttrComputeCapabilityMajor:
      *v = p.major;
      break;
    case cudaDevAttrComputeCapabilityMinor:
      *v = p.minor;
      break;
  }
  return cudaSuccess;
}
cudaError_t cudaMemGetInfo(size_t* free_bytes, size_t* total_bytes) {
  std::lock_guard<std::mutex> lock(MemMu());
  *total_bytes = pdserve::cuda_emu::kEmulatedDeviceBytes;
  *free_bytes = *total_bytes - std::min(*total_bytes, DeviceBytesInUse());
  return cudaSuccess;
}
cudaError_t cudaMalloc(void** p, size_t bytes) {
  *p = nullptr;
  {
    std::lock_guard<std::mutex> lock(MemMu());
    if (DeviceBytesInUse() + bytes > pdserve::cuda_emu::kEmulatedDeviceBytes) {
      return Record(cudaErrorMemoryAllocation);
    }
  }
  const size_t rounded = (std::max<size_t>(bytes, 1) + 255) / 256 * 256;
  void* q = std::aligned_alloc(256, rounded);
  if (q == nullptr) return Record(cudaErrorMemoryAllocation);
  std::memset(q, 0xFF, rounded);  // poison: unwritten floats read as NaN
  std::lock_guard<std::mutex> lock(MemMu());
  DeviceAllocs()[reinterpret_cast<uintptr_t>(q)] = bytes;
  DeviceBytesInUse() += bytes;
  *p = q;
  return cudaSuccess;
}
cudaError_t cudaFree(void* p) {
  if (p == nullptr) return cudaSuccess;
  {
    std::lock_guard<std::mutex> lock(MemMu());
    auto it = DeviceAllocs().find(reinterpret_cast<uintptr_t>(p));
    if (it == DeviceAllocs().end()) return Record(cudaErrorInvalidValue);
    DeviceBytesInUse() -= it->second;
    DeviceAllocs().erase(it);
  }
  std::free(p);
  return cudaSuccess;
}
cudaError_t cudaMallocHost(void** p, size_t bytes) {
  *p = std::aligned_alloc(256, (std::max<size_t>(bytes, 1) + 255) / 256 * 256);
  return *p == nullptr ? Record(cudaErrorMemoryAllocation) : cudaSuccess;
}
cudaError_t cudaHostAlloc(void** p, size_t bytes, unsigned) { return cudaMallocHost(p, bytes); }
cudaError_t cudaFreeHost(void* p) {
  std::free(p);
  return cudaSuccess;
}
namespace {
cudaError_t CheckKind(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind) {
  if (bytes == 0) return cudaSuccess;
  const bool dst_dev = IsDevicePointer(dst, bytes), src_dev = IsDevicePointer(src, bytes);
  bool ok = true;
  switch (kind) {
    case cudaMemcpyHostToDevice:
      ok = dst_dev && !src_dev;
      break;
    case cudaMemcpyDeviceToHost:
      ok = !dst_dev && src_dev;
      break;
    case cudaMemcpyDeviceToDevice:
      ok = dst_dev && src_dev;
      break;
    case cudaMemcpyHostToHost:
      ok = !dst_dev && !src_dev;
      break;
    case cudaMemcpyDefault:
      break;
  }
  if (!ok) {
    std::fprintf(stderr, "cuda_emu: cudaMemcpy kind %d does not match dst %p (%s) src %p (%s)\n",
                 static_cast<int>(kind), dst, dst_dev ? "device" : "host", src,
                 src_dev ? "device" : "host");
    std::abort();
  }
  return cudaSuccess;
}
}  // namespace
cudaError_t cudaMemcpy(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind) {
  CheckKind(dst, src, bytes, kind);
  if (bytes > 0) std::memmove(dst, src, bytes);
  return cudaSuccess;
}
cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind,
                            cudaStream_t) {
  return cudaMemcpy(dst, src, bytes, kind);
}
cudaError_t cudaMemcpy2DAsync(void* dst, size_t dpitch, const void* src, size_t spitch,
                              size_t width, size_t height, cudaMemcpyKind kind, cudaStream_t) {
  for (size_t r = 0; r < height; ++r) {
    cudaMemcpy(static_cast<char*>(dst) + r * dpitch, static_cast<const char*>(src) + r * spitch,
               width, kind);
  }
  return cudaSuccess;
}
cudaError_t cudaMemset(void* p, int value, size_t bytes) {
  if (bytes > 0 && !IsDevicePointer(p, bytes)) {
    std::fprintf(stderr, "cuda_emu: cudaMemset on non-device memory %p\n", p);
    std::abort();
  }
  std::memset(p, value, bytes);
  return cudaSuccess;
}
cudaError_t cudaMemsetAsync(void* p, int value, size_t bytes, cudaStream_t) {
  return cudaMemset(p, value, bytes);
}

struct CUstream_st {
  int unused = 0;
};
struct CUevent_st {
  int unused = 0;
};
cudaError_t cudaStreamCreate(cudaStream_t* s) {
  *s = new CUstream_st;
  return cudaSuccess;
}
cudaError_t cudaStreamCreateWithFlags(cudaStream_t* s, unsigned) { return cudaStreamCreate(s); }
cudaError_t cudaStreamDestroy(cudaStream_t s) {
  delete s;
  return cudaSuccess;
}
cudaError_t cudaStreamSynchronize(cudaStream_t) { return cudaSuccess; }
cudaError_t cudaStreamWaitEvent(cudaStream_t, cudaEvent_t, unsigned) { return cudaSuccess; }
cudaError_t cudaEventCreate(cudaEvent_t* e) {
  *e = new CUevent_st;
  return cudaSuccess;
}
cudaError_t cudaEventCreateWithFlags(cudaEvent_t* e, unsigned) { return cudaEventCreate(e); }
cudaError_t cudaEventDestroy(cudaEvent_t e) {
  delete e;
  return cudaSuccess;
}
cudaError_t cudaEventRecord(cudaEvent_t, cudaStream_t) { return cudaSuccess; }
cudaError_t cudaEventSynchronize(cudaEvent_t) { return cudaSuccess; }
cudaError_t cudaEventQuery(cudaEvent_t) { return cudaSuccess; }
cudaError_t cudaEventElapsedTime(float* ms, cudaEvent_t, cudaEvent_t) {
  *ms = 0;
  return cudaSuccess;
}
cudaError_t cudaDeviceSynchronize() { return cudaSuccess; }

// ---- IPC: in-process only (see cuda_emu.h) ---------------------------------
namespace {
constexpr uint32_t kIpcMagic = 0x43504945;  // "EIPC"
struct EmuIpcPayload {
  uint32_t magic;
  int32_t pid;
  uint64_t pointer;
};
static_assert(sizeof(EmuIpcPayload) <= sizeof(cudaIpcMemHandle_t));

template <typename Handle>
Handle MakeIpcHandle(const void* p) {
  Handle h;
  std::memset(&h, 0, sizeof(h));
  const EmuIpcPayload payload{kIpcMagic, static_cast<int32_t>(::getpid()),
                              reinterpret_cast<uint64_t>(p)};
  std::memcpy(&h, &payload, sizeof(payload));
  return h;
}
// The pointer a handle carries, or null when it is not one of this process.
template <typename Handle>
void* ReadIpcHandle(const Handle& h) {
  EmuIpcPayload payload;
  std::memcpy(&payload, &h, sizeof(payload));
  if (payload.magic != kIpcMagic || payload.pid != static_cast<int32_t>(::getpid())) {
    std::fprintf(stderr,
                 "cuda_emu: an IPC handle opens only in the process that exported it (the "
                 "emulation cannot share memory across processes)\n");
    return nullptr;
  }
  return reinterpret_cast<void*>(payload.pointer);
}
}  // namespace

namespace {
// The allocation holding `a`: its start and size, or false.
bool FindAllocation(uintptr_t a, uintptr_t* start, size_t* bytes) {
  std::lock_guard<std::mutex> lock(MemMu());
  auto& m = DeviceAllocs();
  auto it = m.upper_bound(a);
  if (it == m.begin()) return false;
  --it;
  if (a >= it->first + std::max<size_t>(it->second, 1)) return false;
  *start = it->first;
  *bytes = it->second;
  return true;
}

CUresult EmuMemGetAddressRange(CUdeviceptr* base, size_t* size, CUdeviceptr p) {
  uintptr_t start = 0;
  size_t bytes = 0;
  if (!FindAllocation(static_cast<uintptr_t>(p), &start, &bytes)) return CUDA_ERROR_INVALID_VALUE;
  if (base != nullptr) *base = start;
  if (size != nullptr) *size = bytes;
  return CUDA_SUCCESS;
}
}  // namespace

cudaError_t cudaGetDriverEntryPointByVersion(const char* symbol, void** fn, unsigned int,
                                             unsigned long long,
                                             cudaDriverEntryPointQueryResult* status) {
  *fn = nullptr;
  if (symbol != nullptr && std::strcmp(symbol, "cuMemGetAddressRange") == 0) {
    *fn = reinterpret_cast<void*>(&EmuMemGetAddressRange);
    if (status != nullptr) *status = cudaDriverEntryPointSuccess;
    return cudaSuccess;
  }
  if (status != nullptr) *status = cudaDriverEntryPointSymbolNotFound;
  return cudaSuccess;
}

cudaError_t cudaIpcGetMemHandle(cudaIpcMemHandle_t* handle, void* dev_ptr) {
  // The real runtime exports the whole allocation holding dev_ptr (seen on an
  // H200: a pointer 256 bytes in is accepted), and the importer gets its start.
  uintptr_t start = 0;
  size_t bytes = 0;
  if (!FindAllocation(reinterpret_cast<uintptr_t>(dev_ptr), &start, &bytes)) {
    return Record(cudaErrorInvalidValue);
  }
  *handle = MakeIpcHandle<cudaIpcMemHandle_t>(reinterpret_cast<void*>(start));
  return cudaSuccess;
}
cudaError_t cudaIpcOpenMemHandle(void** dev_ptr, cudaIpcMemHandle_t handle, unsigned) {
  *dev_ptr = nullptr;
  void* p = ReadIpcHandle(handle);
  if (p == nullptr || !IsDevicePointer(p)) return Record(cudaErrorInvalidResourceHandle);
  *dev_ptr = p;
  return cudaSuccess;
}
cudaError_t cudaIpcCloseMemHandle(void* dev_ptr) {
  return IsDevicePointer(dev_ptr) ? cudaSuccess : Record(cudaErrorInvalidValue);
}
cudaError_t cudaIpcGetEventHandle(cudaIpcEventHandle_t* handle, cudaEvent_t event) {
  if (event == nullptr) return Record(cudaErrorInvalidResourceHandle);
  *handle = MakeIpcHandle<cudaIpcEventHandle_t>(event);
  return cudaSuccess;
}
cudaError_t cudaIpcOpenEventHandle(cudaEvent_t* event, cudaIpcEventHandle_t handle) {
  *event = nullptr;
  if (ReadIpcHandle(handle) == nullptr) return Record(cudaErrorInvalidResourceHandle);
  // Events are no-ops here (streams run synchronously): a fresh one, which
  // the caller destroys, stands in for the exported event.
  *event = new CUevent_st;
  return cudaSuccess;
}
