#include "server/process_reactor.h"

#include <algorithm>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "common/log.h"
#include "common/tsan.h"
#include "server/frame_service.h"
#include "server/proto_convert.h"

namespace framepipe {

namespace {

grpc::Status ToGrpc(const absl::Status& s) {
  return grpc::Status(static_cast<grpc::StatusCode>(s.code()), std::string(s.message()));
}

// gRPC orders a call's reactions (OnDone after everything else) inside libgrpc, where
// ThreadSanitizer cannot see it. Every reaction and callback of a reactor acquires the reactor on
// entry and releases it on exit (and before handing an operation to gRPC), which states that
// order to TSan. No-op outside the tsan build.
class TsanReactorScope {
 public:
  explicit TsanReactorScope(const void* reactor) : r_(const_cast<void*>(reactor)) {
    FP_TSAN_ACQUIRE(r_);
  }
  ~TsanReactorScope() { FP_TSAN_RELEASE(r_); }

 private:
  void* r_;
};

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
      peer_host_(PeerHost(peer_)),
      id_(absl::StrCat(peer_, "#", ++svc->stream_counter_)),
      expected_bytes_(svc->options_.first_read_bytes / 2) {}

void ProcessReactor::Start() {
  TsanReactorScope tsan_scope(this);
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

// Starts the next read once the read budget has room for the next message (at once without a
// budget): the client cannot push more data than the server has room for.
void ProcessReactor::ReadNext() {
  uint64_t need;
  {
    std::lock_guard<std::mutex> l(mu_);
    if (phase_ != Phase::kOpen || read_in_flight_ || awaiting_budget_ || pending_) return;
    awaiting_budget_ = true;
    need = 2 * expected_bytes_;  // gRPC's buffers plus the parsed copy
  }
  if (!svc_->TryReserve(this, need)) return;  // GrantRead follows when room frees up
  GrantRead(need);
}

void ProcessReactor::GrantRead(uint64_t bytes) {
  TsanReactorScope tsan_scope(this);
  bool start;
  {
    std::lock_guard<std::mutex> l(mu_);
    awaiting_budget_ = false;
    start = phase_ == Phase::kOpen;
    if (start) {
      reserved_ += bytes;
      read_in_flight_ = read_starting_ = true;
      // A wait for budget is the server's doing: the idle clock starts with the read.
      last_activity_ = std::max(last_activity_, svc_->time_->Now());
    }
  }
  if (!start) {
    svc_->ReleaseReserved(bytes);
    MaybeFinish();
    return;
  }
  FP_TSAN_RELEASE(this);
  StartRead(&req_);
  {
    std::lock_guard<std::mutex> l(mu_);
    read_starting_ = false;
  }
  MaybeFinish();
}

void ProcessReactor::OnReadDone(bool ok) {
  TsanReactorScope tsan_scope(this);
  if (!ok) {
    // The client half-closed - or the call broke (reset, deadline), which is no half-close: the
    // cancellation is handled as OnCancel would, whichever of the two gRPC runs first.
    if (ctx_->IsCancelled()) {
      {
        std::lock_guard<std::mutex> l(mu_);
        read_in_flight_ = false;
      }
      ReleaseReservation();
      OnCancel();
      return;
    }
    bool was_open;
    {
      std::lock_guard<std::mutex> l(mu_);
      read_in_flight_ = false;
      was_open = phase_ == Phase::kOpen;
      if (was_open) half_closed_ = true;
    }
    ReleaseReservation();
    if (was_open) {
      EndInput(absl::OkStatus());
    } else {
      MaybeFinish();
    }
    return;
  }
  const size_t bytes = req_.Length();
  v1::ProcessRequest request;
  // Deserialize consumes the buffer whatever the outcome.
  const bool parsed =
      grpc::SerializationTraits<v1::ProcessRequest>::Deserialize(&req_, &request).ok();
  std::string after;
  uint64_t position;
  {
    std::lock_guard<std::mutex> l(mu_);
    read_in_flight_ = false;
    position = ++messages_;
    last_activity_ = svc_->time_->Now();
    if (phase_ != Phase::kOpen) {
      // Input ended (a drain, the client gone) while this message was on its way.
      if (phase_ == Phase::kClosing && parsed && request.has_frame()) {
        NoteNotAdmittedLocked(request.frame().seq());
      }
    } else if (!parsed) {
      after = got_frame_ ? absl::StrCat("after frame seq=", last_seq_) : "before any frame";
    }
  }
  if (!after.empty()) {
    ReleaseReservation();
    if (svc_->observer_) svc_->observer_->OnMalformedMessage();
    EndInput(absl::InvalidArgumentError(absl::StrCat(
        "message ", position, " of the stream (", bytes, " bytes, ", after,
        ") is not a valid framepipe.v1.ProcessRequest; the stream ends here, every frame before "
        "it was answered")));
    return;
  }
  bool open;
  {
    std::lock_guard<std::mutex> l(mu_);
    open = phase_ == Phase::kOpen;
  }
  if (!open) {
    ReleaseReservation();
    MaybeFinish();
    return;
  }
  HandleMessage(&request, bytes);
}

void ProcessReactor::HandleMessage(v1::ProcessRequest* request, size_t bytes) {
  switch (request->kind_case()) {
    case v1::ProcessRequest::kConfig: {
      ReleaseReservation();
      const char* misplaced = nullptr;
      {
        std::lock_guard<std::mutex> l(mu_);
        if (got_frame_) {
          misplaced = "StreamConfig after frames: the config must be the first message";
        } else if (got_config_) {
          misplaced = "a second StreamConfig: send at most one, as the first message";
        }
        got_config_ = true;
      }
      if (misplaced) {
        EndInput(absl::InvalidArgumentError(misplaced));
        return;
      }
      absl::Status st = OpenStream(&request->config());
      if (!st.ok()) {
        EndInput(st);
        return;
      }
      ReadNext();
      return;
    }
    case v1::ProcessRequest::kFrame:
      HandleFrame(request->mutable_frame(), bytes);
      return;
    default:
      ReleaseReservation();
      EndInput(absl::InvalidArgumentError("ProcessRequest carries neither a config nor a frame"));
      return;
  }
}

void ProcessReactor::HandleFrame(v1::Frame* frame, size_t bytes) {
  std::string bad_seq;
  bool need_stream;
  {
    std::lock_guard<std::mutex> l(mu_);
    if (got_frame_ && frame->seq() <= last_seq_) {
      bad_seq = absl::StrCat("frame seq=", frame->seq(),
                             " is not greater than the previous seq=", last_seq_,
                             ": seq must be strictly increasing (gaps are allowed)");
    }
    // The next frame is probably like this one (a stream's config says nothing about it).
    expected_bytes_ = std::max<uint64_t>(64 * 1024, bytes);
    need_stream = !stream_;
  }
  if (!bad_seq.empty()) {
    ReleaseReservation();
    EndInput(absl::InvalidArgumentError(bad_seq));
    return;
  }
  if (need_stream) {
    absl::Status st = OpenStream(nullptr);
    if (!st.ok()) {
      ReleaseReservation();
      EndInput(st);
      return;
    }
  }
  PendingFrame p;
  p.input = FromProto(frame);
  p.cost = EstimateFrameBytes(p.input, svc_->options_.limits);
  bool open;
  {
    std::lock_guard<std::mutex> l(mu_);
    got_frame_ = true;
    last_seq_ = p.input.seq;
    open = phase_ == Phase::kOpen;
    if (open) {
      pending_ = std::move(p);
    } else {
      NoteNotAdmittedLocked(p.input.seq);  // the drain began while the stream was being opened
    }
  }
  if (svc_->observer_) svc_->observer_->OnFrameRead(bytes);
  if (open) {
    AdmitPending();
  } else {
    ReleaseReservation();
    MaybeFinish();
  }
}

absl::Status ProcessReactor::OpenStream(const v1::StreamConfig* config) {
  const ServiceOptions& so = svc_->options_;
  StreamOptions o;
  o.max_in_flight = so.default_max_in_flight;
  o.id = id_;
  bool thumbnail = false;
  if (config) {
    if (config->stream_id().size() > 256) {
      return absl::InvalidArgumentError("StreamConfig.stream_id is longer than 256 bytes");
    }
    if (!config->stream_id().empty()) o.id = config->stream_id();
    if (config->max_in_flight() > so.max_stream_in_flight) {
      return absl::InvalidArgumentError(
          absl::StrCat("StreamConfig.max_in_flight=", config->max_in_flight(),
                       " is over the server's limit of ", so.max_stream_in_flight));
    }
    if (config->max_in_flight() > 0) o.max_in_flight = config->max_in_flight();
    switch (config->overload()) {
      case v1::OVERLOAD_POLICY_UNSPECIFIED:
      case v1::OVERLOAD_POLICY_BLOCK:
        o.overload = OverloadPolicy::kBlock;
        break;
      case v1::OVERLOAD_POLICY_DROP_OLDEST:
        o.overload = OverloadPolicy::kDropOldest;
        break;
      default:
        return absl::InvalidArgumentError(absl::StrCat("StreamConfig.overload has unknown value ",
                                                       static_cast<int>(config->overload()),
                                                       " (expected BLOCK=1 or DROP_OLDEST=2)"));
    }
    o.frame_timeout = std::chrono::milliseconds(config->frame_timeout_ms());
    thumbnail = config->include_thumbnail();
  }
  o.on_result = [this](Delivery d) { OnResult(std::move(d)); };
  o.on_credit = [this] { AdmitPending(); };
  o.on_complete = [this] { OnComplete(); };
  auto s = svc_->pipeline_->OpenStream(o);
  if (!s.ok()) {
    return absl::UnavailableError(
        absl::StrCat("server cannot open a stream: ", s.status().message()));
  }
  {
    std::lock_guard<std::mutex> l(mu_);
    stream_ = std::move(s).value();
    stream_id_ = o.id;
    include_thumbnail_ = thumbnail;
  }
  if (log_lines_) {
    LogOpen(o.id, o.max_in_flight,
            o.overload == OverloadPolicy::kDropOldest ? "DROP_OLDEST" : "BLOCK",
            static_cast<int64_t>(o.frame_timeout.count()));
  }
  // A drain that began meanwhile found no stream to close: close it now.
  MaybeFinish();
  return absl::OkStatus();
}

// Admits the frame waiting in pending_, unless another thread is in the producer calls. On no
// credit it stays pending (reads paused) until the pipeline's on_credit calls us again.
void ProcessReactor::AdmitPending() {
  TsanReactorScope tsan_scope(this);
  for (;;) {
    PendingFrame p;
    Stream* stream;
    {
      std::lock_guard<std::mutex> l(mu_);
      if (producer_busy_) {
        // Another thread is inside TryAdmit (the frame is out of pending_ meanwhile): a credit
        // that came back now must not be lost - that thread tries again.
        retry_admit_ = true;
        return;
      }
      if (!pending_) return;
      if (phase_ != Phase::kOpen && phase_ != Phase::kClosing) {
        pending_.reset();  // the client is gone: nothing will be answered
        return;
      }
      if (stream_closed_) {
        NoteNotAdmittedLocked(pending_->input.seq);
        pending_.reset();
        break;
      }
      producer_busy_ = true;
      retry_admit_ = false;
      p = std::move(*pending_);
      pending_.reset();
      stream = stream_.get();
    }
    const uint64_t seq = p.input.seq;
    const AdmitOutcome out = stream->TryAdmit(p.input, p.cost);
    bool again = false;
    {
      std::lock_guard<std::mutex> l(mu_);
      producer_busy_ = false;
      if (out == AdmitOutcome::kAdmitted) {
        ++frames_in_;
      } else if (out == AdmitOutcome::kNoCredit && phase_ == Phase::kOpen) {
        pending_ = std::move(p);
        again = retry_admit_;  // a credit came back while we were trying
        if (!again) return;
      } else {
        NoteNotAdmittedLocked(seq);  // closed, draining or gone
      }
    }
    if (again) continue;
    break;
  }
  // The frame is charged to the pipeline's budget now (or was refused): its read reservation
  // ends, and the next message may be read.
  ReleaseReservation();
  ReadNext();
  MaybeFinish();
}

void ProcessReactor::OnResult(Delivery d) {
  TsanReactorScope tsan_scope(this);
  Outgoing out;
  bool include_thumbnail;
  {
    std::lock_guard<std::mutex> l(mu_);
    include_thumbnail = include_thumbnail_;
  }
  v1::FrameResult msg;
  ToProto(*d.result, include_thumbnail, &msg);
  bool own_buffer;
  grpc::SerializationTraits<v1::FrameResult>::Serialize(msg, &out.msg, &own_buffer);
  out.credit = std::move(d.credit);
  out.handed = Now();
  out.capture_time_us = d.result->capture_time_us;
  out.bytes = out.msg.Length();
  ++by_status_[static_cast<int>(d.result->status)];
  bool start = false;
  {
    std::lock_guard<std::mutex> l(mu_);
    latency_.Add(d.result->timings.total_us);
    if (phase_ == Phase::kAbandoned || phase_ == Phase::kFinished) {
      ++discarded_;
      return;  // the credit returns as `out` dies
    }
    queue_.push_back(std::move(out));
    if (!write_in_flight_) {
      current_ = std::move(queue_.front());
      queue_.pop_front();
      write_in_flight_ = true;
      start = true;
    }
  }
  if (start) {
    FP_TSAN_RELEASE(this);
    StartWrite(&current_.msg);
  }
}

void ProcessReactor::OnWriteDone(bool ok) {
  TsanReactorScope tsan_scope(this);
  Outgoing done;
  std::deque<Outgoing> discard;  // destroyed outside the lock: their credits return
  {
    std::lock_guard<std::mutex> l(mu_);
    done = std::move(current_);
    if (ok) {
      ++frames_out_;
    } else if (phase_ == Phase::kOpen || phase_ == Phase::kClosing) {
      // The client is gone: nothing more can be written.
      phase_ = Phase::kAbandoned;
      pending_.reset();
    }
    if (!ok) {
      discarded_ += 1 + queue_.size();
      discard.swap(queue_);
    }
    // write_in_flight_ stays true until this write's bookkeeping (counters, the credit) is done:
    // otherwise another thread could Finish the call first, and a client reading Stats right
    // after the call ended would see the last frame still in flight.
  }
  if (ok) {
    svc_->frames_out_++;
    if (svc_->observer_) {
      svc_->observer_->OnResultWritten(SecondsBetween(done.handed, Now()), done.bytes,
                                       done.capture_time_us);
    }
  }
  done.credit.Release();  // the write completed: the frame's credit comes back
  discard.clear();
  bool start = false;
  {
    std::lock_guard<std::mutex> l(mu_);
    if (ok && !queue_.empty()) {
      current_ = std::move(queue_.front());
      queue_.pop_front();
      start = true;
    } else {
      write_in_flight_ = false;
    }
  }
  if (start) {
    FP_TSAN_RELEASE(this);
    StartWrite(&current_.msg);
  }
  if (!ok) CancelStream();
  MaybeFinish();
}

void ProcessReactor::OnCancel() {
  TsanReactorScope tsan_scope(this);
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
  TsanReactorScope tsan_scope(this);
  {
    std::lock_guard<std::mutex> l(mu_);
    if (phase_ != Phase::kOpen) return;
    draining_ = true;
  }
  EndInput(absl::OkStatus());
}

void ProcessReactor::CheckTimeouts(TimePoint now) {
  TsanReactorScope tsan_scope(this);
  const ServiceOptions& so = svc_->options_;
  std::optional<StreamExpiry> expiry;
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
  TsanReactorScope tsan_scope(this);
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
  Stream* s = nullptr;
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
  TsanReactorScope tsan_scope(this);
  CloseStreamIfEnding();
  grpc::Status status;
  {
    std::lock_guard<std::mutex> l(mu_);
    if (phase_ == Phase::kOpen || phase_ == Phase::kFinished) return;
    if (write_in_flight_ || producer_busy_ || read_starting_) return;
    if (phase_ == Phase::kClosing) {
      if (pending_ || !queue_.empty() || (stream_ && !stream_complete_)) return;
      final_ = FinalStatusLocked();
    } else {
      final_ = absl::CancelledError("the client went away");
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
  TsanReactorScope tsan_scope(this);
  {
    std::lock_guard<std::mutex> l(mu_);
    stream_complete_ = true;
  }
  MaybeFinish();
}

void ProcessReactor::CancelStream() {
  TsanReactorScope tsan_scope(this);
  Stream* s = nullptr;
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
  if (bytes > 0) svc_->ReleaseReserved(bytes);
}

void ProcessReactor::NoteNotAdmittedLocked(uint64_t seq) {
  if (not_admitted_ == 0) first_not_admitted_seq_ = seq;
  ++not_admitted_;
  if (svc_->observer_) svc_->observer_->OnNotAdmitted(1);
}

void ProcessReactor::LogOpen(const std::string& id, uint32_t max_in_flight, const char* overload,
                             int64_t frame_timeout_ms) {
  LogLine("stream_opened")
      .Add("id", id)
      .Add("peer", peer_)
      .Add("max_in_flight", max_in_flight)
      .Add("overload", overload)
      .Add("frame_timeout_ms", frame_timeout_ms)
      .Emit();
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
