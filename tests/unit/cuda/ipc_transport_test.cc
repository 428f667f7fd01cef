// The CUDA IPC KV transport (transport/ipc_*.h): sender and receiver in one
// process on one device (the emulation can only share memory within a
// process), hostile control messages against the receiver, and, on a real
// GPU only, a sender in a child process.
#include <spawn.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <future>
#include <random>
#include <string>
#include <thread>
#include <vector>

// First: selects the real or the emulated CUDA runtime.
#include "gmock/gmock.h"
#include "tests/unit/cuda/cuda_test_util.h"
//
#include "transport/device_send_handle.h"
#include "transport/ipc_receiver.h"
#include "transport/ipc_sender.h"
#include "transport/nccl_wire.h"
#include "transport/transfer_auth.h"

extern char** environ;

namespace pdserve::transport {
namespace {

using cuda_testing::DeviceArray;
using namespace std::chrono_literals;

const TransferSecret kSecret = *TransferSecret::FromBytes("0123456789abcdef");

Deadline In(std::chrono::milliseconds d) { return MonoClock::now() + d; }

std::vector<uint8_t> RandomBytes(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<uint8_t> v(n);
  for (uint8_t& b : v) b = static_cast<uint8_t>(rng());
  return v;
}

// A KV pool of n_layers x n_blocks blocks in one allocation (IPC exports
// whole allocations), layer-major.
struct Pool {
  int n_layers, n_blocks;
  size_t block;
  std::vector<uint8_t> host;
  std::unique_ptr<DeviceArray<uint8_t>> dev;

  Pool(int layers, int blocks, size_t block_bytes, uint32_t seed, bool fill)
      : n_layers(layers), n_blocks(blocks), block(block_bytes) {
    host = fill ? RandomBytes(layers * blocks * block_bytes, seed)
                : std::vector<uint8_t>(layers * blocks * block_bytes, 0xFF);
    dev = std::make_unique<DeviceArray<uint8_t>>(host);
  }
  uint8_t* at(int l, int i) const { return dev->get() + (size_t(l) * n_blocks + i) * block; }
  std::vector<ConstBlockView> Const(int l) const {
    std::vector<ConstBlockView> v;
    for (int i = 0; i < n_blocks; ++i) v.push_back({at(l, i), block});
    return v;
  }
  std::vector<std::vector<BlockView>> Views() const {
    std::vector<std::vector<BlockView>> out(n_layers);
    for (int l = 0; l < n_layers; ++l) {
      for (int i = 0; i < n_blocks; ++i) out[l].push_back({at(l, i), block});
    }
    return out;
  }
  std::vector<uint8_t> Layer(const std::vector<uint8_t>& all, int l) const {
    return {all.begin() + size_t(l) * n_blocks * block,
            all.begin() + size_t(l + 1) * n_blocks * block};
  }
};

struct Received {
  std::promise<std::pair<absl::Status, std::string>> done;
  std::future<std::pair<absl::Status, std::string>> future = done.get_future();
};

class IpcTransportTest : public ::testing::Test {
 protected:
  void SetUp() override {
    PDS_SKIP_WITHOUT_GPU();
    IpcReceiverOptions ro;
    ro.verify_timeout_ms = 2000;
    auto r = IpcKvReceiver::Create(ro);
    ASSERT_TRUE(r.ok()) << r.status();
    receiver_ = std::move(*r);
    IpcSenderOptions so;
    so.stuck_grace_ms = 500;
    auto s = IpcKvSender::Create(so);
    ASSERT_TRUE(s.ok()) << s.status();
    sender_ = std::move(*s);
    src_ = std::make_unique<Pool>(4, 6, 2048, 10, true);
    ASSERT_TRUE(sender_->RegisterRegion(src_->dev->get(), src_->host.size()).ok());
  }

  void Post(TransferId x, const Pool& dst, Deadline deadline, Received* rec) {
    ASSERT_TRUE(receiver_
                    ->Post(x, kSecret, dst.Views(), deadline,
                           [rec](absl::Status s, std::string trailer, ReceiveTiming) {
                             rec->done.set_value({std::move(s), std::move(trailer)});
                           })
                    .ok());
  }

  // Everything of src_ to dst as transfer x: OK on both sides.
  void Transfer(TransferId x, const Pool& dst, bool with_event) {
    Received rec;
    Post(x, dst, In(20s), &rec);
    auto h = sender_->StartTransfer(x, kSecret, receiver_->endpoint(), src_->n_layers, In(20s));
    ASSERT_TRUE(h.ok()) << h.status();
    auto* dh = dynamic_cast<DeviceKvSendHandle*>(h->get());
    ASSERT_NE(dh, nullptr);
    cudaEvent_t ev = nullptr;
    if (with_event) {
      ASSERT_EQ(cudaEventCreateWithFlags(&ev, cudaEventDisableTiming), cudaSuccess);
    }
    for (int l = src_->n_layers - 1; l >= 0; --l) {  // any order
      if (ev != nullptr) {
        ASSERT_EQ(cudaEventRecord(ev, nullptr), cudaSuccess);
      }
      ASSERT_TRUE(dh->SendLayerAfter(l, src_->Const(l), ev).ok());
    }
    ASSERT_TRUE((*h)->Finish("token #1").ok());
    EXPECT_TRUE((*h)->Wait().ok()) << (*h)->Wait();
    auto [status, trailer] = rec.future.get();
    EXPECT_TRUE(status.ok()) << status;
    EXPECT_EQ(trailer, "token #1");
    EXPECT_EQ(dst.dev->Download(), src_->host);
    if (ev != nullptr) cudaEventDestroy(ev);
  }

  std::unique_ptr<IpcKvReceiver> receiver_;
  std::unique_ptr<IpcKvSender> sender_;
  std::unique_ptr<Pool> src_;
};

TEST_F(IpcTransportTest, MovesEveryLayerAndTheTrailerAndReusesTheLink) {
  Pool dst(4, 6, 2048, 0, false);
  Transfer(TransferId{1}, dst, /*with_event=*/true);
  Pool dst2(4, 6, 2048, 0, false);
  Transfer(TransferId{2}, dst2, /*with_event=*/false);
  EXPECT_EQ(sender_->stats().transfers_ok, 2);
  EXPECT_EQ(receiver_->stats().transfers_ok, 2);
  EXPECT_EQ(receiver_->stats().bytes, int64_t(2 * src_->host.size()));
}

TEST_F(IpcTransportTest, DataWaitsForAPostThatComesLater) {
  Pool dst(4, 6, 2048, 0, false);
  auto h = sender_->StartTransfer(TransferId{7}, kSecret, receiver_->endpoint(), 4, In(20s));
  ASSERT_TRUE(h.ok()) << h.status();
  for (int l = 0; l < 4; ++l) ASSERT_TRUE((*h)->SendLayer(l, src_->Const(l)).ok());
  ASSERT_TRUE((*h)->Finish("").ok());
  std::this_thread::sleep_for(100ms);
  EXPECT_FALSE((*h)->Poll().has_value());
  Received rec;
  Post(TransferId{7}, dst, In(20s), &rec);
  EXPECT_TRUE((*h)->Wait().ok()) << (*h)->Wait();
  EXPECT_TRUE(rec.future.get().first.ok());
  EXPECT_EQ(dst.dev->Download(), src_->host);
}

TEST_F(IpcTransportTest, ViewsOutsideEveryRegionAreRefused) {
  DeviceArray<uint8_t> other(4096);
  auto h = sender_->StartTransfer(TransferId{8}, kSecret, receiver_->endpoint(), 1, In(5s));
  ASSERT_TRUE(h.ok());
  const ConstBlockView v{other.get(), 4096};
  EXPECT_EQ((*h)->SendLayer(0, {&v, 1}).code(), absl::StatusCode::kInvalidArgument);
  // Straddling the region's end is outside too.
  const ConstBlockView tail{src_->dev->get() + src_->host.size() - 16, 32};
  EXPECT_EQ((*h)->SendLayer(0, {&tail, 1}).code(), absl::StatusCode::kInvalidArgument);
  (*h)->Abort();
}

TEST_F(IpcTransportTest, SizeMismatchFailsBothSidesAndTheLinkStillWorks) {
  Pool dst(1, 5, 2048, 0, false);  // one block short
  Received rec;
  Post(TransferId{9}, dst, In(20s), &rec);
  auto h = sender_->StartTransfer(TransferId{9}, kSecret, receiver_->endpoint(), 1, In(20s));
  ASSERT_TRUE(h.ok());
  ASSERT_TRUE((*h)->SendLayer(0, src_->Const(0)).ok());
  (*h)->Finish("").IgnoreError();
  EXPECT_EQ((*h)->Wait().code(), absl::StatusCode::kInvalidArgument) << (*h)->Wait();
  EXPECT_EQ(rec.future.get().first.code(), absl::StatusCode::kInvalidArgument);
  Pool dst2(4, 6, 2048, 0, false);
  Transfer(TransferId{10}, dst2, false);
}

// The receiver pulls, so after its Cancel nothing lands in its blocks even
// though the sender goes on sending layers.
TEST_F(IpcTransportTest, NothingIsWrittenAfterTheReceiverCancels) {
  Pool dst(4, 6, 2048, 0, false);
  Received rec;
  Post(TransferId{11}, dst, In(20s), &rec);
  auto h = sender_->StartTransfer(TransferId{11}, kSecret, receiver_->endpoint(), 4, In(20s));
  ASSERT_TRUE(h.ok());
  ASSERT_TRUE((*h)->SendLayer(0, src_->Const(0)).ok());
  std::this_thread::sleep_for(100ms);
  ASSERT_TRUE(receiver_->Cancel(TransferId{11}).ok());
  EXPECT_EQ(rec.future.get().first.code(), absl::StatusCode::kCancelled);
  const std::vector<uint8_t> after_cancel = dst.dev->Download();
  for (int l = 1; l < 4; ++l) (*h)->SendLayer(l, src_->Const(l)).IgnoreError();
  EXPECT_EQ((*h)->Wait().code(), absl::StatusCode::kCancelled) << (*h)->Wait();
  std::this_thread::sleep_for(100ms);
  EXPECT_EQ(dst.dev->Download(), after_cancel);
  EXPECT_EQ(dst.Layer(after_cancel, 3), std::vector<uint8_t>(6 * 2048, 0xFF));
}

// A sender that aborts after the receiver started reading completes only
// once the receiver confirmed it stopped (Released).
TEST_F(IpcTransportTest, SenderAbortWaitsForTheReceiversRelease) {
  Pool dst(4, 6, 2048, 0, false);
  Received rec;
  Post(TransferId{12}, dst, In(20s), &rec);
  auto h = sender_->StartTransfer(TransferId{12}, kSecret, receiver_->endpoint(), 4, In(20s));
  ASSERT_TRUE(h.ok());
  ASSERT_TRUE((*h)->SendLayer(0, src_->Const(0)).ok());
  std::this_thread::sleep_for(100ms);
  (*h)->Abort();
  EXPECT_EQ((*h)->Wait().code(), absl::StatusCode::kCancelled);
  EXPECT_EQ(rec.future.get().first.code(), absl::StatusCode::kAborted);
}

TEST_F(IpcTransportTest, DeadlinesFailBothSides) {
  auto h = sender_->StartTransfer(TransferId{13}, kSecret, receiver_->endpoint(), 1, In(300ms));
  ASSERT_TRUE(h.ok());
  ASSERT_TRUE((*h)->SendLayer(0, src_->Const(0)).ok());
  EXPECT_EQ((*h)->Wait().code(), absl::StatusCode::kDeadlineExceeded) << (*h)->Wait();
  Pool dst(1, 6, 2048, 0, false);
  Received rec;
  Post(TransferId{14}, dst, In(300ms), &rec);
  EXPECT_EQ(rec.future.get().first.code(), absl::StatusCode::kDeadlineExceeded);
}

TEST_F(IpcTransportTest, ADeadReceiverFailsTransfersPromptly) {
  auto h = sender_->StartTransfer(TransferId{15}, kSecret, receiver_->endpoint(), 2, In(30s));
  ASSERT_TRUE(h.ok());
  ASSERT_TRUE((*h)->SendLayer(0, src_->Const(0)).ok());
  receiver_.reset();
  const auto start = MonoClock::now();
  EXPECT_EQ((*h)->Wait().code(), absl::StatusCode::kUnavailable) << (*h)->Wait();
  EXPECT_LT(MonoClock::now() - start, 10s);
}

TEST_F(IpcTransportTest, BadArgumentsAreErrors) {
  EXPECT_EQ(
      sender_->StartTransfer(TransferId{20}, kSecret, "nccl:1.2.3.4:5", 1, In(1s)).status().code(),
      absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(sender_->StartTransfer(TransferId{20}, kSecret, receiver_->endpoint(), 0, In(1s))
                .status()
                .code(),
            absl::StatusCode::kInvalidArgument);
  auto unregistered = IpcKvSender::Create();
  ASSERT_TRUE(unregistered.ok());
  EXPECT_EQ((*unregistered)
                ->StartTransfer(TransferId{20}, kSecret, receiver_->endpoint(), 1, In(1s))
                .status()
                .code(),
            absl::StatusCode::kFailedPrecondition);
  DeviceArray<uint8_t> a(4096);
  // Not an allocation's start (the real runtime exports the whole allocation
  // for a pointer inside one, so the sender must refuse it itself).
  absl::Status inside = (*unregistered)->RegisterRegion(a.get() + 256, 1024);
  EXPECT_EQ(inside.code(), absl::StatusCode::kInvalidArgument) << inside;
  EXPECT_THAT(inside.message(), testing::HasSubstr("256 bytes into"));
  absl::Status past = (*unregistered)->RegisterRegion(a.get(), 8192);  // past its allocation
  EXPECT_EQ(past.code(), absl::StatusCode::kInvalidArgument) << past;
  int host = 0;
  EXPECT_FALSE((*unregistered)->RegisterRegion(&host, sizeof(host)).ok());  // not device memory
  EXPECT_TRUE((*unregistered)->RegisterRegion(a.get(), 4096).ok());
  EXPECT_TRUE(ValidateKvEndpoint(receiver_->endpoint()).ok());
}

// ---- Hostile peers on the control port -------------------------------------

class IpcHostileTest : public IpcTransportTest {
 protected:
  internal::UniqueFd Connect() {
    auto hp = internal::ParseHostPort(receiver_->endpoint().substr(std::strlen(kIpcScheme)));
    EXPECT_TRUE(hp.ok());
    auto fd = internal::ConnectBlocking(*hp, 5000);
    EXPECT_TRUE(fd.ok()) << fd.status();
    timeval tv{20, 0};
    setsockopt(fd->get(), SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    return std::move(*fd);
  }
  static void Send(int fd, internal::NcclFrameType type, uint64_t xfer, int64_t arg0, int64_t arg1,
                   std::string payload) {
    internal::NcclFrame f;
    f.type = type;
    f.xfer = xfer;
    f.arg0 = arg0;
    f.arg1 = arg1;
    f.payload = std::move(payload);
    ASSERT_TRUE(internal::WriteNcclFrame(fd, f).ok());
  }
  // A sender on this host: another process (an unknown nonce), or this one.
  static void Hello(int fd, bool this_process = false) {
    Send(fd, internal::NcclFrameType::kHello, 0, 0, 0,
         (this_process ? internal::ProcessNonce() : std::string(internal::kIpcNonceBytes, '\0')) +
             internal::HostIdentity());
  }
  template <typename Handle>
  static std::string HandleFrame(const Handle& h, const void* p) {
    const uint64_t v = reinterpret_cast<uint64_t>(p);
    return std::string(reinterpret_cast<const char*>(&h), sizeof(h)) +
           std::string(reinterpret_cast<const char*>(&v), sizeof(v));
  }
  static std::string Tag(const AuthTag& t) {
    return std::string(reinterpret_cast<const char*>(t.data()), t.size());
  }
  // A genuine Begin (the test knows the secret).
  static void Begin(int fd, uint64_t xfer, int32_t n_layers) {
    Send(fd, internal::NcclFrameType::kBegin, xfer, n_layers, 10000,
         Tag(BeginTag(kSecret, TransferId{xfer}, n_layers, 10000)));
  }
  static internal::NcclFrame Read(int fd) {
    internal::NcclFrame f;
    const absl::Status s = internal::ReadNcclFrame(fd, &f);
    EXPECT_TRUE(s.ok()) << s;
    return f;
  }
  static bool Closed(int fd) {
    char buf[256];
    for (;;) {
      const ssize_t n = ::recv(fd, buf, sizeof(buf), 0);
      if (n == 0) return true;
      if (n < 0) return errno == ECONNRESET;
    }
  }
};

TEST_F(IpcHostileTest, ForgedBeginIsRefusedAndTheGenuineSenderStillGetsThrough) {
  Pool dst(4, 6, 2048, 0, false);
  Received rec;
  Post(TransferId{30}, dst, In(20s), &rec);
  internal::UniqueFd fd = Connect();
  Hello(fd.get());
  Send(fd.get(), internal::NcclFrameType::kBegin, 30, 4, 10000, std::string(kAuthTagBytes, '\1'));
  const internal::NcclFrame nack = Read(fd.get());
  EXPECT_EQ(nack.type, internal::NcclFrameType::kNack);
  EXPECT_EQ(static_cast<absl::StatusCode>(nack.arg0), absl::StatusCode::kPermissionDenied);
  // Handles on a link that proved nothing: a protocol error, the link closes.
  Send(fd.get(), internal::NcclFrameType::kHandle, 0, -1, 0,
       std::string(internal::kIpcHandleFrameBytes, '\0'));
  EXPECT_TRUE(Closed(fd.get()));
  EXPECT_EQ(receiver_->stats().begins_refused, 1);
  EXPECT_GE(receiver_->stats().protocol_errors, 1);
  // The genuine transfer of the same id is untouched.
  auto h = sender_->StartTransfer(TransferId{30}, kSecret, receiver_->endpoint(), 4, In(20s));
  ASSERT_TRUE(h.ok());
  for (int l = 0; l < 4; ++l) ASSERT_TRUE((*h)->SendLayer(l, src_->Const(l)).ok());
  ASSERT_TRUE((*h)->Finish("t").ok());
  EXPECT_TRUE((*h)->Wait().ok()) << (*h)->Wait();
  EXPECT_TRUE(rec.future.get().first.ok());
  EXPECT_EQ(dst.dev->Download(), src_->host);
}

TEST_F(IpcHostileTest, ReplayedBeginIsRefused) {
  Pool dst(4, 6, 2048, 0, false);
  Transfer(TransferId{31}, dst, false);
  internal::UniqueFd fd = Connect();
  Hello(fd.get());
  Begin(fd.get(), 31, 4);  // a copy of the finished transfer's genuine Begin
  const internal::NcclFrame nack = Read(fd.get());
  EXPECT_EQ(nack.type, internal::NcclFrameType::kNack);
  EXPECT_EQ(static_cast<absl::StatusCode>(nack.arg0), absl::StatusCode::kAlreadyExists);
}

TEST_F(IpcHostileTest, AWrongTrailerTagFailsTheTransfer) {
  Pool dst(1, 1, 256, 0, false);
  Received rec;
  Post(TransferId{32}, dst, In(20s), &rec);
  internal::UniqueFd fd = Connect();
  Hello(fd.get(), /*this_process=*/true);  // its pointers are used: no open on a real GPU
  Begin(fd.get(), 32, 1);
  EXPECT_EQ(Read(fd.get()).type, internal::NcclFrameType::kReady);
  // Handles of a real region and event: the sender's own pool.
  cudaIpcEventHandle_t eh;
  cudaEvent_t ev;
  ASSERT_EQ(cudaEventCreateWithFlags(&ev, cudaEventDisableTiming | cudaEventInterprocess),
            cudaSuccess);
  ASSERT_EQ(cudaIpcGetEventHandle(&eh, ev), cudaSuccess);
  cudaIpcMemHandle_t mh;
  ASSERT_EQ(cudaIpcGetMemHandle(&mh, src_->dev->get()), cudaSuccess);
  Send(fd.get(), internal::NcclFrameType::kHandle, 0, -1, 0, HandleFrame(eh, ev));
  Send(fd.get(), internal::NcclFrameType::kHandle, 0, 0, int64_t(src_->host.size()),
       HandleFrame(mh, src_->dev->get()));
  std::string entry(internal::kIpcBlockEntryBytes, '\0');
  const uint64_t bytes = 256;
  std::memcpy(&entry[16], &bytes, 8);
  Send(fd.get(), internal::NcclFrameType::kLayer, 32, 0, 0, entry);
  const std::string trailer = "forged token";
  Send(fd.get(), internal::NcclFrameType::kTrailer, 32, 0, 0,
       trailer + Tag(TrailerTag(*TransferSecret::FromBytes("fedcba9876543210"), TransferId{32},
                                trailer)));
  EXPECT_EQ(rec.future.get().first.code(), absl::StatusCode::kPermissionDenied);
  cudaEventDestroy(ev);
}

TEST_F(IpcHostileTest, ABlockOutsideTheExportedRegionClosesTheLink) {
  Pool dst(1, 1, 256, 0, false);
  Received rec;
  Post(TransferId{33}, dst, In(20s), &rec);
  internal::UniqueFd fd = Connect();
  Hello(fd.get());
  Begin(fd.get(), 33, 1);
  EXPECT_EQ(Read(fd.get()).type, internal::NcclFrameType::kReady);
  cudaIpcEventHandle_t eh;
  cudaEvent_t ev;
  ASSERT_EQ(cudaEventCreateWithFlags(&ev, cudaEventDisableTiming | cudaEventInterprocess),
            cudaSuccess);
  ASSERT_EQ(cudaIpcGetEventHandle(&eh, ev), cudaSuccess);
  cudaIpcMemHandle_t mh;
  ASSERT_EQ(cudaIpcGetMemHandle(&mh, src_->dev->get()), cudaSuccess);
  Send(fd.get(), internal::NcclFrameType::kHandle, 0, -1, 0, HandleFrame(eh, ev));
  Send(fd.get(), internal::NcclFrameType::kHandle, 0, 0, 4096,  // claims 4096 bytes only
       HandleFrame(mh, src_->dev->get()));
  std::string entry(internal::kIpcBlockEntryBytes, '\0');
  const uint64_t offset = 4096 - 128, bytes = 256;  // runs past the claimed region
  std::memcpy(&entry[8], &offset, 8);
  std::memcpy(&entry[16], &bytes, 8);
  Send(fd.get(), internal::NcclFrameType::kLayer, 33, 0, 0, entry);
  EXPECT_TRUE(Closed(fd.get()));
  EXPECT_EQ(rec.future.get().first.code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(dst.dev->Download(), std::vector<uint8_t>(256, 0xFF));
  cudaEventDestroy(ev);
}

TEST_F(IpcHostileTest, AHelloFromAnotherHostIsRefused) {
  internal::UniqueFd fd = Connect();
  Send(fd.get(), internal::NcclFrameType::kHello, 0, 0, 0,
       std::string(internal::kIpcNonceBytes, '\0') + "boot:some-other-machine");
  const internal::NcclFrame nack = Read(fd.get());
  EXPECT_EQ(nack.type, internal::NcclFrameType::kNack);
  EXPECT_EQ(static_cast<absl::StatusCode>(nack.arg0), absl::StatusCode::kFailedPrecondition);
  EXPECT_TRUE(Closed(fd.get()));
}

TEST_F(IpcHostileTest, ALinkThatNeverProvesASecretIsClosed) {
  internal::UniqueFd fd = Connect();
  Hello(fd.get());
  EXPECT_TRUE(Closed(fd.get()));  // verify_timeout_ms (2 s here)
  EXPECT_EQ(receiver_->stats().connections_timed_out, 1);
}

// ---- Across processes --------------------------------------------------------

#ifdef PDS_CUDA_EMU
// The emulation cannot share memory across processes: a handle from this
// process does not open in a child, and says why.
TEST(IpcEmulationTest, HandlesDoNotOpenInAnotherProcess) {
  DeviceArray<uint8_t> a(4096);
  cudaIpcMemHandle_t h;
  ASSERT_EQ(cudaIpcGetMemHandle(&h, a.get()), cudaSuccess);
  void* same = nullptr;
  ASSERT_EQ(cudaIpcOpenMemHandle(&same, h, cudaIpcMemLazyEnablePeerAccess), cudaSuccess);
  EXPECT_EQ(same, a.get());
  const pid_t child = fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    void* p = nullptr;
    _exit(cudaIpcOpenMemHandle(&p, h, 0) == cudaErrorInvalidResourceHandle && p == nullptr ? 0 : 1);
  }
  int status = 0;
  ASSERT_EQ(waitpid(child, &status, 0), child);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0);
}
#else
// A real GPU: the sender runs in a child process (this binary again, with
// the ChildSender test selected), as prefill and decode nodes would.
constexpr char kChildEnv[] = "PDSERVE_IPC_TEST_ENDPOINT";
constexpr int kChildLayers = 3, kChildBlocks = 4;
constexpr size_t kChildBlock = 4096;

TEST(IpcCrossProcessTest, ChildSender) {
  const char* endpoint = std::getenv(kChildEnv);
  if (endpoint == nullptr) GTEST_SKIP() << "runs only as the child of ReceivesFromAChildProcess";
  Pool src(kChildLayers, kChildBlocks, kChildBlock, 77, true);
  auto sender = IpcKvSender::Create();
  ASSERT_TRUE(sender.ok());
  ASSERT_TRUE((*sender)->RegisterRegion(src.dev->get(), src.host.size()).ok());
  auto h = (*sender)->StartTransfer(TransferId{99}, kSecret, endpoint, kChildLayers, In(60s));
  ASSERT_TRUE(h.ok()) << h.status();
  for (int l = 0; l < kChildLayers; ++l) ASSERT_TRUE((*h)->SendLayer(l, src.Const(l)).ok());
  ASSERT_TRUE((*h)->Finish("child").ok());
  ASSERT_TRUE((*h)->Wait().ok()) << (*h)->Wait();
}

TEST(IpcCrossProcessTest, ReceivesFromAChildProcess) {
  PDS_SKIP_WITHOUT_GPU();
  if (std::getenv(kChildEnv) != nullptr) GTEST_SKIP() << "the child runs ChildSender only";
  auto r = IpcKvReceiver::Create({});
  ASSERT_TRUE(r.ok()) << r.status();
  Pool dst(kChildLayers, kChildBlocks, kChildBlock, 0, false);
  Received rec;
  ASSERT_TRUE((*r)->Post(TransferId{99}, kSecret, dst.Views(), In(60s),
                         [&rec](absl::Status s, std::string t, ReceiveTiming) {
                           rec.done.set_value({std::move(s), std::move(t)});
                         })
                  .ok());
  const std::string env = std::string(kChildEnv) + "=" + (*r)->endpoint();
  std::vector<char*> envp;
  for (char** e = environ; *e != nullptr; ++e) envp.push_back(*e);
  envp.push_back(const_cast<char*>(env.c_str()));
  envp.push_back(nullptr);
  std::string filter = "--gtest_filter=IpcCrossProcessTest.ChildSender";
  char exe[] = "/proc/self/exe";
  char* argv[] = {exe, filter.data(), nullptr};
  pid_t child = 0;
  ASSERT_EQ(posix_spawn(&child, exe, nullptr, nullptr, argv, envp.data()), 0);
  int status = 0;
  ASSERT_EQ(waitpid(child, &status, 0), child);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << "child status " << status;
  auto done = rec.future.wait_for(30s);
  ASSERT_EQ(done, std::future_status::ready);
  auto [s, trailer] = rec.future.get();
  EXPECT_TRUE(s.ok()) << s;
  EXPECT_EQ(trailer, "child");
  EXPECT_EQ(dst.dev->Download(), Pool(kChildLayers, kChildBlocks, kChildBlock, 77, true).host);
}
#endif

}  // namespace
}  // namespace pdserve::transport
