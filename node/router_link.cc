#include "node/router_link.h"

#include <netdb.h>
#include <sys/socket.h>

#include <algorithm>
#include <chrono>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "common/log.h"

namespace pdserve::node {
namespace {

constexpr std::chrono::seconds kRpcDeadline{2};
constexpr int64_t kRetryMs = 200;  // unregistered: try again this often

std::chrono::system_clock::time_point Deadline() {
  return std::chrono::system_clock::now() + kRpcDeadline;
}

// host and port of "host:port" or "[v6]:port".
bool SplitHostPort(absl::string_view address, std::string* host, std::string* port) {
  const size_t colon = address.rfind(':');
  if (colon == absl::string_view::npos || colon == 0 || colon + 1 == address.size()) return false;
  absl::string_view h = address.substr(0, colon);
  if (absl::ConsumePrefix(&h, "[") && !absl::ConsumeSuffix(&h, "]")) return false;
  *host = std::string(h);
  *port = std::string(address.substr(colon + 1));
  return std::all_of(port->begin(), port->end(), [](char c) { return c >= '0' && c <= '9'; });
}

}  // namespace

RouterLink::RouterLink(std::string router, const rpc::Security& peers, Hooks hooks)
    : router_(std::move(router)),
      hooks_(std::move(hooks)),
      stub_(v1::Registry::NewStub(rpc::MakeChannel(router_, peers))) {
  thread_ = std::thread([this] { Run(); });
}

RouterLink::~RouterLink() { Stop(); }

bool RouterLink::registered() const { return !lease().empty(); }

void RouterLink::Stop() {
  if (!stop_.HasBeenNotified()) stop_.Notify();
  if (thread_.joinable()) thread_.join();
}

void RouterLink::Deregister() {
  // A Register in flight may already be in the router's registry while its
  // reply (our lease) is still on the way: let it land before reading it.
  Stop();
  const std::string current = lease();
  if (current.empty()) return;
  grpc::ClientContext ctx;
  ctx.set_deadline(Deadline());
  v1::DeregisterRequest req;
  req.set_node_id(hooks_.info().node_id());
  req.set_lease(current);
  v1::DeregisterResponse resp;
  (void)stub_->Deregister(&ctx, req, &resp);
}

void RouterLink::Run() {
  int64_t interval_ms = 1000;
  int failures = 0;
  while (!stop_.HasBeenNotified()) {
    bool registered = !lease().empty();
    if (!hooks_.draining()) {
      grpc::ClientContext ctx;
      ctx.set_deadline(Deadline());
      grpc::Status st;
      if (!registered) {
        v1::RegisterRequest req;
        *req.mutable_info() = hooks_.info();
        *req.mutable_load() = hooks_.load();
        v1::RegisterResponse resp;
        st = stub_->Register(&ctx, req, &resp);
        if (st.ok()) {
          registered = true;
          {
            absl::MutexLock lock(&mu_);
            lease_ = resp.lease();
          }
          interval_ms = resp.heartbeat_interval_ms() > 0 ? resp.heartbeat_interval_ms() : 1000;
          PDS_LOG(INFO) << "node " << req.info().node_id() << " registered with router " << router_;
        }
      } else {
        v1::HeartbeatRequest req;
        req.set_node_id(hooks_.info().node_id());
        *req.mutable_load() = hooks_.load();
        req.set_lease(lease());
        v1::HeartbeatResponse resp;
        st = stub_->Heartbeat(&ctx, req, &resp);
        if (st.ok() && !resp.known()) registered = false;  // the router forgot us
      }
      if (!st.ok()) {
        if (++failures % 10 == 1) {
          const bool refused = st.error_code() != grpc::StatusCode::UNAVAILABLE &&
                               st.error_code() != grpc::StatusCode::DEADLINE_EXCEEDED;
          PDS_LOG(WARNING) << "node " << hooks_.info().node_id() << ": router " << router_
                           << (refused ? " refused it: " : " unreachable: ") << st.error_message();
        }
        // Our registration is gone (or another process's now): register again.
        if (st.error_code() == grpc::StatusCode::NOT_FOUND ||
            st.error_code() == grpc::StatusCode::PERMISSION_DENIED) {
          registered = false;
        }
      } else {
        failures = 0;
      }
      if (!registered) {
        absl::MutexLock lock(&mu_);
        lease_.clear();
      }
    }
    stop_.WaitForNotificationWithTimeout(absl::Milliseconds(registered ? interval_ms : kRetryMs));
  }
}

absl::StatusOr<std::vector<std::string>> RouterTargets(const std::string& routers,
                                                       const std::string& service) {
  std::vector<std::string> out;
  std::string host, port;
  for (absl::string_view entry : absl::StrSplit(routers, ',', absl::SkipWhitespace())) {
    entry = absl::StripAsciiWhitespace(entry);
    if (!SplitHostPort(entry, &host, &port)) {
      return absl::InvalidArgumentError(
          absl::StrCat("--router: '", entry, "' is not host:port (several: a,b)"));
    }
    out.emplace_back(entry);
  }
  if (!service.empty()) {
    if (!SplitHostPort(service, &host, &port)) {
      return absl::InvalidArgumentError(
          absl::StrCat("--router-service: '", service, "' is not host:port"));
    }
    addrinfo hints{};
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    addrinfo* res = nullptr;
    if (::getaddrinfo(host.c_str(), port.c_str(), &hints, &res) == 0) {
      for (addrinfo* a = res; a != nullptr; a = a->ai_next) {
        char ip[NI_MAXHOST];
        if (::getnameinfo(a->ai_addr, a->ai_addrlen, ip, sizeof(ip), nullptr, 0, NI_NUMERICHOST) !=
            0) {
          continue;
        }
        out.push_back(a->ai_family == AF_INET6 ? absl::StrCat("[", ip, "]:", port)
                                               : absl::StrCat(ip, ":", port));
      }
      ::freeaddrinfo(res);
    }
  }
  std::sort(out.begin(), out.end());
  out.erase(std::unique(out.begin(), out.end()), out.end());
  return out;
}

}  // namespace pdserve::node
