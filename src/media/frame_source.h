// Frame sources for `framepipe stream`: a ring of pre-encoded frames (synthetic video, a folder
// of JPEG/PNG images) or live capture from a video file or camera URL (OpenCV videoio with its
// FFmpeg backend), one source per stream. Sources never block the gRPC threads: TryNext says
// kNotReady and OnReady fires when a frame has been captured.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "media/synthetic_source.h"

namespace framepipe {

struct SourceFrame {
  std::shared_ptr<const std::string> payload;  // encoded image, or raw BGR8 pixels
  bool raw = false;
  int width = 0;
  int height = 0;
  int64_t capture_time_us = 0;        // wall clock at capture; 0 = stamp when sent
  std::shared_ptr<const void> image;  // the captured BGR cv::Mat, kept for overlays
};

class FrameSource {
 public:
  enum class Next { kFrame, kNotReady, kEnd };
  virtual ~FrameSource() = default;
  virtual Next TryNext(SourceFrame* out) = 0;
  // Called from the source's own thread when TryNext, after kNotReady, has something to say.
  virtual void OnReady(std::function<void()> fn) { (void)fn; }
  // Whether the source keeps its own pace (a video file played at its rate, a live camera).
  virtual bool paces_itself() const { return false; }
  // A live camera or network stream: it runs whether it is read or not, so the client keeps
  // few frames in flight and skips captured frames rather than queueing them.
  virtual bool live() const { return false; }
  // Frames the source discarded because the stream could not keep up (live cameras only).
  virtual int64_t dropped() const { return 0; }
  virtual double fps() const { return 0; }
};

struct SourceOptions {
  std::string input;     // "" = synthetic; a directory = images; anything else = video / URL
  int64_t frames = 0;    // per stream; 0 = until the input ends (video without --loop)
  bool loop = false;     // video files: start over at the end
  double fps = 0;        // pace (0: video at its own rate, synthetic as fast as possible)
  bool unpaced = false;  // video files: no pacing at all (offline processing of recordings)
  int width = 1280, height = 720, scene_length = 90, distinct_frames = 60;
  Encoding encoding = Encoding::kJpeg;
  int jpeg_quality = 90;
  bool keep_images = false;  // keep each captured image for overlays
};

// Checks the input (a clear error for a path that does not open or a codec that is missing)
// and returns a factory making one independent source per stream.
absl::StatusOr<std::function<std::unique_ptr<FrameSource>(int stream)>> MakeSourceFactory(
    const SourceOptions& options);

}  // namespace framepipe
