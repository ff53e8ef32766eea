#include "client/stream_driver.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "client/report.h"
#include "server/proto_convert.h"

namespace framepipe {
namespace client_internal {
namespace {

bool Retryable(grpc::StatusCode c) {
  return c == grpc::StatusCode::UNAVAILABLE || c == grpc::StatusCode::RESOURCE_EXHAUSTED ||
         c == grpc::StatusCode::ABORTED;
}

std::string StatusText(const grpc::Status& st) {
  return st.ok() ? "OK"
                 : absl::StrCat(
                       absl::StatusCodeToString(static_cast<absl::StatusCode>(st.error_code())),
                       ": ", st.error_message());
}

}  // namespace

// One Process call (one attempt of a stream) on gRPC's callback API: one write and one read in
// flight, the next write from OnWriteDone (at its paced time, or when the source has captured
// the next frame), the next read from OnReadDone. Writer state is touched only by the write path,
// reader state only by the read path.
class Attempt final : public grpc::ClientBidiReactor<v1::ProcessRequest, v1::FrameResult> {
 public:
  explicit Attempt(StreamDriver* driver);
  void Start();
  void OnWriteDone(bool ok) override;
  void OnReadDone(bool ok) override;
  void OnDone(const grpc::Status& st) override;
  // The source has a frame again (called from its thread; this attempt holds a hold).
  void ResumeWrite();

 private:
  void WriteNext();  // in a reaction or under a hold
  void ReadNext();

  StreamDriver* const d_;
  grpc::ClientContext ctx_;
  v1::ProcessRequest req_;
  v1::FrameResult res_;
};

StreamDriver::StreamDriver(int index, v1::FramePipeline::Stub* stub, ClientTotals* sh,
                           Scheduler* scheduler, std::unique_ptr<FrameSource> source)
    : index_(index),
      stub_(stub),
      sh_(sh),
      o_(*sh->options),
      scheduler_(scheduler),
      source_(std::move(source)) {
  out_.id = absl::StrCat(o_.stream_id_prefix, "-", index);
  if (o_.fps > 0 && !source_->paces_itself()) {
    period_ = std::chrono::nanoseconds(static_cast<int64_t>(1e9 / o_.fps));
  }
  // Paced streams start out of phase (stream k of K by k/K of a period), as independent
  // cameras do: in lockstep every stream's frame would arrive at the same instant.
  next_time_ = Now() + period_ * index / std::max(1, o_.streams);
  if (!o_.overlay_path.empty()) {
    std::string path = o_.overlay_path;
    if (index > 0) {
      const size_t dot = path.rfind('.');
      path = dot == std::string::npos
                 ? absl::StrCat(path, "-", index)
                 : absl::StrCat(path.substr(0, dot), "-", index, path.substr(dot));
    }
    const double fps = source_->fps() > 0 ? source_->fps() : (o_.fps > 0 ? o_.fps : 30);
    out_.overlay_path = path;
    overlay_ = std::make_unique<OverlayWriter>(path, fps);
  }
  window_cap_ = o_.window > 0     ? o_.window
                : source_->live() ? (o_.max_in_flight > 0 ? o_.max_in_flight : 8) + 2
                                  : 0;
  source_->OnReady([this] { OnSourceReady(); });
}

StreamDriver::~StreamDriver() {
  source_->OnReady(nullptr);
  source_.reset();  // stops a capture thread before the attempts go
}

void StreamDriver::Start() {
  started_ = Now();
  Launch();
}

StreamOutcome StreamDriver::Wait() {
  std::unique_lock<std::mutex> l(mu_);
  cv_.wait(l, [&] { return done_; });
  return out_;
}

void StreamDriver::BuildConfig(v1::ProcessRequest* req) {
  v1::StreamConfig* cfg = req->mutable_config();
  cfg->set_stream_id(out_.id);
  cfg->set_max_in_flight(o_.max_in_flight);
  cfg->set_overload(o_.drop_oldest ? v1::OVERLOAD_POLICY_DROP_OLDEST : v1::OVERLOAD_POLICY_BLOCK);
  cfg->set_frame_timeout_ms(o_.frame_timeout_ms);
  cfg->set_include_thumbnail(o_.include_thumbnail);
  if (const VideoInfo* v = source_->video()) {
    v1::VideoFormat* vf = cfg->mutable_video();
    vf->set_codec(static_cast<v1::VideoCodec>(v->codec));
    vf->set_extradata(v->extradata);
    vf->set_time_base_num(static_cast<uint32_t>(std::max(v->time_base_num, 0)));
    vf->set_time_base_den(static_cast<uint32_t>(std::max(v->time_base_den, 0)));
  }
}

FrameSource::Next StreamDriver::NextFrame(v1::ProcessRequest* req, Attempt* waiter) {
  if (window_cap_ > 0) {
    std::lock_guard<std::mutex> l(mu_);
    if (window_.size() >= window_cap_) {
      if (reads_over_ == waiter) return FrameSource::Next::kEnd;  // no result will free one
      window_waiter_ = waiter;  // resumed by OnResult when a result frees a place
      return FrameSource::Next::kNotReady;
    }
  }
  SourceFrame f;
  FrameSource::Next n = source_->TryNext(&f);
  if (n == FrameSource::Next::kNotReady) {
    std::lock_guard<std::mutex> l(mu_);
    waiting_ = waiter;
    // The frame may have arrived between TryNext and now: look once more.
    n = source_->TryNext(&f);
    if (n == FrameSource::Next::kNotReady) return n;
    waiting_ = nullptr;
  }
  if (n == FrameSource::Next::kEnd) {
    std::lock_guard<std::mutex> l(mu_);
    source_ended_ = true;
    return n;
  }
  const int64_t i = next_index_++;
  req->Clear();
  v1::Frame* fr = req->mutable_frame();
  fr->set_seq(SeqOf(i));
  if (o_.send_capture_time) {
    fr->set_capture_time_us(f.capture_time_us ? f.capture_time_us : WallMicros());
  }
  if (f.video_packet) {
    fr->set_video_packet(*f.payload);
    fr->set_pts(f.pts);
  } else if (f.raw) {
    v1::RawImage* raw = fr->mutable_raw();
    raw->set_width(static_cast<uint32_t>(f.width));
    raw->set_height(static_cast<uint32_t>(f.height));
    raw->set_format(v1::PIXEL_FORMAT_BGR8);
    raw->set_data(*f.payload);
  } else {
    fr->set_encoded(*f.payload);
  }
  (*fr->mutable_tags())["frame"] = absl::StrCat(i);
  sh_->payload_bytes.fetch_add(static_cast<int64_t>(f.payload->size()), std::memory_order_relaxed);
  InFlight entry{i, Now().time_since_epoch().count(), {}};
  if (overlay_) entry.frame = std::move(f);
  std::lock_guard<std::mutex> l(mu_);
  window_.push_back(std::move(entry));
  ++out_.sent;
  return FrameSource::Next::kFrame;
}

bool StreamDriver::TakeWindowWaiter(Attempt* a) {
  std::lock_guard<std::mutex> l(mu_);
  reads_over_ = a;
  if (window_waiter_ != a) return false;
  window_waiter_ = nullptr;
  return true;
}

void StreamDriver::OnSourceReady() {
  Attempt* a;
  {
    std::lock_guard<std::mutex> l(mu_);
    a = waiting_;
    waiting_ = nullptr;
  }
  if (a) a->ResumeWrite();
}

TimePoint StreamDriver::NextSendTime() {
  const TimePoint t = next_time_;
  next_time_ += period_;
  return t;
}

bool StreamDriver::OnResult(const v1::FrameResult& res) {
  const TimePoint now = Now();
  InFlight front;
  {
    std::lock_guard<std::mutex> l(mu_);
    if (window_.empty()) {
      out_.in_order = false;  // a result for a frame never sent
      return true;
    }
    front = window_.front();
  }
  const double latency_ms =
      static_cast<double>(now.time_since_epoch().count() - front.send_ns) / 1e6;
  if (overlay_ && !overlay_->TryPush(front.frame, FromProto(res), latency_ms)) return false;
  if (res.seq() != SeqOf(front.index)) out_.in_order = false;
  const int status = std::clamp(static_cast<int>(res.status()), 0, kFrameStatusCount - 1);
  Attempt* resume = nullptr;
  {
    std::lock_guard<std::mutex> l(mu_);
    window_.pop_front();
    ++out_.by_status[status];
    mine_.push_back(latency_ms);
    ++got_;
    std::swap(resume, window_waiter_);
  }
  if (resume) resume->ResumeWrite();
  {
    std::lock_guard<std::mutex> l(sh_->mu);
    sh_->latencies_ms.push_back(latency_ms);
    sh_->latency_times_s.push_back(SecondsBetween(sh_->start, now));
    ++sh_->by_status[status];
    sh_->server_total_ms.push_back(static_cast<double>(res.timings().total_us()) / 1000.0);
    if (res.status() == v1::FRAME_STATUS_OK) {
      const auto& t = res.timings();
      const uint64_t v[6] = {t.queue_us(),  t.decode_us(),  t.analyse_us(),
                             t.enrich_us(), t.reorder_us(), t.total_us()};
      for (int k = 0; k < 6; ++k) sh_->sum_ms[k] += static_cast<double>(v[k]) / 1000.0;
      ++sh_->timed;
    }
    if (index_ == 0 && static_cast<int>(sh_->first_results.size()) < o_.show) {
      sh_->first_results.push_back(FromProto(res));
    }
    if (sh_->out.is_open()) sh_->out << ResultJsonLine(index_, res, latency_ms);
  }
  sh_->received.fetch_add(1, std::memory_order_relaxed);
  return true;
}

void StreamDriver::AttemptDone(const grpc::Status& st) {
  std::lock_guard<std::mutex> l(mu_);
  waiting_ = nullptr;
  window_waiter_ = nullptr;
  // Frames sent on this call that never got a result went down with the connection.
  for (const auto& f : window_) out_.lost_seqs.push_back(SeqOf(f.index));
  window_.clear();
  out_.rpc_status = StatusText(st);
  if (!st.ok()) out_.failed_calls.push_back(out_.rpc_status);
  if (!st.ok() && Retryable(st.error_code()) && attempts_ <= o_.retries && !source_ended_) {
    const int shift = std::min(attempts_ - 1, 5);
    const auto backoff = std::chrono::milliseconds(std::min(2000, 100 << shift));
    ++out_.retries;
    scheduler_->At(Now() + backoff, [this] { Launch(); });
    return;
  }
  out_.received = got_;
  out_.dropped_at_source = source_->dropped();
  out_.seconds = SecondsBetween(started_, Now());
  out_.p99_ms = Percentile(std::move(mine_), 99);
  out_.complete = st.ok() && out_.lost_seqs.empty() && got_ == out_.sent;
  if (overlay_) {
    overlay_->Close();  // flushes the video
    out_.overlay_frames = overlay_->written();
    if (!overlay_->status().ok()) out_.overlay_error = std::string(overlay_->status().message());
    overlay_.reset();
  }
  done_ = true;
  cv_.notify_all();
}

void StreamDriver::Launch() {
  Attempt* a;
  {
    std::lock_guard<std::mutex> l(mu_);
    ++attempts_;
    attempts_list_.push_back(std::make_unique<Attempt>(this));
    a = attempts_list_.back().get();
  }
  a->Start();  // unlocked: a reaction may run before Start returns
}

Attempt::Attempt(StreamDriver* driver) : d_(driver) {
  const auto& o = d_->options();
  if (o.rpc_timeout_s > 0) {
    ctx_.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(o.rpc_timeout_s));
  }
  d_->stub()->async()->Process(&ctx_, this);
}

void Attempt::Start() {
  d_->BuildConfig(&req_);
  StartWrite(&req_);
  StartRead(&res_);
  StartCall();
}

void Attempt::OnWriteDone(bool ok) {
  if (!ok) return;  // the call is over; OnDone reports how
  if (d_->paced()) {
    AddHold();
    d_->scheduler()->At(d_->NextSendTime(), [this] {
      WriteNext();
      RemoveHold();
    });
  } else {
    WriteNext();
  }
}

void Attempt::WriteNext() {
  // The hold is taken before asking: whoever resumes a kNotReady (the source's thread, a result)
  // may do so before this function returns, and its RemoveHold must find the hold there.
  AddHold();
  switch (d_->NextFrame(&req_, this)) {
    case FrameSource::Next::kFrame:
      StartWrite(&req_);
      RemoveHold();
      break;
    case FrameSource::Next::kEnd:
      StartWritesDone();
      RemoveHold();
      break;
    case FrameSource::Next::kNotReady:
      break;  // the hold stays until ResumeWrite
  }
}

void Attempt::ResumeWrite() {
  WriteNext();
  RemoveHold();
}

void Attempt::OnReadDone(bool ok) {
  if (!ok) {
    // No more results on this call: a writer waiting for one would wait forever (and its hold
    // would keep OnDone from running). Half-close instead; OnDone reports what was lost.
    if (d_->TakeWindowWaiter(this)) {
      StartWritesDone();
      RemoveHold();
    }
    return;
  }
  ReadNext();
}

void Attempt::ReadNext() {
  if (!d_->OnResult(res_)) {  // the overlay writer is behind: this result again shortly
    AddHold();
    d_->scheduler()->At(Now() + std::chrono::milliseconds(5), [this] {
      ReadNext();
      RemoveHold();
    });
    return;
  }
  const int delay = d_->options().read_delay_ms;
  if (delay > 0) {
    AddHold();
    d_->scheduler()->At(Now() + std::chrono::milliseconds(delay), [this] {
      StartRead(&res_);
      RemoveHold();
    });
  } else {
    StartRead(&res_);
  }
}

void Attempt::OnDone(const grpc::Status& st) { d_->AttemptDone(st); }

}  // namespace client_internal
}  // namespace framepipe
