// GPU micro-benchmark (scripts/gpu-check.sh runs it on a GPU machine): GB/s of each analysis
// kernel against the card's peak memory bandwidth, frames/s of the CUDA Analyzer for 1920x1080
// BGR, and the CPU reference's frames/s on the same machine. Free of OpenCV/oneTBB/gRPC.
#include <cuda_runtime.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "analysis/cpu/luma_ops.h"
#include "analysis/cuda/cuda_analyzer.h"
#include "analysis_kernels.cuh"

using namespace framepipe;  // NOLINT

namespace {

struct Row {
  std::string name;
  double ms;
  double gbps;
};

template <typename Fn>
double TimeKernelMs(Fn&& launch, int iters) {
  cudaEvent_t a, b;
  cudaEventCreate(&a);
  cudaEventCreate(&b);
  for (int i = 0; i < 5; ++i) launch();
  cudaEventRecord(a);
  for (int i = 0; i < iters; ++i) launch();
  cudaEventRecord(b);
  cudaEventSynchronize(b);
  float ms = 0;
  cudaEventElapsedTime(&ms, a, b);
  cudaEventDestroy(a);
  cudaEventDestroy(b);
  return ms / iters;
}

template <typename Fn>
double FramesPerSecond(int threads, double seconds, Fn&& analyze_one) {
  std::atomic<bool> stop{false};
  std::atomic<long> frames{0};
  std::vector<std::thread> ts;
  const auto t0 = std::chrono::steady_clock::now();
  for (int t = 0; t < threads; ++t) {
    ts.emplace_back([&] {
      while (!stop.load(std::memory_order_relaxed)) {
        analyze_one();
        frames.fetch_add(1, std::memory_order_relaxed);
      }
    });
  }
  std::this_thread::sleep_for(std::chrono::duration<double>(seconds));
  stop = true;
  for (auto& t : ts) t.join();
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return static_cast<double>(frames.load()) / secs;
}

}  // namespace

int main(int argc, char** argv) {
  std::string json_path = argc > 1 ? argv[1] : "";
  std::string why;
  if (!CudaDeviceAvailable(&why)) {
    std::printf("no GPU: %s\n", why.c_str());
    return 0;
  }
  auto gpu = CudaAnalyzer::Create({0, 8});
  if (!gpu.ok()) {
    std::printf("CUDA analyzer: %s\n", std::string(gpu.status().message()).c_str());
    return 1;
  }
  const double peak = (*gpu)->peak_bandwidth_gbps();
  std::printf("%s\npeak memory bandwidth (spec): %.0f GB/s\n\n",
              (*gpu)->device_description().c_str(), peak);
  const int w = 1920, h = 1080;
  const size_t px = static_cast<size_t>(w) * h;
  std::mt19937 rng(1);
  Image frame = Image::Allocate(w, h, PixelFormat::kBgr8);
  for (size_t i = 0; i < frame.byte_size(); ++i)
    frame.mutable_data()[i] = static_cast<uint8_t>(rng());

  uint8_t *d_src, *d_luma, *d_thumb, *h_pinned;
  size_t src_pitch, luma_pitch;
  kernels::FrameSums* d_sums;
  cudaMallocPitch(&d_src, &src_pitch, w * 3, h);
  cudaMallocPitch(&d_luma, &luma_pitch, w, h);
  cudaMalloc(&d_sums, sizeof(kernels::FrameSums));
  cudaMalloc(&d_thumb, 4096);
  cudaMallocHost(&h_pinned, px * 3);
  std::memcpy(h_pinned, frame.data(), px * 3);
  cudaMemcpy2D(d_src, src_pitch, h_pinned, w * 3, w * 3, h, cudaMemcpyHostToDevice);
  kernels::LaunchLuma(d_src, src_pitch, w, h, 3, false, d_luma, luma_pitch, nullptr);
  cudaDeviceSynchronize();

  const int iters = 300;
  std::vector<Row> rows;
  auto add = [&](const char* name, double ms, double bytes) {
    rows.push_back({name, ms, bytes / (ms * 1e-3) / 1e9});
  };
  add("fused luma+histogram+sums (read BGR, write luma)",
      TimeKernelMs(
          [&] {
            kernels::LaunchLumaStats(d_src, src_pitch, w, h, 3, false, d_luma, luma_pitch, d_sums,
                                     nullptr);
          },
          iters),
      px * 4.0);
  add("luma only (read BGR, write luma)",
      TimeKernelMs(
          [&] {
            kernels::LaunchLuma(d_src, src_pitch, w, h, 3, false, d_luma, luma_pitch, nullptr);
          },
          iters),
      px * 4.0);
  add("histogram (read luma)",
      TimeKernelMs([&] { kernels::LaunchHistogram(d_luma, luma_pitch, w, h, d_sums, nullptr); },
                   iters),
      px * 1.0);
  add("mean/stddev sums (read luma)",
      TimeKernelMs([&] { kernels::LaunchMeanStd(d_luma, luma_pitch, w, h, d_sums, nullptr); },
                   iters),
      px * 1.0);
  add("Laplacian variance + Sobel count (read luma)",
      TimeKernelMs([&] { kernels::LaunchGradients(d_luma, luma_pitch, w, h, d_sums, nullptr); },
                   iters),
      px * 1.0);
  add("64x64 area thumbnail (read luma)",
      TimeKernelMs([&] { kernels::LaunchThumbnail(d_luma, luma_pitch, w, h, d_thumb, nullptr); },
                   iters),
      px * 1.0);
  add("H2D copy of the BGR frame (pinned)",
      TimeKernelMs(
          [&] {
            cudaMemcpy2DAsync(d_src, src_pitch, h_pinned, w * 3, w * 3, h, cudaMemcpyHostToDevice,
                              nullptr);
          },
          50),
      px * 3.0);
  cudaError_t err = cudaDeviceSynchronize();

  std::printf("kernel, 1920x1080                                     time      GB/s   of peak\n");
  for (const auto& r : rows) {
    std::printf("%-52s %7.3f ms %8.1f  %5.1f%%\n", r.name.c_str(), r.ms, r.gbps,
                100.0 * r.gbps / peak);
  }
  std::printf("(CUDA status after kernels: %s)\n\n", cudaGetErrorString(err));

  struct Fps {
    std::string name;
    double fps;
  };
  std::vector<Fps> fps;
  for (int threads : {1, 4, 8}) {
    fps.push_back({"CUDA Analyzer, " + std::to_string(threads) + " host threads",
                   FramesPerSecond(threads, 2.0, [&] {
                     Analysis a;
                     Image luma;
                     (void)(*gpu)->Analyze(frame, &a, &luma);
                   })});
  }
  const int cores = static_cast<int>(std::thread::hardware_concurrency());
  for (int threads : {1, cores}) {
    fps.push_back({"CPU reference (scalar), " + std::to_string(threads) + " threads",
                   FramesPerSecond(threads, 2.0, [&] {
                     Analysis a;
                     Image luma;
                     cpu::AnalyzeReference(frame, &a, &luma);
                   })});
  }
  std::printf("analysis of 1920x1080 BGR frames                    frames/s\n");
  for (const auto& f : fps) std::printf("%-52s %8.1f\n", f.name.c_str(), f.fps);

  if (!json_path.empty()) {
    std::ofstream out(json_path);
    out << "{\"device\":\"" << (*gpu)->device_description() << "\",\"peak_gbps\":" << peak
        << ",\"kernels\":[";
    for (size_t i = 0; i < rows.size(); ++i) {
      out << (i ? "," : "") << "{\"name\":\"" << rows[i].name << "\",\"ms\":" << rows[i].ms
          << ",\"gbps\":" << rows[i].gbps << "}";
    }
    out << "],\"fps\":[";
    for (size_t i = 0; i < fps.size(); ++i) {
      out << (i ? "," : "") << "{\"name\":\"" << fps[i].name << "\",\"fps\":" << fps[i].fps << "}";
    }
    out << "]}\n";
  }
  cudaFree(d_src);
  cudaFree(d_luma);
  cudaFree(d_sums);
  cudaFree(d_thumb);
  cudaFreeHost(h_pinned);
  return err == cudaSuccess ? 0 : 1;
}
