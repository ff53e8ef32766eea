// The causal scene-cut detector on synthetic edge cases: a static scene with noise, a pan, an
// exposure ramp, flashes, a fade to black into a new shot (and back into the same one), a cut
// between two pictures with the same histogram, frames after an error, causality, and the
// structure distance against a plain double-precision NCC. Real footage: bench/scene_cuts.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <random>
#include <vector>

#include "enrich/scene_cut.h"
#include "enrich/temporal_stage.h"

namespace framepipe {
namespace {

constexpr int kTex = 192;  // texture side; frames are 64x64 windows into it

// A smooth random texture (a few dozen soft blobs over a gradient), like a real scene's
// thumbnail: structure at several scales, values well inside 0..255.
std::vector<double> MakeScene(uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<double> u(0, 1);
  std::vector<double> t(kTex * kTex);
  const double gx = u(rng) * 60 - 30, gy = u(rng) * 60 - 30;
  for (int y = 0; y < kTex; ++y) {
    for (int x = 0; x < kTex; ++x) t[y * kTex + x] = 110 + gx * x / kTex + gy * y / kTex;
  }
  for (int b = 0; b < 40; ++b) {
    const double cx = u(rng) * kTex, cy = u(rng) * kTex, r = 4 + u(rng) * 20;
    const double amp = (u(rng) - 0.5) * 120;
    for (int y = 0; y < kTex; ++y) {
      for (int x = 0; x < kTex; ++x) {
        const double d2 = ((x - cx) * (x - cx) + (y - cy) * (y - cy)) / (r * r);
        t[y * kTex + x] += amp * std::exp(-d2);
      }
    }
  }
  return t;
}

struct Shot {
  int dx = 0, dy = 0;  // window position (pans move it)
  double gain = 1, offset = 0;
  bool rotate = false;  // 180 degrees: same histogram, other structure
};

// One frame's Analysis as the analyzer would fill it for a 64x64 picture: thumbnail = the
// picture, histogram and mean from the same pixels; +-2 levels of sensor noise.
Analysis Frame(const std::vector<double>& scene, const Shot& s, std::mt19937& noise) {
  std::uniform_int_distribution<int> n(-2, 2);
  Analysis a;
  a.width = a.height = 64;
  double sum = 0;
  for (int y = 0; y < 64; ++y) {
    for (int x = 0; x < 64; ++x) {
      const int sy = s.rotate ? 63 - y : y, sx = s.rotate ? 63 - x : x;
      const double v = scene[(sy + s.dy) * kTex + sx + s.dx] * s.gain + s.offset + n(noise);
      const uint8_t p = static_cast<uint8_t>(std::clamp(std::lround(v), 0L, 255L));
      a.thumbnail[y * 64 + x] = p;
      a.histogram[p]++;
      sum += p;
    }
  }
  a.mean_luma = sum / (64 * 64);
  return a;
}

struct Detection {
  std::vector<double> scores;
  std::vector<int> cuts;
};

Detection Detect(const std::vector<Analysis>& frames, SceneCutConfig c = {}) {
  SceneCutDetector d(c);
  Detection r;
  for (size_t i = 0; i < frames.size(); ++i) {
    r.scores.push_back(d.Observe(frames[i]));
    if (d.IsCut(r.scores.back())) r.cuts.push_back(static_cast<int>(i));
  }
  return r;
}

class SceneCutTest : public ::testing::Test {
 protected:
  std::vector<double> a_ = MakeScene(1), b_ = MakeScene(2);
  std::mt19937 noise_{42};
  void Add(std::vector<Analysis>& v, const std::vector<double>& scene, const Shot& s, int n = 1) {
    for (int i = 0; i < n; ++i) v.push_back(Frame(scene, s, noise_));
  }
};

TEST_F(SceneCutTest, StaticSceneWithNoiseHasNoCut) {
  std::vector<Analysis> v;
  Add(v, a_, {}, 60);
  const Detection r = Detect(v);
  EXPECT_TRUE(r.cuts.empty());
  EXPECT_EQ(r.scores[0], 0.0) << "the first frame has no predecessor";
}

TEST_F(SceneCutTest, AHardCutIsFoundOnItsFrame) {
  std::vector<Analysis> v;
  Add(v, a_, {}, 20);
  Add(v, b_, {}, 20);
  const Detection r = Detect(v);
  EXPECT_EQ(r.cuts, std::vector<int>{20});
  EXPECT_GT(r.scores[20], 0.8);
}

// Shots of a few frames (trailers, action scenes): every cut is found, not only the first.
TEST_F(SceneCutTest, ShortShotsAreAllFound) {
  const std::vector<double> c = MakeScene(3), d = MakeScene(4);
  const std::vector<const std::vector<double>*> scenes = {&a_, &b_, &c, &d};
  std::vector<Analysis> v;
  std::vector<int> want;
  for (int shot = 0; shot < 12; ++shot) {
    if (shot > 0) want.push_back(static_cast<int>(v.size()));
    for (int i = 0; i < 4; ++i) Add(v, *scenes[shot % 4], {i, 0});  // moving 1 px per frame
  }
  EXPECT_EQ(Detect(v).cuts, want);
}

TEST_F(SceneCutTest, FastPanIsNotACut) {
  std::vector<Analysis> v;
  Add(v, a_, {}, 10);
  for (int i = 1; i <= 60; ++i) Add(v, a_, {std::min(i * 2, 120), i % 2});  // 2 px per frame
  const Detection r = Detect(v);
  EXPECT_TRUE(r.cuts.empty()) << "first cut at frame " << (r.cuts.empty() ? -1 : r.cuts[0]);
  // ... and a cut during the pan is still found.
  Add(v, b_, {}, 10);
  EXPECT_EQ(Detect(v).cuts, std::vector<int>{70});
}

TEST_F(SceneCutTest, ExposureRampIsNotACut) {
  std::vector<Analysis> v;
  for (int i = 0; i < 60; ++i) {
    const double t = i / 59.0;
    Add(v, a_, {0, 0, 1.0 + 0.8 * (1 - std::abs(2 * t - 1)), 0});  // gain 1 -> 1.8 -> 1, clipping
  }
  EXPECT_TRUE(Detect(v).cuts.empty());
}

TEST_F(SceneCutTest, NeitherAFlashNorTheReturnFromItIsACut) {
  for (int len : {1, 2}) {
    std::vector<Analysis> v;
    Add(v, a_, {}, 20);
    Add(v, a_, {0, 0, 2.5, 100}, len);  // mostly clipped white
    Add(v, a_, {}, 20);
    Add(v, a_, {0, 0, 1.6, 50}, len);  // a milder one
    Add(v, a_, {}, 20);
    const Detection r = Detect(v);
    EXPECT_TRUE(r.cuts.empty()) << len << "-frame flash: cut at frame " << r.cuts[0];
  }
}

TEST_F(SceneCutTest, ACutRightAfterAFlashIsStillFound) {
  std::vector<Analysis> v;
  Add(v, a_, {}, 20);
  Add(v, a_, {0, 0, 2.5, 100});
  Add(v, b_, {}, 20);  // the picture after the flash is another shot
  EXPECT_EQ(Detect(v).cuts, std::vector<int>{21});
}

TEST_F(SceneCutTest, FadeToBlackIntoANewShotIsOneCut) {
  std::vector<Analysis> v;
  Add(v, a_, {}, 20);
  for (int i = 1; i <= 10; ++i) Add(v, a_, {0, 0, 1 - i / 10.0, 0});  // 20..29, 29 is black
  Add(v, a_, {0, 0, 0, 0}, 4);                                        // 30..33
  for (int i = 1; i <= 10; ++i) Add(v, b_, {0, 0, i / 10.0, 0});      // 34..43
  Add(v, b_, {}, 20);
  const Detection r = Detect(v);
  ASSERT_EQ(r.cuts.size(), 1u);
  EXPECT_GE(r.cuts[0], 34);
  EXPECT_LE(r.cuts[0], 43);
  for (int i = 29; i <= 33; ++i) EXPECT_EQ(r.scores[i], 0.0) << "black frame " << i;
}

TEST_F(SceneCutTest, FadeOutAndBackIntoTheSameShotIsNoCut) {
  std::vector<Analysis> v;
  Add(v, a_, {}, 20);
  for (int i = 1; i <= 10; ++i) Add(v, a_, {0, 0, 1 - i / 10.0, 0});
  Add(v, a_, {0, 0, 0, 0}, 4);
  for (int i = 1; i <= 10; ++i) Add(v, a_, {0, 0, i / 10.0, 0});
  Add(v, a_, {}, 20);
  EXPECT_TRUE(Detect(v).cuts.empty());
}

TEST_F(SceneCutTest, CutBetweenPicturesWithTheSameHistogramIsFound) {
  std::vector<Analysis> v;
  Add(v, a_, {}, 20);
  Add(v, a_, {0, 0, 1, 0, /*rotate=*/true}, 20);
  // The histogram distance cannot see it; the structure can.
  std::mt19937 quiet(1);
  Analysis x = Frame(a_, {}, quiet), y = Frame(a_, {0, 0, 1, 0, true}, quiet);
  EXPECT_EQ(TemporalStage::SceneChange(x.histogram, 4096, y.histogram, 4096) < 0.05, true);
  EXPECT_EQ(Detect(v).cuts, std::vector<int>{20});
}

// Frame n's score depends on frames <= n only: two streams equal up to n and different after it
// score frames 0..n identically.
TEST_F(SceneCutTest, IsCausal) {
  std::mt19937 rng(5);
  std::vector<Analysis> base;
  std::uniform_int_distribution<int> which(0, 5);
  for (int i = 0; i < 80; ++i) {
    const int k = which(rng);
    Add(base, k == 0 ? b_ : a_, {k, 0, k == 5 ? 2.2 : 1.0, k == 5 ? 80.0 : 0.0});
  }
  const Detection full = Detect(base);
  for (int n : {0, 1, 17, 40, 79}) {
    std::vector<Analysis> other(base.begin(), base.begin() + n + 1);
    Add(other, b_, {3, 3}, 30);
    const Detection r = Detect(other);
    for (int i = 0; i <= n; ++i) ASSERT_EQ(r.scores[i], full.scores[i]) << "n=" << n << " i=" << i;
  }
}

// An error frame between two frames of the same shot leaves no gap the detector could mistake
// for a cut: the next OK frame compares with the last OK one.
TEST_F(SceneCutTest, FramesAfterAnErrorCompareWithTheLastOkFrame) {
  TemporalStage t;
  std::vector<FrameResult> rs;
  for (int i = 0; i < 30; ++i) {
    FrameResult r;
    r.status = (i == 10 || i == 11) ? FrameStatus::kInvalidArgument : FrameStatus::kOk;
    r.analysis = Frame(i < 20 ? a_ : b_, {}, noise_);
    t.Apply(r);
    rs.push_back(r);
  }
  EXPECT_EQ(rs[0].enrichment.cut_score, 0.0);
  for (int i = 0; i < 30; ++i) {
    EXPECT_EQ(rs[i].enrichment.scene_cut, i == 20) << "frame " << i;
    if (i == 10 || i == 11) {
      EXPECT_EQ(rs[i].enrichment.cut_score, 0.0);
    }
  }
}

TEST(SceneCutDistanceTest, IsOneMinusNccOverTwo) {
  std::mt19937 rng(3);
  std::uniform_int_distribution<int> byte(0, 255);
  for (int trial = 0; trial < 20; ++trial) {
    std::array<uint8_t, kThumbnailBytes> a{}, b{};
    for (int i = 0; i < kThumbnailBytes; ++i) {
      a[i] = static_cast<uint8_t>(byte(rng));
      b[i] = static_cast<uint8_t>(trial % 2 ? 255 - a[i] / 2 : byte(rng));
    }
    double ma = 0, mb = 0;
    for (int i = 0; i < kThumbnailBytes; ++i) ma += a[i], mb += b[i];
    ma /= kThumbnailBytes, mb /= kThumbnailBytes;
    double ab = 0, aa = 0, bb = 0;
    for (int i = 0; i < kThumbnailBytes; ++i) {
      ab += (a[i] - ma) * (b[i] - mb), aa += (a[i] - ma) * (a[i] - ma);
      bb += (b[i] - mb) * (b[i] - mb);
    }
    const double want = (1 - ab / std::sqrt(aa * bb)) / 2;
    EXPECT_NEAR(SceneCutDetector::StructureDistance(a, b), want, 1e-12) << "trial " << trial;
  }
  std::array<uint8_t, kThumbnailBytes> a{}, gained{}, flat{};
  for (int i = 0; i < kThumbnailBytes; ++i) {
    a[i] = static_cast<uint8_t>(i % 97);
    gained[i] = static_cast<uint8_t>(2 * a[i] + 30);  // gain and offset, no clipping
  }
  flat.fill(77);
  EXPECT_NEAR(SceneCutDetector::StructureDistance(a, gained), 0.0, 1e-12);
  EXPECT_EQ(SceneCutDetector::StructureDistance(a, flat), 0.0);
}

}  // namespace
}  // namespace framepipe
