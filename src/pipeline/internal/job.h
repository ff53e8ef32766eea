// Job: one admitted frame inside the pipeline. Shared between the stream's reorder slot and the
// graph message that carries it. `state` decides who finalises the frame's result:
//
//   kQueued --worker starts decode--> kRunning --worker finishes enrich--> kDone
//   kQueued --------DROP_OLDEST------> kDropped          (producer thread)
//   kQueued|kRunning --deadline------> kExpired          (timer, or the worker at a stage start)
//   any non-final -----Cancel--------> kCancelled
//
// Whoever wins the compare-exchange into a final state writes the result; everybody else only
// forwards the job. A worker touches `ctx` only while it holds kRunning; the other finalisers
// never touch `ctx` except the payload of a job they took from kQueued (no worker can have it).
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>

#include "common/clock.h"
#include "pipeline/stage.h"

namespace framepipe::internal {

class StreamState;

enum JobState : int { kQueued = 0, kRunning, kDone, kDropped, kExpired, kCancelled };

struct Job {
  // The flow graph carries raw Job pointers; while a job is inside the graph it owns itself
  // through this reference, dropped by the finish node (or by Submit if the graph is gone).
  std::shared_ptr<Job> graph_ref;
  std::shared_ptr<StreamState> stream;
  uint64_t index = 0;
  std::atomic<int> state{kQueued};
  bool failed = false;  // a stage failed; later stages skip (worker-owned, like ctx)
  FrameContext ctx;
  uint64_t cost_bytes = 0;  // counted against the global byte budget until delivery
  TimePoint admitted;
  TimePoint deadline = TimePoint::max();
  // Worker-owned timing: time spent inside each stage body, and when the last stage ended.
  uint64_t stage_us[3] = {0, 0, 0};
  TimePoint last_end;

  bool has_deadline() const { return deadline != TimePoint::max(); }
};

using JobPtr = std::shared_ptr<Job>;

}  // namespace framepipe::internal
