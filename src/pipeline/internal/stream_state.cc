#include "pipeline/internal/stream_state.h"

#include <algorithm>
#include <cstdio>
#include <exception>
#include <utility>

#include "absl/strings/str_cat.h"
#include "pipeline/internal/core.h"

namespace framepipe::internal {
namespace {

// How many callbacks of which stream the current thread is inside (Cancel from inside a
// callback must not wait for itself).
thread_local const StreamState* tls_callback_stream = nullptr;
thread_local int tls_callback_depth = 0;

struct CallbackScope {
  const StreamState* saved_stream;
  int saved_depth;
  explicit CallbackScope(const StreamState* s)
      : saved_stream(tls_callback_stream), saved_depth(tls_callback_depth) {
    if (tls_callback_stream == s) {
      ++tls_callback_depth;
    } else {
      tls_callback_stream = s;
      tls_callback_depth = 1;
    }
  }
  ~CallbackScope() {
    tls_callback_stream = saved_stream;
    tls_callback_depth = saved_depth;
  }
};

void FreePayload(Job& job) {
  std::string().swap(job.ctx.input.data);
  job.ctx.input.picture.reset();
}

// What every result echoes of its frame, whoever answers it (a worker, the deadline timer, an
// overload drop): seq, capture time and tags.
void EchoFrame(const FrameInput& in, FrameResult* r) {
  r->seq = in.seq;
  r->capture_time_us = in.capture_time_us;
  r->pts = in.pts;
  r->order_key = in.order_key;
  r->tags = in.tags;
}
// The same, when the frame is done with: its tags are moved, not copied.
void EchoFrame(FrameInput&& in, FrameResult* r) {
  Tags tags = std::move(in.tags);
  EchoFrame(in, r);
  r->tags = std::move(tags);
}

// Moves a job from kQueued or kRunning to `to`. Returns the state it left, or -1 if it was
// already final (someone else finalises it).
int TryFinalise(Job& job, int to) {
  int st = job.state.load(std::memory_order_acquire);
  while (st == kQueued || st == kRunning) {
    if (job.state.compare_exchange_weak(st, to, std::memory_order_acq_rel)) return st;
  }
  return -1;
}

template <typename Fn>
void RunCallback(const char* what, const std::string& stream_id, Fn&& fn) {
  try {
    fn();
  } catch (const std::exception& e) {
    std::fprintf(stderr, "framepipe: stream '%s': %s callback threw: %s\n", stream_id.c_str(), what,
                 e.what());
  } catch (...) {
    std::fprintf(stderr, "framepipe: stream '%s': %s callback threw\n", stream_id.c_str(), what);
  }
}

}  // namespace

StreamState::StreamState(std::shared_ptr<Core> core, StreamOptions options, OrderedFn ordered)
    : core_(std::move(core)), options_(std::move(options)), ordered_(std::move(ordered)) {
  uint32_t cap = options_.max_in_flight;
  if (options_.overload == OverloadPolicy::kDropOldest) cap *= 2;
  ring_.resize(std::max<uint32_t>(cap, 1));
}

StreamState::~StreamState() { core_->Unregister(this); }

bool StreamState::HasRoomLocked() const { return outstanding_ < capacity(); }

AdmitOutcome StreamState::TryAdmit(FrameInput& frame, uint64_t cost_bytes, uint64_t* generation) {
  auto job = std::make_shared<Job>();
  const bool drop_policy = options_.overload == OverloadPolicy::kDropOldest;
  const uint32_t max = options_.max_in_flight;
  uint64_t bytes_freed = 0;
  bool dropped = false;
  bool undo_global = false;
  bool undo_group = false;
  CreditGroup* const group = options_.credit_group.get();

  std::unique_lock<std::mutex> lock(mu_);
  if (closed_) return AdmitOutcome::kClosed;
  bool room = outstanding_ < capacity() && (drop_policy || outstanding_ < max);
  const bool need_drop = room && payload_used_ >= max;
  if (need_drop && !drop_policy) room = false;
  last_refusal_global_ = false;
  // The group's credit first, then the global one; either refusal is a shared limit's (the
  // stream is woken when one comes back), and a credit taken for a frame that is not admitted
  // after all goes back once this stream's lock is released (a release wakes other streams).
  if (room && group && !group->TryAcquire(this)) {
    room = false;
    last_refusal_global_ = true;
  }
  if (room && !core_->TryAcquireGlobal(cost_bytes, this)) {
    room = false;
    last_refusal_global_ = true;
    undo_group = group != nullptr;
  }
  if (room && need_drop) {
    dropped = DropOldestQueuedLocked(&bytes_freed);
    if (!dropped) {
      room = false;
      undo_global = true;  // every queued frame was started meanwhile
      undo_group = group != nullptr;
    }
  }
  if (!room) {
    waiting_ = true;
    if (generation) *generation = generation_;
    lock.unlock();
    if (undo_global) core_->ReleaseGlobal(1, cost_bytes);
    if (undo_group) group->Release(1);
    return AdmitOutcome::kNoCredit;
  }

  const uint64_t index = next_index_++;
  job->stream = shared_from_this();
  job->index = index;
  job->admitted = core_->time()->Now();
  if (options_.frame_timeout.count() > 0) job->deadline = job->admitted + options_.frame_timeout;
  job->ctx.input = std::move(frame);
  job->cost_bytes = cost_bytes;
  Slot& s = slot(index);
  s.job = job;
  s.holds_payload = true;
  s.cost_bytes = cost_bytes;
  ++payload_used_;
  ++outstanding_;
  ++counters_.admitted;
  counters_.peak_outstanding = std::max(counters_.peak_outstanding, outstanding_);
  if (dropped && slot(next_out_).ready) DrainLocked(lock);
  lock.unlock();

  core_->admitted.fetch_add(1, std::memory_order_relaxed);
  if (auto* obs = core_->observer()) obs->OnAdmitted(options_);
  if (bytes_freed > 0) core_->ReleaseGlobal(0, bytes_freed);
  if (job->has_deadline()) core_->PokeTimer(job->deadline);
  core_->Submit(std::move(job));
  return AdmitOutcome::kAdmitted;
}

absl::Status StreamState::Submit(FrameInput frame, uint64_t cost_bytes) {
  const uint32_t low_water = capacity() / 2;
  for (;;) {
    uint64_t gen = 0;
    AdmitOutcome out = TryAdmit(frame, cost_bytes, &gen);
    if (out == AdmitOutcome::kAdmitted) return absl::OkStatus();
    if (out == AdmitOutcome::kClosed) {
      return absl::FailedPreconditionError(absl::StrCat(
          "stream '", options_.id, "' is closed; frame seq=", frame.seq, " was not admitted"));
    }
    std::unique_lock<std::mutex> lock(mu_);
    if (options_.overload == OverloadPolicy::kBlock && !last_refusal_global_) {
      ++low_water_waiters_;
      cv_.wait(lock, [&] { return closed_ || outstanding_ <= low_water; });
      --low_water_waiters_;
    } else {
      ++generation_waiters_;
      cv_.wait(lock, [&] { return closed_ || generation_ != gen; });
      --generation_waiters_;
    }
  }
}

bool StreamState::DropOldestQueuedLocked(uint64_t* bytes_freed) {
  for (uint64_t i = next_out_; i < next_index_; ++i) {
    Slot& s = slot(i);
    if (s.ready || !s.job) continue;
    int expected = kQueued;
    if (!s.job->state.compare_exchange_strong(expected, kDropped, std::memory_order_acq_rel)) {
      continue;
    }
    // Taken from kQueued: no worker has touched or will touch this job's context.
    FinaliseOverrideLocked(
        s, i, FrameStatus::kDropped,
        absl::StrCat("frame seq=", s.job->ctx.input.seq, " dropped: stream '", options_.id,
                     "' had ", options_.max_in_flight,
                     " frames in flight and overload policy DROP_OLDEST keeps the newest"),
        bytes_freed);
    FreePayload(*s.job);
    ++counters_.dropped;
    return true;
  }
  return false;
}

void StreamState::FinaliseOverrideLocked(Slot& s, uint64_t /*index*/, FrameStatus status,
                                         std::string message, uint64_t* bytes_freed) {
  auto r = std::make_unique<FrameResult>();
  EchoFrame(s.job->ctx.input, r.get());  // seq, capture time and tags are never written
  r->status = status;
  r->error = std::move(message);
  s.override_result = std::move(r);
  if (s.holds_payload) {
    s.holds_payload = false;
    --payload_used_;
    *bytes_freed += s.cost_bytes;
  }
  MarkReadyLocked(s);
}

void StreamState::MarkReadyLocked(Slot& s) {
  s.ready = true;
  ++ready_count_;
  core_->reorder_depth.fetch_add(1, std::memory_order_relaxed);
  if (auto* obs = core_->observer()) obs->OnReorderInsert(ready_count_);
}

void StreamState::OnJobDone(Job& j) {
  FrameResult& r = *j.ctx.result;
  if (r.status == FrameStatus::kUnspecified) r.status = FrameStatus::kOk;
  if (j.has_deadline() && j.last_end > j.deadline && r.status == FrameStatus::kOk) {
    // Finished, but late: the frame is answered DEADLINE_EXCEEDED and carries no analysis.
    FrameResult late;
    late.status = FrameStatus::kDeadlineExceeded;
    late.error = absl::StrCat("frame seq=", r.seq, " finished after its deadline of ",
                              options_.frame_timeout.count(), " ms (took ",
                              MicrosBetween(j.admitted, j.last_end) / 1000, " ms)");
    r = std::move(late);
  }
  EchoFrame(std::move(j.ctx.input), &r);
  Timings& t = r.timings;
  t.decode_us = j.stage_us[0];
  t.analyse_us = j.stage_us[1];
  t.enrich_us = j.stage_us[2];
  uint64_t busy = t.decode_us + t.analyse_us + t.enrich_us;
  uint64_t until_end = MicrosBetween(j.admitted, j.last_end);
  t.queue_us = until_end > busy ? until_end - busy : 0;

  std::unique_lock<std::mutex> lock(mu_);
  if (cancelled_) return;
  MarkReadyLocked(slot(j.index));
  if (j.index == next_out_) DrainLocked(lock);
}

void StreamState::OnJobExpired(Job& job, const char* stage) {
  uint64_t bytes = 0;
  {
    std::unique_lock<std::mutex> lock(mu_);
    if (cancelled_) return;
    FinaliseOverrideLocked(
        slot(job.index), job.index, FrameStatus::kDeadlineExceeded,
        absl::StrCat("frame seq=", job.ctx.input.seq, " missed its deadline of ",
                     options_.frame_timeout.count(), " ms before the ", stage, " stage"),
        &bytes);
    if (job.index == next_out_) DrainLocked(lock);
  }
  if (bytes > 0) core_->ReleaseGlobal(0, bytes);
}

TimePoint StreamState::CheckDeadlines(TimePoint now) {
  TimePoint next = TimePoint::max();
  uint64_t bytes = 0;
  {
    std::unique_lock<std::mutex> lock(mu_);
    if (cancelled_) return next;
    bool expired_any = false;
    for (uint64_t i = next_out_; i < next_index_; ++i) {
      Slot& s = slot(i);
      if (s.ready || !s.job) continue;
      if (s.job->deadline > now) {
        next = s.job->deadline;
        break;
      }
      int was = TryFinalise(*s.job, kExpired);
      if (was < 0) continue;  // the worker finished it; it arrives as late on its own
      const char* where = was == kQueued ? "still queued" : "still in processing";
      FinaliseOverrideLocked(
          s, i, FrameStatus::kDeadlineExceeded,
          absl::StrCat("frame seq=", s.job->ctx.input.seq, " missed its deadline of ",
                       options_.frame_timeout.count(), " ms (", where, ")"),
          &bytes);
      if (was == kQueued) FreePayload(*s.job);
      expired_any = true;
    }
    if (expired_any && next_out_ < next_index_ && slot(next_out_).ready) DrainLocked(lock);
  }
  if (bytes > 0) core_->ReleaseGlobal(0, bytes);
  return next;
}

void StreamState::WakeProducerLocked() {
  waiting_ = false;
  ++generation_;
  if (generation_waiters_ > 0) cv_.notify_all();
}

void StreamState::FinishCallbackLocked() {
  if (--active_callbacks_ == 0 && cancel_waiting_) callbacks_cv_.notify_all();
}

void StreamState::DrainLocked(std::unique_lock<std::mutex>& lock) {
  if (draining_) return;  // the active drainer delivers what we made ready
  draining_ = true;
  while (!cancelled_ && next_out_ < next_index_) {
    Slot& s = slot(next_out_);
    if (!s.ready) break;
    JobPtr job = std::move(s.job);
    const bool from_worker = s.override_result == nullptr;
    std::unique_ptr<FrameResult> r =
        from_worker ? std::move(job->ctx.result) : std::move(s.override_result);
    const bool held = s.holds_payload;
    const uint64_t cost = s.cost_bytes;
    s = Slot{};
    ++next_out_;
    --ready_count_;
    ++counters_.delivered;
    if (held) --payload_used_;
    const bool wake = waiting_ && HasRoomLocked();
    if (wake) WakeProducerLocked();
    const bool call_credit = wake && static_cast<bool>(options_.on_credit);
    bool release_inline = false;
    ++active_callbacks_;
    lock.unlock();

    {
      CallbackScope scope(this);
      core_->reorder_depth.fetch_sub(1, std::memory_order_relaxed);
      PipelineObserver* obs = core_->observer();
      if (obs) obs->OnReorderRemove();
      if (held && cost > 0) core_->ReleaseGlobal(0, cost);
      const TimePoint now = core_->time()->Now();
      if (from_worker) r->timings.reorder_us = MicrosBetween(job->last_end, now);
      r->timings.total_us = MicrosBetween(job->admitted, now);
      job.reset();  // frees the frame's buffers (unless a hung worker still holds them)
      if (ordered_) RunCallback("ordered stage", options_.id, [&] { ordered_(*r); });
      core_->delivered.fetch_add(1, std::memory_order_relaxed);
      core_->by_status[static_cast<int>(r->status)].fetch_add(1, std::memory_order_relaxed);
      if (obs) obs->OnDelivered(*r);
      Delivery d{std::move(r), Credit(shared_from_this())};
      if (options_.on_result) {
        RunCallback("on_result", options_.id, [&] { options_.on_result(std::move(d)); });
      }
      if (d.credit.held()) {
        // The consumer did not keep the credit: return it here, with the lock we take anyway.
        d.credit.Take();
        if (obs) obs->OnCreditReturned();
        core_->ReleaseGlobal(1, 0);
        if (options_.credit_group) options_.credit_group->Release(1);
        release_inline = true;
      }
      if (call_credit) RunCallback("on_credit", options_.id, [&] { options_.on_credit(); });
    }
    lock.lock();
    FinishCallbackLocked();
    if (release_inline) ReturnCreditLocked(lock);
  }
  NotifyCompleteLocked(lock);
  draining_ = false;
}

void StreamState::NotifyCompleteLocked(std::unique_lock<std::mutex>& lock) {
  if (cancelled_ || !closed_ || next_out_ != next_index_ || complete_notified_) return;
  complete_notified_ = true;
  ++active_callbacks_;
  lock.unlock();
  core_->NotifyStreamProgress();
  if (options_.on_complete) {
    CallbackScope scope(this);
    RunCallback("on_complete", options_.id, [&] { options_.on_complete(); });
  }
  lock.lock();
  FinishCallbackLocked();
}

void StreamState::Close() {
  std::unique_lock<std::mutex> lock(mu_);
  if (closed_) return;
  closed_ = true;
  ++generation_;
  cv_.notify_all();
  if (!draining_) NotifyCompleteLocked(lock);  // else the active drainer does it
}

void StreamState::Cancel() {
  uint32_t credits = 0;
  uint32_t removed_ready = 0;
  uint64_t bytes = 0;
  {
    std::unique_lock<std::mutex> lock(mu_);
    if (cancelled_) return;
    cancelled_ = true;
    closed_ = true;
    PipelineObserver* obs = core_->observer();
    for (uint64_t i = next_out_; i < next_index_; ++i) {
      Slot& s = slot(i);
      if (s.job && TryFinalise(*s.job, kCancelled) == kQueued) FreePayload(*s.job);
      if (s.holds_payload) {
        bytes += s.cost_bytes;
        --payload_used_;
      }
      if (s.ready) ++removed_ready;
      if (obs) obs->OnCreditReturned();
      ++credits;
      --outstanding_;
      s = Slot{};
    }
    ready_count_ -= removed_ready;
    next_out_ = next_index_;
    ++generation_;
    waiting_ = false;
    cv_.notify_all();
    const int own = tls_callback_stream == this ? tls_callback_depth : 0;
    cancel_waiting_ = true;
    callbacks_cv_.wait(lock, [&] { return active_callbacks_ <= own; });
    cancel_waiting_ = false;
  }
  if (removed_ready > 0) {
    core_->reorder_depth.fetch_sub(removed_ready, std::memory_order_relaxed);
    if (auto* obs = core_->observer()) {
      for (uint32_t i = 0; i < removed_ready; ++i) obs->OnReorderRemove();
    }
  }
  if (credits > 0 || bytes > 0) core_->ReleaseGlobal(credits, bytes);
  if (credits > 0 && options_.credit_group) options_.credit_group->Release(credits);
  core_->NotifyStreamProgress();
}

void StreamState::ReleaseCredit() {
  // Global first: the pipeline-wide count never exceeds the sum of the streams' counts.
  if (auto* obs = core_->observer()) obs->OnCreditReturned();
  core_->ReleaseGlobal(1, 0);
  if (options_.credit_group) options_.credit_group->Release(1);
  std::unique_lock<std::mutex> lock(mu_);
  ReturnCreditLocked(lock);
}

void StreamState::ReturnCreditLocked(std::unique_lock<std::mutex>& lock) {
  --outstanding_;
  if (low_water_waiters_ > 0 && outstanding_ <= capacity() / 2) cv_.notify_all();
  if (!waiting_ || !HasRoomLocked()) return;
  WakeProducerLocked();
  if (cancelled_ || !options_.on_credit) return;
  ++active_callbacks_;
  lock.unlock();
  {
    CallbackScope scope(this);
    RunCallback("on_credit", options_.id, [&] { options_.on_credit(); });
  }
  lock.lock();
  FinishCallbackLocked();
}

bool StreamState::NotifyCredit() {
  bool call;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (cancelled_ || !waiting_) return false;
    WakeProducerLocked();
    call = static_cast<bool>(options_.on_credit);
    if (call) ++active_callbacks_;
  }
  if (call) {
    {
      CallbackScope scope(this);
      RunCallback("on_credit", options_.id, [&] { options_.on_credit(); });
    }
    std::lock_guard<std::mutex> lock(mu_);
    FinishCallbackLocked();
  }
  return true;
}

bool StreamState::complete() const {
  std::lock_guard<std::mutex> lock(mu_);
  return cancelled_ || complete_notified_;
}

StreamCounters StreamState::counters() const {
  std::lock_guard<std::mutex> lock(mu_);
  StreamCounters c = counters_;
  c.outstanding = outstanding_;
  return c;
}

}  // namespace framepipe::internal

namespace framepipe {

uint32_t CreditGroup::held() const {
  std::lock_guard<std::mutex> l(mu_);
  return held_;
}

uint32_t CreditGroup::peak_held() const {
  std::lock_guard<std::mutex> l(mu_);
  return peak_;
}

bool CreditGroup::TryAcquire(internal::StreamState* stream) {
  std::lock_guard<std::mutex> l(mu_);
  if (held_ < max_) {
    peak_ = std::max(peak_, ++held_);
    return true;
  }
  if (!stream->in_group_waiters) {
    stream->in_group_waiters = true;
    waiters_.push_back(stream->weak_from_this());
  }
  return false;
}

void CreditGroup::Release(uint32_t n) {
  {
    std::lock_guard<std::mutex> l(mu_);
    held_ -= std::min(held_, n);
  }
  // As many wake-ups as credits came back; a woken stream that no longer waits passes its
  // wake-up on to the next.
  while (n > 0) {
    std::shared_ptr<internal::StreamState> s;
    {
      std::lock_guard<std::mutex> l(mu_);
      while (!s && !waiters_.empty()) {
        s = waiters_.front().lock();
        waiters_.pop_front();
        if (s) s->in_group_waiters = false;
      }
    }
    if (!s) return;
    if (s->NotifyCredit()) --n;
  }
}

}  // namespace framepipe
