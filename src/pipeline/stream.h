// Stream: one ordered sequence of frames through a shared Pipeline (one gRPC Process call, or
// one in-process producer). Frames are numbered 0,1,2,... on admission; results come out in
// that order, exactly one per admitted frame.
//
// Thread rules: TryAdmit/Submit/Close are called by one producer at a time. Cancel may be called
// from any thread, but never while holding a lock that the stream's callbacks take, and not from
// inside on_credit. Callbacks never run after Cancel() has returned.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "common/frame.h"
#include "pipeline/credit.h"
#include "pipeline/credit_group.h"

namespace framepipe {

namespace internal {
class StreamState;
}

enum class OverloadPolicy {
  // No credit: the producer waits (TryAdmit says kNoCredit; Submit blocks).
  kBlock,
  // No credit: the oldest frame of this stream that no stage has started yet is answered with
  // DROPPED and the new frame takes its place. Admitted frames whose results have not been
  // consumed yet (DROPPED ones waiting behind an earlier frame included) are bounded at
  // 2 x max_in_flight; beyond that the producer waits as with kBlock.
  kDropOldest,
};

struct StreamOptions {
  std::string id;
  uint32_t max_in_flight = 8;  // >= 1
  OverloadPolicy overload = OverloadPolicy::kBlock;
  std::chrono::milliseconds frame_timeout{0};  // 0 = no per-frame deadline
  // Shared with other streams: together they hold at most its credits (null: no such limit).
  std::shared_ptr<CreditGroup> credit_group;
  // Receives each result in frame order. Runs on a pipeline thread (worker, deadline timer, or
  // the producer's thread for DROPPED frames), one call at a time per stream; must not block.
  std::function<void(Delivery)> on_result;
  // After TryAdmit returned kNoCredit: called once a credit may have become free (retry then).
  // Runs on the thread that released the credit; must not block and must not call Cancel.
  std::function<void()> on_credit;
  // After Close(): called once, after the last result was handed to on_result.
  std::function<void()> on_complete;
};

enum class AdmitOutcome {
  kAdmitted,  // the frame was moved from and will be answered in order
  kNoCredit,  // nothing taken; on_credit fires when a retry may succeed
  kClosed,    // the stream was closed or cancelled, or the pipeline is stopping
};

struct StreamCounters {
  uint64_t admitted = 0;
  uint64_t delivered = 0;
  uint64_t dropped = 0;
  uint32_t outstanding = 0;  // admitted, credit not yet returned
  uint32_t peak_outstanding = 0;
};

// What a producer (the gRPC reactor) feeds: a pipeline Stream, or an adapter in front of one
// (VideoStream decodes compressed video into pictures first). Same contract as Stream.
class StreamHandle {
 public:
  virtual ~StreamHandle() = default;
  virtual AdmitOutcome TryAdmit(FrameInput& frame, uint64_t cost_bytes) = 0;
  virtual void Close() = 0;
  virtual void Cancel() = 0;
};

class Stream final : public StreamHandle {
 public:
  ~Stream() override;
  Stream(const Stream&) = delete;
  Stream& operator=(const Stream&) = delete;

  // Non-blocking admission. `cost_bytes` is the frame's memory estimate, counted against the
  // pipeline's global byte budget until its result is delivered.
  AdmitOutcome TryAdmit(FrameInput& frame, uint64_t cost_bytes) override;
  AdmitOutcome TryAdmit(FrameInput& frame) { return TryAdmit(frame, 0); }
  // Blocking admission (in-process producers): waits for a credit. kClosed -> FailedPrecondition.
  absl::Status Submit(FrameInput frame, uint64_t cost_bytes = 0);
  // No more frames; the admitted ones finish, then on_complete runs.
  void Close() override;
  // Discards the stream: frames not yet delivered are dropped without results, their credits
  // return, and no callback runs after Cancel returns.
  void Cancel() override;

  const std::string& id() const;
  StreamCounters counters() const;

 private:
  friend class Pipeline;
  explicit Stream(std::shared_ptr<internal::StreamState> state);
  std::shared_ptr<internal::StreamState> state_;
};

}  // namespace framepipe
