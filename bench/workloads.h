// The benchmark's workloads: frame sets, the compute ceilings (our functions and stock OpenCV
// on plain threads), the in-process pipeline (ordered, unordered, trivial bodies), the peers
// (the seed's naive C++ design and a plain oneTBB graph), and the service end to end.
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "analysis/analyzer.h"
#include "common/frame.h"
#include "media/synthetic_source.h"

namespace framepipe::bench {

struct FrameSet {
  std::string name;  // e.g. "1280x720 JPEG q90"
  int width = 0, height = 0;
  Encoding encoding = Encoding::kJpeg;
  std::vector<FrameInput> frames;  // distinct frames, cycled
  FrameInput Get(size_t i) const;  // a copy of frame i % size with seq = i
};

FrameSet MakeFrameSet(int width, int height, Encoding encoding, int count);

// Runs `work(thread, iteration)` on `threads` plain threads for about `seconds`; frames/s.
double RunThreads(int threads, double seconds, const std::function<void(int, int64_t)>& work);

// One frame through framepipe's own decode + analysis + enrichment (no graph, no ordering).
void OurChain(const FrameInput& frame, Analyzer& analyzer);
// The same definitions as straight OpenCV calls (the stock way).
void StockChain(const FrameInput& frame);

struct PipelineRun {
  double frames_per_second = 0;
  double mean_latency_ms = 0;  // admitted -> delivered
  std::vector<double> latencies_ms;
};

struct PipelineConfig {
  int workers = 2;
  int streams = 1;
  uint32_t max_in_flight = 16;
  bool ordered = true;
  bool trivial_stages = false;  // copy a few bytes instead of decoding/analysing
  bool intra_frame_parallel = false;
  bool metrics = false;                // a Prometheus Metrics observer attached
  std::shared_ptr<Analyzer> analyzer;  // null: CPU
  int64_t frames = 1000;               // per stream
};

// The in-process pipeline with producer threads submitting as fast as credits allow.
PipelineRun RunPipeline(const FrameSet& set, const PipelineConfig& config);

// oneTBB's own ordered chain with trivial bodies: input_node -> limiter -> 3 function_nodes ->
// sequencer -> serial sink. The floor for a oneTBB-based ordered pipeline. frames/s.
double RunPlainTbbGraph(int workers, int64_t frames);

// The seed's design, in C++: one bounded queue -> N worker threads -> mutex-protected std::map
// resequencer (unbounded) -> in-order consumer. Full chain or trivial bodies. frames/s.
double RunNaiveResequencer(const FrameSet& set, int workers, int64_t frames, bool trivial);

}  // namespace framepipe::bench
