#include "kernels/cuda/emu/nccl_emu.h"

#include <condition_variable>
#include <cstring>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <random>
#include <string>
#include <vector>

namespace {

// One point-to-point message being matched: posted by one side, completed
// (copied) by the other.
struct Op {
  bool send = false;
  void* buf = nullptr;
  size_t bytes = 0;
  bool done = false;
  ncclResult_t result = ncclSuccess;
};

// State shared by the ranks of one unique id.
struct Clique {
  int nranks = 0;
  int joined = 0;
  bool aborted = false;
  // pending[(from, to)]: posted, unmatched operations in posting order.
  std::map<std::pair<int, int>, std::deque<std::shared_ptr<Op>>> sends, recvs;
};

std::mutex g_mu;
std::condition_variable g_cv;
std::map<std::string, std::shared_ptr<Clique>> g_cliques;

}  // namespace

struct ncclComm {
  std::shared_ptr<Clique> clique;
  int rank = 0;
  bool blocking = true;
};

namespace {

thread_local int g_group_depth = 0;
struct Deferred {
  bool send;
  void* buf;
  size_t bytes;
  int peer;
  ncclComm_t comm;
};
thread_local std::vector<Deferred> g_group;

// Posts one operation and waits until the peer's matching one copied it.
ncclResult_t Transfer(bool send, void* buf, size_t bytes, int peer, ncclComm_t comm) {
  std::unique_lock<std::mutex> lock(g_mu);
  Clique& c = *comm->clique;
  if (peer < 0 || peer >= c.nranks) return ncclInvalidArgument;
  if (c.aborted) return ncclRemoteError;
  auto op = std::make_shared<Op>();
  op->send = send;
  op->buf = buf;
  op->bytes = bytes;
  const std::pair<int, int> key =
      send ? std::make_pair(comm->rank, peer) : std::make_pair(peer, comm->rank);
  auto& mine = send ? c.sends[key] : c.recvs[key];
  auto& theirs = send ? c.recvs[key] : c.sends[key];
  if (!theirs.empty()) {
    std::shared_ptr<Op> other = theirs.front();
    theirs.pop_front();
    const Op& s = send ? *op : *other;
    const Op& r = send ? *other : *op;
    if (s.bytes != r.bytes) {
      op->result = other->result = ncclInvalidUsage;
    } else if (s.bytes > 0) {
      std::memcpy(r.buf, s.buf, s.bytes);
    }
    op->done = other->done = true;
    g_cv.notify_all();
    return op->result;
  }
  mine.push_back(op);
  g_cv.wait(lock, [&] { return op->done || c.aborted; });
  if (!op->done) return ncclRemoteError;
  return op->result;
}

}  // namespace

ncclResult_t ncclGetUniqueId(ncclUniqueId* id) {
  static std::mt19937_64 rng(std::random_device{}());
  std::lock_guard<std::mutex> lock(g_mu);
  std::memset(id->internal, 0, sizeof(id->internal));
  for (int i = 0; i < 16; ++i) id->internal[i] = static_cast<char>('a' + rng() % 26);
  return ncclSuccess;
}

ncclResult_t ncclCommInitRankConfig(ncclComm_t* comm, int nranks, ncclUniqueId id, int rank,
                                    ncclConfig_t* config) {
  if (nranks < 1 || rank < 0 || rank >= nranks) return ncclInvalidArgument;
  std::unique_lock<std::mutex> lock(g_mu);
  std::shared_ptr<Clique>& c = g_cliques[std::string(id.internal, sizeof(id.internal))];
  if (!c) {
    c = std::make_shared<Clique>();
    c->nranks = nranks;
  }
  if (c->nranks != nranks) return ncclInvalidUsage;
  ++c->joined;
  g_cv.notify_all();
  auto* cm = new ncclComm;
  cm->clique = c;
  cm->rank = rank;
  cm->blocking = config == nullptr || config->blocking != 0;
  *comm = cm;
  if (!cm->blocking) return c->joined >= c->nranks ? ncclSuccess : ncclInProgress;
  g_cv.wait(lock, [&] { return c->joined >= c->nranks || c->aborted; });
  return c->aborted ? ncclRemoteError : ncclSuccess;
}

ncclResult_t ncclCommInitRank(ncclComm_t* comm, int nranks, ncclUniqueId id, int rank) {
  return ncclCommInitRankConfig(comm, nranks, id, rank, nullptr);
}

ncclResult_t ncclCommGetAsyncError(ncclComm_t comm, ncclResult_t* state) {
  std::lock_guard<std::mutex> lock(g_mu);
  if (comm->clique->aborted) {
    *state = ncclRemoteError;
  } else {
    *state = comm->clique->joined >= comm->clique->nranks ? ncclSuccess : ncclInProgress;
  }
  return ncclSuccess;
}

ncclResult_t ncclCommAbort(ncclComm_t comm) {
  if (comm == nullptr) return ncclSuccess;
  static std::vector<std::unique_ptr<ncclComm>> retired;  // another thread may still hold it
  std::lock_guard<std::mutex> lock(g_mu);
  comm->clique->aborted = true;  // a dead peer fails the other side's calls too
  g_cv.notify_all();
  retired.emplace_back(comm);
  return ncclSuccess;
}

ncclResult_t ncclCommDestroy(ncclComm_t comm) { return ncclCommAbort(comm); }

ncclResult_t ncclSend(const void* buf, size_t count, ncclDataType_t, int peer, ncclComm_t comm,
                      cudaStream_t) {
  if (g_group_depth > 0) {
    g_group.push_back({true, const_cast<void*>(buf), count, peer, comm});
    return ncclSuccess;
  }
  return Transfer(true, const_cast<void*>(buf), count, peer, comm);
}

ncclResult_t ncclRecv(void* buf, size_t count, ncclDataType_t, int peer, ncclComm_t comm,
                      cudaStream_t) {
  if (g_group_depth > 0) {
    g_group.push_back({false, buf, count, peer, comm});
    return ncclSuccess;
  }
  return Transfer(false, buf, count, peer, comm);
}

ncclResult_t ncclGroupStart() {
  ++g_group_depth;
  return ncclSuccess;
}

ncclResult_t ncclGroupEnd() {
  if (g_group_depth == 0) return ncclInvalidUsage;
  if (--g_group_depth > 0) return ncclSuccess;
  std::vector<Deferred> ops;
  ops.swap(g_group);
  // Sends to this thread's own rank pair with its receives here; the rest
  // rendezvous with other threads in posting order.
  std::vector<bool> used(ops.size(), false);
  for (size_t i = 0; i < ops.size(); ++i) {
    if (!ops[i].send) continue;
    for (size_t j = 0; j < ops.size(); ++j) {
      if (used[j] || ops[j].send || ops[j].comm->clique != ops[i].comm->clique) continue;
      if (ops[j].peer != ops[i].comm->rank || ops[i].peer != ops[j].comm->rank) continue;
      if (ops[i].bytes != ops[j].bytes) return ncclInvalidUsage;
      std::memcpy(ops[j].buf, ops[i].buf, ops[i].bytes);
      used[i] = used[j] = true;
      break;
    }
  }
  for (size_t i = 0; i < ops.size(); ++i) {
    if (used[i]) continue;
    if (ncclResult_t r = Transfer(ops[i].send, ops[i].buf, ops[i].bytes, ops[i].peer, ops[i].comm);
        r != ncclSuccess) {
      return r;
    }
  }
  return ncclSuccess;
}

const char* ncclGetErrorString(ncclResult_t r) {
  switch (r) {
    case ncclSuccess:
      return "no error";
    case ncclRemoteError:
      return "remote process exited or there was a network error";
    case ncclInProgress:
      return "NCCL operation in progress";
    case ncclInvalidUsage:
      return "invalid usage";
    case ncclInvalidArgument:
      return "invalid argument";
    default:
      return "NCCL error";
  }
}

const char* ncclGetLastError(ncclComm_t) { return ""; }

ncclResult_t ncclGetVersion(int* version) {
  *version = 20000;
  return ncclSuccess;
}
