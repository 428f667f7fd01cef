// Receiver-side bookkeeping shared by every backend: matches a sender's
// announcement with the local Post, checks layer counts and block sizes,
// enforces deadlines, and guarantees that nothing is written into a
// transfer's blocks after it ended.
//
// Protocol it implements (the backend carries the messages):
//   sender -> Announce(xfer, n_layers, deadline budget, Begin tag)
//   receiver -> Ready once both the announcement and the Post are here, and
//               the announcement's tag proves the Post's secret
//               (transport/transfer_auth.h)
//   sender -> layer data (only after Ready), then Trailer or Abort
//   receiver -> Ack (all layers + trailer landed) or Nack(status) at any time
// Data never arrives for an unposted transfer, so the receiver buffers
// nothing: early data waits at the sender, where it costs no copy. After
// Ready, an entry lives until the sender's last frame (Trailer/Abort) or the
// link closes, so late data for a failed transfer is recognized and
// discarded, and data for a transfer never announced is a protocol error.
// A transfer that ends before both sides met (Post cancelled or expired,
// sender aborted or gone) leaves a short-lived tombstone so the late side
// gets the outcome at once.
//
// Authentication: an announcement that arrives before its Post cannot be
// verified yet, so it never occupies the transfer id: it waits as a pending
// announcement of its own link (capped per link), and the Post verifies
// every pending announcement of its id, refusing the wrong ones
// (PermissionDenied) and taking the first right one. An announcement after
// the Post is verified at once. A forged announcement therefore never
// affects the genuine transfer of the same id, and a Begin for a transfer
// that finished recently is refused as a replay.
//
// Writes into posted views happen only between AcquireWrite and
// ReleaseWrite; Cancel, deadlines and Shutdown wait for an ongoing write and
// revoke the views, which is what makes "no write after on_done" hold.
#pragma once

#include <chrono>
#include <cstdint>
#include <deque>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "absl/types/span.h"
#include "transport/kv_transport.h"
#include "transport/transfer_auth.h"
#include "transport/transfer_counters.h"

namespace pdserve::transport::internal {

// One sender as the receiver sees it: a TCP connection, a loopback transfer.
using LinkId = uint64_t;

enum class ReplyKind { kReady, kAck, kNack };

// Delivers the table's replies. Called without the table's lock held, from
// whichever thread caused the reply (the I/O thread, Post, Cancel).
class ReplySink {
 public:
  virtual ~ReplySink() = default;
  virtual void Reply(LinkId link, TransferId xfer, ReplyKind kind, const absl::Status& status) = 0;
  // The earliest deadline may have moved: the I/O thread should call
  // ExpireDue again soon.
  virtual void WakeForDeadline() = 0;
};

struct ReceiveTableOptions {
  // Announcements waiting for their Post, per link and in all; more are
  // refused with ResourceExhausted, so a hostile sender cannot grow the
  // table. The per-link cap is what keeps one hostile link from using up
  // the global one.
  int max_unposted_per_link = 64;
  int max_unposted = 1 << 16;
  // An announcement waits at most this long for its Post, whatever budget
  // the sender claims.
  std::chrono::nanoseconds max_unposted_wait = std::chrono::seconds(60);
  // How long, and for how many transfers, the outcome of a transfer that
  // ended before both sides met is remembered: a sender that shows up after
  // the Post was cancelled (or a Post after the sender gave up) then fails at
  // once instead of at its deadline. Beyond the limit it fails at its deadline.
  std::chrono::nanoseconds remember_ended = std::chrono::seconds(10);
  int max_remembered = 4096;
  // Ids of transfers that finished, kept so that a replayed Begin is
  // refused at once (oldest forgotten first).
  int max_finished_ids = 1 << 16;
};

enum class LayerVerdict {
  kWrite,          // write the data into the views from AcquireWrite
  kDiscard,        // read and drop the data: the transfer failed or ended
  kProtocolError,  // the sender broke the protocol: drop the link
};

class ReceiveTable {
 public:
  ReceiveTable(ReplySink* sink, ReceiveTableOptions options, TransferCounters* counters);
  ReceiveTable(const ReceiveTable&) = delete;
  ReceiveTable& operator=(const ReceiveTable&) = delete;
  ~ReceiveTable();

  // KvReceiver::Post and KvReceiver::Cancel.
  absl::Status Post(TransferId xfer, const TransferSecret& secret,
                    std::vector<std::vector<BlockView>> layers, Deadline deadline,
                    ReceiveDoneCallback on_done);
  absl::Status Cancel(TransferId xfer);

  // Sender events, in the order the link delivers them, from the link's I/O
  // thread.
  // proof: the Begin's budget and tag, checked against the Post's secret.
  void Announce(LinkId link, TransferId xfer, int32_t n_layers, Deadline sender_deadline,
                const BeginProof& proof);
  // A layer's header: the sizes of the blocks as sent. On kProtocolError,
  // *error says why.
  LayerVerdict BeginLayer(LinkId link, TransferId xfer, int32_t layer,
                          absl::Span<const uint64_t> block_bytes, std::string* error);
  // Brackets each write into a layer's views. nullptr once the transfer
  // ended: discard the rest of the layer.
  const std::vector<BlockView>* AcquireWrite(TransferId xfer, int32_t layer);
  void ReleaseWrite(TransferId xfer);
  // The layer's bytes are all in; status is DataLoss on a checksum mismatch.
  void EndLayer(LinkId link, TransferId xfer, int32_t layer, const absl::Status& status);
  // The sender's last frame for xfer, with its tag (checked against the
  // Post's secret: PermissionDenied on a mismatch). status is DataLoss on a
  // checksum mismatch. Returns false on a protocol error.
  bool Trailer(LinkId link, TransferId xfer, std::string trailer, const AuthTag& tag,
               const absl::Status& status);
  // why: the sender's reason as it put it on the wire (kDeadlineExceeded
  // when its deadline passed, so that both sides report the same code);
  // anything else reads as "aborted by the sender".
  void SenderAborted(LinkId link, TransferId xfer,
                     absl::StatusCode why = absl::StatusCode::kAborted);
  // Fails the link's transfers with why (no replies: the link is gone).
  void LinkClosed(LinkId link, const absl::Status& why);
  // Whether some announcement of link has proved its transfer's secret:
  // backends close links that never do (see TcpReceiverOptions).
  bool LinkVerified(LinkId link);
  // The backend is done with link but did not close it (loopback: each
  // transfer is its own link): forget that it was verified.
  void ForgetLink(LinkId link);
  // Announcements waiting for their Post (for tests and stats).
  int unposted();

  // Fails the transfers whose deadline passed; returns the next deadline
  // (Deadline::max() if none). Never call it while holding a write.
  Deadline ExpireDue(Deadline now);

  // Fails every live Post with why, without replies; later Posts fail.
  void Shutdown(const absl::Status& why);

 private:
  struct Entry;
  struct Effects;
  // An announcement that arrived before its Post: unverified, it belongs to
  // its link only. Once its sender gave up (ended is set) it is kept for
  // remember_ended, so that a Post it verifies against fails at once.
  struct Pending {
    uint64_t seq = 0;
    LinkId link = 0;
    TransferId xfer;
    int32_t n_layers = 0;
    Deadline sender_deadline = Deadline::max();
    BeginProof proof;
    std::optional<absl::Status> ended;
    Deadline deadline = Deadline::max();  // its key in pending_deadlines_
  };

  // Ends e: schedules on_done(status) and the reply, revokes the views, and
  // drops the entry unless it must stay as a tombstone. e is invalid after.
  enum FinishFlags : int {
    kReply = 1,       // tell the sender: Ack if status is OK, else Nack
    kSenderDone = 2,  // the sender will send nothing more for it
    kRemember = 4,    // if unmatched, keep the outcome for the late side
  };
  enum class Tombstone : uint8_t { kNone, kReceiverEnded };
  void FinishLocked(Entry* e, absl::Status status, std::string trailer, int flags, Effects* fx)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void AnnounceLocked(LinkId link, TransferId xfer, int32_t n_layers, Deadline sender_deadline,
                      const BeginProof& proof, Effects* fx) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void PostLocked(Entry* e, std::vector<std::vector<BlockView>> layers, Deadline deadline,
                  ReceiveDoneCallback on_done, Effects* fx) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void SetDeadlineLocked(Entry* e, Deadline deadline) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void EraseLocked(Entry* e) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void RememberFinishedLocked(TransferId xfer) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void RemovePendingLocked(uint64_t seq) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // The pending announcement's sender gave up: remember why for a while, or
  // forget it when too much is remembered already.
  void EndPendingLocked(Pending* p, absl::Status why) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void SetPendingDeadlineLocked(Pending* p, Deadline deadline) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void RefuseLocked(LinkId link, TransferId xfer, absl::Status why, Effects* fx)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Waits until no write is in progress into xfer; returns its entry or null.
  Entry* WaitNotWritingLocked(TransferId xfer) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void Run(Effects& fx);

  ReplySink* const sink_;
  const ReceiveTableOptions options_;
  TransferCounters* const counters_;

  absl::Mutex mu_;
  absl::CondVar write_done_;
  absl::flat_hash_map<TransferId, std::unique_ptr<Entry>> entries_ ABSL_GUARDED_BY(mu_);
  std::set<std::pair<Deadline, uint64_t>> deadlines_ ABSL_GUARDED_BY(mu_);
  // Pending announcements by seq, their seqs by transfer id (in arrival
  // order), waiting ones per link, and their deadlines.
  absl::flat_hash_map<uint64_t, Pending> pending_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<TransferId, std::vector<uint64_t>> pending_by_xfer_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<LinkId, int> unposted_per_link_ ABSL_GUARDED_BY(mu_);
  std::set<std::pair<Deadline, uint64_t>> pending_deadlines_ ABSL_GUARDED_BY(mu_);
  uint64_t next_pending_seq_ ABSL_GUARDED_BY(mu_) = 1;
  absl::flat_hash_set<LinkId> verified_links_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_set<TransferId> finished_ ABSL_GUARDED_BY(mu_);
  std::deque<TransferId> finished_order_ ABSL_GUARDED_BY(mu_);
  int unposted_ ABSL_GUARDED_BY(mu_) = 0;
  int tombstones_ ABSL_GUARDED_BY(mu_) = 0;
  bool shutdown_ ABSL_GUARDED_BY(mu_) = false;
};

}  // namespace pdserve::transport::internal
