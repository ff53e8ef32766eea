// Host launchers for the analysis kernels. Plain types, device pointers, an explicit stream and
// caller-owned buffers; no OpenCV, no protobuf. Every launcher returns the launch's cudaError_t.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

namespace framepipe::kernels {

// Per-frame sums the kernels accumulate into (zero it before the first launch).
struct FrameSums {
  unsigned int histogram[256];
  unsigned long long luma_sum;     // sum of luma
  unsigned long long luma_sq_sum;  // sum of luma^2
  long long lap_sum;               // sum of the Laplacian
  unsigned long long lap_sq_sum;   // sum of Laplacian^2
  unsigned long long edge_count;   // pixels with Sobel gx^2 + gy^2 > 64^2
};

// Fused single read of the frame: BT.601 luma (written to `luma`), its 256-bin histogram
// (shared-memory privatised, exact) and the one-pass sums for mean and stddev (64-bit integer,
// exact). `src` has `channels` = 1 (gray) or 3 (BGR; RGB when `rgb`), rows `src_pitch` apart.
cudaError_t LaunchLumaStats(const uint8_t* src, size_t src_pitch, int width, int height,
                            int channels, bool rgb, uint8_t* luma, size_t luma_pitch,
                            FrameSums* sums, cudaStream_t stream);

// The same three steps as separate kernels (tests and the micro-benchmark of the fusion).
cudaError_t LaunchLuma(const uint8_t* src, size_t src_pitch, int width, int height, int channels,
                       bool rgb, uint8_t* luma, size_t luma_pitch, cudaStream_t stream);
cudaError_t LaunchHistogram(const uint8_t* luma, size_t pitch, int width, int height,
                            FrameSums* sums, cudaStream_t stream);
cudaError_t LaunchMeanStd(const uint8_t* luma, size_t pitch, int width, int height, FrameSums* sums,
                          cudaStream_t stream);

// 3x3 Laplacian sums (variance) and the Sobel threshold count over a luma plane; both read the
// same neighbourhood, so one kernel computes them. Reflect-101 borders as OpenCV.
cudaError_t LaunchGradients(const uint8_t* luma, size_t pitch, int width, int height,
                            FrameSums* sums, cudaStream_t stream);

// 64x64 area-average thumbnail of a luma plane into `thumb` (4096 bytes, device), exact integer
// weights rounded half up - bit-identical to the CPU reference.
cudaError_t LaunchThumbnail(const uint8_t* luma, size_t pitch, int width, int height,
                            uint8_t* thumb, cudaStream_t stream);

}  // namespace framepipe::kernels
