// The CUDA kernels' per-pixel arithmetic (kernels/analysis_math.cuh) compiled as host code and
// checked against the CPU reference: runs everywhere, GPU or not.
#include <gtest/gtest.h>

#include <random>

#include "analysis/cpu/luma_ops.h"
#include "analysis_math.cuh"

namespace framepipe {
namespace {

Image Random(int w, int h, PixelFormat f, uint32_t seed) {
  std::mt19937 rng(seed);
  Image img = Image::Allocate(w, h, f);
  for (size_t i = 0; i < img.byte_size(); ++i) img.mutable_data()[i] = static_cast<uint8_t>(rng());
  return img;
}

TEST(KernelMathTest, LumaMatchesReference) {
  Image img = Random(97, 13, PixelFormat::kBgr8, 1);
  Image luma = Image::Allocate(97, 13, PixelFormat::kGray8);
  cpu::Luma(img, 0, 13, &luma);
  for (int y = 0; y < 13; ++y) {
    for (int x = 0; x < 97; ++x) {
      const uint8_t* p = img.row(y) + 3 * x;
      ASSERT_EQ(kernels::LumaOf(p[0], p[1], p[2]), luma.row(y)[x]);
    }
  }
}

TEST(KernelMathTest, GradientSumsMatchReference) {
  for (auto [w, h] : {std::pair{1, 1}, {1, 9}, {9, 1}, {2, 2}, {33, 17}, {641, 479}}) {
    Image luma = Random(w, h, PixelFormat::kGray8, static_cast<uint32_t>(w * 31 + h));
    cpu::GradientSums ref = cpu::Gradients(luma, 0, h);
    int64_t lap = 0;
    uint64_t lap2 = 0, edges = 0;
    for (int y = 0; y < h; ++y) {
      for (int x = 0; x < w; ++x) {
        auto g = kernels::GradientAt(luma.data(), luma.stride(), w, h, x, y);
        lap += g.laplacian;
        lap2 += static_cast<uint64_t>(g.laplacian * g.laplacian);
        edges += g.edge;
      }
    }
    EXPECT_EQ(lap, ref.lap_sum) << w << "x" << h;
    EXPECT_EQ(lap2, ref.lap_sq_sum) << w << "x" << h;
    EXPECT_EQ(edges, ref.edge_count) << w << "x" << h;
  }
}

TEST(KernelMathTest, ThumbnailWeightsMatchReference) {
  for (auto [w, h] : {std::pair{1, 1}, {5, 3}, {63, 65}, {64, 64}, {641, 479}, {1920, 1080}}) {
    Image luma = Random(w, h, PixelFormat::kGray8, static_cast<uint32_t>(w + h));
    uint8_t ref[kThumbnailBytes];
    cpu::Thumbnail(luma, 0, kThumbnailSize, ref);
    for (int l = 0; l < 64; ++l) {
      for (int j = 0; j < 64; ++j) {
        uint64_t acc = 0;
        int64_t wsum_x = 0;
        for (int x = kernels::ThumbFirst(j, w); x < kernels::ThumbEnd(j, w); ++x) {
          wsum_x += kernels::ThumbWeight(x, j, w);
        }
        ASSERT_EQ(wsum_x, w) << "x weights of column " << j << " sum to the column width";
        for (int y = kernels::ThumbFirst(l, h); y < kernels::ThumbEnd(l, h); ++y) {
          for (int x = kernels::ThumbFirst(j, w); x < kernels::ThumbEnd(j, w); ++x) {
            acc += static_cast<uint64_t>(kernels::ThumbWeight(x, j, w) *
                                         kernels::ThumbWeight(y, l, h)) *
                   luma.row(y)[x];
          }
        }
        ASSERT_EQ(kernels::ThumbRound(acc, w, h), ref[l * 64 + j]) << w << "x" << h;
      }
    }
  }
}

}  // namespace
}  // namespace framepipe
