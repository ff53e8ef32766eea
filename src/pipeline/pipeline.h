// Pipeline: the ordered, bounded oneTBB flow graph every frame goes through.
//
//   admission (credits) -> decode -> analyse -> enrich      (function_nodes, concurrency=workers)
//                       -> per-stream resequencer -> ordered temporal stage -> stream output
//
// With BatchOptions, analyse is an async_node instead: decoded frames of all streams wait in one
// queue and a batch thread analyses them together (for device backends).
//
// Many streams share one graph. Each stream's results leave in admission order, exactly one
// per admitted frame; a slow or failed frame of one stream never holds back another's results.
// Memory is bounded by credits: per-stream max_in_flight and a global count/byte budget.
//
// Thread rules: all methods are thread-safe. Stage bodies run on the pipeline's own oneTBB
// arena (`workers` threads).
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>

#include "absl/status/statusor.h"
#include "common/clock.h"
#include "pipeline/stage.h"
#include "pipeline/stream.h"

namespace framepipe {

namespace internal {
class Core;
}

// Hooks for metrics. Called on pipeline threads, concurrently; implementations must be cheap
// and thread-safe (no per-frame global locks).
class PipelineObserver {
 public:
  virtual ~PipelineObserver() = default;
  virtual void OnAdmitted(const StreamOptions& /*stream*/) {}
  // A result handed to a stream's output, timings filled in.
  virtual void OnDelivered(const FrameResult& /*result*/) {}
  // A credit came back (the consumer finished with a result, or a cancelled frame was dropped).
  virtual void OnCreditReturned() {}
  // A result entered a stream's reorder buffer, which then held `depth` results (>= 1).
  virtual void OnReorderInsert(uint32_t /*depth*/) {}
  virtual void OnReorderRemove() {}
  // The batched analyse stage took a batch of `frames` (>= 1; frames already failed, expired or
  // cancelled are not counted) whose oldest frame had waited `oldest_wait_seconds` for it.
  virtual void OnBatch(uint32_t /*frames*/, double /*oldest_wait_seconds*/) {}
};

// Cross-stream micro-batching of the analyse stage. With max_frames > 1 and a Stages::
// analyse_batch, decoded frames of all streams wait in one queue and go to analyse_batch
// together: when max_frames wait, when the oldest has waited `window`, or when one of them has a
// deadline less than `window` away - whichever comes first. Batches are fair across streams
// (round-robin over the streams waiting, oldest first), frames near their deadline first.
// Frames that failed to decode (or expired, or were cancelled) do not wait. A frame's
// Timings.analyse_us is its share of its batch's run; its wait for the batch counts in total_us
// only (and in OnBatch). Results still leave each stream in admission order.
struct BatchOptions {
  uint32_t max_frames = 0;  // <= 1: no batching
  std::chrono::microseconds window{2000};
};

struct PipelineOptions {
  int workers = 0;                       // 0 = hardware threads
  uint32_t global_max_in_flight = 1024;  // credits across all streams
  uint64_t global_max_bytes = 0;         // 0 = no byte budget
  // Where frame deadlines and the stop's drain timeout read the time (tests use a fake clock);
  // also the clock of every Timings field. Null = the real monotonic clock.
  const TimeSource* time = nullptr;
  PipelineObserver* observer = nullptr;  // not owned; outlives the pipeline
  BatchOptions batch;
};

struct PipelineCounters {
  uint64_t admitted = 0;
  uint64_t delivered = 0;
  uint64_t in_flight = 0;       // credits held
  uint64_t peak_in_flight = 0;  // highest in_flight seen
  uint64_t bytes_in_flight = 0;
  uint64_t peak_bytes_in_flight = 0;
  uint32_t active_streams = 0;
  uint32_t reorder_depth = 0;  // results waiting in reorder buffers
  uint32_t batch_waiting = 0;  // decoded frames waiting for an analyse batch
  uint64_t by_status[kFrameStatusCount] = {};
};

class Pipeline {
 public:
  static absl::StatusOr<std::unique_ptr<Pipeline>> Create(const PipelineOptions& options,
                                                          Stages stages);
  // Stops (bounded by 5 s) if Stop was not called.
  ~Pipeline();
  Pipeline(const Pipeline&) = delete;
  Pipeline& operator=(const Pipeline&) = delete;

  // Fails with FailedPrecondition while stopping, InvalidArgument on bad options.
  absl::StatusOr<std::unique_ptr<Stream>> OpenStream(StreamOptions options);

  // Closes every stream, waits up to `drain_timeout` for admitted frames to be delivered,
  // cancels what is left, and waits for the graph to go idle. Returns true if everything
  // drained in time. Idempotent.
  bool Stop(std::chrono::milliseconds drain_timeout);

  PipelineCounters counters() const;
  int workers() const;

  // Charges memory that is not a frame's to the global byte budget (a video decoder's reference
  // pictures): never waits; false when the budget has no room for all of it, or when such
  // charges would take more than half the budget (frames keep the other half). Release with
  // ReleaseBytes. Without a byte budget it always succeeds (and is counted).
  bool TryChargeBytes(uint64_t bytes);
  void ReleaseBytes(uint64_t bytes);

 private:
  explicit Pipeline(std::shared_ptr<internal::Core> core);
  std::shared_ptr<internal::Core> core_;
};

}  // namespace framepipe
