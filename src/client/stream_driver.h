// The streaming client's moving parts: one StreamDriver per stream (its source, pacing, the
// frames in flight, retries after a failed call) and one Attempt per Process call (gRPC's
// callback reactor, in stream_driver.cc), with a Scheduler that runs their timed work.
#pragma once

#include <array>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <fstream>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "client/stream_client.h"
#include "common/clock.h"
#include "framepipe/v1/framepipe.grpc.pb.h"
#include "media/frame_source.h"
#include "media/overlay_writer.h"

namespace framepipe {
namespace client_internal {

// What the streams of one client run share: the options, the source factory, and the totals every
// stream adds its results to.
struct ClientTotals {
  const StreamClientOptions* options;
  std::function<std::unique_ptr<FrameSource>(int)> make_source;
  TimePoint start;
  double cpu_start_s = 0;  // ProcessCpuSeconds() at start
  std::mutex mu;           // guards everything below
  std::vector<double> latencies_ms;
  std::vector<double> latency_times_s;
  std::vector<double> server_total_ms;
  double sum_ms[6] = {0, 0, 0, 0, 0, 0};
  int64_t timed = 0;
  std::array<int64_t, kFrameStatusCount> by_status{};
  std::vector<FrameResult> first_results;
  std::ofstream out;
  std::atomic<int64_t> received{0};
  std::atomic<int64_t> payload_bytes{0};  // frame payloads sent (image bytes or video packets)
};

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

class Attempt;

// One stream across its attempts: its frame source, the frames in flight (send times, and the
// frames themselves when an overlay is written), results, and the frames lost when an attempt's
// connection failed. With --retry, a failed attempt is followed (after an exponential backoff)
// by a new call carrying on with the frames not yet sent.
class StreamDriver {
 public:
  StreamDriver(int index, v1::FramePipeline::Stub* stub, ClientTotals* sh, Scheduler* scheduler,
               std::unique_ptr<FrameSource> source);
  ~StreamDriver();

  void Start();
  StreamOutcome Wait();

  // The seq of the stream's frame number i (0, 1, 2, ...): the frame number itself.
  static uint64_t SeqOf(int64_t frame) { return static_cast<uint64_t>(frame); }

  void BuildConfig(v1::ProcessRequest* req);

  // Write path: the next frame into `req` (kFrame), or kNotReady (the source will call back;
  // `waiter` is resumed then), or kEnd.
  FrameSource::Next NextFrame(v1::ProcessRequest* req, Attempt* waiter);

  // The attempt's reads ended: if its writer waits for a place in the window, none will come.
  bool TakeWindowWaiter(Attempt* a);
  void OnSourceReady();

  // The time the next paced frame is due (write path only: one write in flight per stream).
  TimePoint NextSendTime();
  bool paced() const { return period_.count() > 0; }

  // Read path: a result arrived. False when the overlay writer is full: call again later with
  // the same result (the frame stays first in the window until it is taken).
  bool OnResult(const v1::FrameResult& res);

  // Called by the attempt that ended, from its OnDone.
  void AttemptDone(const grpc::Status& st);

  const StreamClientOptions& options() const { return o_; }
  Scheduler* scheduler() const { return scheduler_; }
  v1::FramePipeline::Stub* stub() const { return stub_; }

 private:
  struct InFlight {
    int64_t index;
    int64_t send_ns;
    SourceFrame frame;  // kept only for the overlay
  };
  void Launch();

  const int index_;
  v1::FramePipeline::Stub* const stub_;
  ClientTotals* const sh_;
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

}  // namespace client_internal
}  // namespace framepipe
