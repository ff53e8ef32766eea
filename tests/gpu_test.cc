// CUDA kernels and the CUDA Analyzer against the CPU reference, on seeded random images of many
// sizes (odd ones included), hand-made images, and frames in pitched memory. Skips cleanly when
// no CUDA device is usable. Kept free of OpenCV, oneTBB and gRPC so it runs on a bare GPU host.
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <atomic>
#include <cmath>
#include <cstring>
#include <random>
#include <thread>
#include <vector>

#include "analysis/cpu/luma_ops.h"
#include "analysis/cuda/cuda_analyzer.h"
#include "analysis_kernels.cuh"

namespace framepipe {
namespace {

#define SKIP_WITHOUT_GPU()                                             \
  do {                                                                 \
    std::string why;                                                   \
    if (!CudaDeviceAvailable(&why)) GTEST_SKIP() << "no GPU: " << why; \
  } while (false)

#define CUDA_OK(expr) ASSERT_EQ((expr), cudaSuccess) << #expr

Image Random(int w, int h, PixelFormat f, uint32_t seed) {
  std::mt19937 rng(seed);
  Image img = Image::Allocate(w, h, f);
  for (size_t i = 0; i < img.byte_size(); ++i) img.mutable_data()[i] = static_cast<uint8_t>(rng());
  return img;
}

Image Pattern(int w, int h, PixelFormat f, int kind) {
  Image img = Image::Allocate(w, h, f);
  const int c = Channels(f);
  for (int y = 0; y < h; ++y) {
    for (int x = 0; x < w; ++x) {
      uint8_t v;
      switch (kind) {
        case 0:
          v = 0;
          break;  // black
        case 1:
          v = 255;
          break;  // white
        case 2:
          v = 100;
          break;  // flat
        case 3:
          v = ((x + y) & 1) ? 255 : 0;
          break;  // checkerboard
        default:
          v = static_cast<uint8_t>((x * 255) / std::max(1, w - 1));  // gradient
      }
      for (int k = 0; k < c; ++k)
        img.mutable_row(y)[x * c + k] = static_cast<uint8_t>(v + k * (kind == 4));
    }
  }
  return img;
}

const std::vector<std::pair<int, int>>& Sizes() {
  static const std::vector<std::pair<int, int>> s = {
      {1, 1},       {2, 1},       {1, 2},     {3, 3},     {7, 5},     {63, 64},
      {64, 64},     {65, 63},     {127, 33},  {320, 240}, {641, 479}, {1280, 720},
      {1921, 1081}, {1920, 1080}, {4096, 16}, {16, 4096}};
  return s;
}

// A device copy of an image in pitched memory, the padding filled with garbage.
struct DeviceImage {
  uint8_t* ptr = nullptr;
  size_t pitch = 0;
  DeviceImage(const Image& img, size_t extra_pitch = 0) {
    const size_t row = static_cast<size_t>(img.width()) * img.channels();
    pitch = row + extra_pitch;
    EXPECT_EQ(cudaMalloc(&ptr, pitch * img.height()), cudaSuccess);
    EXPECT_EQ(cudaMemset(ptr, 0xA5, pitch * img.height()), cudaSuccess);
    EXPECT_EQ(cudaMemcpy2D(ptr, pitch, img.data(), img.stride(), row, img.height(),
                           cudaMemcpyHostToDevice),
              cudaSuccess);
  }
  ~DeviceImage() { cudaFree(ptr); }
};

struct KernelOutputs {
  std::vector<uint8_t> luma;
  kernels::FrameSums sums{};
  std::vector<uint8_t> thumb;
};

KernelOutputs RunKernels(const Image& img, size_t extra_pitch, bool fused) {
  KernelOutputs out;
  const int w = img.width(), h = img.height();
  DeviceImage src(img, extra_pitch);
  uint8_t* d_luma;
  size_t luma_pitch = static_cast<size_t>(w) + extra_pitch;
  kernels::FrameSums* d_sums;
  uint8_t* d_thumb;
  EXPECT_EQ(cudaMalloc(&d_luma, luma_pitch * h), cudaSuccess);
  EXPECT_EQ(cudaMalloc(&d_sums, sizeof(kernels::FrameSums)), cudaSuccess);
  EXPECT_EQ(cudaMalloc(&d_thumb, 4096), cudaSuccess);
  EXPECT_EQ(cudaMemset(d_sums, 0, sizeof(kernels::FrameSums)), cudaSuccess);
  const bool rgb = img.format() == PixelFormat::kRgb8;
  if (fused) {
    EXPECT_EQ(kernels::LaunchLumaStats(src.ptr, src.pitch, w, h, img.channels(), rgb, d_luma,
                                       luma_pitch, d_sums, nullptr),
              cudaSuccess);
  } else {
    EXPECT_EQ(kernels::LaunchLuma(src.ptr, src.pitch, w, h, img.channels(), rgb, d_luma, luma_pitch,
                                  nullptr),
              cudaSuccess);
    EXPECT_EQ(kernels::LaunchHistogram(d_luma, luma_pitch, w, h, d_sums, nullptr), cudaSuccess);
    EXPECT_EQ(kernels::LaunchMeanStd(d_luma, luma_pitch, w, h, d_sums, nullptr), cudaSuccess);
  }
  EXPECT_EQ(kernels::LaunchGradients(d_luma, luma_pitch, w, h, d_sums, nullptr), cudaSuccess);
  EXPECT_EQ(kernels::LaunchThumbnail(d_luma, luma_pitch, w, h, d_thumb, nullptr), cudaSuccess);
  EXPECT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  out.luma.resize(static_cast<size_t>(w) * h);
  out.thumb.resize(4096);
  EXPECT_EQ(cudaMemcpy2D(out.luma.data(), w, d_luma, luma_pitch, w, h, cudaMemcpyDeviceToHost),
            cudaSuccess);
  EXPECT_EQ(cudaMemcpy(&out.sums, d_sums, sizeof(out.sums), cudaMemcpyDeviceToHost), cudaSuccess);
  EXPECT_EQ(cudaMemcpy(out.thumb.data(), d_thumb, 4096, cudaMemcpyDeviceToHost), cudaSuccess);
  cudaFree(d_luma);
  cudaFree(d_sums);
  cudaFree(d_thumb);
  return out;
}

void ExpectKernelsMatch(const Image& img, size_t extra_pitch, bool fused) {
  SCOPED_TRACE(::testing::Message()
               << img.width() << "x" << img.height() << " " << PixelFormatName(img.format())
               << " pitch+" << extra_pitch << (fused ? " fused" : " separate"));
  const int w = img.width(), h = img.height();
  KernelOutputs got = RunKernels(img, extra_pitch, fused);
  Image luma = Image::Allocate(w, h, PixelFormat::kGray8);
  cpu::Luma(img, 0, h, &luma);
  ASSERT_EQ(0, std::memcmp(got.luma.data(), luma.data(), got.luma.size())) << "luma";
  uint32_t hist[256] = {};
  cpu::Histogram(luma, 0, h, hist);
  uint64_t s1 = 0, s2 = 0;
  for (int i = 0; i < 256; ++i) {
    ASSERT_EQ(got.sums.histogram[i], hist[i]) << "bin " << i;
    s1 += static_cast<uint64_t>(i) * hist[i];
    s2 += static_cast<uint64_t>(i) * i * hist[i];
  }
  EXPECT_EQ(got.sums.luma_sum, s1);
  EXPECT_EQ(got.sums.luma_sq_sum, s2);
  cpu::GradientSums g = cpu::Gradients(luma, 0, h);
  EXPECT_EQ(got.sums.lap_sum, g.lap_sum);
  EXPECT_EQ(got.sums.lap_sq_sum, g.lap_sq_sum);
  EXPECT_EQ(got.sums.edge_count, g.edge_count);
  uint8_t thumb[4096];
  cpu::Thumbnail(luma, 0, 64, thumb);
  ASSERT_EQ(0, std::memcmp(got.thumb.data(), thumb, 4096)) << "thumbnail";
}

TEST(GpuKernelsTest, MatchReferenceOnRandomImagesOfManySizes) {
  SKIP_WITHOUT_GPU();
  uint32_t seed = 1;
  for (auto [w, h] : Sizes()) {
    for (PixelFormat f : {PixelFormat::kBgr8, PixelFormat::kRgb8, PixelFormat::kGray8}) {
      ExpectKernelsMatch(Random(w, h, f, seed++), 0, true);
    }
  }
}

TEST(GpuKernelsTest, SeparateKernelsMatchFused) {
  SKIP_WITHOUT_GPU();
  for (auto [w, h] : {std::pair{1, 1}, {641, 479}, {1920, 1080}}) {
    ExpectKernelsMatch(Random(w, h, PixelFormat::kBgr8, 77), 0, false);
  }
}

TEST(GpuKernelsTest, PitchedMemory) {
  SKIP_WITHOUT_GPU();
  for (size_t extra : {1u, 3u, 61u, 512u}) {
    ExpectKernelsMatch(Random(641, 479, PixelFormat::kBgr8, 5), extra, true);
    ExpectKernelsMatch(Random(33, 7, PixelFormat::kGray8, 6), extra, true);
  }
}

TEST(GpuKernelsTest, HandMadeImages) {
  SKIP_WITHOUT_GPU();
  for (int kind = 0; kind < 5; ++kind) {
    for (auto [w, h] : {std::pair{1, 1}, {64, 48}, {641, 479}}) {
      ExpectKernelsMatch(Pattern(w, h, PixelFormat::kBgr8, kind), 0, true);
      ExpectKernelsMatch(Pattern(w, h, PixelFormat::kGray8, kind), 0, true);
    }
  }
}

void ExpectAnalyzerMatches(CudaAnalyzer& gpu, const Image& img) {
  SCOPED_TRACE(::testing::Message()
               << img.width() << "x" << img.height() << " " << PixelFormatName(img.format()));
  Analysis a, ref;
  Image luma, ref_luma;
  ASSERT_TRUE(gpu.Analyze(img, &a, &luma).ok());
  cpu::AnalyzeReference(img, &ref, &ref_luma);
  EXPECT_STREQ(a.backend, "cuda");
  EXPECT_EQ(a.width, ref.width);
  EXPECT_EQ(a.height, ref.height);
  EXPECT_EQ(a.histogram, ref.histogram);
  EXPECT_EQ(a.thumbnail, ref.thumbnail);
  auto rel = [](double x, double y) { return std::abs(x - y) / std::max(1e-9, std::abs(y)); };
  EXPECT_LE(rel(a.mean_luma, ref.mean_luma), 1e-3);
  EXPECT_LE(rel(a.stddev_luma, ref.stddev_luma), 1e-3);
  EXPECT_LE(rel(a.sharpness, ref.sharpness), 1e-3);
  EXPECT_LE(rel(a.edge_density, ref.edge_density), 1e-3);
  ASSERT_EQ(luma.width(), img.width());
  ASSERT_EQ(0, std::memcmp(luma.data(), ref_luma.data(), ref_luma.byte_size()));
}

TEST(CudaAnalyzerTest, MatchesCpuReference) {
  SKIP_WITHOUT_GPU();
  auto gpu = CudaAnalyzer::Create({0, 2});
  ASSERT_TRUE(gpu.ok()) << gpu.status();
  uint32_t seed = 100;
  for (auto [w, h] : Sizes()) {
    for (PixelFormat f : {PixelFormat::kBgr8, PixelFormat::kRgb8, PixelFormat::kGray8}) {
      ExpectAnalyzerMatches(**gpu, Random(w, h, f, seed++));
    }
  }
  for (int kind = 0; kind < 5; ++kind)
    ExpectAnalyzerMatches(**gpu, Pattern(641, 479, PixelFormat::kBgr8, kind));
}

TEST(CudaAnalyzerTest, BuffersAreReusedAndThreadsShareThePool) {
  SKIP_WITHOUT_GPU();
  auto gpu = CudaAnalyzer::Create({0, 3});
  ASSERT_TRUE(gpu.ok()) << gpu.status();
  Image big = Random(1920, 1080, PixelFormat::kBgr8, 9);
  Analysis ref;
  Image ref_luma;
  cpu::AnalyzeReference(big, &ref, &ref_luma);
  std::vector<std::thread> threads;
  std::atomic<int> bad{0};
  for (int t = 0; t < 6; ++t) {
    threads.emplace_back([&] {
      for (int i = 0; i < 20; ++i) {
        Analysis a;
        Image luma;
        if (!(*gpu)->Analyze(big, &a, &luma).ok() || a.histogram != ref.histogram ||
            a.thumbnail != ref.thumbnail) {
          ++bad;
        }
      }
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(bad.load(), 0);
  const int after_warmup = (*gpu)->allocations();
  EXPECT_LE(after_warmup, 3) << "one allocation per slot at most";
  Image small = Random(320, 240, PixelFormat::kBgr8, 10);
  for (int i = 0; i < 10; ++i) {
    Analysis a;
    Image luma;
    ASSERT_TRUE((*gpu)->Analyze(small, &a, &luma).ok());
  }
  EXPECT_EQ((*gpu)->allocations(), after_warmup) << "smaller frames reuse the buffers";
}

TEST(CudaAnalyzerTest, BadDeviceIndexFailsClearly) {
  SKIP_WITHOUT_GPU();
  auto gpu = CudaAnalyzer::Create({99, 1});
  ASSERT_FALSE(gpu.ok());
  EXPECT_NE(gpu.status().message().find("does not exist"), std::string::npos);
}

TEST(CudaAnalyzerTest, NoDeviceIsAClearError) {
  std::string why;
  if (CudaDeviceAvailable(&why)) GTEST_SKIP() << "a GPU is present";
  auto gpu = CudaAnalyzer::Create({0, 1});
  ASSERT_FALSE(gpu.ok());
  EXPECT_EQ(gpu.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(gpu.status().message().find("no usable CUDA device"), std::string::npos);
}

}  // namespace
}  // namespace framepipe
