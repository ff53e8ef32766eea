// Test images: hand-made patterns and seeded random images, as framepipe Images and cv::Mats.
#pragma once

#include <cstdint>
#include <functional>
#include <random>

#include "common/image.h"
#include "opencv2/core.hpp"

namespace framepipe::testing {

inline Image MakeImage(int w, int h, PixelFormat fmt,
                       const std::function<void(int x, int y, uint8_t* px)>& fill) {
  Image img = Image::Allocate(w, h, fmt);
  const int c = Channels(fmt);
  for (int y = 0; y < h; ++y) {
    for (int x = 0; x < w; ++x) fill(x, y, img.mutable_row(y) + x * c);
  }
  return img;
}

inline Image RandomImage(int w, int h, PixelFormat fmt, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int> d(0, 255);
  return MakeImage(w, h, fmt, [&](int, int, uint8_t* p) {
    for (int i = 0; i < Channels(fmt); ++i) p[i] = static_cast<uint8_t>(d(rng));
  });
}

// Smooth random image (blurred noise with structure) so Laplacian/Sobel values are realistic.
inline Image BlobImage(int w, int h, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<double> d(0, 1);
  const double fx = 0.02 + 0.1 * d(rng), fy = 0.02 + 0.1 * d(rng), ph = 6.28 * d(rng);
  std::uniform_int_distribution<int> noise(-12, 12);
  return MakeImage(w, h, PixelFormat::kBgr8, [&](int x, int y, uint8_t* p) {
    for (int c = 0; c < 3; ++c) {
      double v = 128 + 100 * std::sin(fx * x * (c + 1) + ph) * std::cos(fy * y + c) + noise(rng);
      p[c] = static_cast<uint8_t>(std::min(255.0, std::max(0.0, v)));
    }
  });
}

inline cv::Mat AsMat(const Image& img) {
  const int type = img.channels() == 1 ? CV_8UC1 : CV_8UC3;
  return cv::Mat(img.height(), img.width(), type, const_cast<uint8_t*>(img.data()), img.stride());
}

}  // namespace framepipe::testing
