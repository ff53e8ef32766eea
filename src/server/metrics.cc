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
    exposer_ = std::make_unique<prometheus::Exposer>(std::vector<std::string>{
        "listening_ports", address, "num_threads", "64", "request_timeout_ms", "2000",
        "keep_alive_timeout_ms", "2000", "linger_timeout_ms", "0"});
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

std::vector<prometheus::MetricFamily> Metrics::Collect() const {
  using prometheus::MetricType;
  std::vector<prometheus::MetricFamily> out;

  auto frames = Family("framepipe_frames_total",
                       "Frames answered, by result status (every admitted frame is answered "
                       "exactly once).",
                       MetricType::Counter);
  for (int s = 1; s < kFrameStatusCount; ++s) {
    frames.metric.push_back(Value(static_cast<double>(frames_[s].load()), MetricType::Counter,
                                  {{"status", FrameStatusLabel(static_cast<FrameStatus>(s))}}));
  }
  out.push_back(std::move(frames));

  auto stages = Family("framepipe_stage_seconds",
                       "Per-frame time in each stage, seconds: queue (waiting for a worker), "
                       "decode, analyse, enrich, reorder (done, waiting for earlier frames), "
                       "write (handed to gRPC until the write completed) and total (admitted "
                       "until handed to the writer). Same clock points as FrameResult.timings; "
                       "stage histograms count OK frames, total counts all.",
                       MetricType::Histogram);
  for (int s = 0; s < static_cast<int>(Stage::kCount); ++s) {
    stages.metric.push_back(
        HistogramMetric(*stages_[s], {{"stage", StageName(static_cast<Stage>(s))}}));
  }
  out.push_back(std::move(stages));

  auto gauge = [&](const char* name, const char* help, double v) {
    auto f = Family(name, help, MetricType::Gauge);
    f.metric.push_back(Value(v, MetricType::Gauge));
    out.push_back(std::move(f));
  };
  auto counter = [&](const char* name, const char* help, double v) {
    auto f = Family(name, help, MetricType::Counter);
    f.metric.push_back(Value(v, MetricType::Counter));
    out.push_back(std::move(f));
  };
  gauge("framepipe_in_flight",
        "Frames admitted whose result has not been written yet (credits held).",
        static_cast<double>(in_flight_.load()));
  gauge("framepipe_reorder_depth",
        "Results finished and waiting in reorder buffers for an earlier frame of their stream.",
        static_cast<double>(reorder_depth_.load()));
  {
    auto f = Family("framepipe_reorder_depth_at_insert",
                    "Depth of a stream's reorder buffer when a result entered it.",
                    MetricType::Histogram);
    f.metric.push_back(HistogramMetric(*reorder_depth_at_insert_, {}));
    out.push_back(std::move(f));
  }
  gauge("framepipe_active_streams", "Open Process streams.",
        static_cast<double>(active_streams_.load()));
  counter("framepipe_streams_total", "Process streams accepted since start.",
          static_cast<double>(streams_total_.load()));
  {
    auto f = Family("framepipe_streams_rejected_total",
                    "Process streams refused, by reason: max_streams (--max-streams), peer_limit "
                    "(--max-streams-per-peer), draining, unauthenticated.",
                    MetricType::Counter);
    for (int r = 0; r < static_cast<int>(StreamRefusal::kCount); ++r) {
      f.metric.push_back(Value(static_cast<double>(streams_rejected_[r].load()),
                               MetricType::Counter,
                               {{"reason", StreamRefusalLabel(static_cast<StreamRefusal>(r))}}));
    }
    out.push_back(std::move(f));
  }
  {
    auto f = Family("framepipe_streams_expired_total",
                    "Streams the server ended because the client stopped sending: first_frame "
                    "(--first-frame-timeout), idle (--idle-timeout).",
                    MetricType::Counter);
    for (int r = 0; r < static_cast<int>(StreamExpiry::kCount); ++r) {
      f.metric.push_back(Value(static_cast<double>(streams_expired_[r].load()), MetricType::Counter,
                               {{"reason", StreamExpiryLabel(static_cast<StreamExpiry>(r))}}));
    }
    out.push_back(std::move(f));
  }
  counter("framepipe_malformed_messages_total",
          "Messages that were not a ProcessRequest (each ended its call with INVALID_ARGUMENT).",
          static_cast<double>(malformed_messages_.load()));
  {
    auto f = Family("framepipe_dropped_total",
                    "Frames or results not processed or not delivered, by reason: drop_oldest "
                    "(answered DROPPED under overload), shutdown (read but not admitted while "
                    "draining), client_gone (results not written: the client went away).",
                    MetricType::Counter);
    for (int r = 0; r < static_cast<int>(DropReason::kCount); ++r) {
      f.metric.push_back(Value(static_cast<double>(dropped_[r].load()), MetricType::Counter,
                               {{"reason", DropReasonName(static_cast<DropReason>(r))}}));
    }
    out.push_back(std::move(f));
  }
  {
    auto f = Family("framepipe_capture_lag_seconds",
                    "Result written minus the frame's capture_time_us (client wall clock), for "
                    "frames that carried one: how far behind live the results are.",
                    MetricType::Histogram);
    f.metric.push_back(HistogramMetric(*capture_lag_, {}));
    out.push_back(std::move(f));
  }
  gauge("framepipe_worker_busy_ratio",
        "Share of the pipeline workers' time spent in stage bodies over the last second.",
        busy_ratio_.load());
  counter("framepipe_worker_busy_seconds_total", "Time spent in stage bodies, all workers.",
          static_cast<double>(busy_nanos_.load()) / 1e9);
  gauge("framepipe_workers", "Pipeline worker threads.", static_cast<double>(workers_));
  counter("framepipe_received_bytes_total", "Bytes of frame messages received.",
          static_cast<double>(bytes_in_.load()));
  counter("framepipe_sent_bytes_total", "Bytes of result messages written.",
          static_cast<double>(bytes_out_.load()));
  counter("framepipe_frames_received_total", "Frame messages received.",
          static_cast<double>(frames_read_.load()));
  {
    auto f = Family("framepipe_build_info", "Version and analysis backend of this server (1).",
                    MetricType::Gauge);
    f.metric.push_back(Value(1, MetricType::Gauge, {{"backend", backend_}, {"version", version_}}));
    out.push_back(std::move(f));
  }
  gauge("framepipe_uptime_seconds", "Seconds since the server started.",
        SecondsBetween(started_, Now()));
  CollectFrontDoor(&out);
  return out;
}

void Metrics::SetFrontDoorSource(std::function<FrontDoorCounters()> source) {
  front_door_ = std::move(source);
}

void Metrics::CollectFrontDoor(std::vector<prometheus::MetricFamily>* out) const {
  if (!front_door_) return;
  using prometheus::MetricType;
  const FrontDoorCounters c = front_door_();
  auto labelled = [&](const char* name, const char* help, const char* label, int n,
                      const uint64_t* values, const char* (*names)(int)) {
    auto f = Family(name, help, MetricType::Counter);
    for (int i = 0; i < n; ++i) {
      f.metric.push_back(
          Value(static_cast<double>(values[i]), MetricType::Counter, {{label, names(i)}}));
    }
    out->push_back(std::move(f));
  };
  {
    auto f =
        Family("framepipe_connections", "Client connections open (front door).", MetricType::Gauge);
    f.metric.push_back(Value(static_cast<double>(c.connections_active), MetricType::Gauge));
    out->push_back(std::move(f));
  }
  {
    auto f = Family("framepipe_connections_total", "Client connections accepted since start.",
                    MetricType::Counter);
    f.metric.push_back(Value(static_cast<double>(c.connections_total), MetricType::Counter));
    out->push_back(std::move(f));
  }
  labelled("framepipe_connections_refused_total",
           "Connections refused at accept, by reason: max_connections, peer_limit, peer_rate, "
           "fd_limit.",
           "reason", static_cast<int>(ConnectionRefusal::kCount), c.refused,
           [](int i) { return ConnectionRefusalLabel(static_cast<ConnectionRefusal>(i)); });
  // Index 0 of the violations is "none": skip it.
  labelled("framepipe_http2_violations_total",
           "Connections the HTTP/2 guard closed, by kind: bad_preface, frame_too_large, "
           "header_block, header_frames, reset_flood, control_flood, too_many_streams, protocol.",
           "kind", static_cast<int>(Http2Violation::kCount) - 1, c.violations + 1,
           [](int i) { return Http2ViolationLabel(static_cast<Http2Violation>(i + 1)); });
  labelled("framepipe_http2_streams_rejected_total",
           "Streams the HTTP/2 guard ended at a message's length prefix, by reason: "
           "message_too_large, compressed.",
           "reason", static_cast<int>(StreamRejection::kCount), c.rejected_streams,
           [](int i) { return StreamRejectionLabel(static_cast<StreamRejection>(i)); });
  {
    auto f = Family("framepipe_connections_closed_total",
                    "Connections closed by the front door for being slow: handshake_timeout (no "
                    "TLS handshake or HTTP/2 preface in time), tls_failed.",
                    MetricType::Counter);
    f.metric.push_back(Value(static_cast<double>(c.handshake_timeouts), MetricType::Counter,
                             {{"reason", "handshake_timeout"}}));
    f.metric.push_back(Value(static_cast<double>(c.tls_failures), MetricType::Counter,
                             {{"reason", "tls_failed"}}));
    out->push_back(std::move(f));
  }
}

}  // namespace framepipe
