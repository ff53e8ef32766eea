// Enrichment and the temporal stage against naive computations and hand-made frames.
#include <gtest/gtest.h>

#include <cmath>
#include <map>
#include <random>
#include <vector>

#include "enrich/enricher.h"
#include "enrich/temporal_stage.h"
#include "image_util.h"
#include "opencv2/features2d.hpp"

namespace framepipe {
namespace {

using testing::AsMat;
using testing::BlobImage;
using testing::MakeImage;
using testing::RandomImage;

std::array<float, 3> NaiveDominant(const Image& img) {
  std::map<int, int> count;
  for (int y = 0; y < img.height(); ++y) {
    for (int x = 0; x < img.width(); ++x) {
      const uint8_t* p = img.row(y) + x * img.channels();
      int b, g, r;
      if (img.format() == PixelFormat::kGray8) {
        b = g = r = p[0];
      } else if (img.format() == PixelFormat::kRgb8) {
        r = p[0], g = p[1], b = p[2];
      } else {
        b = p[0], g = p[1], r = p[2];
      }
      ++count[(b / 32) * 64 + (g / 32) * 8 + r / 32];
    }
  }
  int best = -1, best_n = -1;
  for (auto& [cell, n] : count) {
    if (n > best_n) best = cell, best_n = n;  // map order: ties keep the lowest cell
  }
  return {(best / 64) * 32 + 16.f, ((best / 8) % 8) * 32 + 16.f, (best % 8) * 32 + 16.f};
}

TEST(EnrichTest, DominantColourMatchesNaiveCount) {
  uint32_t seed = 1;
  for (auto [w, h] : {std::pair{1, 1}, {3, 5}, {7, 7}, {641, 479}, {64, 1}}) {
    for (PixelFormat f : {PixelFormat::kBgr8, PixelFormat::kRgb8, PixelFormat::kGray8}) {
      Image img = RandomImage(w, h, f, seed++);
      EXPECT_EQ(DominantBgr(img), NaiveDominant(img)) << w << "x" << h;
      Image blob = BlobImage(w, h, seed++);
      EXPECT_EQ(DominantBgr(blob), NaiveDominant(blob));
    }
  }
  Image red = MakeImage(10, 10, PixelFormat::kBgr8, [](int x, int, uint8_t* p) {
    p[0] = 0, p[1] = 0, p[2] = x < 6 ? 250 : 10;
  });
  EXPECT_EQ(DominantBgr(red), (std::array<float, 3>{16, 16, 240}));
}

TEST(EnrichTest, FastCornersMatchOpenCv) {
  for (uint32_t seed : {1u, 2u}) {
    Image img = BlobImage(320, 240, seed);
    Image luma = MakeImage(320, 240, PixelFormat::kGray8,
                           [&](int x, int y, uint8_t* p) { *p = img.row(y)[x * 3 + 1]; });
    std::vector<cv::KeyPoint> kps;
    cv::FAST(AsMat(luma), kps, 20, true);
    EXPECT_EQ(CountFastCorners(luma, 20), kps.size());
  }
  Image tiny = RandomImage(5, 5, PixelFormat::kGray8, 3);
  EXPECT_EQ(CountFastCorners(tiny, 20), 0u);
}

TEST(EnrichTest, FlagsFollowThresholds) {
  Image img = RandomImage(8, 8, PixelFormat::kBgr8, 1);
  Image luma = RandomImage(8, 8, PixelFormat::kGray8, 2);
  EnrichConfig cfg;
  Analysis a;
  Enrichment e;
  a.mean_luma = 20, a.sharpness = 50;
  ASSERT_TRUE(Enrich(img, luma, a, cfg, &e).ok());
  EXPECT_TRUE(e.dark);
  EXPECT_FALSE(e.overexposed);
  EXPECT_TRUE(e.blurry);
  a.mean_luma = 230, a.sharpness = 500;
  ASSERT_TRUE(Enrich(img, luma, a, cfg, &e).ok());
  EXPECT_FALSE(e.dark);
  EXPECT_TRUE(e.overexposed);
  EXPECT_FALSE(e.blurry);
  cfg.dark_mean_luma = 240;
  ASSERT_TRUE(Enrich(img, luma, a, cfg, &e).ok());
  EXPECT_TRUE(e.dark);
}

FrameResult ResultWith(uint32_t bin, uint8_t thumb, FrameStatus st = FrameStatus::kOk) {
  FrameResult r;
  r.status = st;
  r.analysis.width = 10;
  r.analysis.height = 10;
  r.analysis.histogram[bin] = 100;
  r.analysis.thumbnail.fill(thumb);
  return r;
}

TEST(TemporalStageTest, ComparesWithPreviousOkFrame) {
  TemporalStage t;
  FrameResult a = ResultWith(10, 100);
  t.Apply(a);
  EXPECT_EQ(a.enrichment.scene_change, 0);
  EXPECT_EQ(a.enrichment.motion, 0);
  EXPECT_FALSE(a.enrichment.scene_cut);
  FrameResult same = ResultWith(10, 100);
  t.Apply(same);
  EXPECT_EQ(same.enrichment.scene_change, 0);
  // A failed frame in between is skipped: the next OK frame compares with `same`.
  FrameResult bad = ResultWith(200, 0, FrameStatus::kInvalidArgument);
  t.Apply(bad);
  EXPECT_EQ(bad.enrichment.scene_change, 0);
  FrameResult cut = ResultWith(200, 151);
  t.Apply(cut);
  EXPECT_DOUBLE_EQ(cut.enrichment.scene_change, 1.0);
  EXPECT_DOUBLE_EQ(cut.enrichment.motion, 51.0 / 255.0);
  // Half the pixels move to another bin: 1/2 L1 = 0.5. (scene_cut is the detector's decision,
  // tested in scene_cut_test.cc; these flat thumbnails have no structure, so never a cut.)
  FrameResult half = ResultWith(200, 151);
  half.analysis.histogram[200] = 50;
  half.analysis.histogram[201] = 50;
  t.Apply(half);
  EXPECT_DOUBLE_EQ(half.enrichment.scene_change, 0.5);
  EXPECT_FALSE(half.enrichment.scene_cut);
  EXPECT_FALSE(cut.enrichment.scene_cut);
}

// Motion = mean |a - b| / 255 over the thumbnail, against a plain double loop: random
// thumbnails, and the extremes (0 vs 255 everywhere: the largest sum, 1.0 exactly).
TEST(TemporalStageTest, MotionIsTheMeanAbsoluteThumbnailDifference) {
  std::mt19937 rng(7);
  std::uniform_int_distribution<int> byte(0, 255);
  for (int trial = 0; trial < 50; ++trial) {
    std::array<uint8_t, kThumbnailBytes> a{}, b{};
    for (int i = 0; i < kThumbnailBytes; ++i) {
      a[i] = static_cast<uint8_t>(byte(rng));
      b[i] = static_cast<uint8_t>(trial % 5 == 0 ? a[i] : byte(rng));
    }
    double naive = 0;
    for (int i = 0; i < kThumbnailBytes; ++i) naive += std::abs(double(a[i]) - double(b[i]));
    naive /= 255.0 * kThumbnailBytes;
    EXPECT_DOUBLE_EQ(TemporalStage::Motion(a, b), naive) << "trial " << trial;
    EXPECT_DOUBLE_EQ(TemporalStage::Motion(a, b), TemporalStage::Motion(b, a));
  }
  std::array<uint8_t, kThumbnailBytes> black{}, white{};
  white.fill(255);
  EXPECT_EQ(TemporalStage::Motion(black, white), 1.0);
  EXPECT_EQ(TemporalStage::Motion(white, black), 1.0);
  EXPECT_EQ(TemporalStage::Motion(white, white), 0.0);
}

TEST(TemporalStageTest, NormalisesHistogramsOfDifferentSizes) {
  std::array<uint32_t, 256> a{}, b{};
  a[3] = 100;
  b[3] = 400;
  EXPECT_DOUBLE_EQ(TemporalStage::SceneChange(a, 100, b, 400), 0.0);
  b[3] = 200;
  b[4] = 200;
  EXPECT_DOUBLE_EQ(TemporalStage::SceneChange(a, 100, b, 400), 0.5);
}

}  // namespace
}  // namespace framepipe
