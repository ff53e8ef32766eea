// Metrics: the Prometheus metrics of a server (names in ARCHITECTURE.md, units in the names,
// base units), fed by the pipeline (PipelineObserver) and the service (ServiceObserver), served
// by prometheus-cpp's pull exposer at /metrics.
//
// Nothing on the per-frame path takes a lock: counters and gauges are atomics, histograms are
// arrays of atomic bucket counters (one relaxed increment per observation), and label lookups are
// resolved at construction (one object per status / stage / reason). The text is built only when
// Prometheus scrapes (Collect).
#pragma once

#include <array>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"
#include "common/clock.h"
#include "pipeline/pipeline.h"
#include "prometheus/collectable.h"
#include "server/front_door.h"
#include "server/service_observer.h"

namespace prometheus {
class Exposer;
}

namespace framepipe {

// A Prometheus histogram with lock-free observation.
class AtomicHistogram {
 public:
  explicit AtomicHistogram(std::vector<double> upper_bounds);
  void Observe(double value);
  uint64_t count() const;
  double sum() const;
  // Cumulative bucket counts, +Inf last.
  std::vector<uint64_t> Cumulative() const;
  const std::vector<double>& bounds() const { return bounds_; }

 private:
  std::vector<double> bounds_;
  std::unique_ptr<std::atomic<uint64_t>[]> buckets_;  // per bucket (not cumulative), +Inf last
  std::atomic<uint64_t> sum_nanos_{0};                // sum in units of 1e-9
};

enum class Stage { kQueue, kDecode, kAnalyse, kEnrich, kReorder, kWrite, kTotal, kCount };
const char* StageName(Stage s);

enum class DropReason { kDropOldest, kShutdown, kClientGone, kCount };

class MetricFamilies;  // one scrape's families (metrics.cc)

class Metrics final : public prometheus::Collectable,
                      public PipelineObserver,
                      public ServiceObserver {
 public:
  Metrics(std::string version, std::string backend, int workers);
  ~Metrics() override;

  // Serves /metrics on `address` (host:port; port 0 picks one).
  absl::Status Serve(const std::string& address);
  int port() const { return port_; }

  std::vector<prometheus::MetricFamily> Collect() const override;
  // The front door's counters, read at each scrape.
  void SetFrontDoorSource(std::function<FrontDoorCounters()> source);

  // PipelineObserver
  void OnAdmitted(const StreamOptions& stream) override;
  void OnDelivered(const FrameResult& result) override;
  void OnCreditReturned() override;
  void OnReorderInsert(uint32_t depth) override;
  void OnReorderRemove() override;
  // ServiceObserver
  void OnStreamOpened() override;
  void OnStreamClosed() override;
  void OnStreamRejected(StreamRefusal why) override;
  void OnStreamExpired(StreamExpiry why) override;
  void OnMalformedMessage() override;
  void OnFrameRead(size_t payload_bytes) override;
  void OnResultWritten(double write_seconds, size_t bytes, int64_t capture_time_us) override;
  void OnNotAdmitted(uint64_t frames) override;
  void OnResultsDiscarded(uint64_t results) override;
  // VideoObserver
  void OnVideoDecoded(VideoCodecId codec, double seconds, int pictures) override;
  void OnVideoError(VideoCodecId codec) override;
  void OnDecodeThread(int delta) override;

  // Direct access for tests.
  const AtomicHistogram& stage(Stage s) const { return *stages_[static_cast<int>(s)]; }
  uint64_t frames(FrameStatus s) const { return frames_[static_cast<int>(s)].load(); }
  int64_t in_flight() const { return in_flight_.load(); }
  int64_t reorder_depth() const { return reorder_depth_.load(); }
  int64_t active_streams() const { return active_streams_.load(); }

 private:
  void BusyLoop();

  const std::string version_;
  const std::string backend_;
  const int workers_;
  const TimePoint started_ = Now();

  std::array<std::atomic<uint64_t>, kFrameStatusCount> frames_{};
  std::array<std::unique_ptr<AtomicHistogram>, static_cast<int>(Stage::kCount)> stages_;
  std::unique_ptr<AtomicHistogram> reorder_depth_at_insert_;
  std::unique_ptr<AtomicHistogram> capture_lag_;
  std::array<std::atomic<uint64_t>, static_cast<int>(DropReason::kCount)> dropped_{};
  std::atomic<int64_t> in_flight_{0};
  std::atomic<int64_t> reorder_depth_{0};
  std::atomic<int64_t> active_streams_{0};
  std::atomic<uint64_t> streams_total_{0};
  std::array<std::atomic<uint64_t>, static_cast<int>(StreamRefusal::kCount)> streams_rejected_{};
  std::array<std::atomic<uint64_t>, static_cast<int>(StreamExpiry::kCount)> streams_expired_{};
  std::atomic<uint64_t> malformed_messages_{0};
  // Video decoding, per codec (h264, hevc).
  static constexpr int kVideoCodecs = 2;
  std::array<std::unique_ptr<AtomicHistogram>, kVideoCodecs> video_decode_;
  std::array<std::atomic<uint64_t>, kVideoCodecs> video_pictures_{};
  std::array<std::atomic<uint64_t>, kVideoCodecs> video_errors_{};
  std::atomic<int64_t> video_decode_threads_{0};
  std::atomic<uint64_t> bytes_in_{0};
  std::atomic<uint64_t> bytes_out_{0};
  std::atomic<uint64_t> frames_read_{0};
  std::atomic<uint64_t> busy_nanos_{0};  // time inside stage bodies, all workers
  std::atomic<double> busy_ratio_{0};

  std::function<FrontDoorCounters()> front_door_;
  void CollectFrames(MetricFamilies* f) const;
  void CollectStreams(MetricFamilies* f) const;
  void CollectProcess(MetricFamilies* f) const;
  void CollectFrontDoor(MetricFamilies* f) const;
  void CollectVideo(MetricFamilies* f) const;

  // Non-owning handle to this object for the exposer's weak reference.
  std::shared_ptr<prometheus::Collectable> self_;
  std::unique_ptr<prometheus::Exposer> exposer_;
  int port_ = 0;
  std::mutex busy_mu_;
  std::condition_variable busy_cv_;
  bool busy_exit_ = false;
  std::thread busy_thread_;
};

}  // namespace framepipe
