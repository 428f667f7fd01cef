// Receiver-side bookkeeping shared by every backend: matches a sender's
// announcement with the local Post, checks layer counts and block sizes,
// enforces deadlines, and guarantees that nothing is written into a
// transfer's blocks after it ended.
//
// Protocol it implements (the backend carries the messages):
//   sender -> Announce(xfer, n_layers, deadline budget)
//   receiver -> Ready once both the announcement and the Post are here
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
// Writes into posted views happen only between AcquireWrite and
// ReleaseWrite; Cancel, deadlines and Shutdown wait for an ongoing write and
// revoke the views, which is what makes "no write after on_done" hold.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "absl/types/span.h"
#include "transport/kv_transport.h"
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
  // Announcements waiting for their Post; more are refused with
  // ResourceExhausted, so a hostile sender cannot grow the table.
  int max_unposted = 1024;
  // An announcement waits at most this long for its Post, whatever budget
  // the sender claims.
  std::chrono::nanoseconds max_unposted_wait = std::chrono::seconds(60);
  // How long, and for how many transfers, the outcome of a transfer that
  // ended before both sides met is remembered: a sender that shows up after
  // the Post was cancelled (or a Post after the sender gave up) then fails at
  // once instead of at its deadline. Beyond the limit it fails at its deadline.
  std::chrono::nanoseconds remember_ended = std::chrono::seconds(10);
  int max_remembered = 4096;
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
  absl::Status Post(TransferId xfer, std::vector<std::vector<BlockView>> layers, Deadline deadline,
                    ReceiveDoneCallback on_done);
  absl::Status Cancel(TransferId xfer);

  // Sender events, in the order the link delivers them, from the link's I/O
  // thread.
  void Announce(LinkId link, TransferId xfer, int32_t n_layers, Deadline sender_deadline);
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
  // The sender's last frame for xfer. status is DataLoss on a checksum
  // mismatch. Returns false on a protocol error.
  bool Trailer(LinkId link, TransferId xfer, std::string trailer, const absl::Status& status);
  // why: the sender's reason as it put it on the wire (kDeadlineExceeded
  // when its deadline passed, so that both sides report the same code);
  // anything else reads as "aborted by the sender".
  void SenderAborted(LinkId link, TransferId xfer,
                     absl::StatusCode why = absl::StatusCode::kAborted);
  // Fails the link's transfers with why (no replies: the link is gone).
  void LinkClosed(LinkId link, const absl::Status& why);

  // Fails the transfers whose deadline passed; returns the next deadline
  // (Deadline::max() if none). Never call it while holding a write.
  Deadline ExpireDue(Deadline now);

  // Fails every live Post with why, without replies; later Posts fail.
  void Shutdown(const absl::Status& why);

 private:
  struct Entry;
  struct Effects;

  // Ends e: schedules on_done(status) and the reply, revokes the views, and
  // drops the entry unless it must stay as a tombstone. e is invalid after.
  enum FinishFlags : int {
    kReply = 1,       // tell the sender: Ack if status is OK, else Nack
    kSenderDone = 2,  // the sender will send nothing more for it
    kRemember = 4,    // if unmatched, keep the outcome for the late side
  };
  enum class Tombstone : uint8_t { kNone, kReceiverEnded, kSenderEnded };
  void FinishLocked(Entry* e, absl::Status status, std::string trailer, int flags, Effects* fx)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void AnnounceLocked(LinkId link, TransferId xfer, int32_t n_layers, Deadline sender_deadline,
                      Effects* fx) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void PostLocked(Entry* e, std::vector<std::vector<BlockView>> layers, Deadline deadline,
                  ReceiveDoneCallback on_done, Effects* fx) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void SetDeadlineLocked(Entry* e, Deadline deadline) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void EraseLocked(Entry* e) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
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
  int unposted_ ABSL_GUARDED_BY(mu_) = 0;
  int tombstones_ ABSL_GUARDED_BY(mu_) = 0;
  bool shutdown_ ABSL_GUARDED_BY(mu_) = false;
};

}  // namespace pdserve::transport::internal
