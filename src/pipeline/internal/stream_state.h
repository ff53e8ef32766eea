// StreamState: one stream's credit window, reorder ring and delivery. See stream.h for the
// contract; this is the implementation behind the Stream handle.
//
// Locking: `mu_` guards everything below it. Lock order: StreamState::mu_ -> Core's global
// mutex. Callbacks (on_result, on_credit, on_complete) run with no lock held, counted in
// `active_callbacks_` so Cancel() can wait for them.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "common/clock.h"
#include "pipeline/internal/job.h"
#include "pipeline/stream.h"

namespace framepipe::internal {

class Core;

class StreamState : public std::enable_shared_from_this<StreamState> {
 public:
  StreamState(std::shared_ptr<Core> core, StreamOptions options, OrderedFn ordered);
  ~StreamState();

  // Producer side (see Stream).
  AdmitOutcome TryAdmit(FrameInput& frame, uint64_t cost_bytes, uint64_t* generation);
  absl::Status Submit(FrameInput frame, uint64_t cost_bytes);
  void Close();
  void Cancel();

  // Worker side. `job` reached the end of enrich and the worker won kRunning -> kDone.
  void OnJobDone(Job& job);
  // A worker found the job past its deadline at a stage start and won the race to kExpired.
  void OnJobExpired(Job& job, const char* stage);

  // Timer side: expires every undelivered frame past its deadline; returns the earliest
  // deadline still pending (TimePoint::max() if none).
  TimePoint CheckDeadlines(TimePoint now);

  // Credit side.
  void ReleaseCredit();
  // Core's global waiter list: a global credit or bytes came back. Returns false if this stream
  // was not waiting any more (so the wake-up goes to the next waiter).
  bool NotifyCredit();

  bool complete() const;
  bool has_timeout() const { return options_.frame_timeout.count() > 0; }
  const StreamOptions& options() const { return options_; }
  StreamCounters counters() const;

  // Guarded by Core's global mutex, not mu_.
  bool in_global_waiters = false;
  // Guarded by the credit group's mutex, not mu_.
  bool in_group_waiters = false;

 private:
  struct Slot {
    JobPtr job;
    std::unique_ptr<FrameResult> override_result;  // result written by a non-worker finaliser
    bool ready = false;
    bool holds_payload = false;
    uint64_t cost_bytes = 0;
  };

  uint32_t capacity() const { return static_cast<uint32_t>(ring_.size()); }
  Slot& slot(uint64_t index) { return ring_[index % ring_.size()]; }
  bool HasRoomLocked() const;
  bool DropOldestQueuedLocked(uint64_t* bytes_freed);
  // Marks `s` ready with an error result of its own (the job's worker no longer owns it).
  void FinaliseOverrideLocked(Slot& s, uint64_t index, FrameStatus status, std::string message,
                              uint64_t* bytes_freed);
  void MarkReadyLocked(Slot& s);
  // Delivers ready results from the head of the ring; called with `lock` held, returns with it
  // held (unlocking around callbacks). Only one thread drains at a time.
  void DrainLocked(std::unique_lock<std::mutex>& lock);
  // Runs `fn` unless cancelled, counted as an active callback. Takes and releases mu_.
  template <typename Fn>
  void GuardedCallback(Fn&& fn);
  void WakeProducerLocked();
  // Once closed and every admitted frame delivered: on_complete, once. Unlocks around it.
  void NotifyCompleteLocked(std::unique_lock<std::mutex>& lock);
  void FinishCallbackLocked();
  // The stream's half of returning a credit (the global half is done before): may run
  // on_credit, unlocking around it.
  void ReturnCreditLocked(std::unique_lock<std::mutex>& lock);

  const std::shared_ptr<Core> core_;
  const StreamOptions options_;
  OrderedFn ordered_;

  mutable std::mutex mu_;
  std::condition_variable cv_;            // producers: room in the window / generation change
  std::condition_variable callbacks_cv_;  // Cancel(): active callbacks dropped
  bool cancel_waiting_ = false;
  std::vector<Slot> ring_;
  uint64_t next_index_ = 0;    // next frame to admit
  uint64_t next_out_ = 0;      // next frame to deliver
  uint32_t payload_used_ = 0;  // admitted and not yet delivered or dropped
  uint32_t outstanding_ = 0;   // admitted and credit not yet returned
  uint32_t ready_count_ = 0;   // results waiting in the ring
  uint64_t generation_ = 0;    // bumped whenever a waiting producer may retry
  bool waiting_ = false;       // a TryAdmit failed and nobody has been told to retry yet
  // Blocking Submit(): refused by a full BLOCK window, it sleeps until the window has drained
  // to half (hysteresis: one wake-up per half window, not one per returned credit); refused by
  // the global budget or under DROP_OLDEST, it wakes on every generation change.
  bool last_refusal_global_ = false;
  int low_water_waiters_ = 0;
  int generation_waiters_ = 0;
  bool draining_ = false;
  bool closed_ = false;
  bool cancelled_ = false;
  bool complete_notified_ = false;
  int active_callbacks_ = 0;
  StreamCounters counters_;
};

}  // namespace framepipe::internal
