#include "media/frame_source.h"

#include <algorithm>
#include <atomic>
#include <filesystem>
#include <fstream>
#include <thread>

#include "absl/strings/str_cat.h"
#include "common/clock.h"
#include "common/status.h"
#include "media/capture_queue.h"
#include "media/packet_source.h"
#include "opencv2/core.hpp"
#include "opencv2/imgcodecs.hpp"
#include "opencv2/imgproc.hpp"
#include "opencv2/videoio.hpp"

namespace framepipe {
namespace {

// Pre-encoded frames shared by every stream, cycled.
struct Ring {
  std::vector<std::shared_ptr<const std::string>> frames;
  bool raw = false;
  int width = 0, height = 0;
};

class RingSource : public FrameSource {
 public:
  RingSource(std::shared_ptr<const Ring> ring, int64_t frames, int stream)
      : ring_(std::move(ring)), frames_(frames), offset_(stream) {}
  Next TryNext(SourceFrame* out) override {
    if (frames_ > 0 && next_ >= frames_) return Next::kEnd;
    const auto& r = *ring_;
    out->payload = r.frames[static_cast<size_t>(next_ + offset_) % r.frames.size()];
    out->raw = r.raw;
    out->width = r.width;
    out->height = r.height;
    out->capture_time_us = 0;
    ++next_;
    return Next::kFrame;
  }

 private:
  std::shared_ptr<const Ring> ring_;
  const int64_t frames_;
  const int64_t offset_;
  int64_t next_ = 0;
};

std::string Encode(const cv::Mat& bgr, Encoding e, int quality) {
  if (e == Encoding::kRaw) {
    cv::Mat m = bgr.isContinuous() ? bgr : bgr.clone();
    return std::string(reinterpret_cast<const char*>(m.data), m.total() * m.elemSize());
  }
  std::vector<uint8_t> buf;
  if (e == Encoding::kJpeg) {
    cv::imencode(".jpg", bgr, buf, {cv::IMWRITE_JPEG_QUALITY, quality});
  } else {
    cv::imencode(".png", bgr, buf, {cv::IMWRITE_PNG_COMPRESSION, 1});
  }
  return std::string(buf.begin(), buf.end());
}

// Captures from a video file or a camera on a thread of its own, a few frames ahead. Files are
// read at their frame rate (or --fps) and wait for the stream; live cameras keep being read and
// drop the oldest unsent frame when the stream falls behind (freshness first).
class VideoSource : public media_internal::QueuedSource {
 public:
  VideoSource(const SourceOptions& o, std::unique_ptr<cv::VideoCapture> cap)
      : QueuedSource(4, media_internal::IsLiveInput(o.input)), o_(o), cap_(std::move(cap)) {
    native_fps_ = cap_->get(cv::CAP_PROP_FPS);
    if (!(native_fps_ > 0 && native_fps_ < 1000)) native_fps_ = 0;
    StartCapture([this] { Capture(); });
  }
  ~VideoSource() override { StopCapture(); }

  double fps() const override { return o_.fps > 0 ? o_.fps : native_fps_; }

 private:
  void Capture() {
    const double pace = o_.unpaced && !live_ ? 0 : fps();
    const auto period = pace > 0 ? std::chrono::nanoseconds(static_cast<int64_t>(1e9 / pace))
                                 : std::chrono::nanoseconds(0);
    TimePoint next = Now();
    int64_t produced = 0;
    for (;;) {
      if (o_.frames > 0 && produced >= o_.frames) break;
      if (!live_ && period.count() > 0) {
        std::this_thread::sleep_until(next);
        next += period;
      }
      cv::Mat frame;
      if (!cap_->read(frame) || frame.empty()) {
        if (live_ || !o_.loop) break;
        cap_->set(cv::CAP_PROP_POS_FRAMES, 0);
        if (!cap_->read(frame) || frame.empty()) break;
      }
      if (live_ && period.count() > 0) {  // --fps on a camera: forward only frames that are due
        const TimePoint now = Now();
        if (now < next) continue;
        next = std::max(next + period, now);
      }
      SourceFrame f;
      f.capture_time_us = WallMicros();
      if (frame.channels() == 1) cv::cvtColor(frame, frame, cv::COLOR_GRAY2BGR);
      f.payload = std::make_shared<const std::string>(Encode(frame, o_.encoding, o_.jpeg_quality));
      f.raw = o_.encoding == Encoding::kRaw;
      f.width = frame.cols;
      f.height = frame.rows;
      if (o_.keep_images) f.image = std::make_shared<const cv::Mat>(frame);
      bool dropped = false;
      if (!(live_ ? queue_.PushDropOldest(std::move(f), &dropped)
                  : queue_.PushWait(std::move(f)))) {
        return;
      }
      if (dropped) ++dropped_;
      ++produced;
    }
    queue_.Finish();
  }

  const SourceOptions o_;
  std::unique_ptr<cv::VideoCapture> cap_;
  double native_fps_ = 0;
};

absl::StatusOr<std::unique_ptr<cv::VideoCapture>> OpenVideo(const std::string& input) {
  FP_RETURN_IF_ERROR(media_internal::CheckInputExists(input));
  auto cap = std::make_unique<cv::VideoCapture>();
  bool opened = false;
  try {
    // Files and URLs through FFmpeg; cameras (/dev/videoN) through whatever backend has them.
    opened = cap->open(input, cv::CAP_FFMPEG) ||
             (input.rfind("/dev/video", 0) == 0 && cap->open(input, cv::CAP_ANY));
  } catch (const cv::Exception& e) {
    return absl::InvalidArgumentError(absl::StrCat("cannot open video '", input, "': ", e.what()));
  }
  if (!opened) {
    return absl::InvalidArgumentError(absl::StrCat(
        "cannot open video '", input,
        "': not a video OpenCV's FFmpeg backend can read (unknown container or missing codec)",
        media_internal::IsLiveInput(input) ? ", or the camera did not answer" : ""));
  }
  cv::Mat probe;
  if (!media_internal::IsLiveInput(input)) {
    if (!cap->read(probe) || probe.empty()) {
      return absl::InvalidArgumentError(absl::StrCat("cannot decode video '", input,
                                                     "': no frame could be read (codec missing?)"));
    }
    cap->set(cv::CAP_PROP_POS_FRAMES, 0);
  }
  return cap;
}

}  // namespace

absl::StatusOr<std::function<std::unique_ptr<FrameSource>(int)>> MakeSourceFactory(
    const SourceOptions& o) {
  namespace fs = std::filesystem;
  std::error_code ec;
  if (o.send_packets) {
    if (o.input.empty() || fs::is_directory(o.input, ec)) {
      return absl::InvalidArgumentError(
          "--send packets needs --input to be a video file or camera URL (H.264 or HEVC)");
    }
    return MakePacketSourceFactory(o);
  }
  if (!o.input.empty() && !fs::is_directory(o.input, ec)) {
    // Each stream opens the video for itself (K streams = K cameras).
    FP_ASSIGN_OR_RETURN(std::unique_ptr<cv::VideoCapture> first, OpenVideo(o.input));
    auto spare = std::make_shared<std::unique_ptr<cv::VideoCapture>>(std::move(first));
    return std::function<std::unique_ptr<FrameSource>(int)>(
        [o, spare](int) -> std::unique_ptr<FrameSource> {
          std::unique_ptr<cv::VideoCapture> cap;
          if (*spare) {
            cap = std::move(*spare);
          } else {
            auto again = OpenVideo(o.input);
            if (!again.ok()) return nullptr;
            cap = std::move(again).value();
          }
          return std::make_unique<VideoSource>(o, std::move(cap));
        });
  }
  auto ring = std::make_shared<Ring>();
  if (!o.input.empty()) {
    std::vector<fs::path> files;
    for (const auto& e : fs::directory_iterator(o.input)) {
      std::string ext = e.path().extension().string();
      std::transform(ext.begin(), ext.end(), ext.begin(), ::tolower);
      if (ext == ".jpg" || ext == ".jpeg" || ext == ".png") files.push_back(e.path());
    }
    std::sort(files.begin(), files.end());
    if (files.empty()) {
      return absl::InvalidArgumentError(absl::StrCat("no .jpg/.jpeg/.png files in ", o.input));
    }
    for (const auto& f : files) {
      std::ifstream in(f, std::ios::binary);
      ring->frames.push_back(std::make_shared<const std::string>(std::istreambuf_iterator<char>(in),
                                                                 std::istreambuf_iterator<char>()));
    }
  } else {
    if (o.width <= 0 || o.height <= 0) return absl::InvalidArgumentError("--size must be positive");
    SyntheticSource src({o.width, o.height, o.scene_length, 1});
    const int64_t n = std::max<int64_t>(
        1, o.frames > 0 ? std::min<int64_t>(o.distinct_frames, o.frames) : o.distinct_frames);
    ring->raw = o.encoding == Encoding::kRaw;
    ring->width = o.width;
    ring->height = o.height;
    for (int64_t i = 0; i < n; ++i) {
      FP_ASSIGN_OR_RETURN(std::string bytes,
                          EncodeImage(src.Render(i), o.encoding, o.jpeg_quality));
      ring->frames.push_back(std::make_shared<const std::string>(std::move(bytes)));
    }
  }
  if (o.frames <= 0) return absl::InvalidArgumentError("--frames must be at least 1");
  std::shared_ptr<const Ring> shared = ring;
  const int64_t frames = o.frames;
  return std::function<std::unique_ptr<FrameSource>(int)>(
      [shared, frames](int stream) -> std::unique_ptr<FrameSource> {
        return std::make_unique<RingSource>(shared, frames, stream);
      });
}

}  // namespace framepipe
