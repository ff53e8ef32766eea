#include "service/frame_service.h"

#include <unistd.h>

#include <algorithm>
#include <deque>
#include <memory>
#include <random>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/latency_histogram.h"
#include "common/tsan.h"
#include "service/log.h"
#include "service/proto_convert.h"

namespace framepipe {

namespace {

grpc::Status ToGrpc(const absl::Status& s) {
  return grpc::Status(static_cast<grpc::StatusCode>(s.code()), std::string(s.message()));
}

const char* OverloadName(OverloadPolicy p) {
  return p == OverloadPolicy::kDropOldest ? "DROP_OLDEST" : "BLOCK";
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

int64_t NowNanos() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(Now().time_since_epoch()).count();
}

}  // namespace

// One Process call. Thread rules: gRPC reactions (OnReadDone, OnWriteDone, OnCancel) and
// pipeline callbacks (OnResult, OnCredit, OnComplete) run on different threads, concurrently;
// `mu_` guards the state below it. No gRPC operation (StartRead/StartWrite/Finish) and no
// pipeline call that can run callbacks (TryAdmit, Close, Cancel) is made with `mu_` held.
class ProcessReactor final : public grpc::ServerBidiReactor<v1::ProcessRequest, v1::FrameResult> {
 public:
  ProcessReactor(FrameService* svc, grpc::CallbackServerContext* ctx)
      : svc_(svc), ctx_(ctx), expected_bytes_(svc->options_.first_read_bytes / 2) {
    peer_ = ctx_->peer();
    id_ = absl::StrCat(peer_, "#", ++svc_->stream_counter_);
  }

  // Registers with the service and starts reading, or finishes at once if refused.
  void Start() {
    TsanReactorScope tsan_scope(this);
    std::string why;
    if (!svc_->Admit(this, &why)) {
      svc_->streams_rejected_++;
      if (svc_->observer_) svc_->observer_->OnStreamRejected();
      refused_ = true;
      FP_TSAN_RELEASE(this);
      Finish(grpc::Status(
          svc_->draining() ? grpc::StatusCode::UNAVAILABLE : grpc::StatusCode::RESOURCE_EXHAUSTED,
          why));
      return;
    }
    svc_->streams_total_++;
    if (svc_->observer_) svc_->observer_->OnStreamOpened();
    opened_ = Now();
    last_read_ns_ = NowNanos();
    ReadNext();
  }

  // Starts the next read once the read budget has room for the next message (at once without a
  // budget): the client cannot push more data than the server has room for.
  void ReadNext() {
    uint64_t need;
    {
      std::lock_guard<std::mutex> l(mu_);
      if (finished_ || cancelled_) return;
      need = 2 * expected_bytes_;  // gRPC's buffers plus the parsed copy
    }
    if (!svc_->TryReserve(this, need)) return;  // GrantRead follows when room frees up
    GrantRead(need);
  }

  // The read budget counted `bytes` for this stream: start the read.
  void GrantRead(uint64_t bytes) {
    TsanReactorScope tsan_scope(this);
    {
      std::lock_guard<std::mutex> l(mu_);
      if (!finished_ && !cancelled_) {
        reserved_ += bytes;
        reading_ = true;
        bytes = 0;
      }
    }
    if (bytes > 0) {
      svc_->ReleaseReserved(bytes);
      return;
    }
    FP_TSAN_RELEASE(this);
    StartRead(&req_);
  }

  void OnReadDone(bool ok) override {
    TsanReactorScope tsan_scope(this);
    if (!ok) {
      Stream* close = nullptr;
      {
        std::lock_guard<std::mutex> l(mu_);
        reading_ = false;
        reads_done_ = true;
        close = stream_.get();
      }
      ReleaseReservation();
      if (close) close->Close();  // finishes from OnComplete once all results are written
      MaybeFinish();
      return;
    }
    last_read_ns_ = NowNanos();
    std::unique_lock<std::mutex> lock(mu_);
    reading_ = false;
    if (finished_ || cancelled_) {
      lock.unlock();
      ReleaseReservation();
      return;
    }
    if (req_.kind_case() == v1::ProcessRequest::kFrame) {
      // The next frame is probably like this one (a stream's config says nothing about it).
      expected_bytes_ = std::max<uint64_t>(64 * 1024, req_.ByteSizeLong());
    }
    switch (req_.kind_case()) {
      case v1::ProcessRequest::kConfig: {
        if (got_config_ || got_frame_) {
          lock.unlock();
          EndWithError(absl::InvalidArgumentError(
              got_frame_ ? "StreamConfig after frames: the config must be the first message"
                         : "a second StreamConfig: send at most one, as the first message"));
          return;
        }
        got_config_ = true;
        absl::Status st = OpenStreamLocked(&req_.config());
        lock.unlock();
        ReleaseReservation();
        if (!st.ok()) {
          EndWithError(st);
          return;
        }
        ContinueReading();
        return;
      }
      case v1::ProcessRequest::kFrame: {
        v1::Frame* frame = req_.mutable_frame();
        if (have_seq_ && frame->seq() <= last_seq_) {
          const std::string msg = absl::StrCat(
              "frame seq=", frame->seq(), " is not greater than the previous seq=", last_seq_,
              ": seq must be strictly increasing (gaps are allowed)");
          lock.unlock();
          ReleaseReservation();
          EndWithError(absl::InvalidArgumentError(msg));
          return;
        }
        if (!stream_) {
          absl::Status st = OpenStreamLocked(nullptr);
          if (!st.ok()) {
            lock.unlock();
            ReleaseReservation();
            EndWithError(st);
            return;
          }
        }
        got_frame_ = true;
        have_seq_ = true;
        last_seq_ = frame->seq();
        if (draining_) {
          // Read after the drain began: not admitted; the final status says so.
          NoteNotAdmittedLocked(frame->seq());
          lock.unlock();
          ReleaseReservation();
          MaybeFinish();
          return;
        }
        const size_t bytes = frame->ByteSizeLong();
        pending_input_ = FromProto(frame);
        pending_cost_ = EstimateFrameBytes(pending_input_, svc_->options_.limits);
        pending_ = true;
        req_.Clear();
        lock.unlock();
        if (svc_->observer_) svc_->observer_->OnFrameRead(bytes);
        AdmitPending();
        return;
      }
      default:
        lock.unlock();
        ReleaseReservation();
        EndWithError(
            absl::InvalidArgumentError("ProcessRequest carries neither a config nor a frame"));
        return;
    }
  }

  void OnWriteDone(bool ok) override {
    TsanReactorScope tsan_scope(this);
    Outgoing done;
    bool start = false;
    {
      std::lock_guard<std::mutex> l(mu_);
      done = std::move(current_);
      if (!ok) {
        // The client is gone: nothing more can be written. Drop what is queued (their credits
        // return as the entries die below, outside the lock).
        writing_ = false;
        write_failed_ = true;
        discarded_ += 1 + queue_.size();
        dropped_queue_ = std::move(queue_);
        queue_.clear();
      } else {
        ++frames_out_;
        // writing_ stays true until this write's bookkeeping (counters, the credit) is done:
        // otherwise another thread could Finish the call first, and a client reading Stats
        // right after the call ended would see the last frame still in flight.
      }
    }
    if (ok) {
      svc_->frames_out_++;
      if (svc_->observer_) {
        svc_->observer_->OnResultWritten(SecondsBetween(done.handed, Now()), done.bytes,
                                         done.capture_time_us);
      }
    }
    done.credit.Release();  // the write completed: the frame's credit comes back
    {
      std::deque<Outgoing> discard;
      {
        std::lock_guard<std::mutex> l(mu_);
        discard.swap(dropped_queue_);
        if (ok) {
          if (!queue_.empty()) {
            current_ = std::move(queue_.front());
            queue_.pop_front();
            start = true;
          } else {
            writing_ = false;
          }
        }
      }
    }
    if (start) StartWrite(&current_.msg);
    if (!ok) CancelStream();
    MaybeFinish();
  }

  void OnCancel() override {
    TsanReactorScope tsan_scope(this);
    {
      std::lock_guard<std::mutex> l(mu_);
      cancelled_ = true;
      discarded_ += queue_.size();
      dropped_queue_ = std::move(queue_);
      queue_.clear();
    }
    {
      std::deque<Outgoing> discard;
      std::lock_guard<std::mutex> l(mu_);
      discard.swap(dropped_queue_);
    }
    CancelStream();
    MaybeFinish();
  }

  void OnDone() override {
    FP_TSAN_ACQUIRE(this);  // everything before, on any thread (this object is deleted below)
    // No callback may run after this: Cancel() waits for any in progress.
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

  // Service drain: stop reading, answer what was admitted, end.
  void Drain() {
    TsanReactorScope tsan_scope(this);
    Stream* close = nullptr;
    {
      std::lock_guard<std::mutex> l(mu_);
      if (finished_ || draining_) return;
      draining_ = true;
      if (pending_ && !admitting_) {
        NoteNotAdmittedLocked(pending_input_.seq);
        pending_ = false;
        pending_input_ = FrameInput();
      }
      close = stream_.get();
    }
    if (close) close->Close();
    MaybeFinish();
  }

  // Idle timeout: the server waits for a frame and none came for `timeout`.
  bool IdleCandidate(int64_t now_ns, int64_t timeout_ns) const {
    return now_ns - last_read_ns_.load() > timeout_ns && reading_flag();
  }
  void ExpireIdle(std::chrono::milliseconds timeout) {
    TsanReactorScope tsan_scope(this);
    Stream* close = nullptr;
    {
      std::lock_guard<std::mutex> l(mu_);
      if (finished_ || cancelled_ || !reading_ || !end_status_.ok()) return;
      end_status_ = absl::DeadlineExceededError(
          absl::StrCat("no message received for ", timeout.count(),
                       " ms: the server ends idle streams (--idle-timeout)"));
      idle_expired_ = true;
      close = stream_.get();
    }
    if (close) close->Close();
    MaybeFinish();
  }

  // Guarded by the service's mutex.
  int holds = 0;
  bool done = false;

 private:
  struct Outgoing {
    v1::FrameResult msg;
    Credit credit;
    TimePoint handed;
    size_t bytes = 0;
    int64_t capture_time_us = 0;
  };

  bool reading_flag() const {
    std::lock_guard<std::mutex> l(mu_);
    return reading_ && !finished_;
  }

  absl::Status OpenStreamLocked(const v1::StreamConfig* config) {
    StreamOptions o;
    o.max_in_flight = svc_->options_.default_max_in_flight;
    o.id = id_;
    if (config) {
      if (config->stream_id().size() > 256) {
        return absl::InvalidArgumentError("StreamConfig.stream_id is longer than 256 bytes");
      }
      if (!config->stream_id().empty()) o.id = config->stream_id();
      if (config->max_in_flight() > svc_->options_.max_stream_in_flight) {
        return absl::InvalidArgumentError(
            absl::StrCat("StreamConfig.max_in_flight=", config->max_in_flight(),
                         " is over the server's limit of ", svc_->options_.max_stream_in_flight));
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
      include_thumbnail_ = config->include_thumbnail();
    }
    o.on_result = [this](Delivery d) { OnResult(std::move(d)); };
    o.on_credit = [this] { AdmitPending(); };
    o.on_complete = [this] { OnComplete(); };
    auto s = svc_->pipeline_->OpenStream(o);
    if (!s.ok()) {
      return absl::UnavailableError(
          absl::StrCat("server cannot open a stream: ", s.status().message()));
    }
    stream_ = std::move(s).value();
    stream_id_ = o.id;
    LogLine("stream_opened")
        .Add("id", o.id)
        .Add("peer", peer_)
        .Add("max_in_flight", o.max_in_flight)
        .Add("overload", OverloadName(o.overload))
        .Add("frame_timeout_ms", static_cast<int64_t>(o.frame_timeout.count()))
        .Emit();
    return absl::OkStatus();
  }

  // Admits the frame waiting in pending_input_, unless another thread is admitting it. On no
  // credit it stays pending (reads paused) until the pipeline's on_credit calls us again.
  void AdmitPending() {
    TsanReactorScope tsan_scope(this);
    for (;;) {
      FrameInput in;
      uint64_t cost;
      Stream* stream;
      {
        std::lock_guard<std::mutex> l(mu_);
        if (!pending_ || finished_ || cancelled_) return;
        if (admitting_) {
          retry_ = true;
          return;
        }
        admitting_ = true;
        retry_ = false;
        in = std::move(pending_input_);
        cost = pending_cost_;
        stream = stream_.get();
      }
      const uint64_t seq = in.seq;
      AdmitOutcome out = stream->TryAdmit(in, cost);
      bool read = false;
      {
        std::lock_guard<std::mutex> l(mu_);
        admitting_ = false;
        if (out == AdmitOutcome::kAdmitted) {
          pending_ = false;
          ++frames_in_;
          read = !draining_ && !reads_done_ && end_status_.ok() && !cancelled_ && !finished_;
        } else if (out == AdmitOutcome::kClosed) {
          pending_ = false;
          NoteNotAdmittedLocked(seq);
        } else {
          pending_input_ = std::move(in);
          if (!retry_) return;
          continue;
        }
      }
      // The frame is charged to the pipeline's budget now (or was refused): its read
      // reservation ends.
      ReleaseReservation();
      if (read) {
        ReadNext();
        return;
      }
      MaybeFinish();
      return;
    }
  }

  void ReleaseReservation() {
    uint64_t bytes;
    {
      std::lock_guard<std::mutex> l(mu_);
      bytes = reserved_;
      reserved_ = 0;
    }
    if (bytes > 0) svc_->ReleaseReserved(bytes);
  }

  void ContinueReading() {
    TsanReactorScope tsan_scope(this);
    {
      std::lock_guard<std::mutex> l(mu_);
      if (draining_ || reads_done_ || !end_status_.ok() || cancelled_ || finished_) return;
    }
    ReadNext();
  }

  void OnResult(Delivery d) {
    TsanReactorScope tsan_scope(this);
    Outgoing out;
    ToProto(*d.result, include_thumbnail_, &out.msg);
    out.credit = std::move(d.credit);
    out.handed = Now();
    out.capture_time_us = d.result->capture_time_us;
    if (svc_->observer_) out.bytes = out.msg.ByteSizeLong();
    ++by_status_[static_cast<int>(d.result->status)];
    bool start = false;
    {
      std::lock_guard<std::mutex> l(mu_);
      latency_.Add(d.result->timings.total_us);
      if (cancelled_ || write_failed_ || finished_) {
        ++discarded_;
        return;  // the credit returns as `out` dies
      }
      queue_.push_back(std::move(out));
      if (!writing_) {
        current_ = std::move(queue_.front());
        queue_.pop_front();
        writing_ = true;
        start = true;
      }
    }
    if (start) StartWrite(&current_.msg);
  }

  void OnComplete() {
    TsanReactorScope tsan_scope(this);
    {
      std::lock_guard<std::mutex> l(mu_);
      stream_complete_ = true;
    }
    MaybeFinish();
  }

  void EndWithError(absl::Status st) {
    TsanReactorScope tsan_scope(this);
    Stream* close = nullptr;
    {
      std::lock_guard<std::mutex> l(mu_);
      if (end_status_.ok()) end_status_ = std::move(st);
      close = stream_.get();
    }
    if (close) close->Close();
    MaybeFinish();
  }

  void CancelStream() {
    TsanReactorScope tsan_scope(this);
    Stream* s = nullptr;
    {
      std::lock_guard<std::mutex> l(mu_);
      s = stream_.get();
    }
    if (s) s->Cancel();
  }

  void NoteNotAdmittedLocked(uint64_t seq) {
    if (not_admitted_ == 0) first_not_admitted_seq_ = seq;
    ++not_admitted_;
    if (svc_->observer_) svc_->observer_->OnNotAdmitted(1);
  }

  // Finishes the RPC once nothing is left to write: all admitted frames answered (the pipeline
  // stream completed), or the client is gone.
  void MaybeFinish() {
    TsanReactorScope tsan_scope(this);
    grpc::Status status;
    {
      std::lock_guard<std::mutex> l(mu_);
      if (finished_ || writing_ || !queue_.empty() || admitting_) return;
      const bool gone = cancelled_ || write_failed_;
      if (!gone) {
        const bool ending = reads_done_ || !end_status_.ok() || draining_;
        if (!ending) return;
        if (stream_ && !stream_complete_) return;
        if (pending_) return;
      }
      finished_ = true;
      if (gone) {
        final_ = absl::CancelledError("the client went away");
      } else if (!end_status_.ok()) {
        final_ = end_status_;
      } else if (draining_ && (!reads_done_ || not_admitted_ > 0)) {
        final_ = absl::UnavailableError(absl::StrCat(
            "server is shutting down: every admitted frame was answered (", frames_in_, " frames)",
            not_admitted_ > 0 ? absl::StrCat("; ", not_admitted_, " frame(s) from seq=",
                                             first_not_admitted_seq_, " on were not processed")
                              : std::string(),
            "; reconnect to continue"));
      } else {
        final_ = absl::OkStatus();
      }
      status = ToGrpc(final_);
    }
    FP_TSAN_RELEASE(this);
    Finish(status);
  }

  void LogClose() {
    std::lock_guard<std::mutex> l(mu_);
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

  FrameService* const svc_;
  grpc::CallbackServerContext* const ctx_;
  std::string peer_;
  std::string id_;
  std::string stream_id_;
  TimePoint opened_;
  bool refused_ = false;
  bool include_thumbnail_ = false;
  std::atomic<int64_t> last_read_ns_{0};
  std::atomic<uint64_t> by_status_[kFrameStatusCount] = {};

  mutable std::mutex mu_;
  v1::ProcessRequest req_;  // the one read in flight
  std::unique_ptr<Stream> stream_;
  bool reading_ = false;
  bool reads_done_ = false;
  bool got_config_ = false;
  bool got_frame_ = false;
  bool have_seq_ = false;
  uint64_t last_seq_ = 0;
  bool pending_ = false;     // a frame was read and waits for a credit (reads paused)
  uint64_t expected_bytes_;  // size assumed for the next message (read budget)
  uint64_t reserved_ = 0;    // read budget held: the read in flight or the frame read
  bool admitting_ = false;
  bool retry_ = false;
  FrameInput pending_input_;
  uint64_t pending_cost_ = 0;
  std::deque<Outgoing> queue_;  // results waiting for the write in flight
  std::deque<Outgoing> dropped_queue_;
  Outgoing current_;
  bool writing_ = false;
  bool write_failed_ = false;
  bool cancelled_ = false;
  bool draining_ = false;
  bool idle_expired_ = false;
  bool stream_complete_ = false;
  bool finished_ = false;
  absl::Status end_status_;
  absl::Status final_;
  uint64_t frames_in_ = 0;
  uint64_t frames_out_ = 0;
  uint64_t not_admitted_ = 0;
  uint64_t first_not_admitted_seq_ = 0;
  uint64_t discarded_ = 0;    // results not written: the client went away
  LatencyHistogram latency_;  // server-side total per result (admitted -> handed to the writer)
};

std::string FrameService::MakeInstanceId() {
  char host[256] = {};
  if (gethostname(host, sizeof(host) - 1) != 0) host[0] = '\0';
  std::random_device rd;
  return absl::StrFormat("%s/%d/%08x", host, static_cast<int>(getpid()), rd());
}

FrameService::FrameService(Pipeline* pipeline, ServiceOptions options, ServiceObserver* observer)
    : pipeline_(pipeline), options_(std::move(options)), observer_(observer) {
  if (options_.idle_timeout.count() > 0) idle_thread_ = std::thread([this] { IdleLoop(); });
}

FrameService::~FrameService() {
  {
    std::lock_guard<std::mutex> l(mu_);
    idle_exit_ = true;
  }
  cv_.notify_all();
  if (idle_thread_.joinable()) idle_thread_.join();
}

grpc::ServerBidiReactor<v1::ProcessRequest, v1::FrameResult>* FrameService::Process(
    grpc::CallbackServerContext* context) {
  auto* r = new ProcessReactor(this, context);
  r->Start();
  return r;
}

bool FrameService::Admit(ProcessReactor* r, std::string* why_not) {
  std::lock_guard<std::mutex> l(mu_);
  if (draining_) {
    *why_not = "server is shutting down and accepts no new streams";
    return false;
  }
  if (reactors_.size() >= options_.max_streams) {
    *why_not = absl::StrCat("server is at its limit of ", options_.max_streams,
                            " concurrent streams (--max-streams); retry later or elsewhere");
    return false;
  }
  reactors_.insert(r);
  return true;
}

bool FrameService::TryReserve(ProcessReactor* r, uint64_t bytes) {
  if (options_.read_budget_bytes == 0) return true;
  std::lock_guard<std::mutex> l(mu_);
  // One message larger than the whole budget still gets read when nothing else is.
  if (read_waiters_.empty() &&
      (read_used_ == 0 || read_used_ + bytes <= options_.read_budget_bytes)) {
    read_used_ += bytes;
    return true;
  }
  read_waiters_.emplace_back(r, bytes);
  return false;
}

void FrameService::ReleaseReserved(uint64_t bytes) {
  if (options_.read_budget_bytes == 0) return;
  std::vector<std::pair<ProcessReactor*, uint64_t>> granted;
  {
    std::lock_guard<std::mutex> l(mu_);
    read_used_ -= bytes;
    while (!read_waiters_.empty()) {
      auto [r, need] = read_waiters_.front();
      if (read_used_ != 0 && read_used_ + need > options_.read_budget_bytes) break;
      read_waiters_.pop_front();
      read_used_ += need;
      ++r->holds;
      granted.emplace_back(r, need);
    }
  }
  for (auto& [r, need] : granted) r->GrantRead(need);
  std::lock_guard<std::mutex> l(mu_);
  for (auto& [r, need] : granted) {
    if (--r->holds == 0 && r->done) delete r;
  }
}

void FrameService::ForgetReservation(ProcessReactor* r) {
  std::lock_guard<std::mutex> l(mu_);
  for (auto it = read_waiters_.begin(); it != read_waiters_.end();) {
    it = it->first == r ? read_waiters_.erase(it) : it + 1;
  }
}

void FrameService::Unregister(ProcessReactor* r) {
  bool del = true;
  {
    std::lock_guard<std::mutex> l(mu_);
    reactors_.erase(r);
    r->done = true;
    del = r->holds == 0;
  }
  cv_.notify_all();
  if (del) delete r;
}

void FrameService::IdleLoop() {
  const auto timeout = options_.idle_timeout;
  const auto tick = std::max<std::chrono::milliseconds>(std::chrono::milliseconds(10), timeout / 4);
  std::unique_lock<std::mutex> l(mu_);
  while (!idle_exit_) {
    cv_.wait_for(l, tick, [&] { return idle_exit_; });
    if (idle_exit_) break;
    const int64_t now = NowNanos();
    const int64_t limit = std::chrono::duration_cast<std::chrono::nanoseconds>(timeout).count();
    std::vector<ProcessReactor*> expired;
    for (ProcessReactor* r : reactors_) {
      if (r->IdleCandidate(now, limit)) {
        ++r->holds;
        expired.push_back(r);
      }
    }
    l.unlock();
    for (ProcessReactor* r : expired) r->ExpireIdle(timeout);
    l.lock();
    for (ProcessReactor* r : expired) {
      if (--r->holds == 0 && r->done) delete r;
    }
  }
}

grpc::ServerUnaryReactor* FrameService::GetStats(grpc::CallbackServerContext* context,
                                                 const v1::GetStatsRequest* /*request*/,
                                                 v1::Stats* s) {
  PipelineCounters c = pipeline_->counters();
  s->set_frames_in(c.admitted);
  s->set_frames_out(frames_out_.load());
  s->set_in_flight(c.in_flight);
  s->set_peak_in_flight(c.peak_in_flight);
  s->set_bytes_in_flight(c.bytes_in_flight);
  s->set_peak_bytes_in_flight(c.peak_bytes_in_flight);
  s->set_active_streams(active_streams());
  s->set_streams_total(streams_total_.load());
  s->set_streams_rejected(streams_rejected_.load());
  s->set_frames_ok(c.by_status[static_cast<int>(FrameStatus::kOk)]);
  s->set_frames_invalid_argument(c.by_status[static_cast<int>(FrameStatus::kInvalidArgument)]);
  s->set_frames_deadline_exceeded(c.by_status[static_cast<int>(FrameStatus::kDeadlineExceeded)]);
  s->set_frames_dropped(c.by_status[static_cast<int>(FrameStatus::kDropped)]);
  s->set_frames_internal(c.by_status[static_cast<int>(FrameStatus::kInternal)]);
  s->set_backend(options_.backend);
  s->set_workers(static_cast<uint32_t>(pipeline_->workers()));
  s->set_uptime_seconds(SecondsBetween(started_, Now()));
  s->set_version(options_.version);
  s->set_instance(instance_);
  auto* reactor = context->DefaultReactor();
  reactor->Finish(grpc::Status::OK);
  return reactor;
}

void FrameService::BeginDrain() {
  std::vector<ProcessReactor*> open;
  {
    std::lock_guard<std::mutex> l(mu_);
    draining_ = true;
    for (ProcessReactor* r : reactors_) {
      ++r->holds;
      open.push_back(r);
    }
  }
  for (ProcessReactor* r : open) r->Drain();
  std::lock_guard<std::mutex> l(mu_);
  for (ProcessReactor* r : open) {
    if (--r->holds == 0 && r->done) delete r;
  }
}

bool FrameService::WaitForStreams(TimePoint deadline) {
  std::unique_lock<std::mutex> l(mu_);
  return cv_.wait_until(l, deadline, [&] { return reactors_.empty(); });
}

uint32_t FrameService::active_streams() const {
  std::lock_guard<std::mutex> l(mu_);
  return static_cast<uint32_t>(reactors_.size());
}

}  // namespace framepipe
