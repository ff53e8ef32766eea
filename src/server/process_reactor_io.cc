// The Process reactor's data path: reading messages under the read budget, the config and
// frames they carry, admitting frames into the pipeline stream, and writing results back in
// order. The lifecycle (phases, timeouts, finishing the call) is in process_reactor.cc.
#include <algorithm>

#include "absl/strings/str_cat.h"
#include "common/log.h"
#include "common/status.h"
#include "common/tsan.h"
#include "pipeline/video_stream.h"
#include "server/frame_service.h"
#include "server/process_reactor.h"
#include "server/proto_convert.h"
#include "server/stream_config.h"

namespace framepipe {

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
  TsanScope tsan_scope(this);
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
    svc_->ReleaseReserved(this, bytes);
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
  TsanScope tsan_scope(this);
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
  std::optional<VideoFormatSpec> video;
  if (config) {
    FP_RETURN_IF_ERROR(ApplyStreamConfig(*config, so.max_stream_in_flight, &o, &thumbnail, &video));
  }
  o.credit_group = credit_group;
  o.on_result = [this](Delivery d) { OnResult(std::move(d)); };
  o.on_credit = [this] { AdmitPending(); };
  o.on_complete = [this] { OnComplete(); };
  absl::StatusOr<std::unique_ptr<StreamHandle>> s;
  if (video) {
    // A codec or extradata the decoder cannot use ends the call INVALID_ARGUMENT here.
    VideoDecoderOptions vo;
    vo.limits = so.limits;
    vo.try_hardware = so.video_hardware;
    Pipeline* pipeline = svc_->pipeline_;
    vo.charge = [pipeline](uint64_t bytes) { return pipeline->TryChargeBytes(bytes); };
    vo.release = [pipeline](uint64_t bytes) { pipeline->ReleaseBytes(bytes); };
    FP_ASSIGN_OR_RETURN(std::unique_ptr<VideoDecoder> decoder, CreateVideoDecoder(*video, vo));
    s = VideoStream::Open(*svc_->pipeline_, o, std::move(decoder), svc_->observer_);
  } else {
    s = svc_->pipeline_->OpenStream(o);
  }
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
            static_cast<int64_t>(o.frame_timeout.count()),
            video ? VideoCodecName(video->codec) : "none");
  }
  // A drain that began meanwhile found no stream to close: close it now.
  MaybeFinish();
  return absl::OkStatus();
}

// Admits the frame waiting in pending_, unless another thread is in the producer calls. On no
// credit it stays pending (reads paused) until the pipeline's on_credit calls us again.
void ProcessReactor::AdmitPending() {
  TsanScope tsan_scope(this);
  for (;;) {
    PendingFrame p;
    StreamHandle* stream;
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
  TsanScope tsan_scope(this);
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
      write_started_ = svc_->time_->Now();
      start = true;
    }
  }
  if (start) {
    FP_TSAN_RELEASE(this);
    StartWrite(&current_.msg);
  }
}

void ProcessReactor::OnWriteDone(bool ok) {
  TsanScope tsan_scope(this);
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
      write_started_ = svc_->time_->Now();
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

void ProcessReactor::NoteNotAdmittedLocked(uint64_t seq) {
  if (not_admitted_ == 0) first_not_admitted_seq_ = seq;
  ++not_admitted_;
  if (svc_->observer_) svc_->observer_->OnNotAdmitted(1);
}

void ProcessReactor::LogOpen(const std::string& id, uint32_t max_in_flight, const char* overload,
                             int64_t frame_timeout_ms, const char* video) {
  LogLine("stream_opened")
      .Add("id", id)
      .Add("peer", peer_)
      .Add("max_in_flight", max_in_flight)
      .Add("overload", overload)
      .Add("frame_timeout_ms", frame_timeout_ms)
      .Add("video", video)
      .Emit();
}

}  // namespace framepipe
