// CPU reference analysis against independent computations: OpenCV's stock functions (the
// contract's own definitions) and hand-computed values on hand-made images, odd sizes included.
#include <gtest/gtest.h>

#include <cmath>
#include <numeric>
#include <vector>

#include "analysis/cpu/cpu_analyzer.h"
#include "analysis/cpu/luma_ops.h"
#include "image_util.h"
#include "opencv2/imgproc.hpp"

namespace framepipe {
namespace {

using testing::AsMat;
using testing::BlobImage;
using testing::MakeImage;
using testing::RandomImage;

struct Reference {
  cv::Mat luma;
  std::vector<uint32_t> hist;
  double mean, stddev, sharpness, edge_density;
  cv::Mat thumb;
};

// The contract computed with stock OpenCV calls.
Reference OpenCvReference(const Image& img) {
  Reference r;
  cv::Mat m = AsMat(img);
  if (img.format() == PixelFormat::kGray8) {
    r.luma = m.clone();
  } else {
    cv::cvtColor(m, r.luma,
                 img.format() == PixelFormat::kRgb8 ? cv::COLOR_RGB2GRAY : cv::COLOR_BGR2GRAY);
  }
  r.hist.assign(256, 0);
  for (int y = 0; y < r.luma.rows; ++y) {
    for (int x = 0; x < r.luma.cols; ++x) ++r.hist[r.luma.at<uint8_t>(y, x)];
  }
  cv::Scalar mean, sd;
  cv::meanStdDev(r.luma, mean, sd);
  r.mean = mean[0];
  r.stddev = sd[0];
  cv::Mat lap;
  cv::Laplacian(r.luma, lap, CV_64F, 1);
  cv::meanStdDev(lap, mean, sd);
  r.sharpness = sd[0] * sd[0];
  cv::Mat gx, gy;
  cv::Sobel(r.luma, gx, CV_64F, 1, 0, 3);
  cv::Sobel(r.luma, gy, CV_64F, 0, 1, 3);
  cv::Mat mag2 = gx.mul(gx) + gy.mul(gy);
  r.edge_density = static_cast<double>(cv::countNonZero(mag2 > 4096.0)) / (r.luma.total());
  cv::resize(r.luma, r.thumb, cv::Size(64, 64), 0, 0, cv::INTER_AREA);
  return r;
}

// Area average computed naively in doubles, straight from the definition (also for upscaling).
std::vector<double> NaiveThumbnail(const cv::Mat& luma) {
  const int w = luma.cols, h = luma.rows;
  std::vector<double> out(64 * 64);
  const double sx = static_cast<double>(w) / 64, sy = static_cast<double>(h) / 64;
  for (int l = 0; l < 64; ++l) {
    for (int j = 0; j < 64; ++j) {
      const double x0 = j * sx, x1 = (j + 1) * sx, y0 = l * sy, y1 = (l + 1) * sy;
      double acc = 0;
      for (int y = static_cast<int>(std::floor(y0)); y < h && y < y1; ++y) {
        const double oy = std::min<double>(y + 1, y1) - std::max<double>(y, y0);
        if (oy <= 0) continue;
        for (int x = static_cast<int>(std::floor(x0)); x < w && x < x1; ++x) {
          const double ox = std::min<double>(x + 1, x1) - std::max<double>(x, x0);
          if (ox > 0) acc += ox * oy * luma.at<uint8_t>(y, x);
        }
      }
      out[l * 64 + j] = acc / (sx * sy);
    }
  }
  return out;
}

void ExpectMatchesReference(const Image& img, bool parallel) {
  SCOPED_TRACE(::testing::Message()
               << img.width() << "x" << img.height() << " " << PixelFormatName(img.format())
               << (parallel ? " banded" : ""));
  CpuAnalyzerOptions opt;
  opt.intra_frame_parallel = parallel;
  opt.parallel_min_pixels = 1;
  CpuAnalyzer analyzer(opt);
  Analysis a;
  Image luma;
  ASSERT_TRUE(analyzer.Analyze(img, &a, &luma).ok());
  Reference r = OpenCvReference(img);
  EXPECT_EQ(a.width, static_cast<uint32_t>(img.width()));
  EXPECT_EQ(a.height, static_cast<uint32_t>(img.height()));
  EXPECT_STREQ(a.backend, "cpu");
  // Luma bit-exact with OpenCV's BGR2GRAY; histogram exact.
  ASSERT_EQ(cv::norm(AsMat(luma), r.luma, cv::NORM_INF), 0.0);
  for (int i = 0; i < 256; ++i) ASSERT_EQ(a.histogram[i], r.hist[i]) << "bin " << i;
  EXPECT_NEAR(a.mean_luma, r.mean, 1e-9 * std::max(1.0, r.mean));
  EXPECT_NEAR(a.stddev_luma, r.stddev, 1e-7 * std::max(1.0, r.stddev));
  EXPECT_NEAR(a.sharpness, r.sharpness, 1e-7 * std::max(1.0, r.sharpness));
  EXPECT_DOUBLE_EQ(a.edge_density, r.edge_density);
  // Thumbnail: exact against the definition (rounded), within 1 of OpenCV's float INTER_AREA
  // when downscaling.
  std::vector<double> naive = NaiveThumbnail(r.luma);
  for (int i = 0; i < 64 * 64; ++i) {
    ASSERT_NEAR(a.thumbnail[i], naive[i], 0.5 + 1e-6) << "thumbnail pixel " << i;
    if (img.width() >= 64 && img.height() >= 64) {
      ASSERT_NEAR(a.thumbnail[i], r.thumb.at<uint8_t>(i / 64, i % 64), 1) << "pixel " << i;
    }
  }
}

TEST(CpuAnalyzerTest, MatchesOpenCvOnRandomImagesOfManySizes) {
  const int sizes[][2] = {{1, 1},     {2, 3},     {3, 2},      {7, 1},     {1, 7},
                          {5, 5},     {63, 64},   {64, 64},    {65, 63},   {127, 97},
                          {320, 240}, {641, 479}, {1280, 720}, {333, 1000}};
  uint32_t seed = 1;
  for (auto& s : sizes) {
    for (PixelFormat f : {PixelFormat::kBgr8, PixelFormat::kRgb8, PixelFormat::kGray8}) {
      ExpectMatchesReference(RandomImage(s[0], s[1], f, seed++), false);
    }
    ExpectMatchesReference(BlobImage(s[0], s[1], seed++), false);
  }
}

TEST(CpuAnalyzerTest, ScalarReferenceLumaEqualsOpenCvOnAllColours) {
  // Every one of the 2^24 BGR colours, as 256 images of 256x256.
  Image img = Image::Allocate(256, 256, PixelFormat::kBgr8);
  Image luma = Image::Allocate(256, 256, PixelFormat::kGray8);
  for (int r = 0; r < 256; ++r) {
    for (int g = 0; g < 256; ++g) {
      for (int b = 0; b < 256; ++b) {
        uint8_t* p = img.mutable_row(g) + 3 * b;
        p[0] = static_cast<uint8_t>(b), p[1] = static_cast<uint8_t>(g),
        p[2] = static_cast<uint8_t>(r);
      }
    }
    cpu::Luma(img, 0, 256, &luma);
    ASSERT_EQ(cv::norm(AsMat(luma), OpenCvReference(img).luma, cv::NORM_INF), 0.0) << "r=" << r;
  }
  uint32_t seed = 100;
  for (auto [w, h] : {std::pair{1, 1}, {3, 7}, {641, 479}, {1280, 720}}) {
    for (PixelFormat f : {PixelFormat::kBgr8, PixelFormat::kRgb8, PixelFormat::kGray8}) {
      Image img = RandomImage(w, h, f, seed++);
      Image luma = Image::Allocate(w, h, PixelFormat::kGray8);
      cpu::Luma(img, 0, h, &luma);
      EXPECT_EQ(cv::norm(AsMat(luma), OpenCvReference(img).luma, cv::NORM_INF), 0.0);
    }
  }
}

TEST(CpuAnalyzerTest, BandedMatchesSinglePass) {
  for (auto [w, h] : {std::pair{1280, 720}, {641, 479}, {1920, 1080}, {3, 200}}) {
    ExpectMatchesReference(BlobImage(w, h, 77), true);
    ExpectMatchesReference(RandomImage(w, h, PixelFormat::kGray8, 78), true);
  }
}

Analysis AnalyzeCpu(const Image& img) {
  CpuAnalyzer analyzer;
  Analysis a;
  Image luma;
  EXPECT_TRUE(analyzer.Analyze(img, &a, &luma).ok());
  return a;
}

TEST(CpuAnalyzerTest, HandComputedFlatImages) {
  for (int v : {0, 100, 255}) {
    Image img = MakeImage(641, 479, PixelFormat::kBgr8, [&](int, int, uint8_t* p) {
      p[0] = p[1] = p[2] = static_cast<uint8_t>(v);
    });
    Analysis a = AnalyzeCpu(img);
    EXPECT_DOUBLE_EQ(a.mean_luma, v);
    EXPECT_DOUBLE_EQ(a.stddev_luma, 0);
    EXPECT_EQ(a.histogram[v], 641u * 479u);
    EXPECT_DOUBLE_EQ(a.sharpness, 0);
    EXPECT_DOUBLE_EQ(a.edge_density, 0);
    for (uint8_t t : a.thumbnail) ASSERT_EQ(t, v);
  }
}

TEST(CpuAnalyzerTest, HandComputedCheckerboard) {
  // 1-pixel checkerboard of 0/255: the Laplacian is +-1020 everywhere (reflect-101 borders see
  // the opposite colour too), mean 0, so its variance is 1020^2; Sobel cancels to 0.
  Image img = MakeImage(64, 48, PixelFormat::kGray8,
                        [](int x, int y, uint8_t* p) { *p = ((x + y) % 2) ? 255 : 0; });
  Analysis a = AnalyzeCpu(img);
  EXPECT_DOUBLE_EQ(a.mean_luma, 127.5);
  EXPECT_DOUBLE_EQ(a.stddev_luma, 127.5);
  EXPECT_EQ(a.histogram[0], 64u * 48u / 2);
  EXPECT_EQ(a.histogram[255], 64u * 48u / 2);
  EXPECT_DOUBLE_EQ(a.sharpness, 1020.0 * 1020.0);
  EXPECT_DOUBLE_EQ(a.edge_density, 0);
}

TEST(CpuAnalyzerTest, HandComputedRamp) {
  // luma = x on a 256-wide ramp: Laplacian 0 inside, +2 at x=0 and -2 at x=255 (reflect-101):
  // per row sum 0, sum of squares 8, so variance 8/256; Sobel gx = 8 < 64: no edges.
  Image img = MakeImage(256, 10, PixelFormat::kGray8,
                        [](int x, int, uint8_t* p) { *p = static_cast<uint8_t>(x); });
  Analysis a = AnalyzeCpu(img);
  EXPECT_DOUBLE_EQ(a.mean_luma, 127.5);
  EXPECT_DOUBLE_EQ(a.sharpness, 8.0 / 256.0);
  EXPECT_DOUBLE_EQ(a.edge_density, 0);
  for (int i = 0; i < 256; ++i) ASSERT_EQ(a.histogram[i], 10u);
  // Each thumbnail column averages 4 consecutive x values: 4j + 1.5, rounded half up.
  for (int j = 0; j < 64; ++j) EXPECT_EQ(a.thumbnail[j], 4 * j + 2) << j;
}

TEST(CpuAnalyzerTest, HandComputedEdges) {
  // A vertical step from 0 to 255 at x=32: Sobel |gx| = 4*255 on the two columns beside the step,
  // so exactly 2 of 64 columns are edges.
  Image img =
      MakeImage(64, 16, PixelFormat::kGray8, [](int x, int, uint8_t* p) { *p = x < 32 ? 0 : 255; });
  Analysis a = AnalyzeCpu(img);
  EXPECT_DOUBLE_EQ(a.edge_density, 2.0 / 64.0);
}

TEST(CpuAnalyzerTest, LumaUsesBt601FixedPoint) {
  // Pure channels: B=255 -> (255*3735 + 2^14) >> 15 = 29, G -> 150, R -> 76.
  for (auto [c, want] : {std::pair{0, 29}, {1, 150}, {2, 76}}) {
    Image img = MakeImage(4, 4, PixelFormat::kBgr8, [&](int, int, uint8_t* p) {
      p[0] = p[1] = p[2] = 0;
      p[c] = 255;
    });
    Analysis a = AnalyzeCpu(img);
    EXPECT_EQ(a.histogram[want], 16u) << "channel " << c;
  }
}

}  // namespace
}  // namespace framepipe
