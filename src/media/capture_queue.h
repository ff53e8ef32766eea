// CaptureQueue: the hand-off between a source's capture thread and the stream that reads it (a
// video file or camera read by OpenCV, packets demuxed by libavformat): a few frames ahead, a
// non-blocking TryNext for the gRPC side with a callback when something arrives, and the end of
// the input; and what the sources that feed one share (QueuedSource, live inputs, the input check).
// Internal to src/media.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <functional>
#include <mutex>
#include <thread>

#include "absl/status/status.h"
#include "media/frame_source.h"

namespace framepipe::media_internal {

// A camera or network stream (it runs whether it is read or not), as opposed to a file.
bool IsLiveInput(const std::string& input);
// InvalidArgument naming --input when `input` is a file path that does not exist.
absl::Status CheckInputExists(const std::string& input);

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

// A FrameSource fed by a capture thread of its own through a CaptureQueue: what the OpenCV video
// source and the packet source share. The derived class starts its thread with StartCapture and
// calls StopCapture first thing in its destructor (the thread uses the derived members).
class QueuedSource : public FrameSource {
 public:
  Next TryNext(SourceFrame* out) override { return queue_.TryNext(out); }
  void OnReady(std::function<void()> fn) override { queue_.OnReady(std::move(fn)); }
  bool paces_itself() const override { return true; }
  bool live() const override { return live_; }
  int64_t dropped() const override { return dropped_.load(); }

 protected:
  QueuedSource(size_t ahead, bool live) : live_(live), queue_(ahead) {}
  void StartCapture(std::function<void()> body) { thread_ = std::thread(std::move(body)); }
  void StopCapture() {
    queue_.Exit();
    if (thread_.joinable()) thread_.join();
  }

  const bool live_;
  CaptureQueue queue_;
  std::atomic<int64_t> dropped_{0};

 private:
  std::thread thread_;
};

}  // namespace framepipe::media_internal
