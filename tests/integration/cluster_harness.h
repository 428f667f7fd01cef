// Real pdserve processes on loopback for integration tests: a router plus
// prefill/decode (or mixed) nodes started from the built `pdserve` binary,
// readiness through the router's Registry.ListNodes, and teardown that
// kills every child even when a test fails or the test process dies
// (children get SIGKILL when the test process exits: PR_SET_PDEATHSIG).
#pragma once

#include <sys/types.h>

#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <grpcpp/grpcpp.h>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "pdserve/v1/generate.grpc.pb.h"
#include "pdserve/v1/node.grpc.pb.h"

namespace pdserve::itest {

// PDSERVE_BINARY_DIR/bin/pdserve.
std::string PdserveBinary();
std::string ModelPath();
bool HaveModel();

// A child process whose stdout and stderr go to `log_path`. The destructor
// kills (SIGKILL) and reaps it if it is still running.
class ChildProcess {
 public:
  static absl::StatusOr<std::unique_ptr<ChildProcess>> Start(std::string name,
                                                             const std::vector<std::string>& args,
                                                             std::string log_path);
  ~ChildProcess();
  ChildProcess(const ChildProcess&) = delete;
  ChildProcess& operator=(const ChildProcess&) = delete;

  const std::string& name() const { return name_; }
  pid_t pid() const { return pid_; }
  // False once it exited (reaps it).
  bool Running();
  void Signal(int sig);
  // SIGTERM, then SIGKILL after `grace`; returns the wait status (-1 if it
  // was already reaped).
  int Stop(absl::Duration grace);
  // Exit status once it has exited within `timeout`, else nullopt.
  std::optional<int> WaitExit(absl::Duration timeout);
  std::string LogTail(size_t max_bytes = 4000) const;

 private:
  ChildProcess() = default;
  std::string name_;
  std::string log_path_;
  pid_t pid_ = -1;
  int status_ = -1;
};

struct ClusterOptions {
  int n_prefill = 1;
  int n_decode = 1;
  int n_mixed = 0;  // > 0: mixed nodes instead of prefill/decode pools
  // Routers over the one node pool (every node registers with each); the
  // first is the one router_address()/generation() talk to.
  int n_routers = 1;
  std::vector<std::string> router_flags;
  std::vector<std::string> node_flags;                            // every node
  std::vector<std::string> prefill_flags;                         // prefill nodes only
  std::vector<std::string> decode_flags;                          // decode nodes only
  std::map<std::string, std::vector<std::string>> flags_by_node;  // by node id, e.g. "decode-1"
  absl::Duration startup_timeout = absl::Seconds(60);
};

// The request as a test sees it afterwards.
struct StreamResult {
  grpc::Status status;
  std::vector<int32_t> token_ids;  // every id streamed, in order
  std::string text;
  int n_chunks = 0;
  std::optional<v1::Complete> complete;
  std::optional<v1::Error> error;  // an in-stream error event
  v1::Usage last_chunk_usage;      // cumulative usage of the last chunk
  int64_t client_e2e_ns = 0;       // call start to the status, on this clock
};

class Cluster {
 public:
  static absl::StatusOr<std::unique_ptr<Cluster>> Start(const ClusterOptions& options);
  ~Cluster();  // kills every process, removes the temp dir

  std::string router_address() const;
  // Router `i` (0 .. n_routers-1).
  std::string router_address(int i) const;
  ChildProcess& router_process(int i);
  v1::Generation::Stub& generation(int i);
  absl::StatusOr<v1::ListNodesResponse> ListNodes(int i);
  v1::Generation::Stub& generation() { return *generation_; }
  v1::Registry::Stub& registry() { return *registry_; }
  std::shared_ptr<grpc::Channel> router_channel() { return router_channel_; }

  // Node ids in start order: prefill-0.., decode-0.. (or mixed-0..).
  const std::vector<std::string>& node_ids() const { return node_ids_; }
  ChildProcess& router_process() { return *router_; }
  ChildProcess& node_process(const std::string& id);
  // The node's Node service address, as it registered.
  const std::string& node_address(const std::string& id) const;
  v1::Node::Stub& node(const std::string& id);

  absl::StatusOr<v1::ListNodesResponse> ListNodes();
  absl::StatusOr<v1::NodeLoad> GetLoad(const std::string& id);
  // Polls until `done` holds for the router's node list, up to `timeout`.
  bool WaitForNodes(const std::function<bool(const v1::ListNodesResponse&)>& done,
                    absl::Duration timeout);
  // Polls GetLoad until every KV block on the node is free (prefix-cached
  // blocks count as free) and nothing is running, waiting or awaiting KV.
  bool WaitForIdleKv(const std::string& id, absl::Duration timeout);
  // Every process's log tail, for failure messages.
  std::string Logs() const;

 private:
  Cluster() = default;
  absl::Status StartProcesses(const ClusterOptions& options, int port);

  std::string dir_;
  int port_ = 0;
  std::unique_ptr<ChildProcess> router_;
  std::vector<std::string> node_ids_;
  std::vector<std::unique_ptr<ChildProcess>> nodes_;
  std::vector<std::string> node_addresses_;
  std::vector<std::unique_ptr<v1::Node::Stub>> node_stubs_;
  std::shared_ptr<grpc::Channel> router_channel_;
  std::unique_ptr<v1::Generation::Stub> generation_;
  std::unique_ptr<v1::Registry::Stub> registry_;
  // Routers 1.. (router 0 is the above).
  std::vector<int> extra_ports_;
  std::vector<std::unique_ptr<ChildProcess>> extra_routers_;
  std::vector<std::unique_ptr<v1::Generation::Stub>> extra_generation_;
  std::vector<std::unique_ptr<v1::Registry::Stub>> extra_registry_;
};

// A text request with greedy sampling.
v1::GenerateRequest GreedyRequest(const std::string& prompt, int max_tokens);

// Streams one request to the end. `on_event` (optional) sees every event;
// returning false cancels the call (client cancellation). `ctx` (optional)
// is the call's context, so another thread can TryCancel() it; `timeout`
// applies only when it is null.
StreamResult Generate(v1::Generation::Stub& stub, const v1::GenerateRequest& request,
                      absl::Duration timeout = absl::Seconds(120),
                      const std::function<bool(const v1::GenerateResponse&)>& on_event = nullptr,
                      grpc::ClientContext* ctx = nullptr);

// Runs `pdserve generate` (the single-process reference) greedily and
// returns its --print-token-ids line: prompt token count and generated ids.
struct ReferenceOutput {
  int prompt_tokens = 0;
  std::vector<int32_t> token_ids;
  std::string finish_reason;
};
absl::StatusOr<ReferenceOutput> ReferenceGenerate(const std::string& prompt, int max_tokens);

// The whole file at `path`; "" when it cannot be read.
std::string ReadFile(const std::string& path);
// The live child processes of `parent`, from /proc.
std::vector<pid_t> ChildrenOf(pid_t parent);

// GET http://127.0.0.1:<port><path>: the body, or "" on any failure.
std::string HttpGet(int port, const std::string& path);
// The value of an unlabelled metric in Prometheus text, or -1.
double Metric(const std::string& text, const std::string& name);

}  // namespace pdserve::itest
