#include "http/http_server.h"

#include <atomic>
#include <exception>
#include <optional>
#include <thread>
#include <utility>
#include <vector>

#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/ssl/context.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/strand.hpp>

#include "absl/strings/str_cat.h"
#include "common/check.h"
#include "common/log.h"
#include "http/session.h"

namespace pdserve::http {
namespace {

namespace net = boost::asio;
using tcp = net::ip::tcp;
using internal::ServerCore;
using internal::Session;

bool NoSessions(ServerCore* core) ABSL_NO_THREAD_SAFETY_ANALYSIS { return core->sessions.empty(); }

}  // namespace

class HttpServer::Impl {
 public:
  explicit Impl(HttpServerOptions options)
      : core_(std::make_unique<ServerCore>(std::move(options))),
        io_(std::max(1, core_->options.num_threads)) {}

  ~Impl() { Stop(absl::ZeroDuration()); }

  absl::Status Start() {
    absl::MutexLock lock(&lifecycle_mu_);
    const HttpServerOptions& options = core_->options;
    if (started_) return absl::FailedPreconditionError("HttpServer already started");
    if (!options.tls_cert_file.empty() || !options.tls_key_file.empty()) {
      if (absl::Status s = LoadTls(); !s.ok()) return s;
    }
    if (options.max_connections < 1) {
      return absl::InvalidArgumentError(
          absl::StrCat("max_connections must be >= 1, got ", options.max_connections));
    }
    if (options.num_threads < 1) {
      return absl::InvalidArgumentError(
          absl::StrCat("num_threads must be >= 1, got ", options.num_threads));
    }
    boost::system::error_code ec;
    const net::ip::address address = net::ip::make_address(options.bind_address, ec);
    if (ec) {
      return absl::InvalidArgumentError(
          absl::StrCat("bad bind address '", options.bind_address, "': ", ec.message()));
    }
    acceptor_.emplace(net::make_strand(io_));
    const tcp::endpoint endpoint(address, options.port);
    auto fail = [&](const char* step) {
      return absl::UnavailableError(absl::StrCat("http server cannot ", step, " ",
                                                 options.bind_address, ":", options.port, ": ",
                                                 ec.message()));
    };
    if (acceptor_->open(endpoint.protocol(), ec); ec) return fail("open");
    if (acceptor_->set_option(net::socket_base::reuse_address(true), ec); ec)
      return fail("configure");
    if (acceptor_->bind(endpoint, ec); ec) return fail("bind");
    if (acceptor_->listen(net::socket_base::max_listen_connections, ec); ec)
      return fail("listen on");
    port_ = acceptor_->local_endpoint(ec).port();
    if (ec) return fail("read the port of");

    work_.emplace(net::make_work_guard(io_));
    Accept();
    for (int i = 0; i < options.num_threads; ++i) {
      threads_.emplace_back([this] { RunIo(); });
    }
    started_ = true;
    PDS_LOG(INFO) << "http: listening on " << options.bind_address << ":" << port_;
    return absl::OkStatus();
  }

  void Stop(absl::Duration grace) {
    PDS_CHECK(!io_.get_executor().running_in_this_thread())
        << "HttpServer::Stop() called from a server thread would join itself";
    absl::MutexLock lock(&lifecycle_mu_);
    if (!started_ || stopped_) return;
    stopped_ = true;
    core_->stopping.store(true);
    net::post(acceptor_->get_executor(), [this] {
      boost::system::error_code ignored;
      acceptor_->close(ignored);
    });
    for (const auto& session : Snapshot()) session->OnServerStopping();

    core_->mu.Lock();
    const bool drained =
        core_->mu.AwaitWithTimeout(absl::Condition(&NoSessions, core_.get()), grace);
    core_->mu.Unlock();
    if (!drained) {
      const auto left = Snapshot();
      PDS_LOG(INFO) << "http: cancelling " << left.size() << " connection(s) still open after "
                    << absl::FormatDuration(grace);
      for (const auto& session : left) session->Abort(absl::UnavailableError("server stopping"));
      core_->mu.Lock();
      // Closing is prompt once posted; the bound only guards against a wedged
      // handler thread.
      if (!core_->mu.AwaitWithTimeout(absl::Condition(&NoSessions, core_.get()),
                                      absl::Seconds(10))) {
        PDS_LOG(ERROR) << "http: connections did not close; stopping anyway";
      }
      core_->mu.Unlock();
    }
    work_.reset();
    io_.stop();
    for (std::thread& thread : threads_) thread.join();
    threads_.clear();
  }

  ServerCore& core() { return *core_; }
  bool started() {
    absl::MutexLock lock(&lifecycle_mu_);
    return started_;
  }
  uint16_t port() const { return port_.load(); }
  uint64_t rejected_connections() const { return core_->rejected_connections.load(); }

 private:
  // TLS 1.2+ with the configured certificate chain and key.
  absl::Status LoadTls() {
    const HttpServerOptions& options = core_->options;
    if (options.tls_cert_file.empty() || options.tls_key_file.empty()) {
      return absl::InvalidArgumentError("HTTPS needs both tls_cert_file and tls_key_file");
    }
    auto tls = std::make_unique<net::ssl::context>(net::ssl::context::tls_server);
    tls->set_options(net::ssl::context::default_workarounds | net::ssl::context::no_sslv2 |
                     net::ssl::context::no_sslv3 | net::ssl::context::no_tlsv1 |
                     net::ssl::context::no_tlsv1_1 | net::ssl::context::single_dh_use);
    boost::system::error_code ec;
    tls->use_certificate_chain_file(options.tls_cert_file, ec);
    if (ec) {
      return absl::InvalidArgumentError(absl::StrCat("cannot load TLS certificate '",
                                                     options.tls_cert_file, "': ", ec.message()));
    }
    tls->use_private_key_file(options.tls_key_file, net::ssl::context::pem, ec);
    if (ec) {
      return absl::InvalidArgumentError(
          absl::StrCat("cannot load TLS key '", options.tls_key_file, "': ", ec.message()));
    }
    core_->tls = std::move(tls);
    return absl::OkStatus();
  }

  void RunIo() {
    for (;;) {
      try {
        io_.run();
        return;
      } catch (const std::exception& e) {
        PDS_LOG(ERROR) << "http: io thread caught: " << e.what();
      }
    }
  }

  void Accept() {
    acceptor_->async_accept(
        net::make_strand(io_), [this](boost::system::error_code ec, tcp::socket socket) {
          if (ec == net::error::operation_aborted || !acceptor_->is_open()) return;
          if (ec) {
            // Typically out of file descriptors: back off instead of spinning.
            PDS_LOG(WARNING) << "http: accept failed: " << ec.message();
            backoff_.emplace(acceptor_->get_executor());
            backoff_->expires_after(std::chrono::milliseconds(100));
            backoff_->async_wait([this](boost::system::error_code wait_ec) {
              if (!wait_ec && acceptor_->is_open()) Accept();
            });
            return;
          }
          if (core_->stopping.load()) {
            socket.close(ec);
            return;
          }
          // Tokens go out one small chunk at a time: do not let Nagle hold them.
          socket.set_option(tcp::no_delay(true), ec);
          if (core_->options.socket_send_buffer_bytes > 0) {
            socket.set_option(
                net::socket_base::send_buffer_size(core_->options.socket_send_buffer_bytes), ec);
          }
          std::shared_ptr<Session> session;
          {
            absl::MutexLock lock(&core_->mu);
            if (core_->sessions.size() >= static_cast<size_t>(core_->options.max_connections)) {
              RefuseConnection(std::move(socket));
              Accept();
              return;
            }
            const uint64_t id = core_->next_session_id++;
            session = core_->tls ? internal::MakeTlsSession(core_.get(), id, std::move(socket))
                                 : internal::MakePlainSession(core_.get(), id, std::move(socket));
            core_->sessions.emplace(id, session);
          }
          session->Start();
          Accept();
        });
  }

  // Over max_connections: a plaintext client reads a 503 (one non-blocking
  // write into an empty socket buffer, so it never waits on the client); a
  // TLS one just sees the close. Either way the socket is gone at once.
  void RefuseConnection(tcp::socket socket) {
    core_->rejected_connections.fetch_add(1, std::memory_order_relaxed);
    boost::system::error_code ec;
    if (!core_->tls) {
      static constexpr std::string_view kBusy =
          "HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\n"
          "Content-Length: 21\r\nConnection: close\r\nRetry-After: 1\r\n\r\n"
          "too many connections\n";
      socket.non_blocking(true, ec);
      if (!ec) socket.write_some(net::buffer(kBusy.data(), kBusy.size()), ec);
    }
    socket.shutdown(tcp::socket::shutdown_both, ec);
    socket.close(ec);
  }

  std::vector<std::shared_ptr<Session>> Snapshot() {
    std::vector<std::shared_ptr<Session>> sessions;
    absl::MutexLock lock(&core_->mu);
    for (const auto& [id, weak] : core_->sessions) {
      if (auto session = weak.lock()) sessions.push_back(std::move(session));
    }
    return sessions;
  }

  // Declared before io_: sessions destroyed with io_'s queued handlers may
  // still point at the core.
  std::unique_ptr<ServerCore> core_;
  net::io_context io_;
  std::optional<net::executor_work_guard<net::io_context::executor_type>> work_;
  std::optional<tcp::acceptor> acceptor_;
  std::optional<net::steady_timer> backoff_;  // Only touched on the acceptor's strand.
  std::vector<std::thread> threads_;
  std::atomic<uint16_t> port_{0};

  absl::Mutex lifecycle_mu_;
  bool started_ ABSL_GUARDED_BY(lifecycle_mu_) = false;
  bool stopped_ ABSL_GUARDED_BY(lifecycle_mu_) = false;
};

HttpServer::HttpServer(HttpServerOptions options)
    : impl_(std::make_unique<Impl>(std::move(options))) {}

HttpServer::~HttpServer() = default;

void HttpServer::Handle(std::string method, std::string path, HttpHandler handler) {
  HandleAsync(std::move(method), std::move(path),
              [handler = std::move(handler)](const HttpRequest& request,
                                             std::shared_ptr<HttpResponder> responder) {
                responder->Respond(handler(request));
              });
}

void HttpServer::HandleAsync(std::string method, std::string path, HttpAsyncHandler handler) {
  PDS_CHECK(!impl_->started()) << "register routes before Start(): " << method << " " << path;
  impl_->core().routes.Add(std::move(method), std::move(path), std::move(handler));
}

void HttpServer::SetFallback(HttpAsyncHandler handler) {
  PDS_CHECK(!impl_->started()) << "set the fallback before Start()";
  impl_->core().routes.SetFallback(std::move(handler));
}

absl::Status HttpServer::Start() { return impl_->Start(); }

uint16_t HttpServer::port() const { return impl_->port(); }

uint64_t HttpServer::rejected_connections() const { return impl_->rejected_connections(); }

void HttpServer::Stop(absl::Duration grace) { impl_->Stop(grace); }

}  // namespace pdserve::http
