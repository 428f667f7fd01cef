// --kv-transport: which backend a node builds for its device and role.
#include "transport/kv_transport_factory.h"

#include <gtest/gtest.h>

namespace pdserve::transport {
namespace {

TEST(KvTransportFactoryTest, ParsesTheFlag) {
  EXPECT_EQ(*ParseKvTransportKind("auto"), KvTransportKind::kAuto);
  EXPECT_EQ(*ParseKvTransportKind("tcp"), KvTransportKind::kTcp);
  EXPECT_EQ(*ParseKvTransportKind("nccl"), KvTransportKind::kNccl);
  EXPECT_EQ(*ParseKvTransportKind("ipc"), KvTransportKind::kIpc);
  EXPECT_EQ(ParseKvTransportKind("rdma").status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_STREQ(KvTransportKindName(KvTransportKind::kIpc), "ipc");
}

TEST(KvTransportFactoryTest, CpuEnginesUseTcpAndRefuseGpuTransports) {
  KvTransportConfig c;  // gpu_device -1
  EXPECT_EQ(*ResolveReceiverKind(c), KvTransportKind::kTcp);
  for (KvTransportKind k : {KvTransportKind::kIpc, KvTransportKind::kNccl}) {
    c.kind = k;
    EXPECT_EQ(ResolveReceiverKind(c).status().code(), absl::StatusCode::kFailedPrecondition);
    EXPECT_EQ(MakeKvSender(c).status().code(), absl::StatusCode::kFailedPrecondition);
  }
  c.kind = KvTransportKind::kAuto;
  auto receiver = MakeKvReceiver(c);
  ASSERT_TRUE(receiver.ok()) << receiver.status();
  EXPECT_TRUE(ValidateKvEndpoint((*receiver)->endpoint()).ok());
  EXPECT_EQ((*receiver)->endpoint().find(':'), (*receiver)->endpoint().rfind(':'));  // host:port
  EXPECT_TRUE(MakeKvSender(c).ok());
}

// auto on a GPU: IPC when every sender must be on this host (loopback),
// else NCCL where built, else host-staged tcp. Resolution only: nothing here
// touches a device.
TEST(KvTransportFactoryTest, AutoOnAGpuPicksByWhereSendersCanBe) {
  KvTransportConfig c;
  c.gpu_device = 0;
  c.listen_host = "127.0.0.1";
  const KvTransportKind local = *ResolveReceiverKind(c);
  EXPECT_EQ(local, KvTransportBuilt(KvTransportKind::kIpc)    ? KvTransportKind::kIpc
                   : KvTransportBuilt(KvTransportKind::kNccl) ? KvTransportKind::kNccl
                                                              : KvTransportKind::kTcp);
  c.advertise_host = "10.0.0.7";
  EXPECT_EQ(*ResolveReceiverKind(c), KvTransportBuilt(KvTransportKind::kNccl)
                                         ? KvTransportKind::kNccl
                                         : KvTransportKind::kTcp);
  c.kind = KvTransportKind::kTcp;
  EXPECT_EQ(*ResolveReceiverKind(c), KvTransportKind::kTcp);
  c.kind = KvTransportKind::kIpc;
  if (KvTransportBuilt(KvTransportKind::kIpc)) {
    EXPECT_EQ(*ResolveReceiverKind(c), KvTransportKind::kIpc);
  } else {
    EXPECT_EQ(ResolveReceiverKind(c).status().code(), absl::StatusCode::kFailedPrecondition);
  }
}

TEST(KvTransportFactoryTest, IpcEndpointsAreValid) {
  EXPECT_TRUE(ValidateKvEndpoint("ipc:127.0.0.1:5000").ok());
  EXPECT_TRUE(ValidateKvEndpoint("ipc:[::1]:5000").ok());
  EXPECT_FALSE(ValidateKvEndpoint("ipc:").ok());
  EXPECT_FALSE(ValidateKvEndpoint("ipc:host").ok());
}

}  // namespace
}  // namespace pdserve::transport
