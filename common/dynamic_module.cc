#include "common/dynamic_module.h"

#include <dlfcn.h>
#include <limits.h>
#include <unistd.h>

#include "absl/strings/str_cat.h"

namespace pdserve {

std::string DefaultCudaModulePath() {
  char exe[PATH_MAX];
  const ssize_t n = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
  if (n <= 0) return kCudaModuleFile;  // dlopen then searches the library path
  std::string dir(exe, static_cast<size_t>(n));
  const size_t slash = dir.rfind('/');
  dir.resize(slash == std::string::npos ? 0 : slash + 1);
  return dir + kCudaModuleFile;
}

absl::StatusOr<void*> LoadModuleEntry(const std::string& path, const char* entry,
                                      const char* purpose) {
  // RTLD_NOW: a missing CUDA library or symbol fails here, with dlerror's
  // text, rather than at the first call into the module. Opening an open
  // module again only counts a reference.
  void* handle = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
  if (handle == nullptr) {
    const char* why = dlerror();
    if (access(path.c_str(), F_OK) != 0) {
      return absl::FailedPreconditionError(absl::StrCat(
          purpose, " is not available: ", path,
          " does not exist (this pdserve was built without CUDA, nvcc was not found at build "
          "time, or the module was not installed beside the binary); use --device cpu"));
    }
    return absl::FailedPreconditionError(absl::StrCat(
        purpose, " could not be loaded from ", path, ": ", why ? why : "unknown error",
        " (are the NVIDIA driver and the CUDA runtime, cuBLAS and NCCL libraries installed and "
        "on the library path?); use --device cpu"));
  }
  void* symbol = dlsym(handle, entry);
  if (symbol == nullptr) {
    dlclose(handle);
    return absl::FailedPreconditionError(absl::StrCat(path, " is not a pdserve CUDA module (no ",
                                                      entry,
                                                      "); install the libpdserve_cuda.so "
                                                      "built with this binary"));
  }
  return symbol;  // never dlclosed: backends and transports point into it
}

}  // namespace pdserve
