// Core: the shared part of a Pipeline - the oneTBB arena and flow graph, the global credit and
// byte budget with its FIFO of waiting streams, the stream registry and the deadline timer.
// Streams keep the Core alive (shared_ptr), so a Credit released after the Pipeline was
// destroyed still finds valid counters; the graph itself is torn down by Stop().
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <thread>
#include <unordered_map>
#include <vector>

#include "common/clock.h"
#include "pipeline/internal/batch_queue.h"
#include "pipeline/internal/job.h"
#include "pipeline/pipeline.h"

namespace framepipe::internal {

class Graph;  // the oneTBB objects, kept out of this header

class Core : public std::enable_shared_from_this<Core> {
 public:
  Core(const PipelineOptions& options, Stages stages);
  ~Core();

  absl::Status Start();
  absl::StatusOr<std::shared_ptr<StreamState>> OpenStream(StreamOptions options);
  bool Stop(std::chrono::milliseconds drain_timeout);

  // Hands an admitted job to the graph.
  void Submit(JobPtr job);
  bool stopping() const { return stopping_.load(std::memory_order_acquire); }

  // Global budget. TryAcquire registers `stream` as a waiter when it fails.
  bool TryAcquireGlobal(uint64_t cost_bytes, StreamState* stream);
  void ReleaseGlobal(uint32_t credits, uint64_t bytes);
  // Memory that is not a frame's (a video decoder's reference pictures): bytes only, never
  // waits, refused when the budget has no room for all of it.
  bool TryChargeBytes(uint64_t bytes);
  void ReleaseCharged(uint64_t bytes);

  // Deadline timer: a stream admitted a frame with this deadline.
  void PokeTimer(TimePoint deadline);

  void Unregister(StreamState* stream);
  void NotifyStreamProgress();  // a stream completed or was cancelled (wakes Stop)

  // Stage bodies, run on the graph's threads.
  void RunStage(Job& job, int stage);
  void Finish(Job& job);
  // The analyse stage over frames that waited together (on the batch thread).
  void RunBatch(const std::vector<BatchQueue::Item>& items);
  // When RunBatch itself could not run (out of memory): the batch's frames fail with `st`.
  void FailBatch(const std::vector<BatchQueue::Item>& items, const absl::Status& st);
  bool batching() const {
    return options_.batch.max_frames > 1 && static_cast<bool>(stages_.analyse_batch);
  }

  const PipelineOptions& options() const { return options_; }
  const TimeSource* time() const { return time_; }
  const Stages& stages() const { return stages_; }
  PipelineObserver* observer() const { return options_.observer; }
  PipelineCounters counters() const;
  int workers() const { return workers_; }

  // Counters written by streams.
  std::atomic<uint64_t> admitted{0};
  std::atomic<uint64_t> delivered{0};
  std::atomic<uint32_t> reorder_depth{0};
  std::atomic<uint32_t> batch_waiting{0};
  std::atomic<uint64_t> by_status[kFrameStatusCount] = {};

 private:
  void TimerLoop();
  // A stage body may run: the job is the worker's (kRunning), has not failed and its deadline
  // has not passed at `now` (else the job expires here).
  bool BeginStage(Job& job, int stage, TimePoint now);
  // Records a stage's time and, when `st` is not OK, the frame's failure.
  void EndStage(Job& job, int stage, TimePoint start, TimePoint end, const absl::Status& st);
  std::vector<std::shared_ptr<StreamState>> SnapshotStreams();

  const PipelineOptions options_;
  const TimeSource* const time_;
  const Stages stages_;
  int workers_ = 1;
  std::unique_ptr<Graph> graph_;
  std::atomic<bool> stopping_{false};
  std::atomic<bool> stopped_{false};
  // Lock order (a lock on the left may be held while taking one on its right; no other nesting):
  //   stop_mu_ -> registry_mu_,   stop_mu_ -> timer_mu_,   StreamState::mu_ -> global_mu_.
  // global_mu_ is never held while calling into a stream; registry_mu_ and timer_mu_ are never
  // held while calling into anything. The Batcher's mutex (core.cc) is a leaf too: held only
  // around its queue (and inside the TimeSource's wait).
  std::mutex stop_mu_;  // serialises Stop()

  bool TryAcquireGlobalFast(uint64_t cost_bytes);

  // Global budget: atomics on the fast path; global_mu_ guards the FIFO of waiting streams.
  std::atomic<uint64_t> global_credits_{0};
  std::atomic<uint64_t> global_peak_{0};
  std::atomic<uint64_t> global_bytes_{0};
  std::atomic<uint64_t> global_peak_bytes_{0};
  std::atomic<uint64_t> charged_bytes_{0};  // TryChargeBytes' share of global_bytes_
  std::atomic<int> global_waiter_count_{0};
  mutable std::mutex global_mu_;
  std::deque<std::weak_ptr<StreamState>> global_waiters_;

  // Registry (for Stop and the timer).
  std::mutex registry_mu_;
  std::condition_variable progress_cv_;
  std::unordered_map<StreamState*, std::weak_ptr<StreamState>> streams_;
  uint32_t timed_streams_ = 0;

  // Deadline timer.
  std::mutex timer_mu_;
  std::condition_variable timer_cv_;
  bool timer_exit_ = false;
  uint64_t timer_pokes_ = 0;
  std::atomic<int64_t> timer_next_wake_ns_{INT64_MAX};
  std::thread timer_;
};

}  // namespace framepipe::internal
