#include "analysis/cuda/cuda_analyzer.h"

#include <cuda_runtime.h>

#include <cmath>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "analysis_kernels.cuh"

namespace framepipe {

namespace {

absl::Status CudaError(const char* what, cudaError_t e) {
  return absl::InternalError(
      absl::StrCat(what, ": ", cudaGetErrorName(e), " (", cudaGetErrorString(e), ")"));
}

#define FP_CUDA_RETURN_IF_ERROR(what, expr)                                \
  do {                                                                     \
    cudaError_t fp_cuda_err_ = (expr);                                     \
    if (fp_cuda_err_ != cudaSuccess) return CudaError(what, fp_cuda_err_); \
  } while (false)

}  // namespace

struct CudaAnalyzer::Slot {
  cudaStream_t stream = nullptr;
  // Capacity of the buffers below, in pixels per dimension and channels.
  int cap_w = 0, cap_h = 0;
  uint8_t* h_src = nullptr;  // pinned, tightly packed frame
  uint8_t* d_src = nullptr;
  size_t d_src_pitch = 0;
  uint8_t* d_luma = nullptr;
  size_t d_luma_pitch = 0;
  uint8_t* h_luma = nullptr;  // pinned
  kernels::FrameSums* d_sums = nullptr;
  kernels::FrameSums* h_sums = nullptr;  // pinned
  uint8_t* d_thumb = nullptr;
  uint8_t* h_thumb = nullptr;  // pinned
  int allocations = 0;

  void FreeFrameBuffers() {
    if (h_src) cudaFreeHost(h_src);
    if (d_src) cudaFree(d_src);
    if (d_luma) cudaFree(d_luma);
    if (h_luma) cudaFreeHost(h_luma);
    h_src = d_src = d_luma = h_luma = nullptr;
    cap_w = cap_h = 0;
  }
  ~Slot() {
    FreeFrameBuffers();
    if (d_sums) cudaFree(d_sums);
    if (h_sums) cudaFreeHost(h_sums);
    if (d_thumb) cudaFree(d_thumb);
    if (h_thumb) cudaFreeHost(h_thumb);
    if (stream) cudaStreamDestroy(stream);
  }

  absl::Status Init() {
    FP_CUDA_RETURN_IF_ERROR("cudaStreamCreate",
                            cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
    FP_CUDA_RETURN_IF_ERROR("cudaMalloc sums", cudaMalloc(&d_sums, sizeof(kernels::FrameSums)));
    FP_CUDA_RETURN_IF_ERROR("cudaMallocHost sums",
                            cudaMallocHost(&h_sums, sizeof(kernels::FrameSums)));
    FP_CUDA_RETURN_IF_ERROR("cudaMalloc thumbnail", cudaMalloc(&d_thumb, kThumbnailBytes));
    FP_CUDA_RETURN_IF_ERROR("cudaMallocHost thumbnail", cudaMallocHost(&h_thumb, kThumbnailBytes));
    return absl::OkStatus();
  }

  // Grows the frame buffers to hold w x h (3 channels); keeps them when they are big enough.
  absl::Status Reserve(int w, int h) {
    if (w <= cap_w && h <= cap_h) return absl::OkStatus();
    FreeFrameBuffers();
    const int nw = std::max(w, cap_w), nh = std::max(h, cap_h);
    const size_t px = static_cast<size_t>(nw) * static_cast<size_t>(nh);
    FP_CUDA_RETURN_IF_ERROR("cudaMallocHost staging", cudaMallocHost(&h_src, px * 3));
    FP_CUDA_RETURN_IF_ERROR("cudaMallocPitch frame",
                            cudaMallocPitch(&d_src, &d_src_pitch, static_cast<size_t>(nw) * 3, nh));
    FP_CUDA_RETURN_IF_ERROR("cudaMallocPitch luma",
                            cudaMallocPitch(&d_luma, &d_luma_pitch, static_cast<size_t>(nw), nh));
    FP_CUDA_RETURN_IF_ERROR("cudaMallocHost luma", cudaMallocHost(&h_luma, px));
    cap_w = nw;
    cap_h = nh;
    ++allocations;
    return absl::OkStatus();
  }
};

bool CudaDeviceAvailable(std::string* why_not) {
  int n = 0;
  cudaError_t e = cudaGetDeviceCount(&n);
  if (e != cudaSuccess) {
    cudaGetLastError();  // not sticky, but keep the error state clean
    if (why_not) *why_not = absl::StrCat("cudaGetDeviceCount: ", cudaGetErrorString(e));
    return false;
  }
  if (n == 0) {
    if (why_not) *why_not = "no CUDA devices";
    return false;
  }
  return true;
}

absl::StatusOr<std::unique_ptr<CudaAnalyzer>> CudaAnalyzer::Create(
    const CudaAnalyzerOptions& options) {
  int n = 0;
  cudaError_t e = cudaGetDeviceCount(&n);
  if (e != cudaSuccess) {
    cudaGetLastError();
    return absl::FailedPreconditionError(
        absl::StrCat("no usable CUDA device (cudaGetDeviceCount: ", cudaGetErrorString(e), ")"));
  }
  if (n == 0) return absl::FailedPreconditionError("no usable CUDA device (0 devices)");
  if (options.device < 0 || options.device >= n) {
    return absl::FailedPreconditionError(
        absl::StrCat("CUDA device ", options.device, " does not exist (", n, " device(s))"));
  }
  FP_CUDA_RETURN_IF_ERROR("cudaSetDevice", cudaSetDevice(options.device));
  cudaDeviceProp prop;
  FP_CUDA_RETURN_IF_ERROR("cudaGetDeviceProperties",
                          cudaGetDeviceProperties(&prop, options.device));
  std::unique_ptr<CudaAnalyzer> a(new CudaAnalyzer());
  a->device_ = options.device;
  int mem_clock_khz = 0, bus_width = 0;
  cudaDeviceGetAttribute(&mem_clock_khz, cudaDevAttrMemoryClockRate, options.device);
  cudaDeviceGetAttribute(&bus_width, cudaDevAttrGlobalMemoryBusWidth, options.device);
  a->peak_gbps_ = 2.0 * mem_clock_khz * 1e3 * (bus_width / 8.0) / 1e9;
  a->description_ = absl::StrFormat("device %d: %s, sm_%d%d, %d SMs, %.0f GiB", options.device,
                                    prop.name, prop.major, prop.minor, prop.multiProcessorCount,
                                    prop.totalGlobalMem / 1073741824.0);
  const int slots = std::max(1, options.streams);
  for (int i = 0; i < slots; ++i) {
    auto s = std::make_unique<Slot>();
    absl::Status st = s->Init();
    if (!st.ok()) return absl::FailedPreconditionError(st.message());
    a->free_.push_back(s.get());
    a->slots_.push_back(std::move(s));
  }
  return a;
}

CudaAnalyzer::~CudaAnalyzer() {
  cudaSetDevice(device_);
  slots_.clear();
}

int CudaAnalyzer::allocations() const {
  int n = 0;
  for (const auto& s : slots_) n += s->allocations;
  return n;
}

CudaAnalyzer::Slot* CudaAnalyzer::Acquire() {
  std::unique_lock<std::mutex> l(mu_);
  cv_.wait(l, [&] { return !free_.empty(); });
  Slot* s = free_.back();
  free_.pop_back();
  return s;
}

void CudaAnalyzer::Release(Slot* slot) {
  {
    std::lock_guard<std::mutex> l(mu_);
    free_.push_back(slot);
  }
  cv_.notify_one();
}

absl::Status CudaAnalyzer::Analyze(const Image& frame, Analysis* out, Image* luma) {
  if (frame.empty() || frame.channels() == 0) {
    return absl::InternalError("cuda analyzer got an empty or untyped image");
  }
  Slot* slot = Acquire();
  struct Return {
    CudaAnalyzer* a;
    Slot* s;
    ~Return() { a->Release(s); }
  } give_back{this, slot};
  FP_CUDA_RETURN_IF_ERROR("cudaSetDevice", cudaSetDevice(device_));
  const int w = frame.width(), h = frame.height(), c = frame.channels();
  absl::Status st = slot->Reserve(w, h);
  if (!st.ok()) return st;
  const size_t row = static_cast<size_t>(w) * c;
  // Stage into pinned memory (tightly packed), then copy asynchronously into pitched device
  // memory.
  for (int y = 0; y < h; ++y) std::memcpy(slot->h_src + row * y, frame.row(y), row);
  cudaStream_t s = slot->stream;
  FP_CUDA_RETURN_IF_ERROR(
      "H2D frame", cudaMemcpy2DAsync(slot->d_src, slot->d_src_pitch, slot->h_src, row, row, h,
                                     cudaMemcpyHostToDevice, s));
  FP_CUDA_RETURN_IF_ERROR("memset sums",
                          cudaMemsetAsync(slot->d_sums, 0, sizeof(kernels::FrameSums), s));
  FP_CUDA_RETURN_IF_ERROR(
      "luma/histogram/sums kernel",
      kernels::LaunchLumaStats(slot->d_src, slot->d_src_pitch, w, h, c,
                               frame.format() == PixelFormat::kRgb8, slot->d_luma,
                               slot->d_luma_pitch, slot->d_sums, s));
  FP_CUDA_RETURN_IF_ERROR(
      "gradients kernel",
      kernels::LaunchGradients(slot->d_luma, slot->d_luma_pitch, w, h, slot->d_sums, s));
  FP_CUDA_RETURN_IF_ERROR(
      "thumbnail kernel",
      kernels::LaunchThumbnail(slot->d_luma, slot->d_luma_pitch, w, h, slot->d_thumb, s));
  FP_CUDA_RETURN_IF_ERROR("D2H sums",
                          cudaMemcpyAsync(slot->h_sums, slot->d_sums, sizeof(kernels::FrameSums),
                                          cudaMemcpyDeviceToHost, s));
  FP_CUDA_RETURN_IF_ERROR(
      "D2H thumbnail",
      cudaMemcpyAsync(slot->h_thumb, slot->d_thumb, kThumbnailBytes, cudaMemcpyDeviceToHost, s));
  FP_CUDA_RETURN_IF_ERROR(
      "D2H luma",
      cudaMemcpy2DAsync(slot->h_luma, static_cast<size_t>(w), slot->d_luma, slot->d_luma_pitch,
                        static_cast<size_t>(w), h, cudaMemcpyDeviceToHost, s));
  FP_CUDA_RETURN_IF_ERROR("stream synchronize", cudaStreamSynchronize(s));

  const kernels::FrameSums& sums = *slot->h_sums;
  const uint64_t n = static_cast<uint64_t>(w) * static_cast<uint64_t>(h);
  *out = Analysis{};
  out->width = static_cast<uint32_t>(w);
  out->height = static_cast<uint32_t>(h);
  out->backend = name();
  uint64_t hist_total = 0;
  for (int i = 0; i < 256; ++i) {
    out->histogram[i] = sums.histogram[i];
    hist_total += sums.histogram[i];
  }
  if (hist_total != n) {
    return absl::InternalError(
        absl::StrCat("GPU histogram counts ", hist_total, " pixels for a frame of ", n));
  }
  // One-pass sums (exact integers): mean and population stddev.
  out->mean_luma = static_cast<double>(sums.luma_sum) / static_cast<double>(n);
  const unsigned __int128 var_num = static_cast<unsigned __int128>(sums.luma_sq_sum) * n -
                                    static_cast<unsigned __int128>(sums.luma_sum) * sums.luma_sum;
  out->stddev_luma = std::sqrt(static_cast<double>(var_num)) / static_cast<double>(n);
  const __int128 lap_num = static_cast<__int128>(sums.lap_sq_sum) * static_cast<__int128>(n) -
                           static_cast<__int128>(sums.lap_sum) * sums.lap_sum;
  out->sharpness = static_cast<double>(lap_num) / (static_cast<double>(n) * static_cast<double>(n));
  out->edge_density = static_cast<double>(sums.edge_count) / static_cast<double>(n);
  std::memcpy(out->thumbnail.data(), slot->h_thumb, kThumbnailBytes);
  *luma = Image::Allocate(w, h, PixelFormat::kGray8);
  std::memcpy(luma->mutable_data(), slot->h_luma, n);
  return absl::OkStatus();
}

}  // namespace framepipe
