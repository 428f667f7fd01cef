// KV transfer over loopback TCP against raw loopback TCP, in the same run.
//
// Shapes are the bundled model's: 30 layers, 12 KiB per block per layer,
// block_size 16, so a P-token prompt ships 30 * ceil(P / 16) * 12 KiB.
// For each prompt length it prints:
//   kv     transfer throughput through TcpKvSender -> TcpKvReceiver: Post,
//          StartTransfer, 30 x SendLayer, Finish, Wait (ack) per iteration;
//   raw    the same bytes streamed over a plain TCP socket pair, plus a
//          1-byte ack back, with the same socket buffer sizes;
//   ratio  kv / raw;
//   layer  one-layer transfer round trip (Start .. ack), p50 and p99;
//   tail   with 1 ms of simulated compute per layer, the time from the last
//          layer's SendLayer to the ack: what transfer adds to TTFT once it
//          overlaps compute.
// Usage: kv_transfer_bench [--seconds S] (per measurement, default 1).
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "transport/kv_transport.h"
#include "transport/tcp_receiver.h"
#include "transport/tcp_sender.h"
#include "transport/tcp_socket.h"

namespace pdserve::transport {
namespace {

constexpr int kLayers = 30;
constexpr int kBlockSize = 16;            // tokens per block
constexpr size_t kBlockBytes = 12 << 10;  // per block per layer
constexpr int kSocketBuffer = 4 << 20;    // the tcp backend's default

using Clock = std::chrono::steady_clock;

double Seconds(Clock::duration d) { return std::chrono::duration<double>(d).count(); }

[[noreturn]] void Die(const std::string& what) {
  std::fprintf(stderr, "kv_transfer_bench: %s\n", what.c_str());
  std::exit(1);
}

double Percentile(std::vector<double> v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  size_t i = std::min(v.size() - 1, static_cast<size_t>(p * (v.size() - 1) + 0.5));
  return v[i];
}

// One node's KV memory for n_blocks blocks: [layer][block][kBlockBytes].
struct Arena {
  explicit Arena(int n_blocks)
      : n_blocks(n_blocks), bytes(size_t{kLayers} * n_blocks * kBlockBytes) {
    std::mt19937_64 rng(n_blocks);
    for (size_t i = 0; i + 8 <= bytes.size(); i += 8) {
      uint64_t r = rng();
      std::memcpy(bytes.data() + i, &r, 8);
    }
  }
  uint8_t* Block(int layer, int block) {
    return bytes.data() + (size_t{static_cast<size_t>(layer)} * n_blocks + block) * kBlockBytes;
  }
  std::vector<ConstBlockView> SendViews(int layer) {
    std::vector<ConstBlockView> v;
    for (int b = 0; b < n_blocks; ++b) v.push_back({Block(layer, b), kBlockBytes});
    return v;
  }
  std::vector<std::vector<BlockView>> PostViews() {
    std::vector<std::vector<BlockView>> layers(kLayers);
    for (int l = 0; l < kLayers; ++l) {
      // Reversed order: destination blocks are scattered, as in a real cache.
      for (int b = n_blocks - 1; b >= 0; --b) layers[l].push_back({Block(l, b), kBlockBytes});
    }
    return layers;
  }
  int n_blocks;
  std::vector<uint8_t> bytes;
};

class KvBench {
 public:
  explicit KvBench(bool checksum) {
    TcpReceiverOptions ro;
    ro.socket_buffer_bytes = kSocketBuffer;
    auto r = TcpKvReceiver::Create(ro);
    if (!r.ok()) Die(r.status().ToString());
    receiver_ = std::move(*r);
    TcpSenderOptions so;
    so.checksum = checksum;
    so.socket_buffer_bytes = kSocketBuffer;
    auto s = TcpKvSender::Create(so);
    if (!s.ok()) Die(s.status().ToString());
    sender_ = std::move(*s);
  }

  // One transfer of src into dst (layers = first n_layers); returns the
  // time from StartTransfer to the ack, and in *tail the time from the last
  // SendLayer to the ack.
  Clock::duration Transfer(Arena& src, Arena& dst, int n_layers,
                           std::chrono::microseconds compute_per_layer, Clock::duration* tail) {
    TransferId xfer{++next_id_};
    const TransferSecret secret = TransferSecret::Random();
    auto layers = dst.PostViews();
    layers.resize(n_layers);
    absl::Status posted = receiver_->Post(xfer, secret, std::move(layers),
                                          MonoClock::now() + std::chrono::seconds(30), nullptr);
    if (!posted.ok()) Die(posted.ToString());
    Clock::time_point start = Clock::now();
    auto h = sender_->StartTransfer(xfer, secret, receiver_->endpoint(), n_layers,
                                    MonoClock::now() + std::chrono::seconds(30));
    if (!h.ok()) Die(h.status().ToString());
    Clock::time_point last = start;
    for (int l = 0; l < n_layers; ++l) {
      if (compute_per_layer.count() > 0) {
        // Busy-wait: a sleeping "compute" thread would free the core.
        Clock::time_point until = Clock::now() + compute_per_layer;
        while (Clock::now() < until) {
        }
      }
      last = Clock::now();
      absl::Status s = (*h)->SendLayer(l, src.SendViews(l));
      if (!s.ok()) Die(s.ToString());
    }
    absl::Status fin = (*h)->Finish("token");
    if (!fin.ok()) Die(fin.ToString());
    absl::Status done = (*h)->Wait();
    Clock::time_point end = Clock::now();
    if (!done.ok()) Die(done.ToString());
    if (tail) *tail = end - last;
    return end - start;
  }

 private:
  std::unique_ptr<TcpKvReceiver> receiver_;
  std::unique_ptr<TcpKvSender> sender_;
  uint64_t next_id_ = 0;
};

// A plain TCP socket pair over loopback with the same buffer sizes. A
// persistent reader thread receives `bytes` into dst and acks with one byte,
// like the receiver's loop thread does.
class RawBench {
 public:
  RawBench(uint8_t* dst, size_t bytes) : dst_(dst), bytes_(bytes) {
    auto listen = internal::ListenTcp("127.0.0.1", 0, 1);
    if (!listen.ok()) Die(listen.status().ToString());
    auto port = internal::LocalPort(listen->get());
    int c = ::socket(AF_INET, SOCK_STREAM, 0);
    Tune(c);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(*port);
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (::connect(c, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) < 0) Die("connect");
    int a = -1;
    while (a < 0) a = ::accept(listen->get(), nullptr, nullptr);
    Tune(a);
    writer_ = c;
    reader_fd_ = a;
    reader_ = std::thread([this] { Read(); });
  }
  ~RawBench() {
    ::shutdown(writer_, SHUT_WR);  // the reader sees EOF and exits
    reader_.join();
    ::close(writer_);
    ::close(reader_fd_);
  }

  // Streams bytes from src and waits for the reader's ack.
  Clock::duration Transfer(const uint8_t* src) {
    Clock::time_point start = Clock::now();
    size_t sent = 0;
    while (sent < bytes_) {
      ssize_t n = ::send(writer_, src + sent, bytes_ - sent, 0);
      if (n <= 0) Die("raw send");
      sent += n;
    }
    char ack;
    if (::recv(writer_, &ack, 1, MSG_WAITALL) != 1) Die("raw ack recv");
    return Clock::now() - start;
  }

 private:
  void Read() {
    while (true) {
      size_t got = 0;
      while (got < bytes_) {
        ssize_t n = ::recv(reader_fd_, dst_ + got, bytes_ - got, 0);
        if (n == 0 && got == 0) return;
        if (n <= 0) Die("raw recv");
        got += n;
      }
      char ack = 1;
      if (::send(reader_fd_, &ack, 1, 0) != 1) Die("raw ack");
    }
  }
  static void Tune(int fd) {
    int one = 1, buf = kSocketBuffer;
    ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    ::setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &buf, sizeof(buf));
    ::setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &buf, sizeof(buf));
  }
  uint8_t* dst_;
  size_t bytes_;
  int writer_ = -1;
  int reader_fd_ = -1;
  std::thread reader_;
};

struct Rate {
  double gbps = 0;       // aggregate: total bytes / total time
  double median_ms = 0;  // per transfer
};

template <typename Fn>
Rate Measure(size_t bytes, double seconds, Fn&& once) {
  for (int i = 0; i < 3; ++i) once();  // warm up connections, caches, page faults
  std::vector<double> times;
  double total = 0;
  while (total < seconds || times.size() < 5) {
    double t = Seconds(once());
    times.push_back(t);
    total += t;
  }
  return {static_cast<double>(bytes) * times.size() / total / 1e9, Percentile(times, 0.5) * 1e3};
}

void Run(double seconds) {
  std::printf("KV transfer over loopback TCP vs raw loopback TCP (same run)\n");
  std::printf(
      "model shape: %d layers, %zu KiB per block per layer, block_size %d; "
      "socket buffers %d MiB; %u hardware threads\n\n",
      kLayers, kBlockBytes >> 10, kBlockSize, kSocketBuffer >> 20,
      std::thread::hardware_concurrency());
  std::printf("%-7s %7s %9s | %10s %9s | %10s %9s | %6s | %10s %10s | %9s\n", "prompt", "blocks",
              "MiB", "kv GB/s", "kv ms", "raw GB/s", "raw ms", "ratio", "layer p50", "layer p99",
              "tail p50");
  KvBench kv(/*checksum=*/false);
  for (int prompt : {128, 512, 2048}) {
    int n_blocks = (prompt + kBlockSize - 1) / kBlockSize;
    Arena src(n_blocks), dst(n_blocks);
    size_t bytes = size_t{kLayers} * n_blocks * kBlockBytes;
    Rate k = Measure(bytes, seconds, [&] {
      return kv.Transfer(src, dst, kLayers, std::chrono::microseconds(0), nullptr);
    });
    RawBench raw(dst.bytes.data(), bytes);
    Rate r = Measure(bytes, seconds, [&] { return raw.Transfer(src.bytes.data()); });
    // One layer's worth, end to end.
    std::vector<double> layer_ms;
    for (int i = 0; i < 200; ++i) {
      layer_ms.push_back(Seconds(kv.Transfer(src, dst, 1, std::chrono::microseconds(0), nullptr)) *
                         1e3);
    }
    std::vector<double> tail_ms;
    for (int i = 0; i < 10; ++i) {
      Clock::duration tail;
      kv.Transfer(src, dst, kLayers, std::chrono::microseconds(1000), &tail);
      tail_ms.push_back(Seconds(tail) * 1e3);
    }
    std::printf(
        "%-7d %7d %9.2f | %10.2f %9.3f | %10.2f %9.3f | %6.2f | %8.3fms %8.3fms | %7.3fms\n",
        prompt, n_blocks, bytes / 1048576.0, k.gbps, k.median_ms, r.gbps, r.median_ms,
        k.gbps / r.gbps, Percentile(layer_ms, 0.5), Percentile(layer_ms, 0.99),
        Percentile(tail_ms, 0.5));
  }
  // What end-to-end checksums cost (tests run with them on).
  {
    KvBench kv_crc(/*checksum=*/true);
    int n_blocks = 512 / kBlockSize;
    Arena src(n_blocks), dst(n_blocks);
    size_t bytes = size_t{kLayers} * n_blocks * kBlockBytes;
    Rate k = Measure(bytes, seconds, [&] {
      return kv_crc.Transfer(src, dst, kLayers, std::chrono::microseconds(0), nullptr);
    });
    std::printf("\nwith crc32 checksums, 512-token prompt: %.2f GB/s, %.3f ms per transfer\n",
                k.gbps, k.median_ms);
  }
}

}  // namespace
}  // namespace pdserve::transport

int main(int argc, char** argv) {
  double seconds = 1.0;
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--seconds") == 0 && i + 1 < argc) {
      seconds = std::atof(argv[++i]);
    } else {
      std::fprintf(stderr, "usage: %s [--seconds S]\n", argv[0]);
      return 2;
    }
  }
  pdserve::transport::Run(seconds);
  return 0;
}
