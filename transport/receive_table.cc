#include "transport/receive_table.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "common/check.h"
#include "common/clock.h"

namespace pdserve::transport::internal {

namespace {

enum LayerState : uint8_t { kLayerNone = 0, kLayerReceiving = 1, kLayerDone = 2 };

std::string XferName(TransferId xfer) { return absl::StrCat("transfer ", xfer.value); }

bool BeginVerifies(const TransferSecret& secret, TransferId xfer, int32_t n_layers,
                   const BeginProof& proof) {
  return TagEquals(BeginTag(secret, xfer, static_cast<uint32_t>(n_layers), proof.budget_ms),
                   proof.tag);
}

absl::Status WrongSecret(TransferId xfer) {
  return absl::PermissionDeniedError(
      absl::StrCat(XferName(xfer), ": the sender did not prove the transfer's secret"));
}

}  // namespace

struct ReceiveTable::Entry {
  TransferId xfer;
  // From Post.
  bool posted = false;
  TransferSecret secret;
  std::vector<std::vector<BlockView>> layers;  // [layer][block]
  ReceiveDoneCallback on_done;
  Deadline post_deadline = Deadline::max();
  int64_t posted_ns = 0;
  // From the sender's verified announcement.
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
  RememberFinishedLocked(e->xfer);
  entries_.erase(e->xfer);
}

void ReceiveTable::RememberFinishedLocked(TransferId xfer) {
  if (options_.max_finished_ids <= 0 || !finished_.insert(xfer).second) return;
  finished_order_.push_back(xfer);
  while (static_cast<int>(finished_order_.size()) > options_.max_finished_ids) {
    finished_.erase(finished_order_.front());
    finished_order_.pop_front();
  }
}

void ReceiveTable::SetPendingDeadlineLocked(Pending* p, Deadline deadline) {
  if (p->deadline != Deadline::max()) pending_deadlines_.erase({p->deadline, p->seq});
  p->deadline = deadline;
  if (deadline != Deadline::max()) pending_deadlines_.insert({deadline, p->seq});
}

void ReceiveTable::RemovePendingLocked(uint64_t seq) {
  auto it = pending_.find(seq);
  if (it == pending_.end()) return;
  Pending& p = it->second;
  SetPendingDeadlineLocked(&p, Deadline::max());
  if (p.ended.has_value()) {
    --tombstones_;
  } else {
    --unposted_;
    auto link = unposted_per_link_.find(p.link);
    if (link != unposted_per_link_.end() && --link->second == 0) unposted_per_link_.erase(link);
  }
  auto by_xfer = pending_by_xfer_.find(p.xfer);
  if (by_xfer != pending_by_xfer_.end()) {
    std::vector<uint64_t>& seqs = by_xfer->second;
    seqs.erase(std::remove(seqs.begin(), seqs.end(), seq), seqs.end());
    if (seqs.empty()) pending_by_xfer_.erase(by_xfer);
  }
  pending_.erase(it);
}

void ReceiveTable::EndPendingLocked(Pending* p, absl::Status why) {
  if (p->ended.has_value()) return;
  if (shutdown_ || tombstones_ >= options_.max_remembered) {
    RemovePendingLocked(p->seq);
    return;
  }
  --unposted_;
  auto link = unposted_per_link_.find(p->link);
  if (link != unposted_per_link_.end() && --link->second == 0) unposted_per_link_.erase(link);
  p->ended = std::move(why);
  ++tombstones_;
  SetPendingDeadlineLocked(p, MonoClock::now() + std::chrono::duration_cast<MonoClock::duration>(
                                                     options_.remember_ended));
}

void ReceiveTable::RefuseLocked(LinkId link, TransferId xfer, absl::Status why, Effects* fx) {
  counters_->BeginRefused();
  fx->replies.push_back({link, xfer, ReplyKind::kNack, std::move(why)});
}

void ReceiveTable::FinishLocked(Entry* e, absl::Status status, std::string trailer, int flags,
                                Effects* fx) {
  PDS_CHECK(!e->ended) << XferName(e->xfer);
  PDS_CHECK(!e->writing) << XferName(e->xfer);
  e->ended = true;
  if (e->posted) {
    counters_->Finished(status, MonoNowNs() - e->posted_ns);
    fx->done.push_back({std::move(e->on_done), status, std::move(trailer), e->timing});
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
    e->tombstone = Tombstone::kReceiverEnded;
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

absl::Status ReceiveTable::Post(TransferId xfer, const TransferSecret& secret,
                                std::vector<std::vector<BlockView>> layers, Deadline deadline,
                                ReceiveDoneCallback on_done) {
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
    if (it != entries_.end()) {
      if (it->second->tombstone == Tombstone::kNone) {
        return absl::AlreadyExistsError(XferName(xfer) + " is already posted");
      }
      EraseLocked(it->second.get());  // our own earlier Post, remembered for its sender
    }
    // Verify the announcements that came first: refuse the forged ones,
    // take the first genuine one, refuse later copies of it.
    std::optional<Pending> sender;
    if (auto by_xfer = pending_by_xfer_.find(xfer); by_xfer != pending_by_xfer_.end()) {
      const std::vector<uint64_t> seqs = by_xfer->second;
      for (uint64_t seq : seqs) {
        Pending& p = pending_.at(seq);
        const bool waiting = !p.ended.has_value();
        if (!BeginVerifies(secret, xfer, p.n_layers, p.proof)) {
          if (waiting) RefuseLocked(p.link, xfer, WrongSecret(xfer), &fx);
        } else if (!sender.has_value()) {
          sender = p;
          verified_links_.insert(p.link);
        } else if (waiting) {
          RefuseLocked(
              p.link, xfer,
              absl::AlreadyExistsError(XferName(xfer) + " is already being sent by another sender"),
              &fx);
        }
        RemovePendingLocked(seq);
      }
    }
    if (sender.has_value() && sender->ended.has_value()) {
      // The sender gave up before we posted: fail now, not at our deadline.
      const absl::Status& why = *sender->ended;
      return absl::Status(why.code(),
                          absl::StrCat("the sender gave up before the Post: ", why.message()));
    }
    if (sender.has_value() && static_cast<size_t>(sender->n_layers) != layers.size()) {
      rejected = absl::InvalidArgumentError(
          absl::StrCat(XferName(xfer), ": sender announced ", sender->n_layers,
                       " layers, receiver posted ", layers.size()));
      fx.replies.push_back({sender->link, xfer, ReplyKind::kNack, rejected});
    } else {
      auto fresh = std::make_unique<Entry>();
      Entry* e = fresh.get();
      e->xfer = xfer;
      e->secret = secret;
      if (sender.has_value()) {
        e->announced = true;
        e->link = sender->link;
        e->n_layers = sender->n_layers;
        e->sender_deadline = sender->sender_deadline;
      }
      entries_.emplace(xfer, std::move(fresh));
      PostLocked(e, std::move(layers), deadline, std::move(on_done), &fx);
    }
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
                            Deadline sender_deadline, const BeginProof& proof) {
  Effects fx;
  {
    absl::MutexLock lock(&mu_);
    if (!shutdown_) AnnounceLocked(link, xfer, n_layers, sender_deadline, proof, &fx);
  }
  Run(fx);
}

void ReceiveTable::AnnounceLocked(LinkId link, TransferId xfer, int32_t n_layers,
                                  Deadline sender_deadline, const BeginProof& proof, Effects* fx) {
  auto it = entries_.find(xfer);
  Entry* e = it == entries_.end() ? nullptr : it->second.get();
  if (e == nullptr) {
    if (finished_.contains(xfer)) {
      RefuseLocked(link, xfer,
                   absl::AlreadyExistsError(XferName(xfer) +
                                            " already finished here; a replayed Begin is refused"),
                   fx);
      return;
    }
    // Not posted yet: wait, unverified, on this link only.
    auto per_link = unposted_per_link_.find(link);
    const int on_link = per_link == unposted_per_link_.end() ? 0 : per_link->second;
    if (on_link >= options_.max_unposted_per_link || unposted_ >= options_.max_unposted) {
      RefuseLocked(link, xfer,
                   absl::ResourceExhaustedError(absl::StrCat(
                       "receiver has ", on_link, " transfers from this sender (", unposted_,
                       " in all) waiting for their Post; refusing ", XferName(xfer))),
                   fx);
      return;
    }
    Pending p;
    p.seq = next_pending_seq_++;
    p.link = link;
    p.xfer = xfer;
    p.n_layers = n_layers;
    p.sender_deadline = sender_deadline;
    p.proof = proof;
    ++unposted_;
    ++unposted_per_link_[link];
    pending_by_xfer_[xfer].push_back(p.seq);
    Pending& stored = pending_.emplace(p.seq, std::move(p)).first->second;
    Deadline cap = MonoClock::now() +
                   std::chrono::duration_cast<MonoClock::duration>(options_.max_unposted_wait);
    SetPendingDeadlineLocked(&stored, std::min(sender_deadline, cap));
    fx->wake = true;
    return;
  }
  if (!BeginVerifies(e->secret, xfer, n_layers, proof)) {
    RefuseLocked(link, xfer, WrongSecret(xfer), fx);
    return;
  }
  verified_links_.insert(link);
  if (e->tombstone != Tombstone::kNone) {
    // We gave up before the sender showed up: tell it now.
    absl::Status final_status = e->final_status;
    EraseLocked(e);
    fx->replies.push_back({link, xfer, ReplyKind::kNack, std::move(final_status)});
    return;
  }
  if (e->announced) {
    // Answer the newcomer only; the first sender keeps its transfer.
    RefuseLocked(
        link, xfer,
        absl::AlreadyExistsError(XferName(xfer) + " is already being sent by another sender"), fx);
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

bool ReceiveTable::Trailer(LinkId link, TransferId xfer, std::string trailer, const AuthTag& tag,
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
    } else if (!TagEquals(TrailerTag(e->secret, xfer, trailer), tag)) {
      FinishLocked(e,
                   absl::PermissionDeniedError(absl::StrCat(
                       XferName(xfer), ": the trailer does not prove the transfer's secret")),
                   "", kReply | kSenderDone, &fx);
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
    if (it == entries_.end() || !it->second->announced || it->second->link != link) {
      // Not matched with a Post: this link's own pending announcement, if
      // any, ends (an abort from another link changes nothing). Otherwise
      // the abort crossed our Nack on the wire: nothing to do.
      if (auto by_xfer = pending_by_xfer_.find(xfer); by_xfer != pending_by_xfer_.end()) {
        for (uint64_t seq : std::vector<uint64_t>(by_xfer->second)) {
          Pending& p = pending_.at(seq);
          if (p.link != link || p.ended.has_value()) continue;
          EndPendingLocked(&p, why == absl::StatusCode::kDeadlineExceeded
                                   ? absl::DeadlineExceededError(XferName(xfer) +
                                                                 ": the sender's deadline passed")
                                   : absl::AbortedError(XferName(xfer) + " aborted by the sender"));
          break;
        }
      }
    } else if (Entry* e = it->second.get(); e->tombstone != Tombstone::kNone) {
      // kept for a late Post
    } else if (e->ended) {
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
    std::vector<uint64_t> waiting;
    for (const auto& [seq, p] : pending_) {
      if (p.link == link && !p.ended.has_value()) waiting.push_back(seq);
    }
    for (uint64_t seq : waiting) EndPendingLocked(&pending_.at(seq), why);
    verified_links_.erase(link);
  }
  Run(fx);
}

bool ReceiveTable::LinkVerified(LinkId link) {
  absl::MutexLock lock(&mu_);
  return verified_links_.contains(link);
}

void ReceiveTable::ForgetLink(LinkId link) {
  absl::MutexLock lock(&mu_);
  verified_links_.erase(link);
}

int ReceiveTable::unposted() {
  absl::MutexLock lock(&mu_);
  return unposted_;
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
      absl::Status expired = absl::DeadlineExceededError(absl::StrCat(
          XferName(xfer), ": deadline passed with ", e->layers_done, " of ", e->layers.size(),
          " layers received", e->announced ? "" : " (the sender never showed up)"));
      FinishLocked(e, expired, "", kReply | kRemember, &fx);
    }
    while (!pending_deadlines_.empty() && pending_deadlines_.begin()->first <= now) {
      Pending& p = pending_.at(pending_deadlines_.begin()->second);
      if (p.ended.has_value()) {
        RemovePendingLocked(p.seq);  // remembered long enough
        continue;
      }
      absl::Status expired = absl::DeadlineExceededError(
          absl::StrCat(XferName(p.xfer), ": the receiver did not post blocks in time"));
      fx.replies.push_back({p.link, p.xfer, ReplyKind::kNack, expired});
      EndPendingLocked(&p, std::move(expired));
    }
    if (!deadlines_.empty()) next = deadlines_.begin()->first;
    if (!pending_deadlines_.empty()) next = std::min(next, pending_deadlines_.begin()->first);
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
    std::vector<uint64_t> seqs;
    for (const auto& [seq, p] : pending_) seqs.push_back(seq);
    for (uint64_t seq : seqs) RemovePendingLocked(seq);
  }
  Run(fx);
}

}  // namespace pdserve::transport::internal
