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
  // Encoded image, raw BGR8 pixels, or (video_packet) one compressed access unit.
  std::shared_ptr<const std::string> payload;
  bool raw = false;
  bool video_packet = false;
  int64_t pts = 0;  // video packets: presentation time in VideoInfo's time base
  int width = 0;
  int height = 0;
  int64_t capture_time_us = 0;        // wall clock at capture; 0 = stamp when sent
  std::shared_ptr<const void> image;  // the captured BGR cv::Mat, kept for overlays
};

// What a packet source's stream config needs: the codec and its parameter sets.
struct VideoInfo {
  int codec = 0;          // framepipe.v1.VideoCodec: 1 = H264, 2 = HEVC
  std::string extradata;  // avcC/hvcC (MP4, MKV) or Annex-B parameter sets (TS), or empty
  int time_base_num = 0, time_base_den = 0;
  int width = 0, height = 0;
  double fps = 0;
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
  // Packet sources: the video's format (sent in StreamConfig.video); null for image sources.
  virtual const VideoInfo* video() const { return nullptr; }
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
  // Video files and cameras: send the compressed packets as they are (libavformat demux, no
  // decode, no re-encode) instead of decoded frames re-encoded as images. H.264/HEVC only.
  bool send_packets = false;
};

// Checks the input (a clear error for a path that does not open or a codec that is missing)
// and returns a factory making one independent source per stream.
absl::StatusOr<std::function<std::unique_ptr<FrameSource>(int stream)>> MakeSourceFactory(
    const SourceOptions& options);

}  // namespace framepipe
