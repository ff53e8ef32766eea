// gpu_capacity: the capacity of one GPU server, measured on it. The in-process ordered pipeline
// (the same graph, stages and credits as `framepipe serve`) with 4 streams, once with the CUDA
// backend and once with the CPU backend, interleaved, for 640x480, 1280x720 and 1920x1080 frames
// sent as JPEG (decoded on the CPU) and as raw BGR. Built without gRPC, videoio or metrics so it
// can be shipped to a bare GPU machine with its libraries (scripts/gpu-bundle.sh).
//   gpu_capacity [--workers N] [--repeats R] [--json out.json]
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_format.h"
#include "analysis/cuda/cuda_analyzer.h"
#include "bench/workloads.h"

using namespace framepipe;         // NOLINT
using namespace framepipe::bench;  // NOLINT

int main(int argc, char** argv) {
  int workers = static_cast<int>(std::thread::hardware_concurrency());
  int repeats = 3;
  std::string json_path;
  for (int i = 1; i + 1 < argc; i += 2) {
    if (!std::strcmp(argv[i], "--workers")) workers = std::atoi(argv[i + 1]);
    if (!std::strcmp(argv[i], "--repeats")) repeats = std::atoi(argv[i + 1]);
    if (!std::strcmp(argv[i], "--json")) json_path = argv[i + 1];
  }
  std::string why;
  if (!CudaDeviceAvailable(&why)) {
    std::printf("gpu_capacity: skipped: %s\n", why.c_str());
    return 0;
  }
  auto created = CudaAnalyzer::Create({0, workers});
  if (!created.ok()) {
    std::fprintf(stderr, "gpu_capacity: %s\n", std::string(created.status().message()).c_str());
    return 1;
  }
  std::shared_ptr<Analyzer> gpu = std::move(created).value();
  const std::string device = static_cast<CudaAnalyzer*>(gpu.get())->device_description();
  std::printf("gpu_capacity: %s, %d workers, 4 streams, ordered pipeline, median of %d\n",
              device.c_str(), workers, repeats);
  std::printf("%-22s %12s %12s %14s %8s\n", "frames", "CUDA fps", "CPU fps", "CPU fps/worker",
              "CUDA/CPU");
  std::string json =
      absl::StrFormat("{\"device\":\"%s\",\"workers\":%d,\"results\":[", device, workers);
  bool first = true;
  for (auto [w, h] : {std::pair{640, 480}, {1280, 720}, {1920, 1080}}) {
    for (Encoding e : {Encoding::kJpeg, Encoding::kRaw}) {
      FrameSet set = MakeFrameSet(w, h, e, 8);
      PipelineConfig pc;
      pc.workers = workers;
      pc.streams = 4;
      // Well under a second per run on a 16-core host; medians over the repeats.
      const double mp = w * h / 1e6;
      pc.frames = std::max<int64_t>(60, static_cast<int64_t>(workers * 60 / std::max(0.3, mp)));
      PipelineConfig cpu = pc;
      pc.analyzer = gpu;
      std::vector<double> g, c;
      for (int r = 0; r < repeats; ++r) {
        g.push_back(RunPipeline(set, pc).frames_per_second);
        c.push_back(RunPipeline(set, cpu).frames_per_second);
      }
      std::sort(g.begin(), g.end());
      std::sort(c.begin(), c.end());
      const double gf = g[g.size() / 2], cf = c[c.size() / 2];
      std::printf("%-22s %12.1f %12.1f %14.1f %8.2f\n", set.name.c_str(), gf, cf, cf / workers,
                  cf > 0 ? gf / cf : 0.0);
      std::fflush(stdout);
      json += absl::StrFormat(
          "%s{\"frames\":\"%s\",\"cuda_fps\":%.2f,\"cpu_fps\":%.2f,\"cpu_fps_per_worker\":%.2f}",
          first ? "" : ",", set.name, gf, cf, cf / workers);
      first = false;
    }
  }
  json += "]}\n";
  if (!json_path.empty()) std::ofstream(json_path) << json;
  return 0;
}
