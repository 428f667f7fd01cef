// Picks and builds a node's KV transport from `--kv-transport` and the
// engine's device: tcp (host memory, or device memory staged through pinned
// buffers), CUDA IPC (same host), NCCL (GPU to GPU across hosts).
//
// `auto`:
//   CPU engine: tcp.
//   GPU, receiving (decode): IPC when the KV endpoint is advertised on a
//     loopback address (every sender is then on this host); otherwise NCCL
//     where the build has it, else host-staged tcp. A decode node on a
//     routable address that only serves prefill nodes of its own host should
//     say `ipc` explicitly.
//   GPU, sending (prefill): whatever each decode node's endpoint asks for
//     ("ipc:", "nccl:", or plain host:port for host-staged tcp), so one
//     prefill node serves decode nodes of every kind.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "transport/kv_transport.h"

namespace pdserve::transport {

enum class KvTransportKind { kAuto, kTcp, kNccl, kIpc };

// "auto", "tcp", "nccl", "ipc"; InvalidArgument otherwise.
absl::StatusOr<KvTransportKind> ParseKvTransportKind(std::string_view name);
const char* KvTransportKindName(KvTransportKind kind);

struct KvTransportConfig {
  KvTransportKind kind = KvTransportKind::kAuto;
  int gpu_device = -1;    // -1: KV in host memory (CPU engine)
  bool checksum = false;  // tcp: crc32 every payload
  // Receiving side.
  std::string listen_host = "127.0.0.1";
  std::string advertise_host;
  uint16_t port = 0;
  // Sending side, IPC: the KV storage allocations (base, bytes) to export.
  std::vector<std::pair<const void*, size_t>> kv_regions;
};

// What `kind` means for a receiver with this config (never kAuto), or
// FailedPrecondition when this build, its CUDA module or the device cannot
// do it.
absl::StatusOr<KvTransportKind> ResolveReceiverKind(const KvTransportConfig& config);

absl::StatusOr<std::unique_ptr<KvReceiver>> MakeKvReceiver(const KvTransportConfig& config);
absl::StatusOr<std::unique_ptr<KvSender>> MakeKvSender(const KvTransportConfig& config);

// Whether this process can have the transport: nccl and ipc live in the CUDA
// module (transport/cuda_transports.h), which this loads on the first ask;
// nccl needs a module built with NCCL.
bool KvTransportBuilt(KvTransportKind kind);

}  // namespace pdserve::transport
