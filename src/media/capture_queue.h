// CaptureQueue: the hand-off between a source's capture thread and the stream that reads it (a
// video file or camera read by OpenCV, packets demuxed by libavformat): a few frames ahead, a
// non-blocking TryNext for the gRPC side with a callback when something arrives, and the end of
// the input. Internal to src/media.
#pragma once

#include <condition_variable>
#include <cstddef>
#include <deque>
#include <functional>
#include <mutex>

#include "media/frame_source.h"

namespace framepipe::media_internal {

class CaptureQueue {
 public:
  explicit CaptureQueue(size_t ahead) : ahead_(ahead) {}

  // Consumer side (FrameSource::TryNext / OnReady).
  FrameSource::Next TryNext(SourceFrame* out);
  void OnReady(std::function<void()> fn);

  // Producer side. Each returns false once Exit() was called (the capture thread then ends).
  // Waits for room (files: the stream sets the pace).
  bool PushWait(SourceFrame f);
  // Never waits; when full, the oldest frame goes (`*dropped` says whether one did).
  bool PushDropOldest(SourceFrame f, bool* dropped);
  // Never waits; when full, nothing is queued and `*full` is set.
  bool PushIfRoom(SourceFrame f, bool* full);
  // The input ended: TryNext says kEnd once the queue is empty.
  void Finish();

  // The source is going away: producers stop waiting.
  void Exit();

 private:
  // Queues `f` and takes the consumer's callback if it was waiting (called outside the lock).
  std::function<void()> QueueLocked(SourceFrame f);

  const size_t ahead_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<SourceFrame> queue_;
  bool waiting_ = false;
  bool ended_ = false;
  bool exit_ = false;
  std::function<void()> ready_;
};

}  // namespace framepipe::media_internal
