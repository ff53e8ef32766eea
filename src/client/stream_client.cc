#include "client/stream_client.h"

#include <netdb.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <condition_variable>
#include <cstdio>
#include <deque>
#include <filesystem>
#include <fstream>
#include <map>
#include <mutex>
#include <set>
#include <thread>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "common/clock.h"
#include "common/log.h"
#include "common/status.h"
#include "framepipe/v1/framepipe.grpc.pb.h"
#include "grpcpp/grpcpp.h"
#include "media/frame_source.h"
#include "media/overlay_writer.h"
#include "server/proto_convert.h"

namespace framepipe {
namespace {

struct Shared {
  const StreamClientOptions* options;
  std::function<std::unique_ptr<FrameSource>(int)> make_source;
  TimePoint start;
  std::mutex mu;  // guards everything below
  std::vector<double> latencies_ms;
  std::vector<double> latency_times_s;
  std::vector<double> server_total_ms;
  double sum_ms[6] = {0, 0, 0, 0, 0, 0};
  int64_t timed = 0;
  std::array<int64_t, kFrameStatusCount> by_status{};
  std::vector<FrameResult> first_results;
  std::ofstream out;
  std::atomic<int64_t> received{0};
};

std::string JsonString(const std::string& s) {
  std::string out = "\"";
  for (char c : s) {
    if (c == '"' || c == '\\') {
      out += '\\';
      out += c;
    } else if (static_cast<unsigned char>(c) < 0x20) {
      out += absl::StrFormat("\\u%04x", static_cast<unsigned char>(c));
    } else {
      out += c;
    }
  }
  return out + "\"";
}

std::string ResultJson(int stream, const v1::FrameResult& r, double latency_ms) {
  std::string s =
      absl::StrFormat("{\"stream\":%d,\"seq\":%d,\"status\":%s,\"latency_ms\":%.3f", stream,
                      r.seq(), JsonString(v1::FrameStatus_Name(r.status())), latency_ms);
  if (!r.error().empty()) absl::StrAppend(&s, ",\"error\":", JsonString(r.error()));
  if (r.capture_time_us()) absl::StrAppend(&s, ",\"capture_time_us\":", r.capture_time_us());
  if (r.status() == v1::FRAME_STATUS_OK) {
    const auto& a = r.analysis();
    const auto& e = r.enrichment();
    absl::StrAppend(
        &s,
        absl::StrFormat(",\"analysis\":{\"width\":%d,\"height\":%d,\"mean_luma\":%.4f,"
                        "\"stddev_luma\":%.4f,\"sharpness\":%.4f,\"edge_density\":%.6f,"
                        "\"backend\":%s}",
                        a.width(), a.height(), a.mean_luma(), a.stddev_luma(), a.sharpness(),
                        a.edge_density(), JsonString(a.backend())),
        absl::StrFormat(",\"enrichment\":{\"dark\":%s,\"overexposed\":%s,\"blurry\":%s,"
                        "\"dominant_bgr\":[%g,%g,%g],\"keypoints\":%d,\"scene_change\":%.6f,"
                        "\"scene_cut\":%s,\"motion\":%.6f}",
                        e.dark() ? "true" : "false", e.overexposed() ? "true" : "false",
                        e.blurry() ? "true" : "false",
                        e.dominant_bgr_size() > 0 ? e.dominant_bgr(0) : 0,
                        e.dominant_bgr_size() > 1 ? e.dominant_bgr(1) : 0,
                        e.dominant_bgr_size() > 2 ? e.dominant_bgr(2) : 0, e.keypoints(),
                        e.scene_change(), e.scene_cut() ? "true" : "false", e.motion()));
  }
  const auto& t = r.timings();
  absl::StrAppend(&s, absl::StrFormat(",\"timings_us\":{\"queue\":%d,\"decode\":%d,\"analyse\":%d,"
                                      "\"enrich\":%d,\"reorder\":%d,\"total\":%d}",
                                      t.queue_us(), t.decode_us(), t.analyse_us(), t.enrich_us(),
                                      t.reorder_us(), t.total_us()));
  if (!r.tags().empty()) {
    std::vector<std::pair<std::string, std::string>> tags(r.tags().begin(), r.tags().end());
    std::sort(tags.begin(), tags.end());
    s += ",\"tags\":{";
    for (size_t i = 0; i < tags.size(); ++i) {
      absl::StrAppend(&s, i ? "," : "", JsonString(tags[i].first), ":", JsonString(tags[i].second));
    }
    s += "}";
  }
  return s + "}\n";
}

// Runs callbacks at given times, on one thread for the whole client (stream pacing, a slow
// reader's pauses): reactions themselves never sleep.
class Scheduler {
 public:
  Scheduler() : thread_([this] { Loop(); }) {}
  ~Scheduler() {
    {
      std::lock_guard<std::mutex> l(mu_);
      exit_ = true;
    }
    cv_.notify_all();
    thread_.join();
  }
  void At(TimePoint when, std::function<void()> fn) {
    {
      std::lock_guard<std::mutex> l(mu_);
      queue_.emplace(when, std::move(fn));
    }
    cv_.notify_all();
  }

 private:
  void Loop() {
    std::unique_lock<std::mutex> l(mu_);
    while (!exit_) {
      if (queue_.empty()) {
        cv_.wait(l);
        continue;
      }
      const TimePoint due = queue_.begin()->first;
      if (Now() < due) {
        cv_.wait_until(l, due);
        continue;
      }
      auto fn = std::move(queue_.begin()->second);
      queue_.erase(queue_.begin());
      l.unlock();
      fn();
      l.lock();
    }
  }
  std::mutex mu_;
  std::condition_variable cv_;
  std::multimap<TimePoint, std::function<void()>> queue_;
  bool exit_ = false;
  std::thread thread_;
};

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

// How many servers a target names: an ipv4:/ipv6: list, or the addresses a dns: name resolves
// to now (what gRPC's resolver will find); 1 for anything else.
int CountAddresses(const std::string& target) {
  if (absl::StartsWith(target, "ipv4:") || absl::StartsWith(target, "ipv6:")) {
    return 1 + static_cast<int>(std::count(target.begin(), target.end(), ','));
  }
  if (!absl::StartsWith(target, "dns:")) return 1;
  std::string rest = target.substr(4);
  if (absl::StartsWith(rest, "//")) {  // dns://authority/host:port
    const size_t slash = rest.find('/', 2);
    rest = slash == std::string::npos ? "" : rest.substr(slash + 1);
  } else if (absl::StartsWith(rest, "/")) {
    rest = rest.substr(1);
  }
  std::string host = rest, port = "443";
  if (absl::StartsWith(rest, "[")) {  // [v6]:port
    const size_t close = rest.find(']');
    host = rest.substr(1, close == std::string::npos ? std::string::npos : close - 1);
    if (close != std::string::npos && close + 2 <= rest.size()) port = rest.substr(close + 2);
  } else if (const size_t colon = rest.rfind(':'); colon != std::string::npos) {
    host = rest.substr(0, colon);
    port = rest.substr(colon + 1);
  }
  addrinfo hints{};
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* res = nullptr;
  if (getaddrinfo(host.c_str(), port.c_str(), &hints, &res) != 0) return 1;
  std::set<std::string> unique;
  for (addrinfo* a = res; a; a = a->ai_next) {
    unique.insert(std::string(reinterpret_cast<const char*>(a->ai_addr), a->ai_addrlen));
  }
  freeaddrinfo(res);
  return std::max<int>(1, static_cast<int>(unique.size()));
}

// round_robin picks among the servers already connected: streams started while only the first
// connection is up would all land on that one server and stay there. So before the streams
// start, probe with GetStats (each call goes to the next connected server) until `expected`
// different servers (Stats.instance) have answered, or the deadline. Returns how many did.
int WaitForServers(grpc::Channel* channel, v1::FramePipeline::Stub* stub, int expected,
                   std::chrono::system_clock::time_point deadline) {
  if (!channel->WaitForConnected(deadline)) return 0;
  std::set<std::string> seen;
  while (static_cast<int>(seen.size()) < expected && std::chrono::system_clock::now() < deadline) {
    for (int i = 0; i < expected; ++i) {
      grpc::ClientContext ctx;
      ctx.set_deadline(deadline);
      v1::Stats st;
      if (stub->GetStats(&ctx, v1::GetStatsRequest(), &st).ok()) seen.insert(st.instance());
    }
    if (static_cast<int>(seen.size()) < expected) {
      // The others are still connecting (or down): look again shortly.
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
  }
  return static_cast<int>(seen.size());
}

class StreamDriver;

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

// One stream across its attempts: its frame source, the frames in flight (send times, and the
// frames themselves when an overlay is written), results, and the frames lost when an attempt's
// connection failed. With --retry, a failed attempt is followed (after an exponential backoff)
// by a new call carrying on with the frames not yet sent.
class StreamDriver {
 public:
  StreamDriver(int index, v1::FramePipeline::Stub* stub, Shared* sh, Scheduler* scheduler,
               std::unique_ptr<FrameSource> source)
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

  ~StreamDriver() {
    source_->OnReady(nullptr);
    source_.reset();  // stops a capture thread before the attempts go
  }

  void Start() {
    started_ = Now();
    Launch();
  }

  StreamOutcome Wait() {
    std::unique_lock<std::mutex> l(mu_);
    cv_.wait(l, [&] { return done_; });
    return out_;
  }

  static uint64_t SeqOf(int64_t frame) { return static_cast<uint64_t>(frame) * 2 + 1; }

  void BuildConfig(v1::ProcessRequest* req) {
    v1::StreamConfig* cfg = req->mutable_config();
    cfg->set_stream_id(out_.id);
    cfg->set_max_in_flight(o_.max_in_flight);
    cfg->set_overload(o_.drop_oldest ? v1::OVERLOAD_POLICY_DROP_OLDEST : v1::OVERLOAD_POLICY_BLOCK);
    cfg->set_frame_timeout_ms(o_.frame_timeout_ms);
    cfg->set_include_thumbnail(o_.include_thumbnail);
  }

  // Write path: the next frame into `req` (kFrame), or kNotReady (the source will call back;
  // `waiter` is resumed then), or kEnd.
  FrameSource::Next NextFrame(v1::ProcessRequest* req, Attempt* waiter) {
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
    fr->set_seq(SeqOf(i));  // gaps are allowed: 1, 3, 5, ...
    if (o_.send_capture_time) {
      fr->set_capture_time_us(f.capture_time_us ? f.capture_time_us : WallMicros());
    }
    if (f.raw) {
      v1::RawImage* raw = fr->mutable_raw();
      raw->set_width(static_cast<uint32_t>(f.width));
      raw->set_height(static_cast<uint32_t>(f.height));
      raw->set_format(v1::PIXEL_FORMAT_BGR8);
      raw->set_data(*f.payload);
    } else {
      fr->set_encoded(*f.payload);
    }
    (*fr->mutable_tags())["frame"] = absl::StrCat(i);
    InFlight entry{i, Now().time_since_epoch().count(), {}};
    if (overlay_) entry.frame = std::move(f);
    std::lock_guard<std::mutex> l(mu_);
    window_.push_back(std::move(entry));
    ++out_.sent;
    return FrameSource::Next::kFrame;
  }

  // The attempt's reads ended: if its writer waits for a place in the window, none will come.
  bool TakeWindowWaiter(Attempt* a) {
    std::lock_guard<std::mutex> l(mu_);
    reads_over_ = a;
    if (window_waiter_ != a) return false;
    window_waiter_ = nullptr;
    return true;
  }

  void OnSourceReady() {
    Attempt* a;
    {
      std::lock_guard<std::mutex> l(mu_);
      a = waiting_;
      waiting_ = nullptr;
    }
    if (a) a->ResumeWrite();
  }

  // The time the next paced frame is due (write path only: one write in flight per stream).
  TimePoint NextSendTime() {
    const TimePoint t = next_time_;
    next_time_ += period_;
    return t;
  }
  bool paced() const { return period_.count() > 0; }

  // Read path: a result arrived. False when the overlay writer is full: call again later with
  // the same result (the frame stays first in the window until it is taken).
  bool OnResult(const v1::FrameResult& res) {
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
      if (sh_->out.is_open()) sh_->out << ResultJson(index_, res, latency_ms);
    }
    sh_->received.fetch_add(1, std::memory_order_relaxed);
    return true;
  }

  // Called by the attempt that ended, from its OnDone.
  void AttemptDone(const grpc::Status& st) {
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

  const StreamClientOptions& options() const { return o_; }
  Scheduler* scheduler() const { return scheduler_; }
  v1::FramePipeline::Stub* stub() const { return stub_; }

 private:
  struct InFlight {
    int64_t index;
    int64_t send_ns;
    SourceFrame frame;  // kept only for the overlay
  };

  void Launch() {
    Attempt* a;
    {
      std::lock_guard<std::mutex> l(mu_);
      ++attempts_;
      attempts_list_.push_back(std::make_unique<Attempt>(this));
      a = attempts_list_.back().get();
    }
    a->Start();  // unlocked: a reaction may run before Start returns
  }

  const int index_;
  v1::FramePipeline::Stub* const stub_;
  Shared* const sh_;
  const StreamClientOptions& o_;
  Scheduler* const scheduler_;
  std::unique_ptr<FrameSource> source_;
  std::unique_ptr<OverlayWriter> overlay_;
  std::chrono::nanoseconds period_{0};
  TimePoint next_time_;
  TimePoint started_;
  int64_t next_index_ = 0;  // write path
  std::mutex mu_;           // guards what follows
  std::condition_variable cv_;
  std::deque<InFlight> window_;          // sent, result not yet received, in order
  Attempt* waiting_ = nullptr;           // an attempt waiting for the source
  Attempt* window_waiter_ = nullptr;     // an attempt waiting for a place in the window
  size_t window_cap_ = 0;                // 0 = no client-side window
  const Attempt* reads_over_ = nullptr;  // the attempt whose results ended
  bool source_ended_ = false;
  int attempts_ = 0;
  std::vector<std::unique_ptr<Attempt>> attempts_list_;  // kept until the stream ends
  int64_t got_ = 0;
  std::vector<double> mine_;
  StreamOutcome out_;
  bool done_ = false;
};

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

}  // namespace

bool ClientReport::ok() const {
  for (const auto& s : streams) {
    if (!s.in_order || !s.complete || !s.overlay_error.empty()) return false;
  }
  return !streams.empty();
}

double Percentile(std::vector<double> v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const double rank = std::ceil(p / 100.0 * static_cast<double>(v.size()));
  const size_t idx = static_cast<size_t>(std::clamp(rank, 1.0, static_cast<double>(v.size()))) - 1;
  return v[idx];
}

absl::StatusOr<ClientReport> RunStreamClient(const StreamClientOptions& o) {
  PrimeProcessClocks();
  if (o.streams < 1) return absl::InvalidArgumentError("--streams must be at least 1");
  SourceOptions so;
  so.input = o.input;
  so.frames = o.frames;
  so.loop = o.loop;
  so.fps = o.fps;
  so.unpaced = o.unpaced;
  so.width = o.width;
  so.height = o.height;
  so.scene_length = o.scene_length;
  so.distinct_frames = o.distinct_frames;
  so.encoding = o.encoding;
  so.jpeg_quality = o.jpeg_quality;
  so.keep_images = !o.overlay_path.empty();
  if (!o.overlay_path.empty()) {
    // Fail before streaming, not after: the overlay's directory must exist and be writable.
    const std::filesystem::path dir = std::filesystem::absolute(o.overlay_path).parent_path();
    std::error_code ec;
    if (!std::filesystem::is_directory(dir, ec) || access(dir.c_str(), W_OK) != 0) {
      return absl::InvalidArgumentError(absl::StrCat("cannot write --overlay '", o.overlay_path,
                                                     "': ", dir.string(),
                                                     " is not a writable directory"));
    }
  }
  Shared sh;
  sh.options = &o;
  FP_ASSIGN_OR_RETURN(sh.make_source, MakeSourceFactory(so));
  if (!o.out_jsonl.empty()) {
    sh.out.open(o.out_jsonl, std::ios::trunc);
    if (!sh.out) return absl::InvalidArgumentError(absl::StrCat("cannot write ", o.out_jsonl));
  }
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(64 << 20);
  args.SetMaxSendMessageSize(64 << 20);
  args.SetLoadBalancingPolicyName("round_robin");
  // One channel for all streams. With a multi-address target (dns:///..., ipv4:a:p,b:p) the
  // round_robin policy spreads the streams (RPCs) over the servers; each stream stays on one.
  FP_ASSIGN_OR_RETURN(const ClientCredentials creds, MakeClientCredentials(o.security));
  if (!creds.server_name_override.empty()) {
    args.SetSslTargetNameOverride(creds.server_name_override);
  }
  auto channel = grpc::CreateCustomChannel(o.target, creds.channel, args);
  const int servers = CountAddresses(o.target);
  if (servers > 1) {
    auto probe = v1::FramePipeline::NewStub(channel);
    const int ready = WaitForServers(channel.get(), probe.get(), servers,
                                     std::chrono::system_clock::now() + std::chrono::seconds(2));
    if (ready < servers) {
      LogLine("client_servers")
          .Add("target", o.target)
          .Add("expected", servers)
          .Add("ready", ready)
          .Emit();
    }
  }
  std::vector<std::unique_ptr<FrameSource>> sources;
  for (int k = 0; k < o.streams; ++k) {
    sources.push_back(sh.make_source(k));
    if (!sources.back()) {
      return absl::InvalidArgumentError(
          absl::StrCat("cannot open --input '", o.input, "' again for stream ", k));
    }
  }
  ClientReport report;
  report.streams.resize(static_cast<size_t>(o.streams));
  sh.start = Now();
  std::atomic<bool> done{false};
  std::thread progress;
  if (o.progress) {
    progress = std::thread([&] {
      const int64_t total = o.frames > 0 ? o.frames * o.streams : 0;
      while (!done.load()) {
        std::this_thread::sleep_for(std::chrono::milliseconds(500));
        const int64_t r = sh.received.load();
        const double secs = SecondsBetween(sh.start, Now());
        std::fprintf(stderr, "\r  %lld/%lld results  %.1f frames/s   ", static_cast<long long>(r),
                     static_cast<long long>(total), secs > 0 ? static_cast<double>(r) / secs : 0.0);
      }
      std::fprintf(stderr, "\r%60s\r", "");
    });
  }
  {
    auto stub = v1::FramePipeline::NewStub(channel);
    Scheduler scheduler;
    std::vector<std::unique_ptr<StreamDriver>> drivers;
    for (int k = 0; k < o.streams; ++k) {
      drivers.push_back(
          std::make_unique<StreamDriver>(k, stub.get(), &sh, &scheduler, std::move(sources[k])));
    }
    for (auto& d : drivers) d->Start();
    for (int k = 0; k < o.streams; ++k) report.streams[k] = drivers[k]->Wait();
  }
  done = true;
  if (progress.joinable()) progress.join();
  report.seconds = SecondsBetween(sh.start, Now());
  for (const auto& s : report.streams) {
    report.frames_sent += s.sent;
    report.results += s.received;
  }
  report.frames_per_second =
      report.seconds > 0 ? static_cast<double>(report.results) / report.seconds : 0;
  report.latencies_ms = std::move(sh.latencies_ms);
  report.latency_times_s = std::move(sh.latency_times_s);
  const auto& lat = report.latencies_ms;
  report.p50_ms = Percentile(lat, 50);
  report.p90_ms = Percentile(lat, 90);
  report.p99_ms = Percentile(lat, 99);
  report.p999_ms = Percentile(lat, 99.9);
  report.max_ms = lat.empty() ? 0 : *std::max_element(lat.begin(), lat.end());
  double sum = 0;
  for (double v : lat) sum += v;
  report.mean_ms = lat.empty() ? 0 : sum / static_cast<double>(lat.size());
  if (sh.timed > 0) {
    const double n = static_cast<double>(sh.timed);
    report.queue_ms = sh.sum_ms[0] / n;
    report.decode_ms = sh.sum_ms[1] / n;
    report.analyse_ms = sh.sum_ms[2] / n;
    report.enrich_ms = sh.sum_ms[3] / n;
    report.reorder_ms = sh.sum_ms[4] / n;
    report.total_ms = sh.sum_ms[5] / n;
  }
  report.by_status = sh.by_status;
  report.server_total_p99_ms = Percentile(std::move(sh.server_total_ms), 99);
  report.first_results = std::move(sh.first_results);
  return report;
}

std::string SeqRanges(const std::vector<uint64_t>& seqs) {
  // Frame seqs go up by 2 (1, 3, 5, ...): a run of consecutive frames prints as "a-b".
  std::string out;
  for (size_t i = 0; i < seqs.size();) {
    size_t j = i;
    while (j + 1 < seqs.size() && seqs[j + 1] == seqs[j] + 2) ++j;
    absl::StrAppend(&out, out.empty() ? "" : ",", seqs[i]);
    if (j > i) absl::StrAppend(&out, "-", seqs[j]);
    i = j + 1;
  }
  return out;
}

std::string ReportJson(const ClientReport& r) {
  std::string s = absl::StrFormat(
      "{\"frames_sent\":%d,\"results\":%d,\"seconds\":%.4f,\"frames_per_second\":%.3f,"
      "\"ok\":%s,\"latency\":{\"p50_ms\":%.4f,\"p90_ms\":%.4f,\"p99_ms\":%.4f,"
      "\"p999_ms\":%.4f,\"max_ms\":%.4f,\"mean_ms\":%.4f},\"server_total_p99_ms\":%.4f,",
      r.frames_sent, r.results, r.seconds, r.frames_per_second, r.ok() ? "true" : "false", r.p50_ms,
      r.p90_ms, r.p99_ms, r.p999_ms, r.max_ms, r.mean_ms, r.server_total_p99_ms);
  absl::StrAppend(
      &s, absl::StrFormat("\"server_stage_means_ms\":{\"queue\":%.4f,\"decode\":%.4f,"
                          "\"analyse\":%.4f,\"enrich\":%.4f,\"reorder\":%.4f,\"total\":%.4f},",
                          r.queue_ms, r.decode_ms, r.analyse_ms, r.enrich_ms, r.reorder_ms,
                          r.total_ms));
  s += "\"by_status\":{";
  for (int i = 1; i < kFrameStatusCount; ++i) {
    absl::StrAppend(&s, i > 1 ? "," : "", "\"", FrameStatusLabel(static_cast<FrameStatus>(i)),
                    "\":", r.by_status[i]);
  }
  s += "},\"streams\":[";
  for (size_t i = 0; i < r.streams.size(); ++i) {
    const StreamOutcome& o = r.streams[i];
    absl::StrAppend(
        &s, i ? "," : "",
        absl::StrFormat("{\"id\":%s,\"sent\":%d,\"received\":%d,\"in_order\":%s,"
                        "\"complete\":%s,\"rpc_status\":%s,\"retries\":%d,"
                        "\"dropped_at_source\":%d,\"overlay_frames\":%d,"
                        "\"lost_seqs\":[",
                        JsonString(o.id), o.sent, o.received, o.in_order ? "true" : "false",
                        o.complete ? "true" : "false", JsonString(o.rpc_status), o.retries,
                        o.dropped_at_source, o.overlay_frames));
    for (size_t k = 0; k < o.lost_seqs.size(); ++k) {
      absl::StrAppend(&s, k ? "," : "", o.lost_seqs[k]);
    }
    s += "]}";
  }
  s += "],\"samples\":{\"latency_ms\":[";
  for (size_t i = 0; i < r.latencies_ms.size(); ++i) {
    absl::StrAppend(&s, i ? "," : "", absl::StrFormat("%.3f", r.latencies_ms[i]));
  }
  s += "],\"time_s\":[";
  for (size_t i = 0; i < r.latency_times_s.size(); ++i) {
    absl::StrAppend(&s, i ? "," : "", absl::StrFormat("%.4f", r.latency_times_s[i]));
  }
  s += "]}}\n";
  return s;
}

std::string FormatReport(const ClientReport& r, int show) {
  std::string s;
  absl::StrAppend(&s, absl::StrFormat("streams: %d   frames sent: %d   results: %d   in %.2f s\n",
                                      r.streams.size(), r.frames_sent, r.results, r.seconds));
  std::string statuses;
  for (int i = 1; i < kFrameStatusCount; ++i) {
    if (r.by_status[i] > 0 || i == 1) {
      absl::StrAppend(&statuses, statuses.empty() ? "" : "  ",
                      FrameStatusLabel(static_cast<FrameStatus>(i)), "=", r.by_status[i]);
    }
  }
  absl::StrAppend(&s, "status: ", statuses, "\n");
  absl::StrAppend(&s, absl::StrFormat("throughput: %.1f frames/s\n", r.frames_per_second));
  absl::StrAppend(
      &s, absl::StrFormat("latency (send -> result): p50 %.2f ms  p90 %.2f ms  p99 %.2f ms  "
                          "p99.9 %.2f ms  max %.2f ms\n",
                          r.p50_ms, r.p90_ms, r.p99_ms, r.p999_ms, r.max_ms));
  absl::StrAppend(
      &s, absl::StrFormat("server stages (mean): queue %.2f  decode %.2f  analyse %.2f  enrich "
                          "%.2f  reorder %.2f  total %.2f ms\n",
                          r.queue_ms, r.decode_ms, r.analyse_ms, r.enrich_ms, r.reorder_ms,
                          r.total_ms));
  for (const auto& st : r.streams) {
    if (!st.in_order || !st.complete) {
      absl::StrAppend(&s, absl::StrFormat("stream %s: sent %d, received %d, %s%s\n", st.id, st.sent,
                                          st.received, st.in_order ? "in order" : "OUT OF ORDER",
                                          st.rpc_status == "OK" ? "" : ", " + st.rpc_status));
    }
    if (st.retries > 0) {
      absl::StrAppend(&s, absl::StrFormat("stream %s: reconnected %d time(s) after: %s\n", st.id,
                                          st.retries, absl::StrJoin(st.failed_calls, "; ")));
    }
    if (!st.lost_seqs.empty()) {
      absl::StrAppend(&s, absl::StrFormat("stream %s: %d frame(s) lost with a failed connection: "
                                          "seq %s\n",
                                          st.id, st.lost_seqs.size(), SeqRanges(st.lost_seqs)));
    }
    if (st.dropped_at_source > 0) {
      absl::StrAppend(&s, absl::StrFormat("stream %s: %d live frame(s) skipped at the camera "
                                          "because the stream fell behind\n",
                                          st.id, st.dropped_at_source));
    }
    if (!st.overlay_path.empty()) {
      absl::StrAppend(
          &s, st.overlay_error.empty()
                  ? absl::StrFormat("overlay: %s (%d frames)\n", st.overlay_path, st.overlay_frames)
                  : absl::StrFormat("overlay: %s FAILED: %s\n", st.overlay_path, st.overlay_error));
    }
  }
  bool delivered = !r.streams.empty();
  for (const auto& st : r.streams) delivered = delivered && st.in_order && st.complete;
  absl::StrAppend(&s, delivered ? "every stream complete and in order\n"
                                : "FAILED: a stream was incomplete or out of order\n");
  if (show > 0 && !r.first_results.empty()) {
    absl::StrAppend(&s, "\nfirst results of stream 0:\n",
                    absl::StrFormat("%6s  %-18s %7s %10s %9s %9s %8s\n", "seq", "status", "luma",
                                    "sharpness", "keypoints", "scene_cut", "motion"));
    for (const auto& fr : r.first_results) {
      absl::StrAppend(&s,
                      absl::StrFormat("%6d  %-18s %7.1f %10.1f %9d %9s %8.4f\n", fr.seq,
                                      FrameStatusLabel(fr.status), fr.analysis.mean_luma,
                                      fr.analysis.sharpness, fr.enrichment.keypoints,
                                      fr.enrichment.scene_cut ? "yes" : "-", fr.enrichment.motion));
    }
  }
  return s;
}

}  // namespace framepipe
