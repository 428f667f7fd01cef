// A node's registration with one router: registers, heartbeats its load
// every interval the router asked for, registers again whenever the router
// forgot it (restarted, expired it), and deregisters on drain. A node keeps
// one link per router address (`--router a,b`, or every address of a
// `--router-service` DNS name), each on its own thread, so a dead or slow
// router never delays the heartbeats the others need.
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "pdserve/v1/node.grpc.pb.h"
#include "rpc/server_util.h"

namespace pdserve::node {

class RouterLink {
 public:
  struct Hooks {
    std::function<v1::NodeInfo()> info;
    std::function<v1::NodeLoad()> load;
    std::function<bool()> draining;  // true: stop heartbeating (Shutdown deregisters)
  };
  // Starts the link's thread at once.
  RouterLink(std::string router, const rpc::Security& peers, Hooks hooks);
  ~RouterLink();  // Stop()
  RouterLink(const RouterLink&) = delete;
  RouterLink& operator=(const RouterLink&) = delete;

  const std::string& router() const { return router_; }
  bool registered() const;
  // Stops the link's thread (a Register in flight finishes first), then
  // removes the registration (2 s deadline); a no-op when not registered.
  void Deregister();
  void Stop();

 private:
  void Run();
  std::string lease() const {
    absl::MutexLock lock(&mu_);
    return lease_;
  }

  const std::string router_;
  const Hooks hooks_;
  std::unique_ptr<v1::Registry::Stub> stub_;
  mutable absl::Mutex mu_;
  std::string lease_ ABSL_GUARDED_BY(mu_);  // empty: not registered
  absl::Notification stop_;
  std::thread thread_;
};

// The router addresses a node registers with: every entry of `routers`
// (host:port, comma-separated) as given, plus every address `service`
// (host:port, empty: none) resolves to (IPv4 and IPv6, one link per
// address: a Kubernetes headless Service names each router pod). Sorted,
// no duplicates. InvalidArgument for an entry that is not host:port;
// a name that does not resolve (yet) adds nothing and is not an error.
absl::StatusOr<std::vector<std::string>> RouterTargets(const std::string& routers,
                                                       const std::string& service);

}  // namespace pdserve::node
