// LoadClient for OpenAI-compatible servers: POST /v1/completions with
// "stream": true, read the SSE stream. Asynchronous on Boost.Beast/Asio,
// one I/O thread, keep-alive connections reused across requests. Beast
// stays inside http_client.cc.
#pragma once

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "loadgen/client.h"

namespace pdserve::loadgen {

struct HttpClientOptions {
  std::string host;
  int port = 0;
  std::string completions_path = "/v1/completions";
  std::string models_path = "/v1/models";
  // The request's "model" field; when empty, the first id /v1/models lists
  // (GetModelInfo fills it in).
  std::string model;
};

class HttpClient : public LoadClient {
 public:
  // Resolves the host; fails when it does not resolve.
  static absl::StatusOr<std::unique_ptr<HttpClient>> Create(const HttpClientOptions& options);
  // Cancels what is in flight and waits for every callback.
  ~HttpClient() override;

  std::string kind() const override { return "http"; }
  bool accepts_token_ids() const override { return false; }
  // GET /v1/models. Call before the first Send (it may set the model name).
  absl::StatusOr<ModelDescription> GetModelInfo(absl::Duration timeout) override;
  void Send(const RequestInput& input, DoneCallback done) override;
  void CancelAll() override;

  // The JSON body Send posts (public for the tests): a completions request,
  // or with `chat` a chat completions one (the prompt as one user message).
  static std::string RequestBody(const std::string& model, const RequestInput& input,
                                 bool chat = false);
  // Whether `path` is a chat completions endpoint (ends in /chat/completions).
  static bool IsChatPath(const std::string& path);

  struct Core;

 private:
  explicit HttpClient(std::unique_ptr<Core> core);
  std::unique_ptr<Core> core_;
};

}  // namespace pdserve::loadgen
