#include <cuda_runtime.h>

#include <atomic>

#include "analysis_kernels.cuh"
#include "analysis_math.cuh"

namespace framepipe::kernels {
namespace {

constexpr int kThreads = 256;

// Sums of a block in 64-bit, then one global atomic per block.
__device__ __forceinline__ unsigned long long WarpSum(unsigned long long v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
  return v;
}
__device__ __forceinline__ long long WarpSum(long long v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
  return v;
}

template <typename T>
__device__ T BlockSum(T v, T* scratch /* kThreads / 32 */) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  v = WarpSum(v);
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  T total = 0;
  if (warp == 0) {
    total = lane < (blockDim.x >> 5) ? scratch[lane] : T(0);
    total = WarpSum(total);
  }
  __syncthreads();
  return total;  // valid in thread 0
}

// Enough blocks to fill the device (8 per SM), never more than rows. SM counts are cached per
// device; analysis threads call this concurrently, so the cache is atomic (a benign double
// lookup on first use, never a torn or racy read).
int GridFor(int rows) {
  static std::atomic<int> sm_count[64] = {};
  int device = 0;
  cudaGetDevice(&device);
  const bool cached = device >= 0 && device < 64;
  int sms = cached ? sm_count[device].load(std::memory_order_relaxed) : 0;
  if (sms == 0) {
    if (cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device) != cudaSuccess) {
      sms = 80;
    }
    if (cached) sm_count[device].store(sms, std::memory_order_relaxed);
  }
  const int blocks = sms * 8;
  return rows < blocks ? (rows > 0 ? rows : 1) : blocks;
}

// Blocks walk rows (grid-stride), threads walk x within a row.
template <bool kHist, bool kSums, bool kWriteLuma>
__global__ void LumaStatsKernel(const uint8_t* __restrict__ src, size_t src_pitch, int w, int h,
                                int channels, int bi, int ri, uint8_t* __restrict__ luma,
                                size_t luma_pitch, FrameSums* __restrict__ sums) {
  __shared__ unsigned int hist[256];
  __shared__ unsigned long long scratch[kThreads / 32];
  if (kHist) {
    for (int i = threadIdx.x; i < 256; i += blockDim.x) hist[i] = 0;
    __syncthreads();
  }
  unsigned long long s1 = 0, s2 = 0;
  for (int y = blockIdx.x; y < h; y += gridDim.x) {
    const uint8_t* row = src + static_cast<size_t>(y) * src_pitch;
    uint8_t* out = luma + static_cast<size_t>(y) * luma_pitch;
    for (int x = threadIdx.x; x < w; x += blockDim.x) {
      uint32_t v;
      if (channels == 1) {
        v = row[x];
      } else {
        const uint8_t* p = row + 3 * x;
        v = LumaOf(p[bi], p[1], p[ri]);
      }
      if (kWriteLuma) out[x] = static_cast<uint8_t>(v);
      if (kHist) atomicAdd(&hist[v], 1u);
      if (kSums) {
        s1 += v;
        s2 += v * v;
      }
    }
  }
  if (kHist) {
    __syncthreads();
    for (int i = threadIdx.x; i < 256; i += blockDim.x) {
      if (hist[i]) atomicAdd(&sums->histogram[i], hist[i]);
    }
  }
  if (kSums) {
    const unsigned long long t1 = BlockSum(s1, scratch);
    const unsigned long long t2 = BlockSum(s2, scratch);
    if (threadIdx.x == 0) {
      atomicAdd(&sums->luma_sum, t1);
      atomicAdd(&sums->luma_sq_sum, t2);
    }
  }
}

__global__ void GradientsKernel(const uint8_t* __restrict__ luma, size_t pitch, int w, int h,
                                FrameSums* __restrict__ sums) {
  __shared__ unsigned long long scratch_u[kThreads / 32];
  __shared__ long long scratch_s[kThreads / 32];
  long long lap = 0;
  unsigned long long lap2 = 0, edges = 0;
  for (int y = blockIdx.x; y < h; y += gridDim.x) {
    for (int x = threadIdx.x; x < w; x += blockDim.x) {
      const Gradient g = GradientAt(luma, pitch, w, h, x, y);
      lap += g.laplacian;
      lap2 += static_cast<unsigned long long>(g.laplacian * g.laplacian);
      edges += g.edge ? 1 : 0;
    }
  }
  const long long t_lap = BlockSum(lap, scratch_s);
  const unsigned long long t_lap2 = BlockSum(lap2, scratch_u);
  const unsigned long long t_edges = BlockSum(edges, scratch_u);
  if (threadIdx.x == 0) {
    atomicAdd(reinterpret_cast<unsigned long long*>(&sums->lap_sum),
              static_cast<unsigned long long>(t_lap));  // two's complement add
    atomicAdd(&sums->lap_sq_sum, t_lap2);
    atomicAdd(&sums->edge_count, t_edges);
  }
}

// One warp per output pixel: its lanes sum the overlap-weighted source pixels under it.
constexpr int kThumbWarps = 4;
__global__ void ThumbnailKernel(const uint8_t* __restrict__ luma, size_t pitch, int w, int h,
                                uint8_t* __restrict__ thumb) {
  const int lane = threadIdx.x & 31;
  const int out = blockIdx.x * kThumbWarps + (threadIdx.x >> 5);
  if (out >= kThumb * kThumb) return;
  const int l = out / kThumb, j = out % kThumb;
  const int x0 = ThumbFirst(j, w), x1 = ThumbEnd(j, w);
  const int y0 = ThumbFirst(l, h), y1 = ThumbEnd(l, h);
  const int rw = x1 - x0, n = rw * (y1 - y0);
  unsigned long long acc = 0;
  for (int k = lane; k < n; k += 32) {
    const int x = x0 + k % rw, y = y0 + k / rw;
    const uint64_t wgt =
        static_cast<uint64_t>(ThumbWeight(x, j, w)) * static_cast<uint64_t>(ThumbWeight(y, l, h));
    acc += wgt * luma[static_cast<size_t>(y) * pitch + x];
  }
  acc = WarpSum(acc);
  if (lane == 0) thumb[out] = ThumbRound(acc, w, h);
}

template <bool kHist, bool kSums, bool kWriteLuma>
cudaError_t LaunchLumaPass(const uint8_t* src, size_t src_pitch, int w, int h, int channels,
                           bool rgb, uint8_t* luma, size_t luma_pitch, FrameSums* sums,
                           cudaStream_t stream) {
  if (w <= 0 || h <= 0) return cudaErrorInvalidValue;
  if (channels != 1 && channels != 3) return cudaErrorInvalidValue;
  LumaStatsKernel<kHist, kSums, kWriteLuma><<<GridFor(h), kThreads, 0, stream>>>(
      src, src_pitch, w, h, channels, rgb ? 2 : 0, rgb ? 0 : 2, luma, luma_pitch, sums);
  return cudaGetLastError();
}

}  // namespace

cudaError_t LaunchLumaStats(const uint8_t* src, size_t src_pitch, int w, int h, int channels,
                            bool rgb, uint8_t* luma, size_t luma_pitch, FrameSums* sums,
                            cudaStream_t stream) {
  return LaunchLumaPass<true, true, true>(src, src_pitch, w, h, channels, rgb, luma, luma_pitch,
                                          sums, stream);
}

cudaError_t LaunchLuma(const uint8_t* src, size_t src_pitch, int w, int h, int channels, bool rgb,
                       uint8_t* luma, size_t luma_pitch, cudaStream_t stream) {
  return LaunchLumaPass<false, false, true>(src, src_pitch, w, h, channels, rgb, luma, luma_pitch,
                                            nullptr, stream);
}

cudaError_t LaunchHistogram(const uint8_t* luma, size_t pitch, int w, int h, FrameSums* sums,
                            cudaStream_t stream) {
  return LaunchLumaPass<true, false, false>(luma, pitch, w, h, 1, false, nullptr, 0, sums, stream);
}

cudaError_t LaunchMeanStd(const uint8_t* luma, size_t pitch, int w, int h, FrameSums* sums,
                          cudaStream_t stream) {
  return LaunchLumaPass<false, true, false>(luma, pitch, w, h, 1, false, nullptr, 0, sums, stream);
}

cudaError_t LaunchGradients(const uint8_t* luma, size_t pitch, int w, int h, FrameSums* sums,
                            cudaStream_t stream) {
  if (w <= 0 || h <= 0) return cudaErrorInvalidValue;
  GradientsKernel<<<GridFor(h), kThreads, 0, stream>>>(luma, pitch, w, h, sums);
  return cudaGetLastError();
}

cudaError_t LaunchThumbnail(const uint8_t* luma, size_t pitch, int w, int h, uint8_t* thumb,
                            cudaStream_t stream) {
  if (w <= 0 || h <= 0) return cudaErrorInvalidValue;
  const int blocks = (kThumb * kThumb + kThumbWarps - 1) / kThumbWarps;
  ThumbnailKernel<<<blocks, 32 * kThumbWarps, 0, stream>>>(luma, pitch, w, h, thumb);
  return cudaGetLastError();
}

}  // namespace framepipe::kernels
