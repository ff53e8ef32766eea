// OverlayWriter: `framepipe stream --overlay out.mp4` - each frame written back into a video
// with its results drawn on it (luma, sharpness, keypoints, motion, end-to-end latency; a red
// border on scene cuts, the error on failed frames), in order, so a person can see what the
// service saw. Drawing and encoding run on a thread of its own behind a bounded queue.
#pragma once

#include <memory>
#include <string>

#include "absl/status/status.h"
#include "common/frame.h"
#include "media/frame_source.h"

namespace framepipe {

class OverlayWriter {
 public:
  // `fps`: the output video's rate.
  OverlayWriter(std::string path, double fps);
  ~OverlayWriter();  // Close()
  // Writes what is queued and closes the file; written() and status() are final afterwards.
  void Close();
  // False when the queue is full (the caller retries later: backpressure, not buffering).
  bool TryPush(const SourceFrame& frame, const FrameResult& result, double latency_ms);
  // Frames written so far, and the first error (cannot open the file, say).
  int64_t written() const;
  absl::Status status() const;

  struct Impl;

 private:
  std::unique_ptr<Impl> impl_;
};

}  // namespace framepipe
