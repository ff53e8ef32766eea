#include "media/overlay_writer.h"

#include <condition_variable>
#include <deque>
#include <mutex>
#include <thread>

#include "absl/strings/ascii.h"
#include "absl/strings/str_format.h"
#include "opencv2/core.hpp"
#include "opencv2/imgcodecs.hpp"
#include "opencv2/imgproc.hpp"
#include "opencv2/videoio.hpp"

namespace framepipe {

struct OverlayWriter::Impl {
  struct Item {
    SourceFrame frame;
    FrameResult result;
    double latency_ms;
  };
  static constexpr size_t kQueue = 32;

  std::string path;
  double fps;
  mutable std::mutex mu;
  std::condition_variable cv;
  std::deque<Item> queue;
  bool exit = false;
  int64_t written = 0;
  absl::Status status;
  cv::VideoWriter writer;
  cv::Size size;
  std::thread thread;

  cv::Mat ImageOf(const SourceFrame& f) {
    if (f.image) return *std::static_pointer_cast<const cv::Mat>(f.image);
    if (f.raw) {
      return cv::Mat(f.height, f.width, CV_8UC3, const_cast<char*>(f.payload->data())).clone();
    }
    cv::Mat buf(1, static_cast<int>(f.payload->size()), CV_8UC1,
                const_cast<char*>(f.payload->data()));
    return cv::imdecode(buf, cv::IMREAD_COLOR);
  }

  void Draw(cv::Mat& img, const FrameResult& r, double latency_ms) {
    const bool ok = r.status == FrameStatus::kOk;
    std::vector<std::string> lines;
    lines.push_back(absl::StrFormat("seq %d  %s  latency %.1f ms", r.seq,
                                    ok ? "OK" : absl::AsciiStrToUpper(FrameStatusLabel(r.status)),
                                    latency_ms));
    if (ok) {
      const Analysis& a = r.analysis;
      const Enrichment& e = r.enrichment;
      lines.push_back(absl::StrFormat("luma %.1f  sharpness %.0f  keypoints %d", a.mean_luma,
                                      a.sharpness, e.keypoints));
      lines.push_back(absl::StrFormat("motion %.4f  scene change %.3f  cut score %.2f%s", e.motion,
                                      e.scene_change, e.cut_score,
                                      e.scene_cut ? "  SCENE CUT" : ""));
    } else {
      lines.push_back(r.error.substr(0, 90));
    }
    const double scale = std::max(0.4, img.cols / 1600.0);
    int y = static_cast<int>(28 * scale);
    for (const auto& line : lines) {
      cv::putText(img, line, {10, y}, cv::FONT_HERSHEY_SIMPLEX, 0.7 * scale, cv::Scalar(0, 0, 0),
                  static_cast<int>(4 * scale) + 1, cv::LINE_AA);
      cv::putText(img, line, {10, y}, cv::FONT_HERSHEY_SIMPLEX, 0.7 * scale,
                  ok ? cv::Scalar(255, 255, 255) : cv::Scalar(0, 0, 255),
                  static_cast<int>(1.5 * scale) + 1, cv::LINE_AA);
      y += static_cast<int>(30 * scale);
    }
    if (ok && r.enrichment.scene_cut) {
      cv::rectangle(img, {0, 0}, {img.cols - 1, img.rows - 1}, cv::Scalar(0, 0, 255),
                    std::max(4, img.cols / 120));
    }
  }

  void Loop() {
    for (;;) {
      Item item;
      {
        std::unique_lock<std::mutex> l(mu);
        cv.wait(l, [&] { return exit || !queue.empty(); });
        if (queue.empty()) return;
        item = std::move(queue.front());
        queue.pop_front();
      }
      cv.notify_all();
      cv::Mat img = ImageOf(item.frame);
      if (img.empty()) {
        // Not decodable here: still one output frame per result, so the video stays in step.
        if (size.area() == 0) continue;
        img = cv::Mat(size, CV_8UC3, cv::Scalar(0, 0, 0));
      }
      if (!writer.isOpened() && status.ok()) {
        size = img.size();
        if (!writer.open(path, cv::CAP_FFMPEG, cv::VideoWriter::fourcc('m', 'p', '4', 'v'), fps,
                         size)) {
          std::lock_guard<std::mutex> l(mu);
          status = absl::InvalidArgumentError(
              absl::StrFormat("cannot write overlay video '%s' (OpenCV videoio)", path));
        }
      }
      if (!writer.isOpened()) continue;
      if (img.size() != size) cv::resize(img, img, size);
      Draw(img, item.result, item.latency_ms);
      writer.write(img);
      std::lock_guard<std::mutex> l(mu);
      ++written;
    }
  }
};

OverlayWriter::OverlayWriter(std::string path, double fps) : impl_(std::make_unique<Impl>()) {
  impl_->path = std::move(path);
  impl_->fps = fps > 0 ? fps : 30;
  impl_->thread = std::thread([this] { impl_->Loop(); });
}

OverlayWriter::~OverlayWriter() { Close(); }

void OverlayWriter::Close() {
  {
    std::lock_guard<std::mutex> l(impl_->mu);
    impl_->exit = true;
  }
  impl_->cv.notify_all();
  if (impl_->thread.joinable()) impl_->thread.join();
  impl_->writer.release();
}

bool OverlayWriter::TryPush(const SourceFrame& frame, const FrameResult& result,
                            double latency_ms) {
  {
    std::lock_guard<std::mutex> l(impl_->mu);
    if (impl_->queue.size() >= Impl::kQueue) return false;
    impl_->queue.push_back({frame, result, latency_ms});
  }
  impl_->cv.notify_all();
  return true;
}

int64_t OverlayWriter::written() const {
  std::lock_guard<std::mutex> l(impl_->mu);
  return impl_->written;
}

absl::Status OverlayWriter::status() const {
  std::lock_guard<std::mutex> l(impl_->mu);
  return impl_->status;
}

}  // namespace framepipe
