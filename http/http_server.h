// Asynchronous HTTP/1.1 server (Boost.Beast underneath, kept out of this
// header). Serves /metrics and health on every process and, later, the
// OpenAI-compatible API with SSE streaming on the router.
//
//   HttpServer server(options);
//   server.Handle("GET", "/health", [](const HttpRequest&) {
//     return HttpResponse::Text(200, "ok\n");
//   });
//   PDS_RETURN_IF_ERROR(server.Start());
//   ... server.port() ...
//   server.Stop(absl::Seconds(5));
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "http/http_stream.h"
#include "http/http_types.h"

namespace pdserve::http {

struct HttpServerOptions {
  std::string bind_address = "0.0.0.0";
  uint16_t port = 0;  // 0 picks an ephemeral port; see HttpServer::port().
  int num_threads = 1;
  uint64_t max_body_bytes = 8 << 20;     // Larger bodies get 413.
  uint32_t max_header_bytes = 16 << 10;  // Larger headers get 431.
  uint32_t max_header_fields = 100;      // More header fields get 431.
  // Open connections at most; one more is answered 503 and closed at once
  // (TLS: closed), and counted in HttpServer::rejected_connections().
  int max_connections = 1024;
  // Waiting for the first byte of a request (a kept-alive connection included).
  absl::Duration idle_timeout = absl::Seconds(60);
  // Reading a request's line and headers, from its first byte (and a TLS
  // handshake): a client that trickles them (slow loris) is cut off.
  absl::Duration header_timeout = absl::Seconds(10);
  // Reading one request, from its first byte to the end of its body.
  absl::Duration read_timeout = absl::Seconds(30);
  // One socket write (a whole response, or one flush of a stream): a client
  // that stops reading for this long is disconnected.
  absl::Duration write_timeout = absl::Seconds(30);
  // Bound on a stream's unsent bytes; see HttpStream.
  size_t max_stream_buffer_bytes = 1 << 20;
  // SO_SNDBUF of each connection (0: the kernel's autotuning, which may let
  // megabytes sit unread). A small value makes a client that stops reading
  // reach max_stream_buffer_bytes soon, so its stream is cancelled.
  int socket_send_buffer_bytes = 0;
  // HTTPS when both are set: PEM certificate chain and private key (TLS 1.2
  // or newer). Start() fails with InvalidArgument when they do not load.
  std::string tls_cert_file;
  std::string tls_key_file;
  // Builds the responses the server itself sends for requests it refuses
  // before any handler runs (400 malformed, 413 body too large, 431 header
  // too large), so an API can keep its own error format. Default: text.
  std::function<HttpResponse(int status, const std::string& message)> error_response;
};

class HttpServer {
 public:
  explicit HttpServer(HttpServerOptions options);
  ~HttpServer();  // Stop(absl::ZeroDuration()) when still running.
  HttpServer(const HttpServer&) = delete;
  HttpServer& operator=(const HttpServer&) = delete;

  // Routes match method and exact path (the target before '?'). A path with
  // routes for other methods answers 405; an unknown path goes to the
  // fallback (404 unless set). Register before Start().
  void Handle(std::string method, std::string path, HttpHandler handler);
  void HandleAsync(std::string method, std::string path, HttpAsyncHandler handler);
  void SetFallback(HttpAsyncHandler handler);

  // Binds, listens and starts the threads.
  absl::Status Start();
  // The bound port (the ephemeral one when options.port was 0); 0 before Start.
  uint16_t port() const;
  // Connections refused because max_connections were open.
  uint64_t rejected_connections() const;

  // Stops accepting, closes idle connections, lets requests in flight and
  // open streams finish for up to `grace`, then cancels what is left (their
  // cancel callbacks fire) and joins the threads. Idempotent. Not from a
  // server thread (a handler or a cancel callback): it joins them.
  void Stop(absl::Duration grace = absl::Seconds(5));

 private:
  class Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace pdserve::http
