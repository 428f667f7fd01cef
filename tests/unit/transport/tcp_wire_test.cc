// The tcp backend against raw sockets: corrupt, malformed and hostile frames
// from either side fail a transfer or close a connection, never crash or
// write outside the posted blocks.
#include <fcntl.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "tests/unit/transport/test_util.h"
#include "transport/tcp_receiver.h"
#include "transport/tcp_sender.h"
#include "transport/tcp_socket.h"
#include "transport/tcp_wire.h"

namespace pdserve::transport {
namespace {

using internal::EncodeFrameHeader;
using internal::EncodeSmallFrame;
using internal::FrameHeader;
using internal::FrameType;
using internal::kFrameHeaderBytes;
using testing::AllBytesAre;
using testing::Far;
using testing::In;
using testing::KvArena;
using testing::RecvResult;
using testing::WaitBounded;

constexpr uint8_t kBackground = 0xA5;
constexpr uint8_t kReused = 0x3C;

// ---------------------------------------------------------------------------
// Frame codec.

TEST(TcpWireTest, HeaderRoundTrips) {
  FrameHeader h;
  h.type = FrameType::kLayer;
  h.flags = internal::kFlagPayloadCrc;
  h.xfer_id = 0x0102030405060708ULL;
  h.arg0 = 29;
  h.arg1 = 3;
  h.payload_len = 3 * 8 + 3 * 12288;
  h.payload_crc = 0xDEADBEEF;
  uint8_t buf[kFrameHeaderBytes];
  EncodeFrameHeader(h, buf);
  EXPECT_EQ(std::string(reinterpret_cast<char*>(buf), 4), "PDKV");
  auto got = internal::DecodeFrameHeader(buf, internal::WireLimits{});
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(got->type, h.type);
  EXPECT_EQ(got->flags, h.flags);
  EXPECT_EQ(got->xfer_id, h.xfer_id);
  EXPECT_EQ(got->arg0, h.arg0);
  EXPECT_EQ(got->arg1, h.arg1);
  EXPECT_EQ(got->payload_len, h.payload_len);
  EXPECT_EQ(got->payload_crc, h.payload_crc);
}

// Encodes h, lets `mutate` damage the bytes, then decodes.
absl::Status DecodeMutated(FrameHeader h, void (*mutate)(uint8_t*), bool refresh_crc) {
  uint8_t buf[kFrameHeaderBytes];
  EncodeFrameHeader(h, buf);
  if (mutate) mutate(buf);
  if (refresh_crc) {
    uint32_t crc = internal::Crc32(0, buf, 36);
    for (int i = 0; i < 4; ++i) buf[36 + i] = static_cast<uint8_t>(crc >> (8 * i));
  }
  return internal::DecodeFrameHeader(buf, internal::WireLimits{}).status();
}

TEST(TcpWireTest, DecodeRejectsBadHeaders) {
  FrameHeader begin;
  begin.type = FrameType::kBegin;
  begin.arg0 = 30;
  EXPECT_TRUE(DecodeMutated(begin, nullptr, false).ok());
  EXPECT_FALSE(DecodeMutated(
                   begin, [](uint8_t* b) { b[0] ^= 1; }, true)
                   .ok());  // magic
  EXPECT_FALSE(DecodeMutated(
                   begin, [](uint8_t* b) { b[4] = 9; }, true)
                   .ok());  // version
  EXPECT_FALSE(DecodeMutated(
                   begin, [](uint8_t* b) { b[6] = 0; }, true)
                   .ok());  // type
  EXPECT_FALSE(DecodeMutated(
                   begin, [](uint8_t* b) { b[6] = 99; }, true)
                   .ok());  // type
  EXPECT_FALSE(DecodeMutated(
                   begin, [](uint8_t* b) { b[7] = 0x80; }, true)
                   .ok());  // flags
  EXPECT_EQ(DecodeMutated(
                begin, [](uint8_t* b) { b[10] ^= 4; }, false)
                .code(),
            absl::StatusCode::kDataLoss);  // header checksum

  FrameHeader bad = begin;
  bad.arg0 = 0;  // no layers
  EXPECT_FALSE(DecodeMutated(bad, nullptr, false).ok());
  bad = begin;
  bad.payload_len = 1;
  EXPECT_FALSE(DecodeMutated(bad, nullptr, false).ok());

  FrameHeader layer;
  layer.type = FrameType::kLayer;
  layer.arg1 = 2;
  layer.payload_len = 16 + 100;
  EXPECT_TRUE(DecodeMutated(layer, nullptr, false).ok());
  layer.payload_len = uint64_t{1} << 50;  // absurd
  EXPECT_FALSE(DecodeMutated(layer, nullptr, false).ok());
  layer.payload_len = 8;  // shorter than its block table
  EXPECT_FALSE(DecodeMutated(layer, nullptr, false).ok());
  layer.arg1 = 0;
  layer.payload_len = 0;
  EXPECT_FALSE(DecodeMutated(layer, nullptr, false).ok());

  FrameHeader nack;
  nack.type = FrameType::kNack;
  nack.arg0 = 0;  // OK is not a failure
  EXPECT_FALSE(DecodeMutated(nack, nullptr, false).ok());
  FrameHeader trailer;
  trailer.type = FrameType::kTrailer;
  trailer.payload_len = uint64_t{1} << 33;
  EXPECT_FALSE(DecodeMutated(trailer, nullptr, false).ok());
}

TEST(TcpWireTest, ParsesEndpoints) {
  auto a = internal::ParseHostPort("10.0.0.7:5555");
  ASSERT_TRUE(a.ok());
  EXPECT_EQ(a->host, "10.0.0.7");
  EXPECT_EQ(a->port, 5555);
  auto b = internal::ParseHostPort("[::1]:80");
  ASSERT_TRUE(b.ok());
  EXPECT_EQ(b->host, "::1");
  EXPECT_EQ(internal::FormatHostPort("::1", 80), "[::1]:80");
  EXPECT_FALSE(internal::ParseHostPort("host").ok());
  EXPECT_FALSE(internal::ParseHostPort("host:0").ok());
  EXPECT_FALSE(internal::ParseHostPort("host:70000").ok());
  EXPECT_FALSE(internal::ParseHostPort("::1:80").ok());
  EXPECT_FALSE(internal::ParseHostPort(":80").ok());
}

// ---------------------------------------------------------------------------
// Raw peers.

void SetTimeouts(int fd) {
  timeval tv{};
  tv.tv_sec = 30;
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
}

// A blocking socket speaking (or abusing) the wire format.
class RawPeer {
 public:
  explicit RawPeer(internal::UniqueFd fd) : fd_(std::move(fd)) {
    int flags = fcntl(fd_.get(), F_GETFL, 0);
    fcntl(fd_.get(), F_SETFL, flags & ~O_NONBLOCK);
    SetTimeouts(fd_.get());
  }
  static std::unique_ptr<RawPeer> Connect(const std::string& endpoint) {
    auto hp = internal::ParseHostPort(endpoint);
    EXPECT_TRUE(hp.ok());
    auto fd = internal::StartConnectTcp(*hp);
    EXPECT_TRUE(fd.ok()) << fd.status();
    auto peer = std::make_unique<RawPeer>(std::move(*fd));
    // Wait for the non-blocking connect to finish.
    fd_set w;
    FD_ZERO(&w);
    FD_SET(peer->fd_.get(), &w);
    timeval tv{30, 0};
    select(peer->fd_.get() + 1, nullptr, &w, nullptr, &tv);
    return peer;
  }

  bool Send(const std::string& bytes) {
    size_t off = 0;
    while (off < bytes.size()) {
      ssize_t n = ::send(fd_.get(), bytes.data() + off, bytes.size() - off, MSG_NOSIGNAL);
      if (n <= 0) return false;
      off += n;
    }
    return true;
  }
  bool SendFrame(FrameHeader h, const std::string& payload = "", bool checksum = true) {
    return Send(EncodeSmallFrame(h, payload, checksum));
  }

  // Reads one frame, or an error on EOF / reset / timeout.
  absl::StatusOr<std::pair<FrameHeader, std::string>> ReadFrame() {
    uint8_t header[kFrameHeaderBytes];
    if (!ReadExactly(header, sizeof(header))) return absl::UnavailableError("closed");
    auto h = internal::DecodeFrameHeader(header, internal::WireLimits{});
    if (!h.ok()) return h.status();
    std::string payload(h->payload_len, '\0');
    if (!ReadExactly(payload.data(), payload.size())) return absl::UnavailableError("closed");
    return std::make_pair(*h, payload);
  }

  // True once the other side closed the connection (EOF or reset); false on
  // timeout. Discards anything it sent before.
  bool WaitClosed() {
    char buf[4096];
    while (true) {
      ssize_t n = ::recv(fd_.get(), buf, sizeof(buf), 0);
      if (n == 0) return true;
      if (n < 0) return errno == ECONNRESET;
    }
  }

  int fd() const { return fd_.get(); }

 private:
  bool ReadExactly(void* dst, size_t bytes) {
    size_t got = 0;
    while (got < bytes) {
      ssize_t n = ::recv(fd_.get(), static_cast<char*>(dst) + got, bytes - got, 0);
      if (n <= 0) return false;
      got += n;
    }
    return true;
  }

  internal::UniqueFd fd_;
};

FrameHeader Begin(uint64_t xfer, uint32_t n_layers, uint32_t budget_ms = 60000) {
  FrameHeader h;
  h.type = FrameType::kBegin;
  h.xfer_id = xfer;
  h.arg0 = n_layers;
  h.arg1 = budget_ms;
  return h;
}

FrameHeader Simple(FrameType type, uint64_t xfer) {
  FrameHeader h;
  h.type = type;
  h.xfer_id = xfer;
  return h;
}

// A Layer frame for `blocks`, as bytes ready to send.
std::string LayerFrame(uint64_t xfer, uint32_t layer, const std::vector<std::string>& blocks,
                       bool checksum = true) {
  std::string payload(blocks.size() * 8, '\0');
  for (size_t i = 0; i < blocks.size(); ++i) {
    internal::PutU64Le(blocks[i].size(), reinterpret_cast<uint8_t*>(payload.data()) + 8 * i);
  }
  for (const auto& b : blocks) payload += b;
  FrameHeader h;
  h.type = FrameType::kLayer;
  h.xfer_id = xfer;
  h.arg0 = layer;
  h.arg1 = static_cast<uint32_t>(blocks.size());
  return EncodeSmallFrame(h, payload, checksum);
}

std::unique_ptr<TcpKvReceiver> NewReceiver(TcpReceiverOptions options = {}) {
  auto r = TcpKvReceiver::Create(options);
  EXPECT_TRUE(r.ok()) << r.status();
  return std::move(*r);
}

// Expects the next frame from the receiver to be `type` for xfer.
void ExpectFrame(RawPeer& peer, FrameType type, uint64_t xfer,
                 absl::StatusCode code = absl::StatusCode::kOk) {
  auto f = peer.ReadFrame();
  ASSERT_TRUE(f.ok()) << f.status();
  EXPECT_EQ(f->first.type, type) << internal::FrameTypeName(f->first.type) << ": " << f->second;
  EXPECT_EQ(f->first.xfer_id, xfer);
  if (type == FrameType::kNack) {
    EXPECT_EQ(static_cast<absl::StatusCode>(f->first.arg0), code);
  }
}

TcpSenderOptions ChecksummedSender() {
  TcpSenderOptions options;
  options.checksum = true;
  return options;
}

// A full, correct transfer through the real sender: the receiver still works.
void ExpectReceiverHealthy(TcpKvReceiver& receiver, uint64_t xfer) {
  KvArena src(2, 2, 512), dst(2, 2, 512);
  src.FillRandom(xfer);
  auto sender = TcpKvSender::Create(ChecksummedSender());
  ASSERT_TRUE(sender.ok());
  RecvResult got;
  ASSERT_TRUE(receiver.Post(TransferId{xfer}, dst.PostViews({1}), Far(), got.Callback()).ok());
  auto h = (*sender)->StartTransfer(TransferId{xfer}, receiver.endpoint(), 2, Far());
  ASSERT_TRUE(h.ok());
  ASSERT_TRUE((*h)->SendLayer(0, src.SendViews(0, {0})).ok());
  ASSERT_TRUE((*h)->SendLayer(1, src.SendViews(1, {0})).ok());
  ASSERT_TRUE((*h)->Finish("ok").ok());
  EXPECT_TRUE(WaitBounded(**h).ok());
  ASSERT_TRUE(got.Wait());
  EXPECT_TRUE(got.status().ok()) << got.status();
  EXPECT_EQ(std::memcmp(dst.Block(1, 1), src.Block(1, 0), 512), 0);
}

// ---------------------------------------------------------------------------
// Receiver against a raw sender.

TEST(TcpReceiverTest, ChecksumMismatchFailsTheTransferWithDataLoss) {
  auto receiver = NewReceiver();
  KvArena dst(1, 2, 256);
  dst.Fill(kBackground);
  RecvResult got;
  ASSERT_TRUE(receiver->Post(TransferId{1}, dst.PostViews({0, 1}), Far(), got.Callback()).ok());
  auto peer = RawPeer::Connect(receiver->endpoint());
  ASSERT_TRUE(peer->SendFrame(Begin(1, 1)));
  ExpectFrame(*peer, FrameType::kReady, 1);
  std::string frame = LayerFrame(1, 0, {std::string(256, 'a'), std::string(256, 'b')});
  frame[frame.size() - 3] ^= 0x20;  // one flipped bit in the data
  ASSERT_TRUE(peer->Send(frame));
  ASSERT_TRUE(got.Wait());
  EXPECT_EQ(got.status().code(), absl::StatusCode::kDataLoss) << got.status();
  ExpectFrame(*peer, FrameType::kNack, 1, absl::StatusCode::kDataLoss);
  EXPECT_EQ(receiver->stats().failures(absl::StatusCode::kDataLoss), 1);

  // The stream stayed in sync: the same connection carries the next transfer.
  ASSERT_TRUE(peer->SendFrame(Simple(FrameType::kAbort, 1)));
  RecvResult next;
  dst.Fill(kBackground);
  ASSERT_TRUE(receiver->Post(TransferId{2}, dst.PostViews({1, 0}), Far(), next.Callback()).ok());
  ASSERT_TRUE(peer->SendFrame(Begin(2, 1)));
  ExpectFrame(*peer, FrameType::kReady, 2);
  ASSERT_TRUE(peer->Send(LayerFrame(2, 0, {std::string(256, 'c'), std::string(256, 'd')})));
  ASSERT_TRUE(peer->SendFrame(Simple(FrameType::kTrailer, 2), "tok"));
  ExpectFrame(*peer, FrameType::kAck, 2);
  ASSERT_TRUE(next.Wait());
  EXPECT_TRUE(next.status().ok()) << next.status();
  EXPECT_EQ(next.trailer(), "tok");
  EXPECT_EQ(dst.Block(0, 1)[0], 'c');
  EXPECT_EQ(dst.Block(0, 0)[255], 'd');
}

TEST(TcpReceiverTest, TrailerChecksumMismatchIsDataLoss) {
  auto receiver = NewReceiver();
  KvArena dst(1, 1, 64);
  RecvResult got;
  ASSERT_TRUE(receiver->Post(TransferId{1}, dst.PostViews({0}), Far(), got.Callback()).ok());
  auto peer = RawPeer::Connect(receiver->endpoint());
  ASSERT_TRUE(peer->SendFrame(Begin(1, 1)));
  ExpectFrame(*peer, FrameType::kReady, 1);
  ASSERT_TRUE(peer->Send(LayerFrame(1, 0, {std::string(64, 'x')})));
  std::string trailer = EncodeSmallFrame(Simple(FrameType::kTrailer, 1), "token", true);
  trailer.back() ^= 1;
  ASSERT_TRUE(peer->Send(trailer));
  ASSERT_TRUE(got.Wait());
  EXPECT_EQ(got.status().code(), absl::StatusCode::kDataLoss) << got.status();
  ExpectFrame(*peer, FrameType::kNack, 1, absl::StatusCode::kDataLoss);
}

// Each of these closes the connection; the receiver keeps serving others.
TEST(TcpReceiverTest, MalformedFramesCloseTheConnection) {
  auto receiver = NewReceiver();
  std::vector<std::pair<std::string, std::string>> cases;
  cases.push_back({"garbage", std::string(kFrameHeaderBytes, '\x5a')});
  {
    std::string f = EncodeSmallFrame(Begin(1, 2), "", false);
    f[0] = 'X';
    cases.push_back({"bad magic", f});
  }
  {
    std::string f = EncodeSmallFrame(Begin(1, 2), "", false);
    f[20] ^= 1;  // header checksum no longer matches
    cases.push_back({"corrupt header", f});
  }
  {
    FrameHeader h = Simple(FrameType::kLayer, 1);
    h.arg1 = 1;
    h.payload_len = uint64_t{1} << 40;
    uint8_t buf[kFrameHeaderBytes];
    EncodeFrameHeader(h, buf);
    cases.push_back({"absurd length", std::string(reinterpret_cast<char*>(buf), sizeof(buf))});
  }
  {
    FrameHeader h = Simple(FrameType::kTrailer, 1);
    h.payload_len = uint64_t{1} << 30;
    uint8_t buf[kFrameHeaderBytes];
    EncodeFrameHeader(h, buf);
    cases.push_back({"huge trailer", std::string(reinterpret_cast<char*>(buf), sizeof(buf))});
  }
  cases.push_back({"wrong direction", EncodeSmallFrame(Simple(FrameType::kAck, 1), "", false)});
  cases.push_back({"data for unknown transfer", LayerFrame(77, 0, {std::string(100, 'z')})});
  cases.push_back({"trailer for unknown transfer",
                   EncodeSmallFrame(Simple(FrameType::kTrailer, 78), "t", false)});
  cases.push_back({"data before Ready", EncodeSmallFrame(Begin(79, 1), "", false) +
                                            LayerFrame(79, 0, {std::string(100, 'z')})});
  {
    // Block sizes that do not add up to the payload.
    std::string payload(8, '\0');
    internal::PutU64Le(1000, reinterpret_cast<uint8_t*>(payload.data()));
    payload += std::string(10, 'q');
    FrameHeader h = Simple(FrameType::kLayer, 80);
    h.arg1 = 1;
    cases.push_back({"inconsistent block table", EncodeSmallFrame(h, payload, false)});
  }
  for (const auto& [name, bytes] : cases) {
    SCOPED_TRACE(name);
    auto peer = RawPeer::Connect(receiver->endpoint());
    ASSERT_TRUE(peer->Send(bytes));
    EXPECT_TRUE(peer->WaitClosed());
  }
  // A sender that vanishes mid-header or mid-payload is just a closed link.
  {
    auto peer = RawPeer::Connect(receiver->endpoint());
    peer->Send(EncodeSmallFrame(Begin(90, 1), "", false).substr(0, 17));
  }
  ExpectReceiverHealthy(*receiver, 1234);
}

TEST(TcpReceiverTest, SenderConnectionLossFailsItsTransfers) {
  auto receiver = NewReceiver();
  KvArena dst(2, 1, 4096);
  dst.Fill(kBackground);
  RecvResult got;
  ASSERT_TRUE(receiver->Post(TransferId{1}, dst.PostViews({0}), Far(), got.Callback()).ok());
  {
    auto peer = RawPeer::Connect(receiver->endpoint());
    ASSERT_TRUE(peer->SendFrame(Begin(1, 2)));
    ExpectFrame(*peer, FrameType::kReady, 1);
    // Half of layer 0, then the sender dies.
    std::string frame = LayerFrame(1, 0, {std::string(4096, 'k')});
    ASSERT_TRUE(peer->Send(frame.substr(0, frame.size() / 2)));
  }
  ASSERT_TRUE(got.Wait());
  EXPECT_EQ(got.status().code(), absl::StatusCode::kUnavailable) << got.status();
}

// Data already on the wire when the receiver gives up is read and dropped;
// it never reaches the (reused) blocks, and the connection survives.
void LateDataIsDiscarded(bool use_cancel) {
  auto receiver = NewReceiver();
  KvArena dst(1, 2, 1024);
  dst.Fill(kBackground);
  RecvResult got;
  Deadline deadline = use_cancel ? Far() : In(std::chrono::milliseconds(100));
  ASSERT_TRUE(receiver->Post(TransferId{1}, dst.PostViews({0, 1}), deadline, got.Callback()).ok());
  auto peer = RawPeer::Connect(receiver->endpoint());
  ASSERT_TRUE(peer->SendFrame(Begin(1, 1)));
  ExpectFrame(*peer, FrameType::kReady, 1);
  if (use_cancel) {
    ASSERT_TRUE(receiver->Cancel(TransferId{1}).ok());
  }
  ASSERT_TRUE(got.Wait());
  EXPECT_EQ(got.status().code(),
            use_cancel ? absl::StatusCode::kCancelled : absl::StatusCode::kDeadlineExceeded);
  ExpectFrame(*peer, FrameType::kNack, 1, got.status().code());
  dst.Fill(kReused);
  ASSERT_TRUE(peer->Send(LayerFrame(1, 0, {std::string(1024, 'L'), std::string(1024, 'M')})));
  ASSERT_TRUE(peer->SendFrame(Simple(FrameType::kTrailer, 1), "late"));
  // Frames are handled in order: once transfer 2 is Ready, the late layer
  // has been consumed.
  KvArena dst2(1, 1, 8);
  RecvResult got2;
  ASSERT_TRUE(receiver->Post(TransferId{2}, dst2.PostViews({0}), Far(), got2.Callback()).ok());
  ASSERT_TRUE(peer->SendFrame(Begin(2, 1)));
  ExpectFrame(*peer, FrameType::kReady, 2);
  EXPECT_TRUE(AllBytesAre(dst, kReused));
  EXPECT_EQ(got.calls(), 1);
  ASSERT_TRUE(receiver->Cancel(TransferId{2}).ok());
}

TEST(TcpReceiverTest, LateDataAfterCancelIsDiscarded) { LateDataIsDiscarded(true); }
TEST(TcpReceiverTest, LateDataAfterDeadlineIsDiscarded) { LateDataIsDiscarded(false); }

TEST(TcpReceiverTest, UnpostedAnnouncementsAreBounded) {
  TcpReceiverOptions options;
  options.table.max_unposted = 3;
  auto receiver = NewReceiver(options);
  auto peer = RawPeer::Connect(receiver->endpoint());
  for (uint64_t x = 1; x <= 4; ++x) ASSERT_TRUE(peer->SendFrame(Begin(x, 1)));
  ExpectFrame(*peer, FrameType::kNack, 4, absl::StatusCode::kResourceExhausted);
  // Announcements also expire on the budget the sender gave.
  ASSERT_TRUE(peer->SendFrame(Begin(5, 1, /*budget_ms=*/0)));
  // 1..3 are still waiting; 5 was refused (limit) or expired at once.
  auto f = peer->ReadFrame();
  ASSERT_TRUE(f.ok());
  EXPECT_EQ(f->first.type, FrameType::kNack);
  EXPECT_EQ(f->first.xfer_id, 5u);
}

TEST(TcpReceiverTest, DuplicateAnnouncementIsRefusedWithoutHurtingTheFirst) {
  auto receiver = NewReceiver();
  KvArena dst(1, 1, 128);
  RecvResult got;
  ASSERT_TRUE(receiver->Post(TransferId{1}, dst.PostViews({0}), Far(), got.Callback()).ok());
  auto first = RawPeer::Connect(receiver->endpoint());
  ASSERT_TRUE(first->SendFrame(Begin(1, 1)));
  ExpectFrame(*first, FrameType::kReady, 1);
  auto second = RawPeer::Connect(receiver->endpoint());
  ASSERT_TRUE(second->SendFrame(Begin(1, 1)));
  ExpectFrame(*second, FrameType::kNack, 1, absl::StatusCode::kAlreadyExists);
  ASSERT_TRUE(second->SendFrame(Simple(FrameType::kAbort, 1)));  // must not abort the first
  ASSERT_TRUE(first->Send(LayerFrame(1, 0, {std::string(128, 'f')})));
  ASSERT_TRUE(first->SendFrame(Simple(FrameType::kTrailer, 1), ""));
  ExpectFrame(*first, FrameType::kAck, 1);
  ASSERT_TRUE(got.Wait());
  EXPECT_TRUE(got.status().ok()) << got.status();
}

// ---------------------------------------------------------------------------
// Sender against a raw receiver.

class FakeReceiver {
 public:
  FakeReceiver() {
    auto fd = internal::ListenTcp("127.0.0.1", 0, 4);
    EXPECT_TRUE(fd.ok());
    listen_ = std::move(*fd);
    endpoint_ = internal::FormatHostPort("127.0.0.1", *internal::LocalPort(listen_.get()));
  }
  const std::string& endpoint() const { return endpoint_; }
  std::unique_ptr<RawPeer> Accept() {
    fd_set r;
    FD_ZERO(&r);
    FD_SET(listen_.get(), &r);
    timeval tv{30, 0};
    if (select(listen_.get() + 1, &r, nullptr, nullptr, &tv) <= 0) return nullptr;
    int fd = ::accept(listen_.get(), nullptr, nullptr);
    if (fd < 0) return nullptr;
    return std::make_unique<RawPeer>(internal::UniqueFd(fd));
  }

 private:
  internal::UniqueFd listen_;
  std::string endpoint_;
};

std::unique_ptr<TcpKvSender> NewSender() {
  auto s = TcpKvSender::Create(ChecksummedSender());
  EXPECT_TRUE(s.ok());
  return std::move(*s);
}

TEST(TcpSenderTest, SpeaksTheWireFormat) {
  FakeReceiver fake;
  auto sender = NewSender();
  KvArena src(2, 2, 100);
  src.FillRandom(9);
  auto h = sender->StartTransfer(TransferId{5}, fake.endpoint(), 2, Far());
  ASSERT_TRUE(h.ok());
  ASSERT_TRUE((*h)->SendLayer(1, src.SendViews(1, {1, 0})).ok());
  auto peer = fake.Accept();
  ASSERT_NE(peer, nullptr);
  auto begin = peer->ReadFrame();
  ASSERT_TRUE(begin.ok());
  EXPECT_EQ(begin->first.type, FrameType::kBegin);
  EXPECT_EQ(begin->first.arg0, 2u);
  EXPECT_GT(begin->first.arg1, 1000u);  // budget in ms
  ASSERT_TRUE(peer->SendFrame(Simple(FrameType::kReady, 5)));
  auto layer = peer->ReadFrame();
  ASSERT_TRUE(layer.ok());
  EXPECT_EQ(layer->first.type, FrameType::kLayer);
  EXPECT_EQ(layer->first.arg0, 1u);
  EXPECT_EQ(layer->first.arg1, 2u);
  ASSERT_EQ(layer->second.size(), 16u + 200u);
  EXPECT_EQ(internal::GetU64Le(reinterpret_cast<const uint8_t*>(layer->second.data())), 100u);
  EXPECT_EQ(std::memcmp(layer->second.data() + 16, src.Block(1, 1), 100), 0);
  EXPECT_EQ(std::memcmp(layer->second.data() + 116, src.Block(1, 0), 100), 0);
  EXPECT_EQ(layer->first.payload_crc,
            internal::Crc32(0, layer->second.data(), layer->second.size()));
  ASSERT_TRUE((*h)->SendLayer(0, src.SendViews(0, {0})).ok());
  ASSERT_TRUE((*h)->Finish("tr").ok());
  auto layer0 = peer->ReadFrame();
  ASSERT_TRUE(layer0.ok());
  EXPECT_EQ(layer0->first.arg0, 0u);
  auto trailer = peer->ReadFrame();
  ASSERT_TRUE(trailer.ok());
  EXPECT_EQ(trailer->first.type, FrameType::kTrailer);
  EXPECT_EQ(trailer->second, "tr");
  EXPECT_FALSE((*h)->Poll().has_value());
  ASSERT_TRUE(peer->SendFrame(Simple(FrameType::kAck, 5)));
  EXPECT_TRUE(WaitBounded(**h).ok());
}

TEST(TcpSenderTest, NackCarriesTheReceiversVerdict) {
  FakeReceiver fake;
  auto sender = NewSender();
  auto h = sender->StartTransfer(TransferId{6}, fake.endpoint(), 1, Far());
  ASSERT_TRUE(h.ok());
  auto peer = fake.Accept();
  ASSERT_NE(peer, nullptr);
  ASSERT_TRUE(peer->ReadFrame().ok());
  FrameHeader nack = Simple(FrameType::kNack, 6);
  nack.arg0 = static_cast<uint32_t>(absl::StatusCode::kResourceExhausted);
  ASSERT_TRUE(peer->SendFrame(nack, "no room for you"));
  absl::Status s = WaitBounded(**h);
  EXPECT_EQ(s.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_NE(s.message().find("no room for you"), std::string::npos) << s;
  // Begin went out, so the sender closes its side with an Abort.
  auto abort = peer->ReadFrame();
  ASSERT_TRUE(abort.ok());
  EXPECT_EQ(abort->first.type, FrameType::kAbort);
}

TEST(TcpSenderTest, GarbageFromTheReceiverFailsTransfersPromptly) {
  FakeReceiver fake;
  auto sender = NewSender();
  auto h = sender->StartTransfer(TransferId{7}, fake.endpoint(), 1, Far());
  ASSERT_TRUE(h.ok());
  auto peer = fake.Accept();
  ASSERT_NE(peer, nullptr);
  ASSERT_TRUE(peer->Send(std::string(kFrameHeaderBytes, '\x11')));
  EXPECT_EQ(WaitBounded(**h).code(), absl::StatusCode::kUnavailable);
  EXPECT_TRUE(peer->WaitClosed());
}

TEST(TcpSenderTest, PrematureAckIsNotSuccess) {
  FakeReceiver fake;
  auto sender = NewSender();
  KvArena src(2, 1, 64);
  auto h = sender->StartTransfer(TransferId{8}, fake.endpoint(), 2, Far());
  ASSERT_TRUE(h.ok());
  ASSERT_TRUE((*h)->SendLayer(0, src.SendViews(0, {0})).ok());
  auto peer = fake.Accept();
  ASSERT_NE(peer, nullptr);
  ASSERT_TRUE(peer->ReadFrame().ok());
  ASSERT_TRUE(peer->SendFrame(Simple(FrameType::kReady, 8)));
  ASSERT_TRUE(peer->SendFrame(Simple(FrameType::kAck, 8)));  // before layer 1 and the trailer
  absl::Status s = WaitBounded(**h);
  EXPECT_FALSE(s.ok());
}

TEST(TcpSenderTest, ReceiverDyingMidLayerFailsTheSender) {
  FakeReceiver fake;
  auto sender = NewSender();
  constexpr size_t kBig = 48 << 20;  // more than the socket buffers hold
  std::vector<uint8_t> block(kBig, 7);
  auto h = sender->StartTransfer(TransferId{9}, fake.endpoint(), 1, Far());
  ASSERT_TRUE(h.ok());
  ASSERT_TRUE((*h)->SendLayer(0, std::vector<ConstBlockView>{{block.data(), kBig}}).ok());
  ASSERT_TRUE((*h)->Finish("").ok());
  {
    auto peer = fake.Accept();
    ASSERT_NE(peer, nullptr);
    ASSERT_TRUE(peer->ReadFrame().ok());
    ASSERT_TRUE(peer->SendFrame(Simple(FrameType::kReady, 9)));
    char buf[1000];
    ASSERT_GT(::recv(peer->fd(), buf, sizeof(buf), MSG_WAITALL), 0);
  }  // closed with unread data: the sender sees a reset
  absl::Status s = WaitBounded(**h);
  EXPECT_EQ(s.code(), absl::StatusCode::kUnavailable) << s;
}

TEST(TcpSenderTest, AbortMidFrameKeepsTheStreamInSync) {
  FakeReceiver fake;
  auto sender = NewSender();
  constexpr size_t kBig = 48 << 20;
  auto block = std::make_unique<std::vector<uint8_t>>(kBig, 3);
  auto h = sender->StartTransfer(TransferId{10}, fake.endpoint(), 1, Far());
  ASSERT_TRUE(h.ok());
  ASSERT_TRUE((*h)->SendLayer(0, std::vector<ConstBlockView>{{block->data(), kBig}}).ok());
  auto peer = fake.Accept();
  ASSERT_NE(peer, nullptr);
  ASSERT_TRUE(peer->ReadFrame().ok());
  ASSERT_TRUE(peer->SendFrame(Simple(FrameType::kReady, 10)));
  char small[4096];
  ASSERT_GT(::recv(peer->fd(), small, sizeof(small), MSG_WAITALL), 0);  // the frame started
  (*h)->Abort();
  block.reset();  // the caller frees its blocks as soon as Abort returns
  // The rest of the frame still arrives (from the sender's own copy), then
  // the Abort, then frames of the next transfer.
  auto h2 = sender->StartTransfer(TransferId{11}, fake.endpoint(), 1, Far());
  ASSERT_TRUE(h2.ok());
  size_t rest = kFrameHeaderBytes + 8 + kBig - sizeof(small);
  std::vector<char> sink(1 << 20);
  while (rest > 0) {
    ssize_t n = ::recv(peer->fd(), sink.data(), std::min(rest, sink.size()), 0);
    ASSERT_GT(n, 0);
    for (ssize_t i = 0; i < n; ++i) ASSERT_EQ(sink[i], 3);
    rest -= n;
  }
  auto abort = peer->ReadFrame();
  ASSERT_TRUE(abort.ok()) << abort.status();
  EXPECT_EQ(abort->first.type, FrameType::kAbort);
  EXPECT_EQ(abort->first.xfer_id, 10u);
  auto begin = peer->ReadFrame();
  ASSERT_TRUE(begin.ok());
  EXPECT_EQ(begin->first.type, FrameType::kBegin);
  EXPECT_EQ(begin->first.xfer_id, 11u);
}

}  // namespace
}  // namespace pdserve::transport
