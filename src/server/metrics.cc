#include "server/metrics.h"

#include <cmath>
#include <limits>

#include "absl/strings/str_cat.h"
#include "prometheus/exposer.h"
#include "prometheus/metric_family.h"

namespace framepipe {

namespace {

// 0.1 ms ... 10 s: the stage latencies a video pipeline cares about.
std::vector<double> LatencyBuckets() {
  return {0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025,
          0.05,   0.1,     0.25,   0.5,   1.0,    2.5,   5.0,  10.0};
}
// Capture lag can reach minutes when a client falls behind live.
std::vector<double> LagBuckets() {
  return {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0};
}
std::vector<double> DepthBuckets() { return {1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024}; }

const char* DropReasonName(DropReason r) {
  switch (r) {
    case DropReason::kDropOldest:
      return "drop_oldest";
    case DropReason::kShutdown:
      return "shutdown";
    default:
      return "client_gone";
  }
}

prometheus::MetricFamily Family(const char* name, const char* help, prometheus::MetricType t) {
  prometheus::MetricFamily f;
  f.name = name;
  f.help = help;
  f.type = t;
  return f;
}

prometheus::ClientMetric Value(double v, prometheus::MetricType t,
                               std::vector<prometheus::ClientMetric::Label> labels = {}) {
  prometheus::ClientMetric m;
  m.label = std::move(labels);
  if (t == prometheus::MetricType::Counter) {
    m.counter.value = v;
  } else {
    m.gauge.value = v;
  }
  return m;
}

prometheus::ClientMetric HistogramMetric(const AtomicHistogram& h,
                                         std::vector<prometheus::ClientMetric::Label> labels) {
  prometheus::ClientMetric m;
  m.label = std::move(labels);
  const std::vector<uint64_t> cum = h.Cumulative();
  for (size_t i = 0; i < cum.size(); ++i) {
    prometheus::ClientMetric::Bucket b;
    b.cumulative_count = cum[i];
    b.upper_bound = i < h.bounds().size() ? h.bounds()[i] : std::numeric_limits<double>::infinity();
    m.histogram.bucket.push_back(b);
  }
  m.histogram.sample_count = cum.back();
  m.histogram.sample_sum = h.sum();
  return m;
}

}  // namespace

AtomicHistogram::AtomicHistogram(std::vector<double> upper_bounds)
    : bounds_(std::move(upper_bounds)), buckets_(new std::atomic<uint64_t>[bounds_.size() + 1]) {
  for (size_t i = 0; i <= bounds_.size(); ++i) buckets_[i].store(0);
}

void AtomicHistogram::Observe(double value) {
  size_t i = 0;
  while (i < bounds_.size() && value > bounds_[i]) ++i;
  buckets_[i].fetch_add(1, std::memory_order_relaxed);
  if (value > 0) {
    sum_nanos_.fetch_add(static_cast<uint64_t>(std::llround(value * 1e9)),
                         std::memory_order_relaxed);
  }
}

std::vector<uint64_t> AtomicHistogram::Cumulative() const {
  std::vector<uint64_t> out(bounds_.size() + 1);
  uint64_t run = 0;
  for (size_t i = 0; i <= bounds_.size(); ++i) {
    run += buckets_[i].load(std::memory_order_relaxed);
    out[i] = run;
  }
  return out;
}

uint64_t AtomicHistogram::count() const { return Cumulative().back(); }
double AtomicHistogram::sum() const {
  return static_cast<double>(sum_nanos_.load(std::memory_order_relaxed)) / 1e9;
}

const char* StageName(Stage s) {
  static const char* kNames[] = {"queue",   "decode", "analyse", "enrich",
                                 "reorder", "write",  "total"};
  return kNames[static_cast<int>(s)];
}

Metrics::Metrics(std::string version, std::string backend, int workers)
    : version_(std::move(version)), backend_(std::move(backend)), workers_(workers) {
  for (auto& h : stages_) h = std::make_unique<AtomicHistogram>(LatencyBuckets());
  reorder_depth_at_insert_ = std::make_unique<AtomicHistogram>(DepthBuckets());
  capture_lag_ = std::make_unique<AtomicHistogram>(LagBuckets());
  for (auto& h : video_decode_) h = std::make_unique<AtomicHistogram>(LatencyBuckets());
  busy_thread_ = std::thread([this] { BusyLoop(); });
}

Metrics::~Metrics() {
  exposer_.reset();
  self_.reset();
  {
    std::lock_guard<std::mutex> l(busy_mu_);
    busy_exit_ = true;
  }
  busy_cv_.notify_all();
  busy_thread_.join();
}

absl::Status Metrics::Serve(const std::string& address) {
  try {
    // A scrape must get through a slowloris: enough threads (civetweb serves one connection per
    // thread) and short request / keep-alive timeouts so a half-sent request frees its thread.
    // No linger_timeout_ms: civetweb would set SO_LINGER, and with 0 a close resets the
    // connection, discarding what the scraper has not yet acknowledged (a cut scrape).
    exposer_ = std::make_unique<prometheus::Exposer>(
        std::vector<std::string>{"listening_ports", address, "num_threads", "64",
                                 "request_timeout_ms", "2000", "keep_alive_timeout_ms", "2000"});
  } catch (const std::exception& e) {
    return absl::UnavailableError(
        absl::StrCat("cannot serve metrics on ", address, ": ", e.what()));
  }
  const auto ports = exposer_->GetListeningPorts();
  port_ = ports.empty() ? 0 : ports.front();
  // The exposer keeps a weak reference; `self_` (non-owning) keeps it valid until the exposer
  // is destroyed, which happens first in the destructor.
  self_ = std::shared_ptr<prometheus::Collectable>(this, [](prometheus::Collectable*) {});
  exposer_->RegisterCollectable(self_);
  return absl::OkStatus();
}

// Samples the busy time once a second into framepipe_worker_busy_ratio.
void Metrics::BusyLoop() {
  uint64_t last = 0;
  TimePoint last_t = Now();
  std::unique_lock<std::mutex> l(busy_mu_);
  while (!busy_cv_.wait_for(l, std::chrono::seconds(1), [&] { return busy_exit_; })) {
    const uint64_t now_busy = busy_nanos_.load(std::memory_order_relaxed);
    const TimePoint now = Now();
    const double wall = SecondsBetween(last_t, now) * std::max(1, workers_);
    busy_ratio_.store(wall > 0 ? std::min(1.0, static_cast<double>(now_busy - last) / 1e9 / wall)
                               : 0.0);
    last = now_busy;
    last_t = now;
  }
}

void Metrics::OnAdmitted(const StreamOptions&) {
  in_flight_.fetch_add(1, std::memory_order_relaxed);
}

void Metrics::OnDelivered(const FrameResult& r) {
  frames_[static_cast<int>(r.status)].fetch_add(1, std::memory_order_relaxed);
  if (r.status == FrameStatus::kDropped) {
    dropped_[static_cast<int>(DropReason::kDropOldest)].fetch_add(1, std::memory_order_relaxed);
  }
  const Timings& t = r.timings;
  if (r.status == FrameStatus::kOk) {
    // Stage latencies of frames that went through every stage (failed frames stop early and
    // would pull the figures down).
    stages_[static_cast<int>(Stage::kQueue)]->Observe(t.queue_us / 1e6);
    stages_[static_cast<int>(Stage::kDecode)]->Observe(t.decode_us / 1e6);
    stages_[static_cast<int>(Stage::kAnalyse)]->Observe(t.analyse_us / 1e6);
    stages_[static_cast<int>(Stage::kEnrich)]->Observe(t.enrich_us / 1e6);
    stages_[static_cast<int>(Stage::kReorder)]->Observe(t.reorder_us / 1e6);
  }
  stages_[static_cast<int>(Stage::kTotal)]->Observe(t.total_us / 1e6);
  busy_nanos_.fetch_add((t.decode_us + t.analyse_us + t.enrich_us) * 1000,
                        std::memory_order_relaxed);
}

void Metrics::OnCreditReturned() { in_flight_.fetch_sub(1, std::memory_order_relaxed); }

void Metrics::OnReorderInsert(uint32_t depth) {
  reorder_depth_.fetch_add(1, std::memory_order_relaxed);
  reorder_depth_at_insert_->Observe(depth);
}

void Metrics::OnReorderRemove() { reorder_depth_.fetch_sub(1, std::memory_order_relaxed); }

void Metrics::OnStreamOpened() {
  active_streams_.fetch_add(1, std::memory_order_relaxed);
  streams_total_.fetch_add(1, std::memory_order_relaxed);
}
void Metrics::OnStreamClosed() { active_streams_.fetch_sub(1, std::memory_order_relaxed); }
void Metrics::OnStreamRejected(StreamRefusal why) {
  streams_rejected_[static_cast<int>(why)].fetch_add(1, std::memory_order_relaxed);
}
void Metrics::OnStreamExpired(StreamExpiry why) {
  streams_expired_[static_cast<int>(why)].fetch_add(1, std::memory_order_relaxed);
}
void Metrics::OnMalformedMessage() { malformed_messages_.fetch_add(1, std::memory_order_relaxed); }

void Metrics::OnFrameRead(size_t bytes) {
  frames_read_.fetch_add(1, std::memory_order_relaxed);
  bytes_in_.fetch_add(bytes, std::memory_order_relaxed);
}

void Metrics::OnResultWritten(double write_seconds, size_t bytes, int64_t capture_time_us) {
  stages_[static_cast<int>(Stage::kWrite)]->Observe(write_seconds);
  bytes_out_.fetch_add(bytes, std::memory_order_relaxed);
  if (capture_time_us > 0) {
    const double lag = static_cast<double>(WallMicros() - capture_time_us) / 1e6;
    capture_lag_->Observe(lag > 0 ? lag : 0);
  }
}

void Metrics::OnNotAdmitted(uint64_t frames) {
  dropped_[static_cast<int>(DropReason::kShutdown)].fetch_add(frames, std::memory_order_relaxed);
}

void Metrics::OnResultsDiscarded(uint64_t results) {
  dropped_[static_cast<int>(DropReason::kClientGone)].fetch_add(results, std::memory_order_relaxed);
}

void Metrics::OnVideoDecoded(VideoCodecId codec, double seconds, int pictures) {
  const int c = static_cast<int>(codec);
  video_decode_[c]->Observe(seconds);
  video_pictures_[c].fetch_add(static_cast<uint64_t>(pictures), std::memory_order_relaxed);
}

void Metrics::OnDecodeThread(int delta) {
  video_decode_threads_.fetch_add(delta, std::memory_order_relaxed);
}

void Metrics::OnVideoError(VideoCodecId codec) {
  video_errors_[static_cast<int>(codec)].fetch_add(1, std::memory_order_relaxed);
}

// Builds the families of one scrape: one call per metric, labelled ones from a value per label.
class MetricFamilies {
 public:
  using Type = prometheus::MetricType;
  void Add(const char* name, const char* help, Type t, double v) {
    auto f = Family(name, help, t);
    f.metric.push_back(Value(v, t));
    out_.push_back(std::move(f));
  }
  // One value per label value i in [0, n): label=names(i), value(i).
  template <typename NameFn, typename ValueFn>
  void Labelled(const char* name, const char* help, Type t, const char* label, int n, NameFn names,
                ValueFn value) {
    auto f = Family(name, help, t);
    for (int i = 0; i < n; ++i) {
      f.metric.push_back(Value(static_cast<double>(value(i)), t, {{label, names(i)}}));
    }
    out_.push_back(std::move(f));
  }
  void Histogram(const char* name, const char* help, const AtomicHistogram& h) {
    auto f = Family(name, help, Type::Histogram);
    f.metric.push_back(HistogramMetric(h, {}));
    out_.push_back(std::move(f));
  }
  std::vector<prometheus::MetricFamily>& out() { return out_; }

 private:
  std::vector<prometheus::MetricFamily> out_;
};

namespace {

template <typename E>
int Count() {
  return static_cast<int>(E::kCount);
}

}  // namespace

std::vector<prometheus::MetricFamily> Metrics::Collect() const {
  MetricFamilies f;
  CollectFrames(&f);
  CollectStreams(&f);
  CollectProcess(&f);
  CollectFrontDoor(&f);
  CollectVideo(&f);
  return std::move(f.out());
}

void Metrics::CollectVideo(MetricFamilies* f) const {
  using T = prometheus::MetricType;
  auto codec = [](int i) { return VideoCodecName(static_cast<VideoCodecId>(i)); };
  auto decode = Family("framepipe_video_decode_seconds",
                       "Time the video decoder took per packet (libavcodec, one decoder per "
                       "stream), by codec.",
                       T::Histogram);
  for (int c = 0; c < kVideoCodecs; ++c) {
    decode.metric.push_back(HistogramMetric(*video_decode_[c], {{"codec", codec(c)}}));
  }
  f->out().push_back(std::move(decode));
  f->Labelled("framepipe_video_frames_decoded_total",
              "Pictures the video decoders produced, by codec.", T::Counter, "codec", kVideoCodecs,
              codec, [&](int i) { return video_pictures_[i].load(); });
  f->Labelled("framepipe_video_decode_errors_total",
              "Video packets answered INVALID_ARGUMENT by the video path (rejected or damaged "
              "packets, packets before a keyframe or after a broken one, no picture), by codec.",
              T::Counter, "codec", kVideoCodecs, codec,
              [&](int i) { return video_errors_[i].load(); });
  f->Add("framepipe_video_decode_threads",
         "Video streams' decode threads running (one per open video stream).", T::Gauge,
         static_cast<double>(video_decode_threads_.load()));
}

void Metrics::CollectFrames(MetricFamilies* f) const {
  using T = prometheus::MetricType;
  f->Labelled(
      "framepipe_frames_total",
      "Frames answered, by result status (every admitted frame is answered exactly once).",
      T::Counter, "status", kFrameStatusCount - 1,
      [](int i) { return FrameStatusLabel(static_cast<FrameStatus>(i + 1)); },
      [&](int i) { return frames_[i + 1].load(); });
  auto stages = Family("framepipe_stage_seconds",
                       "Per-frame time in each stage, seconds: queue (waiting for a worker), "
                       "decode, analyse, enrich, reorder (done, waiting for earlier frames), "
                       "write (handed to gRPC until the write completed) and total (admitted "
                       "until handed to the writer). Same clock points as FrameResult.timings; "
                       "stage histograms count OK frames, total counts all.",
                       T::Histogram);
  for (int s = 0; s < Count<Stage>(); ++s) {
    stages.metric.push_back(
        HistogramMetric(*stages_[s], {{"stage", StageName(static_cast<Stage>(s))}}));
  }
  f->out().push_back(std::move(stages));
  f->Labelled(
      "framepipe_dropped_total",
      "Frames or results not processed or not delivered, by reason: drop_oldest "
      "(answered DROPPED under overload), shutdown (read but not admitted while "
      "draining), client_gone (results not written: the client went away).",
      T::Counter, "reason", Count<DropReason>(),
      [](int i) { return DropReasonName(static_cast<DropReason>(i)); },
      [&](int i) { return dropped_[i].load(); });
  f->Histogram("framepipe_capture_lag_seconds",
               "Result written minus the frame's capture_time_us (client wall clock), for frames "
               "that carried one: how far behind live the results are.",
               *capture_lag_);
  f->Add("framepipe_in_flight",
         "Frames admitted whose result has not been written yet (credits held).", T::Gauge,
         static_cast<double>(in_flight_.load()));
  f->Add("framepipe_reorder_depth",
         "Results finished and waiting in reorder buffers for an earlier frame of their stream.",
         T::Gauge, static_cast<double>(reorder_depth_.load()));
  f->Histogram("framepipe_reorder_depth_at_insert",
               "Depth of a stream's reorder buffer when a result entered it.",
               *reorder_depth_at_insert_);
  f->Add("framepipe_frames_received_total", "Frame messages received.", T::Counter,
         static_cast<double>(frames_read_.load()));
}

void Metrics::CollectStreams(MetricFamilies* f) const {
  using T = prometheus::MetricType;
  f->Add("framepipe_active_streams", "Open Process streams.", T::Gauge,
         static_cast<double>(active_streams_.load()));
  f->Add("framepipe_streams_total", "Process streams accepted since start.", T::Counter,
         static_cast<double>(streams_total_.load()));
  f->Labelled(
      "framepipe_streams_rejected_total",
      "Process streams refused, by reason: max_streams (--max-streams), peer_limit "
      "(--max-streams-per-peer), draining, unauthenticated.",
      T::Counter, "reason", Count<StreamRefusal>(),
      [](int i) { return StreamRefusalLabel(static_cast<StreamRefusal>(i)); },
      [&](int i) { return streams_rejected_[i].load(); });
  f->Labelled(
      "framepipe_streams_expired_total",
      "Streams the server ended because the client stopped sending: first_frame "
      "(--first-frame-timeout), idle (--idle-timeout).",
      T::Counter, "reason", Count<StreamExpiry>(),
      [](int i) { return StreamExpiryLabel(static_cast<StreamExpiry>(i)); },
      [&](int i) { return streams_expired_[i].load(); });
  f->Add("framepipe_malformed_messages_total",
         "Messages that were not a ProcessRequest (each ended its call with INVALID_ARGUMENT).",
         T::Counter, static_cast<double>(malformed_messages_.load()));
}

void Metrics::CollectProcess(MetricFamilies* f) const {
  using T = prometheus::MetricType;
  f->Add("framepipe_worker_busy_ratio",
         "Share of the pipeline workers' time spent in stage bodies over the last second.",
         T::Gauge, busy_ratio_.load());
  f->Add("framepipe_worker_busy_seconds_total", "Time spent in stage bodies, all workers.",
         T::Counter, static_cast<double>(busy_nanos_.load()) / 1e9);
  f->Add("framepipe_workers", "Pipeline worker threads.", T::Gauge, static_cast<double>(workers_));
  f->Add("framepipe_received_bytes_total", "Bytes of frame messages received.", T::Counter,
         static_cast<double>(bytes_in_.load()));
  f->Add("framepipe_sent_bytes_total", "Bytes of result messages written.", T::Counter,
         static_cast<double>(bytes_out_.load()));
  auto build =
      Family("framepipe_build_info", "Version and analysis backend of this server (1).", T::Gauge);
  build.metric.push_back(Value(1, T::Gauge, {{"backend", backend_}, {"version", version_}}));
  f->out().push_back(std::move(build));
  f->Add("framepipe_uptime_seconds", "Seconds since the server started.", T::Gauge,
         SecondsBetween(started_, Now()));
}

void Metrics::SetFrontDoorSource(std::function<FrontDoorCounters()> source) {
  front_door_ = std::move(source);
}

void Metrics::CollectFrontDoor(MetricFamilies* f) const {
  if (!front_door_) return;
  using T = prometheus::MetricType;
  const FrontDoorCounters c = front_door_();
  f->Add("framepipe_connections", "Client connections open (front door).", T::Gauge,
         static_cast<double>(c.connections_active));
  f->Add("framepipe_connections_total", "Client connections accepted since start.", T::Counter,
         static_cast<double>(c.connections_total));
  f->Labelled(
      "framepipe_connections_refused_total",
      "Connections refused at accept, by reason: max_connections, peer_limit, "
      "peer_rate, fd_limit.",
      T::Counter, "reason", Count<ConnectionRefusal>(),
      [](int i) { return ConnectionRefusalLabel(static_cast<ConnectionRefusal>(i)); },
      [&](int i) { return c.refused[i]; });
  // Index 0 of the violations is "none": skipped.
  f->Labelled(
      "framepipe_http2_violations_total",
      "Connections the HTTP/2 guard closed, by kind: bad_preface, frame_too_large, "
      "header_block, header_frames, reset_flood, control_flood, too_many_streams, "
      "protocol, window_update_flood.",
      T::Counter, "kind", Count<Http2Violation>() - 1,
      [](int i) { return Http2ViolationLabel(static_cast<Http2Violation>(i + 1)); },
      [&](int i) { return c.violations[i + 1]; });
  f->Labelled(
      "framepipe_http2_streams_rejected_total",
      "Streams the HTTP/2 guard ended, by reason: message_too_large, compressed (at a message's "
      "length prefix), peer_streams (at its headers: the address's open-stream limit), "
      "too_many_messages (a message more than its method takes).",
      T::Counter, "reason", Count<StreamRejection>(),
      [](int i) { return StreamRejectionLabel(static_cast<StreamRejection>(i)); },
      [&](int i) { return c.rejected_streams[i]; });
  const uint64_t relayed[] = {c.bytes_copied, c.bytes_spliced, c.bytes_inline};
  f->Labelled(
      "framepipe_relay_bytes_total",
      "Client bytes the front door passed to gRPC, by path: copied (read through the HTTP/2 "
      "guard and copied on: the relay, or the inline guard where it changed what came), spliced "
      "(relayed message bodies the guard had judged, moved kernel to kernel) or inline (read by "
      "gRPC itself, judged where they lay).",
      T::Counter, "path", 3,
      [](int i) { return i == 0   ? "copied"
                         : i == 1 ? "spliced"
                                  : "inline"; },
      [&](int i) { return relayed[i]; });
  f->Add("framepipe_relay_cpu_seconds_total",
         "CPU time of the front door's relay threads (the HTTP/2 guard's hop between clients and "
         "gRPC); divided by frames, what the front door costs per frame.",
         T::Counter, static_cast<double>(c.relay_cpu_ns) / 1e9);
  const uint64_t closed[] = {c.handshake_timeouts, c.tls_failures};
  f->Labelled(
      "framepipe_connections_closed_total",
      "Connections closed by the front door for being slow: handshake_timeout (no TLS "
      "handshake or HTTP/2 preface in time), tls_failed.",
      T::Counter, "reason", 2, [](int i) { return i == 0 ? "handshake_timeout" : "tls_failed"; },
      [&](int i) { return closed[i]; });
}

}  // namespace framepipe
