// Host-staged KV transfer (transport/host_staged.h): device blocks over the
// tcp backend through pinned host buffers, as `--kv-transport tcp` with
// `--device cuda` runs it.
#include <chrono>
#include <future>
#include <random>
#include <string>
#include <thread>
#include <vector>

// First: selects the real or the emulated CUDA runtime.
#include "tests/unit/cuda/cuda_test_util.h"
//
#include "transport/device_send_handle.h"
#include "transport/host_staged.h"
#include "transport/tcp_receiver.h"
#include "transport/tcp_sender.h"

namespace pdserve::transport {
namespace {

using cuda_testing::DeviceArray;
using namespace std::chrono_literals;

const TransferSecret kSecret = *TransferSecret::FromBytes("0123456789abcdef");
Deadline In(std::chrono::milliseconds d) { return MonoClock::now() + d; }

// n_layers x n_blocks device blocks, layer-major in one allocation.
struct DeviceKv {
  int n_layers, n_blocks;
  size_t block;
  std::vector<uint8_t> host;
  DeviceArray<uint8_t> dev;
  DeviceKv(int layers, int blocks, size_t block_bytes, uint32_t seed)
      : n_layers(layers),
        n_blocks(blocks),
        block(block_bytes),
        host(Fill(layers * blocks * block_bytes, seed)),
        dev(host) {}
  static std::vector<uint8_t> Fill(size_t n, uint32_t seed) {
    std::vector<uint8_t> v(n, 0xFF);
    if (seed == 0) return v;  // poisoned: unwritten bytes show
    std::mt19937 rng(seed);
    for (uint8_t& b : v) b = static_cast<uint8_t>(rng());
    return v;
  }
  uint8_t* at(int l, int i) const { return dev.get() + (size_t(l) * n_blocks + i) * block; }
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
};

struct Received {
  std::promise<std::pair<absl::Status, std::string>> done;
  std::future<std::pair<absl::Status, std::string>> future = done.get_future();
};

class HostStagedTest : public ::testing::Test {
 protected:
  void SetUp() override {
    PDS_SKIP_WITHOUT_GPU();
    TcpSenderOptions so;
    so.checksum = true;
    auto s = TcpKvSender::Create(so);
    ASSERT_TRUE(s.ok());
    auto staged = MakeHostStagedSender(std::move(*s));
    ASSERT_TRUE(staged.ok()) << staged.status();
    sender_ = std::move(*staged);
    auto r = TcpKvReceiver::Create({});
    ASSERT_TRUE(r.ok());
    auto staged_r = MakeHostStagedReceiver(std::move(*r));
    ASSERT_TRUE(staged_r.ok()) << staged_r.status();
    receiver_ = std::move(*staged_r);
  }
  void Post(TransferId x, const DeviceKv& dst, Received* rec) {
    ASSERT_TRUE(receiver_
                    ->Post(x, kSecret, dst.Views(), In(20s),
                           [rec](absl::Status s, std::string t, ReceiveTiming) {
                             rec->done.set_value({std::move(s), std::move(t)});
                           })
                    .ok());
  }
  std::unique_ptr<KvSender> sender_;
  std::unique_ptr<KvReceiver> receiver_;
};

TEST_F(HostStagedTest, DeviceBlocksArriveInDeviceBlocks) {
  DeviceKv src(3, 5, 3000, 7), dst(3, 5, 3000, 0);
  Received rec;
  Post(TransferId{1}, dst, &rec);
  auto h = sender_->StartTransfer(TransferId{1}, kSecret, receiver_->endpoint(), 3, In(20s));
  ASSERT_TRUE(h.ok()) << h.status();
  auto* dh = dynamic_cast<DeviceKvSendHandle*>(h->get());
  ASSERT_NE(dh, nullptr);
  cudaEvent_t ev;
  ASSERT_EQ(cudaEventCreateWithFlags(&ev, cudaEventDisableTiming), cudaSuccess);
  for (int l = 2; l >= 0; --l) {
    ASSERT_EQ(cudaEventRecord(ev, nullptr), cudaSuccess);
    ASSERT_TRUE(dh->SendLayerAfter(l, src.Const(l), ev).ok());
  }
  ASSERT_TRUE((*h)->Finish("tok").ok());
  EXPECT_TRUE((*h)->Wait().ok()) << (*h)->Wait();
  auto [s, trailer] = rec.future.get();
  EXPECT_TRUE(s.ok()) << s;
  EXPECT_EQ(trailer, "tok");
  EXPECT_EQ(dst.dev.Download(), src.host);
  cudaEventDestroy(ev);
}

TEST_F(HostStagedTest, NothingReachesTheDeviceBlocksAfterACancel) {
  DeviceKv src(2, 2, 1024, 8), dst(2, 2, 1024, 0);
  Received rec;
  Post(TransferId{2}, dst, &rec);
  auto h = sender_->StartTransfer(TransferId{2}, kSecret, receiver_->endpoint(), 2, In(20s));
  ASSERT_TRUE(h.ok());
  ASSERT_TRUE((*h)->SendLayer(0, src.Const(0)).ok());
  std::this_thread::sleep_for(50ms);
  ASSERT_TRUE(receiver_->Cancel(TransferId{2}).ok());
  EXPECT_EQ(rec.future.get().first.code(), absl::StatusCode::kCancelled);
  (*h)->SendLayer(1, src.Const(1)).IgnoreError();
  (*h)->Finish("").IgnoreError();
  EXPECT_EQ((*h)->Wait().code(), absl::StatusCode::kCancelled) << (*h)->Wait();
  EXPECT_EQ(dst.dev.Download(), DeviceKv::Fill(2 * 2 * 1024, 0));
}

TEST_F(HostStagedTest, SenderAbortAndSizeMismatchFailBothSides) {
  DeviceKv src(1, 3, 512, 9), dst(1, 2, 512, 0);  // one block short
  Received rec;
  Post(TransferId{3}, dst, &rec);
  auto h = sender_->StartTransfer(TransferId{3}, kSecret, receiver_->endpoint(), 1, In(20s));
  ASSERT_TRUE(h.ok());
  ASSERT_TRUE((*h)->SendLayer(0, src.Const(0)).ok());
  (*h)->Finish("").IgnoreError();
  EXPECT_EQ((*h)->Wait().code(), absl::StatusCode::kInvalidArgument) << (*h)->Wait();
  EXPECT_EQ(rec.future.get().first.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(dst.dev.Download(), DeviceKv::Fill(2 * 512, 0));

  DeviceKv dst2(1, 3, 512, 0);
  Received rec2;
  Post(TransferId{4}, dst2, &rec2);
  auto h2 = sender_->StartTransfer(TransferId{4}, kSecret, receiver_->endpoint(), 1, In(20s));
  ASSERT_TRUE(h2.ok());
  (*h2)->Abort();
  EXPECT_EQ((*h2)->Wait().code(), absl::StatusCode::kCancelled);
  EXPECT_EQ(rec2.future.get().first.code(), absl::StatusCode::kAborted);
}

// The control path is tcp's: a sender without the secret is refused and
// the genuine one still gets through.
TEST_F(HostStagedTest, ASenderWithoutTheSecretIsRefused) {
  DeviceKv src(1, 2, 512, 10), dst(1, 2, 512, 0);
  Received rec;
  Post(TransferId{5}, dst, &rec);
  const TransferSecret wrong = *TransferSecret::FromBytes("fedcba9876543210");
  auto forged = sender_->StartTransfer(TransferId{5}, wrong, receiver_->endpoint(), 1, In(20s));
  ASSERT_TRUE(forged.ok());
  ASSERT_TRUE((*forged)->SendLayer(0, src.Const(0)).ok());
  (*forged)->Finish("forged").IgnoreError();
  EXPECT_EQ((*forged)->Wait().code(), absl::StatusCode::kPermissionDenied) << (*forged)->Wait();
  auto h = sender_->StartTransfer(TransferId{5}, kSecret, receiver_->endpoint(), 1, In(20s));
  ASSERT_TRUE(h.ok());
  ASSERT_TRUE((*h)->SendLayer(0, src.Const(0)).ok());
  ASSERT_TRUE((*h)->Finish("real").ok());
  EXPECT_TRUE((*h)->Wait().ok()) << (*h)->Wait();
  auto [s, trailer] = rec.future.get();
  EXPECT_TRUE(s.ok()) << s;
  EXPECT_EQ(trailer, "real");
  EXPECT_EQ(dst.dev.Download(), src.host);
}

}  // namespace
}  // namespace pdserve::transport
