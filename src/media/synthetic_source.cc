#include "media/synthetic_source.h"

#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include "absl/strings/str_cat.h"
#include "opencv2/core.hpp"
#include "opencv2/imgcodecs.hpp"
#include "opencv2/imgproc.hpp"

namespace framepipe {

struct SyntheticSource::Impl {
  int64_t scene = -1;
  cv::Mat background;
};

SyntheticSource::SyntheticSource(SyntheticOptions options) : options_(options), impl_(new Impl) {}
SyntheticSource::~SyntheticSource() { delete impl_; }

Image SyntheticSource::Render(int64_t index) {
  const int w = options_.width, h = options_.height;
  const int64_t scene = options_.scene_length > 0 ? index / options_.scene_length : 0;
  if (scene != impl_->scene) {
    impl_->scene = scene;
    std::mt19937 rng(options_.seed * 7919u + static_cast<uint32_t>(scene) * 104729u);
    std::uniform_int_distribution<int> level(30, 225);
    const cv::Scalar a(level(rng), level(rng), level(rng));
    const cv::Scalar b(level(rng), level(rng), level(rng));
    cv::Mat bg(h, w, CV_8UC3);
    for (int y = 0; y < h; ++y) {
      const double t = h > 1 ? static_cast<double>(y) / (h - 1) : 0.0;
      cv::Vec3b c(static_cast<uint8_t>(a[0] + (b[0] - a[0]) * t),
                  static_cast<uint8_t>(a[1] + (b[1] - a[1]) * t),
                  static_cast<uint8_t>(a[2] + (b[2] - a[2]) * t));
      auto* row = bg.ptr<cv::Vec3b>(y);
      for (int x = 0; x < w; ++x) row[x] = c;
    }
    cv::Mat noise(h, w, CV_8UC3);
    cv::theRNG().state = options_.seed + static_cast<uint64_t>(scene);
    cv::randn(noise, cv::Scalar::all(0), cv::Scalar::all(18));
    cv::Mat noise16;
    noise.convertTo(noise16, CV_16SC3);
    cv::Mat bg16;
    bg.convertTo(bg16, CV_16SC3);
    // randn into 8U saturates negatives to 0; recentre so the texture is zero-mean.
    cv::subtract(bg16 + noise16, cv::Scalar::all(9), bg16);
    bg16.convertTo(bg, CV_8UC3);
    // A few static rectangles give the scene structure (edges, corners).
    std::uniform_int_distribution<int> px(0, std::max(1, w - 1)), py(0, std::max(1, h - 1));
    for (int i = 0; i < 12; ++i) {
      cv::Point p0(px(rng), py(rng));
      cv::Point p1(p0.x + w / 10, p0.y + h / 10);
      cv::rectangle(bg, p0, p1, cv::Scalar(level(rng), level(rng), level(rng)), cv::FILLED);
    }
    impl_->background = bg;
  }
  Image out = Image::Allocate(w, h, PixelFormat::kBgr8);
  cv::Mat frame(h, w, CV_8UC3, out.mutable_data(), out.stride());
  impl_->background.copyTo(frame);
  const int64_t t = index - scene * std::max(1, options_.scene_length);
  const int r = std::max(2, std::min(w, h) / 12);
  for (int s = 0; s < 3; ++s) {
    const double phase = 0.05 * static_cast<double>(t) * (s + 1) + s * 2.1;
    const int cx = static_cast<int>(w / 2 + (w / 3) * std::sin(phase));
    const int cy = static_cast<int>(h / 2 + (h / 3) * std::cos(phase * 0.7));
    cv::circle(frame, cv::Point(cx, cy), r + s * r / 3,
               cv::Scalar(40 + 80 * s, 220 - 60 * s, 120 + 40 * s), cv::FILLED, cv::LINE_AA);
  }
  return out;
}

absl::StatusOr<std::string> EncodeImage(const Image& image, Encoding encoding, int jpeg_quality) {
  if (image.empty()) return absl::InvalidArgumentError("cannot encode an empty image");
  if (encoding == Encoding::kRaw) {
    std::string out;
    const size_t row = static_cast<size_t>(image.width()) * image.channels();
    out.resize(row * image.height());
    for (int y = 0; y < image.height(); ++y) std::memcpy(&out[row * y], image.row(y), row);
    return out;
  }
  const int type = image.channels() == 1 ? CV_8UC1 : CV_8UC3;
  cv::Mat m(image.height(), image.width(), type, const_cast<uint8_t*>(image.data()),
            image.stride());
  cv::Mat bgr = m;
  if (image.format() == PixelFormat::kRgb8) cv::cvtColor(m, bgr, cv::COLOR_RGB2BGR);
  std::vector<uint8_t> buf;
  std::vector<int> params;
  const char* ext = ".png";
  if (encoding == Encoding::kJpeg) {
    ext = ".jpg";
    params = {cv::IMWRITE_JPEG_QUALITY, jpeg_quality};
  } else {
    params = {cv::IMWRITE_PNG_COMPRESSION, 1};
  }
  if (!cv::imencode(ext, bgr, buf, params)) {
    return absl::InternalError(absl::StrCat("OpenCV failed to encode ", ext));
  }
  return std::string(buf.begin(), buf.end());
}

}  // namespace framepipe
