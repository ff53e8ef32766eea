#include "server/process_reactor.h"

#include <algorithm>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "common/log.h"
#include "common/tsan.h"
#include "server/frame_service.h"

namespace framepipe {

namespace {

grpc::Status ToGrpc(const absl::Status& s) {
  return grpc::Status(static_cast<grpc::StatusCode>(s.code()), std::string(s.message()));
}

absl::Status RefusalStatus(StreamRefusal why, const std::string& message) {
  switch (why) {
    case StreamRefusal::kDraining:
      return absl::UnavailableError(message);
    case StreamRefusal::kUnauthenticated:
      return absl::UnauthenticatedError(message);
    default:
      return absl::ResourceExhaustedError(message);
  }
}

std::string LowerCode(absl::StatusCode code) {
  return absl::AsciiStrToLower(absl::StatusCodeToString(code));
}

}  // namespace

ProcessReactor::ProcessReactor(FrameService* svc, grpc::CallbackServerContext* ctx)
    : svc_(svc),
      ctx_(ctx),
      peer_(svc->options_.resolve_peer ? svc->options_.resolve_peer(ctx->peer()) : ctx->peer()),
      peer_host_(PeerHost(peer_, svc->options_.peer_ipv6_prefix)),
      id_(absl::StrCat(peer_, "#", ++svc->stream_counter_)),
      expected_bytes_(svc->options_.first_read_bytes / 2) {}

void ProcessReactor::Start() {
  TsanScope tsan_scope(this);
  std::string why;
  if (std::optional<StreamRefusal> refusal = svc_->Register(this, &why)) {
    svc_->streams_rejected_++;
    svc_->peer_log_->CountRefused(peer_host_, StreamRefusalLabel(*refusal));
    if (svc_->observer_) svc_->observer_->OnStreamRejected(*refusal);
    {
      std::lock_guard<std::mutex> l(mu_);
      refused_ = true;
    }
    EndInput(RefusalStatus(*refusal, why));
    return;
  }
  svc_->streams_total_++;
  if (svc_->observer_) svc_->observer_->OnStreamOpened();
  const TimePoint now = svc_->time_->Now();
  log_lines_ = svc_->peer_log_->AllowStream(peer_host_, now);
  {
    std::lock_guard<std::mutex> l(mu_);
    opened_ = last_activity_ = now;
  }
  ReadNext();
}

void ProcessReactor::OnCancel() {
  TsanScope tsan_scope(this);
  std::deque<Outgoing> discard;
  {
    std::lock_guard<std::mutex> l(mu_);
    if (phase_ == Phase::kFinished || phase_ == Phase::kAbandoned) return;
    phase_ = Phase::kAbandoned;
    pending_.reset();
    discarded_ += queue_.size();
    discard.swap(queue_);
  }
  discard.clear();
  CancelStream();
  MaybeFinish();
}

void ProcessReactor::OnDone() {
  FP_TSAN_ACQUIRE(this);  // everything before, on any thread (this object is deleted below)
  // No pipeline callback may run after this: Cancel() waits for any in progress.
  if (stream_) stream_->Cancel();
  svc_->ForgetReservation(this);
  ReleaseReservation();
  if (!refused_) {
    LogClose();
    if (svc_->observer_) {
      if (discarded_ > 0) svc_->observer_->OnResultsDiscarded(discarded_);
      svc_->observer_->OnStreamClosed();
    }
  }
  svc_->Unregister(this);  // may delete this
}

void ProcessReactor::Drain() {
  TsanScope tsan_scope(this);
  {
    std::lock_guard<std::mutex> l(mu_);
    if (phase_ != Phase::kOpen) return;
    draining_ = true;
  }
  EndInput(absl::OkStatus());
}

void ProcessReactor::CheckTimeouts(TimePoint now) {
  TsanScope tsan_scope(this);
  const ServiceOptions& so = svc_->options_;
  std::optional<StreamExpiry> expiry;
  {
    std::lock_guard<std::mutex> l(mu_);
    // A result its client has not accepted for the write timeout: HTTP/2 flow control holds the
    // write because the client reads nothing, and the stream's frames keep their credits.
    if ((phase_ == Phase::kOpen || phase_ == Phase::kClosing) && write_in_flight_ && !cancelling_ &&
        so.write_timeout.count() > 0 && now - write_started_ >= so.write_timeout) {
      write_expired_ = absl::DeadlineExceededError(absl::StrCat(
          "the client accepted no result for ", so.write_timeout.count(),
          " ms: the server cancels streams whose results are not read (--write-timeout)"));
      cancelling_ = true;  // keeps the call unfinished (its context alive) while we cancel it
      expiry = StreamExpiry::kWrite;
    }
  }
  if (expiry) {
    if (svc_->observer_) svc_->observer_->OnStreamExpired(*expiry);
    // RST_STREAM to the client; gRPC then fails the write (OnWriteDone) and calls OnCancel,
    // which discard the results and cancel the pipeline stream: every credit comes back.
    ctx_->TryCancel();
    {
      std::lock_guard<std::mutex> l(mu_);
      cancelling_ = false;
    }
    MaybeFinish();
    return;
  }
  {
    std::lock_guard<std::mutex> l(mu_);
    // Only a stream the server is waiting on: a read in flight, nothing held back by the server.
    if (phase_ != Phase::kOpen || !read_in_flight_) return;
    if (!got_frame_ && so.first_frame_timeout.count() > 0 &&
        now - opened_ >= so.first_frame_timeout) {
      expiry = StreamExpiry::kFirstFrame;
    } else if (so.idle_timeout.count() > 0 && now - last_activity_ >= so.idle_timeout) {
      expiry = StreamExpiry::kIdle;
    }
  }
  if (!expiry) return;
  if (svc_->observer_) svc_->observer_->OnStreamExpired(*expiry);
  if (*expiry == StreamExpiry::kFirstFrame) {
    EndInput(absl::DeadlineExceededError(
        absl::StrCat("no frame within ", so.first_frame_timeout.count(),
                     " ms of the call's start: the server ends streams that send no frame "
                     "(--first-frame-timeout)")));
  } else {
    EndInput(absl::DeadlineExceededError(
        absl::StrCat("no message received for ", so.idle_timeout.count(),
                     " ms: the server ends idle streams (--idle-timeout)")));
  }
}

void ProcessReactor::EndInput(absl::Status status) {
  TsanScope tsan_scope(this);
  {
    std::lock_guard<std::mutex> l(mu_);
    if (phase_ != Phase::kOpen) return;
    phase_ = Phase::kClosing;
    end_status_ = std::move(status);
    if (pending_ && draining_) {
      NoteNotAdmittedLocked(pending_->input.seq);
      pending_.reset();
    }
  }
  MaybeFinish();
}

// Closes the pipeline stream once input has ended and no frame waits to be admitted; the
// pipeline then answers what was admitted and calls on_complete.
void ProcessReactor::CloseStreamIfEnding() {
  StreamHandle* s = nullptr;
  {
    std::lock_guard<std::mutex> l(mu_);
    if (phase_ != Phase::kClosing || !stream_ || stream_closed_ || producer_busy_ || pending_) {
      return;
    }
    stream_closed_ = true;
    producer_busy_ = true;
    s = stream_.get();
  }
  s->Close();  // may run on_complete (OnComplete) on this thread
  std::lock_guard<std::mutex> l(mu_);
  producer_busy_ = false;
}

// The one place that finishes the call: once nothing is left to write (every admitted frame
// answered and written), or the client is gone and no write is in flight.
void ProcessReactor::MaybeFinish() {
  TsanScope tsan_scope(this);
  CloseStreamIfEnding();
  grpc::Status status;
  {
    std::lock_guard<std::mutex> l(mu_);
    if (phase_ == Phase::kOpen || phase_ == Phase::kFinished) return;
    if (write_in_flight_ || producer_busy_ || read_starting_ || cancelling_) return;
    if (phase_ == Phase::kClosing) {
      if (pending_ || !queue_.empty() || (stream_ && !stream_complete_)) return;
      final_ = FinalStatusLocked();
    } else {
      final_ = write_expired_.ok() ? absl::CancelledError("the client went away") : write_expired_;
    }
    phase_ = Phase::kFinished;
    status = ToGrpc(final_);
  }
  FP_TSAN_RELEASE(this);
  Finish(status);
}

absl::Status ProcessReactor::FinalStatusLocked() const {
  if (!end_status_.ok()) return end_status_;
  if (draining_ && (!half_closed_ || not_admitted_ > 0)) {
    return absl::UnavailableError(absl::StrCat(
        "server is shutting down: every admitted frame was answered (", frames_in_, " frames)",
        not_admitted_ > 0 ? absl::StrCat("; ", not_admitted_, " frame(s) from seq=",
                                         first_not_admitted_seq_, " on were not processed")
                          : std::string(),
        "; reconnect to continue"));
  }
  return absl::OkStatus();
}

void ProcessReactor::OnComplete() {
  TsanScope tsan_scope(this);
  {
    std::lock_guard<std::mutex> l(mu_);
    stream_complete_ = true;
  }
  MaybeFinish();
}

void ProcessReactor::CancelStream() {
  TsanScope tsan_scope(this);
  StreamHandle* s = nullptr;
  {
    std::lock_guard<std::mutex> l(mu_);
    s = stream_.get();
  }
  if (s) s->Cancel();
}

void ProcessReactor::ReleaseReservation() {
  uint64_t bytes;
  {
    std::lock_guard<std::mutex> l(mu_);
    bytes = reserved_;
    reserved_ = 0;
  }
  if (bytes > 0) svc_->ReleaseReserved(this, bytes);
}

void ProcessReactor::LogClose() {
  std::lock_guard<std::mutex> l(mu_);
  // A call the client reset after its last read may have been finished OK by us; what the
  // client saw is a cancelled call, and the log says so.
  if (final_.ok() && ctx_->IsCancelled()) final_ = absl::CancelledError("the client went away");
  if (!log_lines_) {
    svc_->peer_log_->CountClosed(peer_host_, LowerCode(final_.code()));
    return;
  }
  LogLine line("stream_closed");
  line.Add("id", stream_id_.empty() ? id_ : stream_id_)
      .Add("peer", peer_)
      .Add("status", absl::StatusCodeToString(final_.code()))
      .Add("frames_in", frames_in_)
      .Add("frames_out", frames_out_);
  for (int s = 1; s < kFrameStatusCount; ++s) {
    if (by_status_[s] > 0) {
      line.Add(FrameStatusLabel(static_cast<FrameStatus>(s)), by_status_[s].load());
    }
  }
  if (not_admitted_ > 0) line.Add("not_admitted", not_admitted_);
  if (discarded_ > 0) line.Add("results_discarded", discarded_);
  line.Add("duration_s", SecondsBetween(opened_, Now()));
  if (latency_.count() > 0) line.Add("p99_ms", latency_.PercentileMs(99));
  if (!final_.ok()) line.Add("message", std::string(final_.message()));
  line.Emit();
}

}  // namespace framepipe
