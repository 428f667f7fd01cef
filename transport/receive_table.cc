#include "transport/receive_table.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "common/check.h"
#include "common/clock.h"

namespace pdserve::transport::internal {

namespace {

enum LayerState : uint8_t { kLayerNone = 0, kLayerReceiving = 1, kLayerDone = 2 };

std::string XferName(TransferId xfer) { return absl::StrCat("transfer ", xfer.value); }

}  // namespace

struct ReceiveTable::Entry {
  TransferId xfer;
  // From Post.
  bool posted = false;
  std::vector<std::vector<BlockView>> layers;  // [layer][block]
  ReceiveDoneCallback on_done;
  Deadline post_deadline = Deadline::max();
  int64_t posted_ns = 0;
  // From the sender's announcement.
  bool announced = false;
  LinkId link = 0;
  int32_t n_layers = 0;
  Deadline sender_deadline = Deadline::max();
  // Ready went out: the sender may send data until its last frame, so the
  // entry outlives a failure as a tombstone that discards late data.
  bool ready_sent = false;
  // Progress.
  std::vector<uint8_t> layer_state;  // LayerState per layer
  int32_t layers_done = 0;
  ReceiveTiming timing;
  bool writing = false;  // an AcquireWrite is outstanding
  bool ended = false;    // on_done has been scheduled
  // An unmatched transfer that ended (Post cancelled or expired before the
  // sender showed up, or the reverse) is remembered for a while, so that the
  // late side learns the outcome at once instead of waiting for its deadline.
  Tombstone tombstone = Tombstone::kNone;
  absl::Status final_status;
  Deadline deadline = Deadline::max();  // its key in deadlines_
};

struct ReceiveTable::Effects {
  struct Done {
    ReceiveDoneCallback callback;
    absl::Status status;
    std::string trailer;
    ReceiveTiming timing;
  };
  struct Reply {
    LinkId link;
    TransferId xfer;
    ReplyKind kind;
    absl::Status status;
  };
  std::vector<Done> done;
  std::vector<Reply> replies;
  bool wake = false;
};

ReceiveTable::ReceiveTable(ReplySink* sink, ReceiveTableOptions options, TransferCounters* counters)
    : sink_(sink), options_(options), counters_(counters) {}

ReceiveTable::~ReceiveTable() {
  absl::MutexLock lock(&mu_);
  for (auto& [id, e] : entries_) PDS_CHECK(!e->writing) << "write lease outlives the table";
}

void ReceiveTable::Run(Effects& fx) {
  // Replies first: the sender learns the outcome no later than the owner.
  for (Effects::Reply& r : fx.replies) sink_->Reply(r.link, r.xfer, r.kind, r.status);
  if (fx.wake) sink_->WakeForDeadline();
  for (Effects::Done& d : fx.done) {
    if (d.callback) std::move(d.callback)(std::move(d.status), std::move(d.trailer), d.timing);
  }
}

void ReceiveTable::SetDeadlineLocked(Entry* e, Deadline deadline) {
  if (e->deadline != Deadline::max()) deadlines_.erase({e->deadline, e->xfer.value});
  e->deadline = deadline;
  if (deadline != Deadline::max()) deadlines_.insert({deadline, e->xfer.value});
}

void ReceiveTable::EraseLocked(Entry* e) {
  PDS_CHECK(!e->writing) << XferName(e->xfer);
  SetDeadlineLocked(e, Deadline::max());
  if (e->tombstone != Tombstone::kNone) --tombstones_;
  entries_.erase(e->xfer);
}

void ReceiveTable::FinishLocked(Entry* e, absl::Status status, std::string trailer, int flags,
                                Effects* fx) {
  PDS_CHECK(!e->ended) << XferName(e->xfer);
  PDS_CHECK(!e->writing) << XferName(e->xfer);
  e->ended = true;
  if (e->posted) {
    counters_->Finished(status, MonoNowNs() - e->posted_ns);
    fx->done.push_back({std::move(e->on_done), status, std::move(trailer), e->timing});
  } else if (e->announced) {
    --unposted_;
  }
  if ((flags & kReply) && e->announced) {
    fx->replies.push_back(
        {e->link, e->xfer, status.ok() ? ReplyKind::kAck : ReplyKind::kNack, status});
  }
  // Revoke the views: from here on nothing may be written into them.
  e->layers.clear();
  e->layers.shrink_to_fit();
  SetDeadlineLocked(e, Deadline::max());
  if (e->ready_sent && !(flags & kSenderDone)) return;  // a tombstone until the sender's last frame
  if ((flags & kRemember) && !e->ready_sent && !shutdown_ &&
      tombstones_ < options_.max_remembered) {
    e->tombstone = e->posted ? Tombstone::kReceiverEnded : Tombstone::kSenderEnded;
    e->final_status = status;
    ++tombstones_;
    SetDeadlineLocked(e, MonoClock::now() + std::chrono::duration_cast<MonoClock::duration>(
                                                options_.remember_ended));
    return;
  }
  EraseLocked(e);
}

ReceiveTable::Entry* ReceiveTable::WaitNotWritingLocked(TransferId xfer) {
  while (true) {
    auto it = entries_.find(xfer);
    if (it == entries_.end()) return nullptr;
    if (!it->second->writing) return it->second.get();
    write_done_.Wait(&mu_);
  }
}

absl::Status ReceiveTable::Post(TransferId xfer, std::vector<std::vector<BlockView>> layers,
                                Deadline deadline, ReceiveDoneCallback on_done) {
  if (layers.empty()) return absl::InvalidArgumentError(XferName(xfer) + ": posted no layers");
  for (size_t l = 0; l < layers.size(); ++l) {
    if (layers[l].empty()) {
      return absl::InvalidArgumentError(
          absl::StrCat(XferName(xfer), ": layer ", l, " has no blocks"));
    }
    for (const BlockView& v : layers[l]) {
      if (v.data == nullptr && v.bytes > 0) {
        return absl::InvalidArgumentError(
            absl::StrCat(XferName(xfer), ": layer ", l, " has a null block view"));
      }
    }
  }
  Effects fx;
  absl::Status rejected;
  {
    absl::MutexLock lock(&mu_);
    if (shutdown_) return absl::FailedPreconditionError("receiver is shutting down");
    auto it = entries_.find(xfer);
    Entry* e = it == entries_.end() ? nullptr : it->second.get();
    if (e != nullptr && e->tombstone != Tombstone::kNone) {
      Tombstone tombstone = e->tombstone;
      absl::Status final_status = e->final_status;
      EraseLocked(e);
      e = nullptr;
      if (tombstone == Tombstone::kSenderEnded) {
        // The sender gave up before we posted: fail now, not at our deadline.
        return absl::Status(
            final_status.code(),
            absl::StrCat("the sender gave up before the Post: ", final_status.message()));
      }
    }
    if (e != nullptr) {
      if (e->posted) return absl::AlreadyExistsError(XferName(xfer) + " is already posted");
      // Announced and waiting for us.
      if (static_cast<size_t>(e->n_layers) != layers.size()) {
        rejected = absl::InvalidArgumentError(absl::StrCat(XferName(xfer), ": sender announced ",
                                                           e->n_layers, " layers, receiver posted ",
                                                           layers.size()));
        FinishLocked(e, rejected, "", kReply, &fx);
      } else {
        --unposted_;
      }
    } else {
      auto fresh = std::make_unique<Entry>();
      fresh->xfer = xfer;
      e = fresh.get();
      entries_.emplace(xfer, std::move(fresh));
    }
    if (rejected.ok()) PostLocked(e, std::move(layers), deadline, std::move(on_done), &fx);
  }
  Run(fx);
  return rejected;
}

void ReceiveTable::PostLocked(Entry* e, std::vector<std::vector<BlockView>> layers,
                              Deadline deadline, ReceiveDoneCallback on_done, Effects* fx) {
  e->posted = true;
  e->layers = std::move(layers);
  e->on_done = std::move(on_done);
  e->post_deadline = deadline;
  e->posted_ns = MonoNowNs();
  e->layer_state.assign(e->layers.size(), kLayerNone);
  counters_->Started();
  if (e->announced) {
    e->ready_sent = true;
    fx->replies.push_back({e->link, e->xfer, ReplyKind::kReady, absl::OkStatus()});
  }
  SetDeadlineLocked(e, std::min(e->post_deadline, e->sender_deadline));
  fx->wake = true;
}

absl::Status ReceiveTable::Cancel(TransferId xfer) {
  Effects fx;
  {
    absl::MutexLock lock(&mu_);
    Entry* e = WaitNotWritingLocked(xfer);
    if (e == nullptr || !e->posted || e->ended) {
      return absl::NotFoundError(XferName(xfer) + " has no live Post");
    }
    FinishLocked(e, absl::CancelledError(XferName(xfer) + " cancelled by the receiver"), "",
                 kReply | kRemember, &fx);
  }
  Run(fx);
  return absl::OkStatus();
}

void ReceiveTable::Announce(LinkId link, TransferId xfer, int32_t n_layers,
                            Deadline sender_deadline) {
  Effects fx;
  {
    absl::MutexLock lock(&mu_);
    if (!shutdown_) AnnounceLocked(link, xfer, n_layers, sender_deadline, &fx);
  }
  Run(fx);
}

void ReceiveTable::AnnounceLocked(LinkId link, TransferId xfer, int32_t n_layers,
                                  Deadline sender_deadline, Effects* fx) {
  auto it = entries_.find(xfer);
  Entry* e = it == entries_.end() ? nullptr : it->second.get();
  if (e != nullptr && e->tombstone != Tombstone::kNone) {
    Tombstone tombstone = e->tombstone;
    absl::Status final_status = e->final_status;
    EraseLocked(e);
    e = nullptr;
    if (tombstone == Tombstone::kReceiverEnded) {
      // We gave up before the sender showed up: tell it now.
      fx->replies.push_back({link, xfer, ReplyKind::kNack, final_status});
      return;
    }
  }
  if (e == nullptr) {
    if (unposted_ >= options_.max_unposted) {
      fx->replies.push_back({link, xfer, ReplyKind::kNack,
                             absl::ResourceExhaustedError(absl::StrCat(
                                 "receiver has ", unposted_,
                                 " transfers waiting for their Post; refusing ", XferName(xfer)))});
      return;
    }
    auto fresh = std::make_unique<Entry>();
    fresh->xfer = xfer;
    fresh->announced = true;
    fresh->link = link;
    fresh->n_layers = n_layers;
    fresh->sender_deadline = sender_deadline;
    ++unposted_;
    Deadline cap = MonoClock::now() +
                   std::chrono::duration_cast<MonoClock::duration>(options_.max_unposted_wait);
    e = fresh.get();
    entries_.emplace(xfer, std::move(fresh));
    SetDeadlineLocked(e, std::min(sender_deadline, cap));
    fx->wake = true;
    return;
  }
  if (e->announced) {
    // Answer the newcomer only; the first sender keeps its transfer.
    fx->replies.push_back(
        {link, xfer, ReplyKind::kNack,
         absl::AlreadyExistsError(XferName(xfer) + " is already being sent by another sender")});
    return;
  }
  // Posted and waiting for this sender.
  e->announced = true;
  e->link = link;
  e->n_layers = n_layers;
  e->sender_deadline = sender_deadline;
  if (e->layers.size() != static_cast<size_t>(n_layers)) {
    FinishLocked(
        e,
        absl::InvalidArgumentError(absl::StrCat(XferName(xfer), ": sender announced ", n_layers,
                                                " layers, receiver posted ", e->layers.size())),
        "", kReply, fx);
    return;
  }
  e->ready_sent = true;
  fx->replies.push_back({link, xfer, ReplyKind::kReady, absl::OkStatus()});
  SetDeadlineLocked(e, std::min(e->post_deadline, sender_deadline));
  fx->wake = true;
}

LayerVerdict ReceiveTable::BeginLayer(LinkId link, TransferId xfer, int32_t layer,
                                      absl::Span<const uint64_t> block_bytes, std::string* error) {
  Effects fx;
  LayerVerdict verdict = LayerVerdict::kDiscard;
  {
    absl::MutexLock lock(&mu_);
    auto it = entries_.find(xfer);
    Entry* e = it == entries_.end() ? nullptr : it->second.get();
    if (e == nullptr || !e->announced || e->link != link || !e->ready_sent) {
      *error = absl::StrCat("layer data for ", XferName(xfer),
                            ", which is not open for data on this link");
      return LayerVerdict::kProtocolError;
    }
    if (e->ended) return LayerVerdict::kDiscard;  // late data for a failed transfer
    absl::Status bad;
    if (layer < 0 || layer >= e->n_layers) {
      bad = absl::InvalidArgumentError(
          absl::StrCat(XferName(xfer), ": layer ", layer, " out of range [0, ", e->n_layers, ")"));
    } else if (e->layer_state[layer] != kLayerNone) {
      bad = absl::InvalidArgumentError(
          absl::StrCat(XferName(xfer), ": layer ", layer, " sent twice"));
    } else {
      const std::vector<BlockView>& dst = e->layers[layer];
      bool same = dst.size() == block_bytes.size();
      for (size_t i = 0; same && i < dst.size(); ++i) same = dst[i].bytes == block_bytes[i];
      if (!same) {
        uint64_t sent = 0;
        for (uint64_t b : block_bytes) sent += b;
        bad = absl::InvalidArgumentError(
            absl::StrCat(XferName(xfer), ": layer ", layer, " size mismatch: sent ",
                         block_bytes.size(), " blocks (", sent, " bytes), posted ", dst.size(),
                         " blocks (", TotalBytes(dst), " bytes)"));
      }
    }
    if (!bad.ok()) {
      FinishLocked(e, bad, "", kReply, &fx);
    } else {
      e->layer_state[layer] = kLayerReceiving;
      verdict = LayerVerdict::kWrite;
    }
  }
  Run(fx);
  return verdict;
}

const std::vector<BlockView>* ReceiveTable::AcquireWrite(TransferId xfer, int32_t layer) {
  absl::MutexLock lock(&mu_);
  auto it = entries_.find(xfer);
  if (it == entries_.end() || it->second->ended) return nullptr;
  Entry* e = it->second.get();
  PDS_CHECK(!e->writing) << XferName(xfer);
  PDS_CHECK(layer >= 0 && layer < e->n_layers && e->layer_state[layer] == kLayerReceiving)
      << XferName(xfer) << " layer " << layer;
  e->writing = true;
  return &e->layers[layer];
}

void ReceiveTable::ReleaseWrite(TransferId xfer) {
  absl::MutexLock lock(&mu_);
  auto it = entries_.find(xfer);
  PDS_CHECK(it != entries_.end() && it->second->writing) << XferName(xfer);
  it->second->writing = false;
  write_done_.SignalAll();
}

void ReceiveTable::EndLayer(LinkId link, TransferId xfer, int32_t layer,
                            const absl::Status& status) {
  Effects fx;
  {
    absl::MutexLock lock(&mu_);
    auto it = entries_.find(xfer);
    if (it == entries_.end() || it->second->ended || it->second->link != link) return;
    Entry* e = it->second.get();
    if (!status.ok()) {
      FinishLocked(e, status, "", kReply, &fx);
    } else {
      e->layer_state[layer] = kLayerDone;
      ++e->layers_done;
      e->timing.last_layer_ns = MonoNowNs();
      if (e->timing.first_layer_ns == 0) e->timing.first_layer_ns = e->timing.last_layer_ns;
      counters_->AddBytes(static_cast<int64_t>(TotalBytes(e->layers[layer])));
    }
  }
  Run(fx);
}

bool ReceiveTable::Trailer(LinkId link, TransferId xfer, std::string trailer,
                           const absl::Status& status) {
  Effects fx;
  {
    absl::MutexLock lock(&mu_);
    auto it = entries_.find(xfer);
    Entry* e = it == entries_.end() ? nullptr : it->second.get();
    if (e == nullptr || !e->announced || e->link != link || !e->ready_sent) return false;
    if (e->ended) {
      EraseLocked(e);  // the sender is done with the tombstone
      return true;
    }
    if (!status.ok()) {
      FinishLocked(e, status, "", kReply | kSenderDone, &fx);
    } else if (e->layers_done != e->n_layers) {
      FinishLocked(
          e,
          absl::InvalidArgumentError(absl::StrCat(XferName(xfer), ": trailer after ",
                                                  e->layers_done, " of ", e->n_layers, " layers")),
          "", kReply | kSenderDone, &fx);
    } else {
      FinishLocked(e, absl::OkStatus(), std::move(trailer), kReply | kSenderDone, &fx);
    }
  }
  Run(fx);
  return true;
}

void ReceiveTable::SenderAborted(LinkId link, TransferId xfer, absl::StatusCode why) {
  Effects fx;
  {
    absl::MutexLock lock(&mu_);
    auto it = entries_.find(xfer);
    // An abort for a transfer we already forgot, or that belongs to another
    // sender, crossed our Nack on the wire: nothing to do.
    if (it == entries_.end() || !it->second->announced || it->second->link != link) return;
    Entry* e = it->second.get();
    if (e->tombstone != Tombstone::kNone) return;  // kept for a late Post
    if (e->ended) {
      EraseLocked(e);
    } else {
      absl::Status status = why == absl::StatusCode::kDeadlineExceeded
                                ? absl::DeadlineExceededError(absl::StrCat(
                                      XferName(xfer), ": the sender's deadline passed with ",
                                      e->layers_done, " of ", e->n_layers, " layers received"))
                                : absl::AbortedError(XferName(xfer) + " aborted by the sender");
      FinishLocked(e, std::move(status), "", kSenderDone | kRemember, &fx);
    }
  }
  Run(fx);
}

void ReceiveTable::LinkClosed(LinkId link, const absl::Status& why) {
  Effects fx;
  {
    absl::MutexLock lock(&mu_);
    std::vector<TransferId> ids;
    for (const auto& [id, e] : entries_) {
      if (e->announced && e->link == link && e->tombstone == Tombstone::kNone) ids.push_back(id);
    }
    for (TransferId id : ids) {
      Entry* e = entries_.at(id).get();
      if (e->ended) {
        EraseLocked(e);
      } else {
        FinishLocked(e, why, "", kSenderDone | kRemember, &fx);
      }
    }
  }
  Run(fx);
}

Deadline ReceiveTable::ExpireDue(Deadline now) {
  Effects fx;
  Deadline next = Deadline::max();
  {
    absl::MutexLock lock(&mu_);
    while (!deadlines_.empty() && deadlines_.begin()->first <= now) {
      TransferId xfer{deadlines_.begin()->second};
      Entry* e = WaitNotWritingLocked(xfer);
      if (e == nullptr || e->deadline > now) continue;  // changed while we waited
      if (e->tombstone != Tombstone::kNone) {
        EraseLocked(e);  // remembered long enough
        continue;
      }
      PDS_CHECK(!e->ended) << XferName(xfer);
      absl::Status expired;
      if (!e->posted) {
        expired = absl::DeadlineExceededError(
            absl::StrCat(XferName(xfer), ": the receiver did not post blocks in time"));
      } else {
        expired = absl::DeadlineExceededError(absl::StrCat(
            XferName(xfer), ": deadline passed with ", e->layers_done, " of ", e->layers.size(),
            " layers received", e->announced ? "" : " (the sender never showed up)"));
      }
      FinishLocked(e, expired, "", kReply | kRemember, &fx);
    }
    if (!deadlines_.empty()) next = deadlines_.begin()->first;
  }
  Run(fx);
  return next;
}

void ReceiveTable::Shutdown(const absl::Status& why) {
  Effects fx;
  {
    absl::MutexLock lock(&mu_);
    shutdown_ = true;
    std::vector<TransferId> ids;
    for (const auto& [id, e] : entries_) ids.push_back(id);
    for (TransferId id : ids) {
      Entry* e = WaitNotWritingLocked(id);
      if (e == nullptr) continue;
      if (e->ended) {
        EraseLocked(e);
      } else {
        FinishLocked(e, why, "", kSenderDone, &fx);
      }
    }
  }
  Run(fx);
}

}  // namespace pdserve::transport::internal
