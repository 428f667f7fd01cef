// A node's registrations with several routers: which addresses --router and
// --router-service name, and one RouterLink per router that registers,
// heartbeats, registers again when the router forgot it, and deregisters.
#include "node/router_link.h"

#include <atomic>
#include <functional>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "gtest/gtest.h"
#include "rpc/server_util.h"

namespace pdserve::node {
namespace {

TEST(RouterTargetsTest, ListsEveryRouterOnceSorted) {
  absl::StatusOr<std::vector<std::string>> t =
      RouterTargets("10.0.0.2:50051, 10.0.0.1:50051,10.0.0.2:50051", "");
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_EQ(*t, (std::vector<std::string>{"10.0.0.1:50051", "10.0.0.2:50051"}));
  EXPECT_TRUE(RouterTargets("", "")->empty());
}

TEST(RouterTargetsTest, RefusesWhatIsNotHostPort) {
  for (const char* bad : {"router", "router:", ":50051", "router:50o51", "[::1:50051"}) {
    absl::StatusOr<std::vector<std::string>> t = RouterTargets(bad, "");
    EXPECT_EQ(t.status().code(), absl::StatusCode::kInvalidArgument) << bad;
    EXPECT_EQ(RouterTargets("", bad).status().code(), absl::StatusCode::kInvalidArgument) << bad;
  }
}

TEST(RouterTargetsTest, AServiceNameBecomesEveryAddressItResolvesTo) {
  absl::StatusOr<std::vector<std::string>> t = RouterTargets("", "localhost:50051");
  ASSERT_TRUE(t.ok()) << t.status();
  ASSERT_FALSE(t->empty());
  for (const std::string& a : *t) {
    EXPECT_TRUE(a == "127.0.0.1:50051" || a == "[::1]:50051") << a;
  }
  // A name that does not resolve (yet) adds nothing and is no error.
  absl::StatusOr<std::vector<std::string>> none = RouterTargets("", "no-such-host.invalid:50051");
  ASSERT_TRUE(none.ok()) << none.status();
  EXPECT_TRUE(none->empty());
}

// A Registry that counts what a node sends; Forget() makes it answer the
// next heartbeat with known=false, as a restarted router does.
class FakeRegistry final : public v1::Registry::Service {
 public:
  grpc::Status Register(grpc::ServerContext*, const v1::RegisterRequest* req,
                        v1::RegisterResponse* resp) override {
    absl::Duration delay;
    {
      absl::MutexLock lock(&mu_);
      ++registers_;
      last_load_ = req->load();
      resp->set_lease(absl::StrCat("lease-", registers_));
      resp->set_heartbeat_interval_ms(50);
      forget_ = false;
      delay = register_reply_delay_;
    }
    absl::SleepFor(delay);  // registered here, the reply still on its way
    return grpc::Status::OK;
  }
  grpc::Status Heartbeat(grpc::ServerContext*, const v1::HeartbeatRequest* req,
                         v1::HeartbeatResponse* resp) override {
    absl::MutexLock lock(&mu_);
    if (req->lease() != absl::StrCat("lease-", registers_)) {
      return grpc::Status(grpc::StatusCode::PERMISSION_DENIED, "wrong lease");
    }
    ++heartbeats_;
    last_load_ = req->load();
    resp->set_known(!forget_);
    return grpc::Status::OK;
  }
  grpc::Status Deregister(grpc::ServerContext*, const v1::DeregisterRequest* req,
                          v1::DeregisterResponse*) override {
    absl::MutexLock lock(&mu_);
    if (req->lease() == absl::StrCat("lease-", registers_)) ++deregisters_;
    return grpc::Status::OK;
  }
  void Forget() {
    absl::MutexLock lock(&mu_);
    forget_ = true;
  }
  void DelayRegisterReplies(absl::Duration d) {
    absl::MutexLock lock(&mu_);
    register_reply_delay_ = d;
  }
  int registers() const {
    absl::MutexLock lock(&mu_);
    return registers_;
  }
  int heartbeats() const {
    absl::MutexLock lock(&mu_);
    return heartbeats_;
  }
  int deregisters() const {
    absl::MutexLock lock(&mu_);
    return deregisters_;
  }
  int64_t last_committed() const {
    absl::MutexLock lock(&mu_);
    return last_load_.committed_kv_blocks();
  }

 private:
  mutable absl::Mutex mu_;
  int registers_ ABSL_GUARDED_BY(mu_) = 0;
  int heartbeats_ ABSL_GUARDED_BY(mu_) = 0;
  int deregisters_ ABSL_GUARDED_BY(mu_) = 0;
  bool forget_ ABSL_GUARDED_BY(mu_) = false;
  absl::Duration register_reply_delay_ ABSL_GUARDED_BY(mu_);
  v1::NodeLoad last_load_ ABSL_GUARDED_BY(mu_);
};

bool WaitFor(const std::function<bool()>& done) {
  const absl::Time deadline = absl::Now() + absl::Seconds(20);
  while (absl::Now() < deadline) {
    if (done()) return true;
    absl::SleepFor(absl::Milliseconds(10));
  }
  return done();
}

TEST(RouterLinkTest, OneLinkPerRouterRegistersHeartbeatsAndDeregisters) {
  FakeRegistry a, b;
  absl::StatusOr<rpc::ServerHandle> sa = rpc::StartServer("127.0.0.1:0", {&a});
  absl::StatusOr<rpc::ServerHandle> sb = rpc::StartServer("127.0.0.1:0", {&b});
  ASSERT_TRUE(sa.ok() && sb.ok());
  std::atomic<bool> draining{false};
  RouterLink::Hooks hooks;
  hooks.info = [] {
    v1::NodeInfo info;
    info.set_node_id("decode-0");
    return info;
  };
  hooks.load = [] {
    v1::NodeLoad load;
    load.set_committed_kv_blocks(42);
    return load;
  };
  hooks.draining = [&] { return draining.load(); };
  RouterLink la(absl::StrCat("127.0.0.1:", sa->port), rpc::Security(), hooks);
  RouterLink lb(absl::StrCat("127.0.0.1:", sb->port), rpc::Security(), hooks);
  ASSERT_TRUE(WaitFor([&] { return a.heartbeats() >= 2 && b.heartbeats() >= 2; }));
  EXPECT_EQ(a.registers(), 1);
  EXPECT_EQ(b.registers(), 1);
  EXPECT_EQ(a.last_committed(), 42);  // the load each router sizes the node from

  // One router forgets the node (restarted): only that link registers again.
  a.Forget();
  ASSERT_TRUE(WaitFor([&] { return a.registers() == 2 && a.heartbeats() >= 4; }));
  EXPECT_EQ(b.registers(), 1);

  // The other router dies: the first keeps getting heartbeats.
  sb->server->Shutdown(std::chrono::system_clock::now());
  const int before = a.heartbeats();
  ASSERT_TRUE(WaitFor([&] { return a.heartbeats() >= before + 5; }));

  draining = true;
  la.Deregister();
  EXPECT_EQ(a.deregisters(), 1);
  const int after_drain = a.heartbeats();
  absl::SleepFor(absl::Milliseconds(200));
  EXPECT_LE(a.heartbeats(), after_drain + 1);  // at most one already on its way
}

// Shutdown right after the router registered the node but before the
// reply (the lease) reached it: the registration must still be removed, or
// the router keeps routing to a node that is gone (CI caught this once).
TEST(RouterLinkTest, DeregisterWaitsForARegisterInFlight) {
  FakeRegistry a;
  a.DelayRegisterReplies(absl::Milliseconds(300));
  absl::StatusOr<rpc::ServerHandle> sa = rpc::StartServer("127.0.0.1:0", {&a});
  ASSERT_TRUE(sa.ok());
  RouterLink::Hooks hooks;
  hooks.info = [] {
    v1::NodeInfo info;
    info.set_node_id("decode-0");
    return info;
  };
  hooks.load = [] { return v1::NodeLoad(); };
  hooks.draining = [] { return false; };
  RouterLink link(absl::StrCat("127.0.0.1:", sa->port), rpc::Security(), hooks);
  ASSERT_TRUE(WaitFor([&] { return a.registers() == 1; }));
  link.Deregister();
  EXPECT_EQ(a.deregisters(), 1);
  EXPECT_EQ(a.registers(), 1);  // and the stopped link registers no more
}

}  // namespace
}  // namespace pdserve::node
