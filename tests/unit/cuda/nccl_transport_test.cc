// NCCL: raw send/recv with the KV pack/unpack kernels (one GPU sends to
// itself inside one communicator group), and the NCCL KV transport end to
// end (sender and receiver in this process: on GPUs 0 and 1, since NCCL puts
// one rank per GPU; on the emulation, everywhere).
#include <sys/socket.h>
#include <sys/time.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <future>
#include <random>
#include <thread>
#include <vector>

// First: selects the real or the emulated CUDA runtime.
#include "tests/unit/cuda/cuda_test_util.h"
//
#include "kernels/cuda/kv_pack.h"
#include "transport/nccl_compat.h"
#include "transport/nccl_receiver.h"
#include "transport/nccl_sender.h"
#include "transport/nccl_wire.h"
#include "transport/transfer_auth.h"

namespace pdserve::transport {
namespace {

using cuda_testing::DeviceArray;
using namespace std::chrono_literals;

// Every transfer here uses one secret: these tests are about moving bytes
// (tests/unit/transport/ covers wrong secrets).
const TransferSecret kSecret = *TransferSecret::FromBytes("0123456789abcdef");

std::vector<uint8_t> RandomBytes(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<uint8_t> v(n);
  for (uint8_t& b : v) b = static_cast<uint8_t>(rng());
  return v;
}

TEST(NcclTest, SelfSendRecvWithPackUnpack) {
  PDS_SKIP_WITHOUT_GPU();
  ASSERT_EQ(cudaSetDevice(0), cudaSuccess);
  ncclUniqueId id;
  ASSERT_EQ(ncclGetUniqueId(&id), ncclSuccess);
  ncclComm_t comm = nullptr;
  ASSERT_EQ(ncclCommInitRank(&comm, 1, id, 0), ncclSuccess);
  cudaStream_t stream;
  ASSERT_EQ(cudaStreamCreate(&stream), cudaSuccess);

  // A pool of 10 blocks; blocks 7, 2, 5 travel into another pool's 0, 9, 4.
  const int64_t block = 4096, n = 3;
  const std::vector<uint8_t> pool = RandomBytes(10 * block, 1);
  DeviceArray<uint8_t> d_src(pool), d_dst(10 * block), d_send(n * block), d_recv(n * block);
  d_dst.Poison();
  std::vector<uint8_t*> src = {d_src.get() + 7 * block, d_src.get() + 2 * block,
                               d_src.get() + 5 * block};
  std::vector<uint8_t*> dst = {d_dst.get(), d_dst.get() + 9 * block, d_dst.get() + 4 * block};
  DeviceArray<uint8_t*> d_src_ptrs(src), d_dst_ptrs(dst);
  ASSERT_EQ(
      kernels::cuda::GatherBlocks(
          d_send.get(), reinterpret_cast<const void* const*>(d_src_ptrs.get()), block, n, stream),
      cudaSuccess);
  ASSERT_EQ(ncclGroupStart(), ncclSuccess);
  ASSERT_EQ(ncclSend(d_send.get(), n * block, ncclUint8, 0, comm, stream), ncclSuccess);
  ASSERT_EQ(ncclRecv(d_recv.get(), n * block, ncclUint8, 0, comm, stream), ncclSuccess);
  ASSERT_EQ(ncclGroupEnd(), ncclSuccess);
  ASSERT_EQ(kernels::cuda::ScatterBlocks(reinterpret_cast<void* const*>(d_dst_ptrs.get()),
                                         d_recv.get(), block, n, stream),
            cudaSuccess);
  ASSERT_EQ(cudaStreamSynchronize(stream), cudaSuccess);
  const std::vector<uint8_t> got = d_dst.Download();
  const int from[] = {7, 2, 5}, to[] = {0, 9, 4};
  for (int i = 0; i < n; ++i) {
    EXPECT_EQ(0, std::memcmp(&got[to[i] * block], &pool[from[i] * block], block)) << i;
  }
  ncclCommDestroy(comm);
  cudaStreamDestroy(stream);
}

// Devices for an end-to-end transfer, or a reason to skip.
bool TwoRanks(int* sender_dev, int* receiver_dev, std::string* why) {
  if (!cuda_testing::HaveGpu(why)) return false;
  if (cuda_testing::Emulated()) {
    *sender_dev = *receiver_dev = 0;
    return true;
  }
  if (cuda_testing::GpuCount() < 2) {
    *why = "the NCCL transport needs two GPUs (NCCL puts one rank per GPU); skipped";
    return false;
  }
  *sender_dev = 0;
  *receiver_dev = 1;
  return true;
}

// n_layers layers of n_blocks blocks of block bytes on one device, random.
struct KvBlocks {
  int device = 0;
  int64_t block = 0;
  std::vector<std::unique_ptr<DeviceArray<uint8_t>>> layers;
  std::vector<std::vector<uint8_t>> host;

  KvBlocks(int dev, int n_layers, int n_blocks, int64_t block_bytes, uint32_t seed, bool fill)
      : device(dev), block(block_bytes) {
    cudaSetDevice(dev);
    for (int l = 0; l < n_layers; ++l) {
      host.push_back(fill ? RandomBytes(n_blocks * block_bytes, seed + l)
                          : std::vector<uint8_t>(n_blocks * block_bytes, 0));
      layers.push_back(std::make_unique<DeviceArray<uint8_t>>(host.back()));
    }
  }
  std::vector<ConstBlockView> Const(int l) const {
    std::vector<ConstBlockView> v;
    for (size_t i = 0; i < host[l].size() / block; ++i) {
      v.push_back({layers[l]->get() + i * block, static_cast<size_t>(block)});
    }
    return v;
  }
  std::vector<std::vector<BlockView>> Views() const {
    std::vector<std::vector<BlockView>> out;
    for (size_t l = 0; l < layers.size(); ++l) {
      std::vector<BlockView> v;
      for (size_t i = 0; i < host[l].size() / block; ++i) {
        v.push_back({layers[l]->get() + i * block, static_cast<size_t>(block)});
      }
      out.push_back(std::move(v));
    }
    return out;
  }
  std::vector<uint8_t> Read(int l) const {
    cudaSetDevice(device);
    return layers[l]->Download();
  }
};

class NcclTransportTest : public ::testing::Test {
 protected:
  void SetUp() override {
    PDS_SKIP_WITHOUT_GPU();
    std::string why;
    if (!TwoRanks(&send_dev_, &recv_dev_, &why)) GTEST_SKIP() << why;
    NcclReceiverOptions ro;
    ro.device = recv_dev_;
    auto r = NcclKvReceiver::Create(ro);
    ASSERT_TRUE(r.ok()) << r.status();
    receiver_ = std::move(*r);
    NcclSenderOptions so;
    so.device = send_dev_;
    so.stuck_grace_ms = 500;
    auto s = NcclKvSender::Create(so);
    ASSERT_TRUE(s.ok()) << s.status();
    sender_ = std::move(*s);
  }

  struct Received {
    std::promise<std::pair<absl::Status, std::string>> done;
    std::future<std::pair<absl::Status, std::string>> future = done.get_future();
  };
  void Post(TransferId x, const KvBlocks& dst, Deadline deadline, Received* rec) {
    ASSERT_TRUE(receiver_
                    ->Post(x, kSecret, dst.Views(), deadline,
                           [rec](absl::Status s, std::string trailer, ReceiveTiming) {
                             rec->done.set_value({std::move(s), std::move(trailer)});
                           })
                    .ok());
  }

  int send_dev_ = 0, recv_dev_ = 0;
  std::unique_ptr<NcclKvReceiver> receiver_;
  std::unique_ptr<NcclKvSender> sender_;
};

Deadline In(std::chrono::milliseconds d) { return MonoClock::now() + d; }

TEST_F(NcclTransportTest, MovesEveryLayerAndTheTrailer) {
  const int n_layers = 4, n_blocks = 6;
  const int64_t block = 2 * 8 * 16 * 128 * 2;  // one layer's share of a 16-token block
  KvBlocks src(send_dev_, n_layers, n_blocks, block, 10, true);
  KvBlocks dst(recv_dev_, n_layers, n_blocks, block, 0, false);
  for (uint64_t round = 1; round <= 2; ++round) {  // the second reuses the link
    SCOPED_TRACE("round " + std::to_string(round));
    Received rec;
    Post(TransferId{round}, dst, In(20s), &rec);
    auto h = sender_->StartTransfer(TransferId{round}, kSecret, receiver_->endpoint(), n_layers,
                                    In(20s));
    ASSERT_TRUE(h.ok()) << h.status();
    for (int l = n_layers - 1; l >= 0; --l) {  // any order
      ASSERT_TRUE((*h)->SendLayer(l, src.Const(l)).ok());
    }
    ASSERT_TRUE((*h)->Finish("token #1").ok());
    EXPECT_TRUE((*h)->Wait().ok()) << (*h)->Wait();
    auto [status, trailer] = rec.future.get();
    EXPECT_TRUE(status.ok()) << status;
    EXPECT_EQ(trailer, "token #1");
    for (int l = 0; l < n_layers; ++l) EXPECT_EQ(dst.Read(l), src.host[l]) << "layer " << l;
  }
  EXPECT_EQ(sender_->stats().transfers_ok, 2);
  EXPECT_EQ(receiver_->stats().transfers_ok, 2);
  EXPECT_EQ(sender_->stats().bytes, 2 * n_layers * n_blocks * block);
}

TEST_F(NcclTransportTest, DataWaitsForAPostThatComesLater) {
  KvBlocks src(send_dev_, 2, 3, 1024, 20, true);
  KvBlocks dst(recv_dev_, 2, 3, 1024, 0, false);
  auto h = sender_->StartTransfer(TransferId{7}, kSecret, receiver_->endpoint(), 2, In(20s));
  ASSERT_TRUE(h.ok()) << h.status();
  ASSERT_TRUE((*h)->SendLayer(0, src.Const(0)).ok());
  ASSERT_TRUE((*h)->SendLayer(1, src.Const(1)).ok());
  ASSERT_TRUE((*h)->Finish("").ok());
  std::this_thread::sleep_for(100ms);
  EXPECT_FALSE((*h)->Poll().has_value());
  Received rec;
  Post(TransferId{7}, dst, In(20s), &rec);
  EXPECT_TRUE((*h)->Wait().ok());
  EXPECT_TRUE(rec.future.get().first.ok());
  EXPECT_EQ(dst.Read(1), src.host[1]);
}

TEST_F(NcclTransportTest, SizeMismatchFailsBothSides) {
  KvBlocks src(send_dev_, 1, 3, 1024, 30, true);
  KvBlocks dst(recv_dev_, 1, 2, 1024, 0, false);  // one block short
  Received rec;
  Post(TransferId{9}, dst, In(20s), &rec);
  auto h = sender_->StartTransfer(TransferId{9}, kSecret, receiver_->endpoint(), 1, In(20s));
  ASSERT_TRUE(h.ok());
  ASSERT_TRUE((*h)->SendLayer(0, src.Const(0)).ok());
  (*h)->Finish("").IgnoreError();
  EXPECT_EQ((*h)->Wait().code(), absl::StatusCode::kInvalidArgument) << (*h)->Wait();
  EXPECT_EQ(rec.future.get().first.code(), absl::StatusCode::kInvalidArgument);
  // The link still works.
  KvBlocks dst2(recv_dev_, 1, 3, 1024, 0, false);
  Received rec2;
  Post(TransferId{10}, dst2, In(20s), &rec2);
  auto h2 = sender_->StartTransfer(TransferId{10}, kSecret, receiver_->endpoint(), 1, In(20s));
  ASSERT_TRUE(h2.ok());
  ASSERT_TRUE((*h2)->SendLayer(0, src.Const(0)).ok());
  ASSERT_TRUE((*h2)->Finish("").ok());
  EXPECT_TRUE((*h2)->Wait().ok());
  EXPECT_TRUE(rec2.future.get().first.ok());  // the Ack can overtake on_done
  EXPECT_EQ(dst2.Read(0), src.host[0]);
}

TEST_F(NcclTransportTest, ReceiverCancelReachesTheSender) {
  KvBlocks dst(recv_dev_, 2, 2, 512, 0, false);
  Received rec;
  Post(TransferId{11}, dst, In(20s), &rec);
  auto h = sender_->StartTransfer(TransferId{11}, kSecret, receiver_->endpoint(), 2, In(20s));
  ASSERT_TRUE(h.ok());
  std::this_thread::sleep_for(50ms);
  ASSERT_TRUE(receiver_->Cancel(TransferId{11}).ok());
  EXPECT_EQ(rec.future.get().first.code(), absl::StatusCode::kCancelled);
  EXPECT_EQ((*h)->Wait().code(), absl::StatusCode::kCancelled) << (*h)->Wait();
}

TEST_F(NcclTransportTest, DeadlinesFailBothSides) {
  KvBlocks src(send_dev_, 1, 2, 512, 40, true);
  auto h = sender_->StartTransfer(TransferId{12}, kSecret, receiver_->endpoint(), 1, In(300ms));
  ASSERT_TRUE(h.ok());
  ASSERT_TRUE((*h)->SendLayer(0, src.Const(0)).ok());
  // Nobody posts: the sender gives up at its deadline.
  EXPECT_EQ((*h)->Wait().code(), absl::StatusCode::kDeadlineExceeded) << (*h)->Wait();
  KvBlocks dst(recv_dev_, 1, 2, 512, 0, false);
  Received rec;
  Post(TransferId{13}, dst, In(300ms), &rec);  // no sender shows up
  EXPECT_EQ(rec.future.get().first.code(), absl::StatusCode::kDeadlineExceeded);
}

TEST_F(NcclTransportTest, ADeadReceiverFailsTransfersPromptly) {
  KvBlocks src(send_dev_, 2, 2, 512, 50, true);
  auto h = sender_->StartTransfer(TransferId{14}, kSecret, receiver_->endpoint(), 2, In(30s));
  ASSERT_TRUE(h.ok());
  ASSERT_TRUE((*h)->SendLayer(0, src.Const(0)).ok());
  const std::string old_endpoint = receiver_->endpoint();
  receiver_.reset();  // the peer goes away
  const auto start = MonoClock::now();
  EXPECT_EQ((*h)->Wait().code(), absl::StatusCode::kUnavailable) << (*h)->Wait();
  EXPECT_LT(MonoClock::now() - start, 10s);
  // A fresh receiver at a new endpoint gets a fresh link.
  NcclReceiverOptions ro;
  ro.device = recv_dev_;
  auto r = NcclKvReceiver::Create(ro);
  ASSERT_TRUE(r.ok());
  receiver_ = std::move(*r);
  KvBlocks dst(recv_dev_, 2, 2, 512, 0, false);
  Received rec;
  Post(TransferId{15}, dst, In(20s), &rec);
  auto h2 = sender_->StartTransfer(TransferId{15}, kSecret, receiver_->endpoint(), 2, In(20s));
  ASSERT_TRUE(h2.ok()) << h2.status();
  ASSERT_TRUE((*h2)->SendLayer(0, src.Const(0)).ok());
  ASSERT_TRUE((*h2)->SendLayer(1, src.Const(1)).ok());
  ASSERT_TRUE((*h2)->Finish("").ok());
  EXPECT_TRUE((*h2)->Wait().ok()) << (*h2)->Wait();
  EXPECT_TRUE(rec.future.get().first.ok());
  EXPECT_EQ(dst.Read(1), src.host[1]);
  // The old endpoint is unreachable now.
  auto gone = sender_->StartTransfer(TransferId{16}, kSecret, old_endpoint, 1, In(5s));
  EXPECT_FALSE(gone.ok());
}

TEST_F(NcclTransportTest, BadArgumentsAreErrors) {
  EXPECT_EQ(
      sender_->StartTransfer(TransferId{20}, kSecret, "tcp:1.2.3.4:5", 1, In(1s)).status().code(),
      absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(sender_->StartTransfer(TransferId{20}, kSecret, receiver_->endpoint(), 0, In(1s))
                .status()
                .code(),
            absl::StatusCode::kInvalidArgument);
  auto h = sender_->StartTransfer(TransferId{21}, kSecret, receiver_->endpoint(), 1, In(5s));
  ASSERT_TRUE(h.ok());
  EXPECT_EQ(sender_->StartTransfer(TransferId{21}, kSecret, receiver_->endpoint(), 1, In(5s))
                .status()
                .code(),
            absl::StatusCode::kAlreadyExists);
  EXPECT_EQ((*h)->SendLayer(1, {}).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ((*h)->Finish("").code(), absl::StatusCode::kFailedPrecondition);
  (*h)->Abort();
  EXPECT_EQ((*h)->Wait().code(), absl::StatusCode::kCancelled);
}

// The control port against anonymous peers: connections beyond the cap are
// closed at once, the others once they fail to prove a secret in time, a
// forged Begin is refused, and the genuine sender still gets through.
TEST_F(NcclTransportTest, ControlPortFloodIsCappedAndForgedBeginsAreRefused) {
  Received rec;  // outlives the receiver, whose shutdown may still call back into it
  NcclReceiverOptions ro;
  ro.device = recv_dev_;
  ro.max_connections = 3;
  ro.verify_timeout_ms = 2000;
  auto r = NcclKvReceiver::Create(ro);
  ASSERT_TRUE(r.ok()) << r.status();
  std::unique_ptr<NcclKvReceiver> receiver = std::move(*r);
  auto hp =
      internal::ParseHostPort(receiver->endpoint().substr(std::strlen(internal::kNcclScheme)));
  ASSERT_TRUE(hp.ok());
  auto closed = [](int fd) {  // true once the receiver closed it (blocks until then)
    timeval tv{30, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    char buf[256];
    for (;;) {
      ssize_t n = ::recv(fd, buf, sizeof(buf), 0);
      if (n == 0) return true;
      if (n < 0) return errno == ECONNRESET;
    }
  };

  std::vector<internal::UniqueFd> flood;
  for (int i = 0; i < 3; ++i) {
    auto fd = internal::ConnectBlocking(*hp, 5000);
    ASSERT_TRUE(fd.ok()) << fd.status();
    flood.push_back(std::move(*fd));
  }
  // The first brings a Hello and a forged Begin for a posted transfer.
  KvBlocks dst(recv_dev_, 1, 1, 256, 0, false);
  ASSERT_TRUE(receiver
                  ->Post(TransferId{40}, kSecret, dst.Views(), In(20s),
                         [&rec](absl::Status s, std::string t, ReceiveTiming) {
                           rec.done.set_value({std::move(s), std::move(t)});
                         })
                  .ok());
  internal::NcclFrame hello;
  hello.type = internal::NcclFrameType::kHello;
  hello.payload.assign(sizeof(ncclUniqueId), '\x5a');
  ASSERT_TRUE(internal::WriteNcclFrame(flood[0].get(), hello).ok());
  internal::NcclFrame begin;
  begin.type = internal::NcclFrameType::kBegin;
  begin.xfer = 40;
  begin.arg0 = 1;
  begin.arg1 = 10000;
  begin.payload.assign(kAuthTagBytes, '\x01');
  ASSERT_TRUE(internal::WriteNcclFrame(flood[0].get(), begin).ok());
  internal::NcclFrame nack;
  ASSERT_TRUE(internal::ReadNcclFrame(flood[0].get(), &nack).ok());
  EXPECT_EQ(nack.type, internal::NcclFrameType::kNack);
  EXPECT_EQ(static_cast<absl::StatusCode>(nack.arg0), absl::StatusCode::kPermissionDenied);
  // Over the cap: closed at once.
  auto extra = internal::ConnectBlocking(*hp, 5000);
  ASSERT_TRUE(extra.ok());
  EXPECT_TRUE(closed(extra->get()));
  // Never verified: closed after verify_timeout_ms.
  for (auto& fd : flood) EXPECT_TRUE(closed(fd.get()));
  flood.clear();
  EXPECT_GE(receiver->stats().connections_refused, 1);
  EXPECT_EQ(receiver->stats().begins_refused, 1);

  // The genuine sender now connects and delivers transfer 40.
  KvBlocks src(send_dev_, 1, 1, 256, 30, true);
  // The receiver frees a timed-out link's slot before it closes the socket
  // (ControlPort::Kill), so once the flood saw its sockets close there is
  // room: no retry.
  auto h = sender_->StartTransfer(TransferId{40}, kSecret, receiver->endpoint(), 1, In(20s));
  ASSERT_TRUE(h.ok()) << h.status();
  ASSERT_TRUE((*h)->SendLayer(0, src.Const(0)).ok());
  ASSERT_TRUE((*h)->Finish("t").ok());
  EXPECT_TRUE((*h)->Wait().ok()) << (*h)->Wait();
  auto [status, trailer] = rec.future.get();
  EXPECT_TRUE(status.ok()) << status;
  EXPECT_EQ(trailer, "t");
  EXPECT_EQ(dst.Read(0), src.host[0]);
}

}  // namespace
}  // namespace pdserve::transport
