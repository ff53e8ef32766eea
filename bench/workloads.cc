#include "bench/workloads.h"

#include "bench/unordered.h"

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <map>
#include <mutex>
#include <thread>

#include "absl/strings/str_cat.h"
#include "analysis/cpu/cpu_analyzer.h"
#include "analysis/decoder.h"
#include "common/clock.h"
#include "enrich/enricher.h"
#include "enrich/temporal_stage.h"
#include "oneapi/tbb/flow_graph.h"
#include "oneapi/tbb/global_control.h"
#include "oneapi/tbb/task_arena.h"
#include "opencv2/core.hpp"
#include "opencv2/features2d.hpp"
#include "opencv2/imgcodecs.hpp"
#include "opencv2/imgproc.hpp"
#include "pipeline/pipeline.h"
#include "pipeline/standard_stages.h"
#ifndef FRAMEPIPE_WORKLOADS_NO_METRICS
#include "server/metrics.h"
#endif

namespace framepipe::bench {

FrameInput FrameSet::Get(size_t i) const {
  FrameInput f = frames[i % frames.size()];
  f.seq = i;
  return f;
}

FrameSet MakeFrameSet(int width, int height, Encoding encoding, int count) {
  FrameSet set;
  set.width = width;
  set.height = height;
  set.encoding = encoding;
  set.name =
      absl::StrCat(width, "x", height, encoding == Encoding::kJpeg ? " JPEG q90" : " raw BGR");
  SyntheticSource src({width, height, 90, 7});
  for (int i = 0; i < count; ++i) {
    Image img = src.Render(i * 3);
    FrameInput f;
    f.data = EncodeImage(img, encoding, 90).value();
    if (encoding == Encoding::kRaw) {
      f.kind = PayloadKind::kRaw;
      f.raw_width = static_cast<uint32_t>(width);
      f.raw_height = static_cast<uint32_t>(height);
      f.raw_format_code = 2;
    } else {
      f.kind = PayloadKind::kEncoded;
    }
    set.frames.push_back(std::move(f));
  }
  return set;
}

double RunThreads(int threads, double seconds, const std::function<void(int, int64_t)>& work) {
  std::atomic<bool> stop{false};
  std::atomic<int64_t> done{0};
  std::vector<std::thread> ts;
  const TimePoint t0 = Now();
  for (int t = 0; t < threads; ++t) {
    ts.emplace_back([&, t] {
      for (int64_t i = 0; !stop.load(std::memory_order_relaxed); ++i) {
        work(t, i);
        done.fetch_add(1, std::memory_order_relaxed);
      }
    });
  }
  std::this_thread::sleep_for(std::chrono::duration<double>(seconds));
  stop = true;
  for (auto& t : ts) t.join();
  return static_cast<double>(done.load()) / SecondsBetween(t0, Now());
}

void OurChain(const FrameInput& frame, Analyzer& analyzer) {
  Image img, luma;
  FrameResult r;
  if (!DecodeFrame(frame, {}, &img).ok()) std::abort();
  if (!analyzer.Analyze(img, &r.analysis, &luma).ok()) std::abort();
  if (!Enrich(img, luma, r.analysis, EnrichConfig{}, &r.enrichment).ok()) std::abort();
}

// What a competent OpenCV user writes for the same definitions: buffers reused across frames
// (thread_local Mats keep their allocation), integer filter outputs where they are exact
// (Laplacian and Sobel of 8-bit luma fit in 16 bits), calcHist for the colour cells instead of
// a scalar loop, and OpenCV's own threading off while frames run on parallel threads (the caller
// sets cv::setNumThreads(1)).
void StockChain(const FrameInput& frame) {
  thread_local cv::Mat decoded, gray, hist, lap, gx, gy, gx2, gy2, mag2, thumb, cells;
  thread_local std::vector<cv::KeyPoint> kps;
  cv::Mat img;
  if (frame.kind == PayloadKind::kRaw) {
    img = cv::Mat(static_cast<int>(frame.raw_height), static_cast<int>(frame.raw_width), CV_8UC3,
                  const_cast<char*>(frame.data.data()));
  } else {
    cv::Mat buf(1, static_cast<int>(frame.data.size()), CV_8UC1,
                const_cast<char*>(frame.data.data()));
    cv::imdecode(buf, cv::IMREAD_COLOR, &decoded);
    img = decoded;
  }
  cv::cvtColor(img, gray, cv::COLOR_BGR2GRAY);
  const int channels[] = {0};
  const int bins[] = {256};
  const float range[] = {0, 256};
  const float* ranges[] = {range};
  cv::calcHist(&gray, 1, channels, cv::Mat(), hist, 1, bins, ranges);
  cv::Scalar mean, sd;
  cv::meanStdDev(gray, mean, sd);
  cv::Laplacian(gray, lap, CV_16S, 1);  // exact for 8-bit input
  cv::meanStdDev(lap, mean, sd);
  cv::Sobel(gray, gx, CV_16S, 1, 0, 3);
  cv::Sobel(gray, gy, CV_16S, 0, 1, 3);
  cv::multiply(gx, gx, gx2, 1, CV_32S);
  cv::multiply(gy, gy, gy2, 1, CV_32S);
  cv::add(gx2, gy2, mag2);
  volatile int edges = cv::countNonZero(mag2 > 64 * 64);
  (void)edges;
  cv::resize(gray, thumb, cv::Size(64, 64), 0, 0, cv::INTER_AREA);
  // Dominant colour: the 8x8x8 BGR cell histogram.
  const int cell_channels[] = {0, 1, 2};
  const int cell_bins[] = {8, 8, 8};
  const float* cell_ranges[] = {range, range, range};
  cv::calcHist(&img, 1, cell_channels, cv::Mat(), cells, 3, cell_bins, cell_ranges);
  cv::FAST(gray, kps, 20, true);
}

PipelineRun RunPipeline(const FrameSet& set, const PipelineConfig& c) {
  Stages stages;
  if (c.trivial_stages) {
    auto copy_some = [](FrameContext& ctx) {
      char buf[64];
      std::memcpy(buf, ctx.input.data.data(), std::min<size_t>(64, ctx.input.data.size()));
      ctx.result->analysis.width = static_cast<uint32_t>(buf[0]);
      return absl::OkStatus();
    };
    stages.decode = copy_some;
    stages.analyse = copy_some;
    stages.enrich = copy_some;
  } else {
    CpuAnalyzerOptions co;
    co.intra_frame_parallel = c.intra_frame_parallel;
    std::shared_ptr<Analyzer> analyzer =
        c.analyzer ? c.analyzer : std::make_shared<CpuAnalyzer>(co);
    stages = MakeStandardStages(analyzer, {});
  }
#ifndef FRAMEPIPE_WORKLOADS_NO_METRICS
  std::unique_ptr<Metrics> metrics;
  if (c.metrics) metrics = std::make_unique<Metrics>("bench", "cpu", c.workers);
#else
  std::unique_ptr<PipelineObserver> metrics;  // gpu_capacity: no metrics library
#endif
  if (!c.ordered) return RunUnorderedPipeline(set, c, std::move(stages));
  PipelineOptions po;
  po.workers = c.workers;
  po.global_max_in_flight = 1024;
  po.observer = metrics.get();
  auto pipeline = std::move(Pipeline::Create(po, stages)).value();
  PipelineRun run;
  std::mutex mu;
  std::condition_variable cv;
  int complete = 0;
  std::vector<std::vector<double>> lat(static_cast<size_t>(c.streams));
  std::vector<std::unique_ptr<Stream>> streams;
  for (int k = 0; k < c.streams; ++k) {
    StreamOptions so;
    so.id = absl::StrCat("bench-", k);
    so.max_in_flight = c.max_in_flight;
    std::vector<double>* l = &lat[static_cast<size_t>(k)];
    l->reserve(static_cast<size_t>(c.frames));
    so.on_result = [l](Delivery d) { l->push_back(d.result->timings.total_us / 1000.0); };
    so.on_complete = [&] {
      std::lock_guard<std::mutex> g(mu);
      ++complete;
      cv.notify_all();
    };
    streams.push_back(std::move(pipeline->OpenStream(so)).value());
  }
  const TimePoint t0 = Now();
  std::vector<std::thread> producers;
  for (int k = 0; k < c.streams; ++k) {
    producers.emplace_back([&, k] {
      for (int64_t i = 0; i < c.frames; ++i) {
        if (!streams[k]->Submit(set.Get(static_cast<size_t>(i + k))).ok()) std::abort();
      }
      streams[k]->Close();
    });
  }
  for (auto& t : producers) t.join();
  {
    std::unique_lock<std::mutex> g(mu);
    cv.wait(g, [&] { return complete == c.streams; });
  }
  const double secs = SecondsBetween(t0, Now());
  run.frames_per_second = static_cast<double>(c.frames * c.streams) / secs;
  double sum = 0;
  for (auto& l : lat) {
    for (double v : l) {
      sum += v;
      run.latencies_ms.push_back(v);
    }
  }
  run.mean_latency_ms = run.latencies_ms.empty() ? 0 : sum / run.latencies_ms.size();
  streams.clear();
  pipeline->Stop(std::chrono::seconds(10));
  return run;
}

double RunPlainTbbGraph(int workers, int64_t frames) {
  namespace flow = oneapi::tbb::flow;
  oneapi::tbb::global_control gc(oneapi::tbb::global_control::max_allowed_parallelism,
                                 static_cast<size_t>(workers) + 1);
  oneapi::tbb::task_arena arena(workers, 0);
  double fps = 0;
  arena.execute([&] {
    struct Msg {
      int64_t index;
      char payload[64];
    };
    flow::graph g;
    int64_t next = 0;
    flow::input_node<Msg> source(g, [&](oneapi::tbb::flow_control& fc) -> Msg {
      if (next >= frames) {
        fc.stop();
        return {};
      }
      Msg m;
      m.index = next++;
      std::memset(m.payload, static_cast<int>(m.index & 0xFF), sizeof(m.payload));
      return m;
    });
    flow::limiter_node<Msg> limiter(g, 32);
    auto body = [](Msg m) {
      m.payload[0] ^= 1;
      return m;
    };
    flow::function_node<Msg, Msg> a(g, flow::unlimited, body), b(g, flow::unlimited, body),
        c(g, flow::unlimited, body);
    flow::sequencer_node<Msg> seq(g, [](const Msg& m) { return static_cast<size_t>(m.index); });
    int64_t consumed = 0;
    flow::function_node<Msg, flow::continue_msg> sink(g, flow::serial, [&](const Msg&) {
      ++consumed;
      return flow::continue_msg();
    });
    flow::make_edge(source, limiter);
    flow::make_edge(limiter, a);
    flow::make_edge(a, b);
    flow::make_edge(b, c);
    flow::make_edge(c, seq);
    flow::make_edge(seq, sink);
    flow::make_edge(sink, limiter.decrementer());
    const TimePoint t0 = Now();
    source.activate();
    g.wait_for_all();
    fps = static_cast<double>(consumed) / SecondsBetween(t0, Now());
  });
  return fps;
}

double RunNaiveResequencer(const FrameSet& set, int workers, int64_t frames, bool trivial) {
  // The seed's shape: bounded work queue, worker threads, a std::map keyed by sequence number
  // under one mutex, and a consumer that waits for the next number.
  std::mutex qmu;
  std::condition_variable q_not_empty, q_not_full;
  std::deque<FrameInput> queue;
  const size_t capacity = static_cast<size_t>(workers) * 4;
  bool producer_done = false;
  std::mutex rmu;
  std::condition_variable r_cv;
  std::map<uint64_t, FrameResult> reorder;
  CpuAnalyzer analyzer(CpuAnalyzerOptions{false, 0});
  std::vector<std::thread> pool;
  for (int w = 0; w < workers; ++w) {
    pool.emplace_back([&] {
      for (;;) {
        FrameInput f;
        {
          std::unique_lock<std::mutex> l(qmu);
          q_not_empty.wait(l, [&] { return !queue.empty() || producer_done; });
          if (queue.empty()) return;
          f = std::move(queue.front());
          queue.pop_front();
        }
        q_not_full.notify_one();
        FrameResult r;
        r.seq = f.seq;
        if (trivial) {
          r.analysis.width = static_cast<uint32_t>(f.data[0]);
        } else {
          Image img, luma;
          if (DecodeFrame(f, {}, &img).ok() && analyzer.Analyze(img, &r.analysis, &luma).ok()) {
            (void)Enrich(img, luma, r.analysis, EnrichConfig{}, &r.enrichment);
          }
        }
        {
          std::lock_guard<std::mutex> l(rmu);
          reorder.emplace(r.seq, std::move(r));
        }
        r_cv.notify_one();
      }
    });
  }
  const TimePoint t0 = Now();
  std::thread consumer([&] {
    TemporalStage temporal;
    for (uint64_t next = 0; next < static_cast<uint64_t>(frames); ++next) {
      FrameResult r;
      {
        std::unique_lock<std::mutex> l(rmu);
        r_cv.wait(l, [&] { return reorder.count(next) > 0; });
        r = std::move(reorder[next]);
        reorder.erase(next);
      }
      r.status = FrameStatus::kOk;
      temporal.Apply(r);
    }
  });
  for (int64_t i = 0; i < frames; ++i) {
    std::unique_lock<std::mutex> l(qmu);
    q_not_full.wait(l, [&] { return queue.size() < capacity; });
    queue.push_back(set.Get(static_cast<size_t>(i)));
    l.unlock();
    q_not_empty.notify_one();
  }
  {
    std::lock_guard<std::mutex> l(qmu);
    producer_done = true;
  }
  q_not_empty.notify_all();
  consumer.join();
  const double fps = static_cast<double>(frames) / SecondsBetween(t0, Now());
  for (auto& t : pool) t.join();
  return fps;
}

}  // namespace framepipe::bench
