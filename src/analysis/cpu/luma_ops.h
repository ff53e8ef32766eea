// The CPU reference of the analysis contract, as exact integer arithmetic:
//   luma      BT.601 in OpenCV's 8-bit BGR2GRAY fixed point: (3735 B + 19235 G + 9798 R + 2^14) >>
//   15 histogram 256 bins of luma sharpness population variance of the 4-neighbour Laplacian,
//   border reflect-101 edges     pixels with 3x3 Sobel gx^2 + gy^2 > 64^2, border reflect-101
//   thumbnail 64x64 area average: each output pixel is the overlap-weighted mean of the source
//             pixels under it, computed exactly in integers and rounded half up
// Every function works on a band of rows so a frame can be split across cores; the CUDA
// kernels implement the same arithmetic and are tested against these. Plain C++ with no
// dependencies (the GPU test bundle runs it on machines without OpenCV or oneTBB).
#pragma once

#include <cstddef>
#include <cstdint>

#include "common/frame.h"
#include "common/image.h"

namespace framepipe::cpu {

// Luma of rows [y0, y1) of `src` (BGR8, RGB8 or GRAY8) into `luma` (same size, GRAY8). Scalar
// reference; CpuAnalyzer uses OpenCV's SIMD cvtColor, which is bit-identical.
void Luma(const Image& src, int y0, int y1, Image* luma);
// Histogram only, for a frame that is already gray.
void Histogram(const Image& gray, int y0, int y1, uint32_t hist[256]);

struct GradientSums {
  int64_t lap_sum = 0;
  uint64_t lap_sq_sum = 0;
  uint64_t edge_count = 0;
  void Add(const GradientSums& o) {
    lap_sum += o.lap_sum;
    lap_sq_sum += o.lap_sq_sum;
    edge_count += o.edge_count;
  }
};
// Laplacian and Sobel sums over rows [y0, y1) of a GRAY8 image.
GradientSums Gradients(const Image& luma, int y0, int y1);

// Output rows [l0, l1) of the 64x64 area-average thumbnail of a GRAY8 image.
void Thumbnail(const Image& luma, int l0, int l1, uint8_t out[kThumbnailBytes]);

// Mean and population standard deviation of `n` pixels from their histogram (exact sums).
void StatsFromHistogram(const uint32_t hist[256], uint64_t n, double* mean, double* stddev);
// Population variance from Laplacian sums over `n` pixels.
double VarianceFromSums(int64_t sum, uint64_t sq_sum, uint64_t n);

// The whole Analysis of a frame, single-threaded, from the functions above (the oracle the
// CPU and CUDA backends are tested against). `luma` receives the frame's luma plane.
void AnalyzeReference(const Image& frame, Analysis* out, Image* luma);

}  // namespace framepipe::cpu
