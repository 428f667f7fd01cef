// The CUDA module seam (common/dynamic_module.h, engine/cuda_module.h,
// transport/cuda_transports.h): CPU code never maps the CUDA libraries, and
// every way loading the module can fail is a clear error.
#include "engine/cuda_module.h"

#include <cstdio>
#include <fstream>
#include <sstream>
#include <string>

#include "absl/strings/match.h"
#include "common/dynamic_module.h"
#include "gtest/gtest.h"
#include "transport/cuda_transports.h"
#include "transport/kv_transport_factory.h"

namespace pdserve {
namespace {

bool CudaLibrariesMapped() {
  std::ifstream maps("/proc/self/maps");
  std::stringstream text;
  text << maps.rdbuf();
  const std::string s = text.str();
  return absl::StrContains(s, "libcudart") || absl::StrContains(s, "libcublas") ||
         absl::StrContains(s, "libnccl");
}

TEST(CudaModuleTest, CpuBackendDoesNotMapCudaLibraries) {
  auto backend = CreateBackend("cpu");
  ASSERT_TRUE(backend.ok()) << backend.status();
  EXPECT_EQ((*backend)->name(), "cpu");
  EXPECT_FALSE(CudaLibrariesMapped());
}

TEST(CudaModuleTest, UnknownDeviceIsInvalidArgument) {
  auto backend = CreateBackend("tpu");
  EXPECT_EQ(backend.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(absl::StrContains(backend.status().message(), "cuda:N")) << backend.status();
}

TEST(CudaModuleTest, MissingModuleNamesThePathAndTheWayOut) {
  auto m = LoadCudaBackendModuleFrom("/nonexistent/dir/libpdserve_cuda.so");
  EXPECT_EQ(m.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_TRUE(absl::StrContains(m.status().message(), "/nonexistent/dir/libpdserve_cuda.so"));
  EXPECT_TRUE(absl::StrContains(m.status().message(), "--device cpu")) << m.status();
}

TEST(CudaModuleTest, FileThatIsNotALibraryIsRefused) {
  const std::string path = ::testing::TempDir() + "/not_a_module.so";
  {
    std::ofstream f(path);
    f << "this is not an ELF file\n";
  }
  auto m = LoadCudaBackendModuleFrom(path);
  std::remove(path.c_str());
  EXPECT_EQ(m.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_TRUE(absl::StrContains(m.status().message(), "could not be loaded")) << m.status();
}

TEST(CudaModuleTest, LibraryWithoutTheEntryIsNotAModule) {
  // libz is a shared library every machine here has; it has no pdserve entry.
  auto t = transport::LoadCudaTransportsFrom("libz.so.1");
  EXPECT_EQ(t.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_TRUE(absl::StrContains(t.status().message(), "not a pdserve CUDA module")) << t.status();
}

// A CPU engine's KV transport (tcp both ways) never loads the module.
TEST(CudaModuleTest, CpuKvTransportsDoNotMapCudaLibraries) {
  transport::KvTransportConfig c;  // gpu_device -1, kind auto
  auto receiver = transport::MakeKvReceiver(c);
  ASSERT_TRUE(receiver.ok()) << receiver.status();
  auto sender = transport::MakeKvSender(c);
  ASSERT_TRUE(sender.ok()) << sender.status();
  EXPECT_FALSE(CudaLibrariesMapped());
}

TEST(CudaModuleTest, DefaultPathIsBesideTheExecutable) {
  const std::string path = DefaultCudaModulePath();
  EXPECT_TRUE(absl::EndsWith(path, std::string("/") + kCudaModuleFile)) << path;
  EXPECT_TRUE(absl::StartsWith(path, PDSERVE_BINARY_DIR)) << path;
}

#ifdef PDSERVE_TEST_CUDA_MODULE
// This build has the module: it loads, and a CUDA backend is either created
// (a GPU is there) or refused with FailedPrecondition, never anything else.
TEST(CudaModuleTest, BuiltModuleLoadsAndAnswers) {
  auto m = LoadCudaBackendModule();
  ASSERT_TRUE(m.ok()) << m.status();
  EXPECT_EQ((*m)->abi_version, kCudaBackendAbiVersion);
  auto t = transport::LoadCudaTransports();
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_EQ((*t)->abi_version, transport::kCudaTransportsAbiVersion);
  EXPECT_TRUE(transport::KvTransportBuilt(transport::KvTransportKind::kIpc));
  auto backend = CreateBackend("cuda:0");
  if (backend.ok()) {
    EXPECT_TRUE(absl::StartsWith((*backend)->name(), "cuda")) << (*backend)->name();
  } else {
    EXPECT_EQ(backend.status().code(), absl::StatusCode::kFailedPrecondition) << backend.status();
  }
}
#endif

#ifdef PDSERVE_TEST_BINARY
// The pdserve binary itself: the dynamic loader's view (what ldd prints)
// lists no CUDA library, so a CPU run or the router never maps one.
TEST(CudaModuleTest, PdserveBinaryNeedsNoCudaLibrary) {
  const std::string cmd = std::string("LD_TRACE_LOADED_OBJECTS=1 ") + PDSERVE_TEST_BINARY + " 2>&1";
  FILE* p = popen(cmd.c_str(), "r");
  ASSERT_NE(p, nullptr);
  std::string out;
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof(buf), p)) > 0) out.append(buf, n);
  ASSERT_EQ(pclose(p), 0) << out;
  ASSERT_TRUE(absl::StrContains(out, "libc.so")) << out;  // the trace did run
  EXPECT_FALSE(absl::StrContains(out, "libcudart")) << out;
  EXPECT_FALSE(absl::StrContains(out, "libcublas")) << out;
  EXPECT_FALSE(absl::StrContains(out, "libnccl")) << out;
}
#endif

}  // namespace
}  // namespace pdserve
