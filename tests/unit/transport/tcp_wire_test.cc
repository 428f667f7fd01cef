// The tcp backend's frame format and endpoint parsing.
#include <cstring>
#include <limits>
#include <string>

#include "gtest/gtest.h"
#include "transport/kv_transport.h"
#include "transport/tcp_socket.h"
#include "transport/tcp_wire.h"
#include "transport/transfer_auth.h"

namespace pdserve::transport {
namespace {

using internal::EncodeFrameHeader;
using internal::FrameHeader;
using internal::FrameType;
using internal::kFrameHeaderBytes;

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
  begin.payload_len = kAuthTagBytes;  // its tag
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
  bad.payload_len = 0;  // a version-1 Begin: no tag
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
  trailer.payload_len = kAuthTagBytes - 1;  // shorter than its tag
  EXPECT_FALSE(DecodeMutated(trailer, nullptr, false).ok());
  trailer.payload_len = kAuthTagBytes;  // an empty trailer and its tag
  EXPECT_TRUE(DecodeMutated(trailer, nullptr, false).ok());
}

TEST(TcpWireTest, TagsDependOnEverySignedField) {
  const TransferSecret a = *TransferSecret::FromBytes("0123456789abcdef");
  const TransferSecret b = *TransferSecret::FromBytes("0123456789abcdeg");
  const AuthTag tag = BeginTag(a, TransferId{1}, 30, 5000);
  EXPECT_TRUE(TagEquals(tag, BeginTag(a, TransferId{1}, 30, 5000)));
  EXPECT_FALSE(TagEquals(tag, BeginTag(b, TransferId{1}, 30, 5000)));
  EXPECT_FALSE(TagEquals(tag, BeginTag(a, TransferId{2}, 30, 5000)));
  EXPECT_FALSE(TagEquals(tag, BeginTag(a, TransferId{1}, 31, 5000)));
  EXPECT_FALSE(TagEquals(tag, BeginTag(a, TransferId{1}, 30, 5001)));
  const AuthTag t = TrailerTag(a, TransferId{1}, "token");
  EXPECT_FALSE(TagEquals(t, TrailerTag(a, TransferId{1}, "tokem")));
  EXPECT_FALSE(TagEquals(t, TrailerTag(a, TransferId{2}, "token")));
  EXPECT_FALSE(TagEquals(t, TrailerTag(b, TransferId{1}, "token")));
  EXPECT_FALSE(TransferSecret::FromBytes("short").ok());
  EXPECT_FALSE(TransferSecret::FromBytes("").ok());
}

TEST(TcpWireTest, KvRequestFieldsAreBounded) {
  EXPECT_EQ(*KvBudgetFromRequest(0), kDefaultKvBudget);
  EXPECT_EQ(KvBudgetFromRequest(1)->count(), 1);
  EXPECT_EQ(KvBudgetFromRequest(600000)->count(), 600000);
  EXPECT_EQ(KvBudgetFromRequest(600001).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(KvBudgetFromRequest(-1).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(KvBudgetFromRequest(std::numeric_limits<int64_t>::max()).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(ValidateKvEndpoint("10.0.0.7:5555").ok());
  EXPECT_TRUE(ValidateKvEndpoint("decode-0.pdserve.svc:7000").ok());
  EXPECT_TRUE(ValidateKvEndpoint("[::1]:80").ok());
  EXPECT_TRUE(ValidateKvEndpoint("nccl:10.0.0.7:5555").ok());
  EXPECT_TRUE(ValidateKvEndpoint("loopback:decode-0").ok());
  for (const char* bad : {"", "host", "host:0", ":80", "a b:80", "host:80\n",
                          "loopback:", "nccl:", "tcp:1.2.3.4:5", "h\x01st:80", "[::1]", "[]:80"}) {
    EXPECT_EQ(ValidateKvEndpoint(bad).code(), absl::StatusCode::kInvalidArgument) << bad;
  }
  EXPECT_FALSE(ValidateKvEndpoint(std::string(300, 'a') + ":80").ok());
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

}  // namespace
}  // namespace pdserve::transport
