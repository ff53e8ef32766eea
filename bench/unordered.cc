#include "bench/unordered.h"

#include <atomic>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "common/clock.h"
#include "oneapi/tbb/flow_graph.h"
#include "oneapi/tbb/global_control.h"
#include "oneapi/tbb/task_arena.h"

namespace framepipe::bench {
namespace {

namespace flow = oneapi::tbb::flow;

// A stream's credit window (and the global cap), as the ordered pipeline keeps them.
class Credits {
 public:
  explicit Credits(uint32_t max) : max_(max) {}
  void Acquire() {
    std::unique_lock<std::mutex> l(mu_);
    cv_.wait(l, [&] { return used_ < max_; });
    ++used_;
  }
  void Release() {
    {
      std::lock_guard<std::mutex> l(mu_);
      --used_;
    }
    cv_.notify_one();
  }

 private:
  const uint32_t max_;
  std::mutex mu_;
  std::condition_variable cv_;
  uint32_t used_ = 0;
};

struct Job {
  FrameContext ctx;
  TimePoint admitted;
  int stream = 0;
  bool failed = false;
};

}  // namespace

PipelineRun RunUnorderedPipeline(const FrameSet& set, const PipelineConfig& c, Stages stages) {
  oneapi::tbb::global_control gc(oneapi::tbb::global_control::max_allowed_parallelism,
                                 static_cast<size_t>(c.workers) + 1);
  oneapi::tbb::task_arena arena(c.workers, 0);
  Credits global(1024);
  std::vector<std::unique_ptr<Credits>> windows;
  std::vector<std::vector<double>> lat(static_cast<size_t>(c.streams));
  std::vector<std::unique_ptr<std::mutex>> lat_mu;
  for (int k = 0; k < c.streams; ++k) {
    windows.push_back(std::make_unique<Credits>(c.max_in_flight));
    lat_mu.push_back(std::make_unique<std::mutex>());
  }
  std::atomic<int64_t> delivered{0};
  std::unique_ptr<flow::graph> g;
  std::unique_ptr<flow::function_node<Job*, Job*>> decode, analyse;
  std::unique_ptr<flow::function_node<Job*>> enrich;
  const auto run = [](const StageFn& fn, Job* j) {
    if (!j->failed && !fn(j->ctx).ok()) j->failed = true;
    return j;
  };
  arena.execute([&] {
    g = std::make_unique<flow::graph>();
    const size_t n = static_cast<size_t>(c.workers);
    decode = std::make_unique<flow::function_node<Job*, Job*>>(
        *g, n, [&](Job* j) { return run(stages.decode, j); });
    analyse = std::make_unique<flow::function_node<Job*, Job*>>(
        *g, n, [&](Job* j) { return run(stages.analyse, j); });
    enrich = std::make_unique<flow::function_node<Job*>>(*g, n, [&](Job* j) {
      run(stages.enrich, j);
      const double ms = SecondsBetween(j->admitted, Now()) * 1000;
      {
        std::lock_guard<std::mutex> l(*lat_mu[static_cast<size_t>(j->stream)]);
        lat[static_cast<size_t>(j->stream)].push_back(ms);
      }
      windows[static_cast<size_t>(j->stream)]->Release();
      global.Release();
      delete j;
      delivered.fetch_add(1, std::memory_order_release);
      return flow::continue_msg();
    });
    flow::make_edge(*decode, *analyse);
    flow::make_edge(*analyse, *enrich);
  });
  const TimePoint t0 = Now();
  std::vector<std::thread> producers;
  for (int k = 0; k < c.streams; ++k) {
    producers.emplace_back([&, k] {
      for (int64_t i = 0; i < c.frames; ++i) {
        windows[static_cast<size_t>(k)]->Acquire();
        global.Acquire();
        auto* j = new Job;
        j->ctx.input = set.Get(static_cast<size_t>(i + k));
        j->ctx.result = std::make_unique<FrameResult>();
        j->admitted = Now();
        j->stream = k;
        decode->try_put(j);
      }
    });
  }
  for (auto& t : producers) t.join();
  arena.execute([&] { g->wait_for_all(); });
  PipelineRun out;
  out.frames_per_second = static_cast<double>(delivered.load()) / SecondsBetween(t0, Now());
  double sum = 0;
  for (auto& l : lat) {
    for (double v : l) {
      sum += v;
      out.latencies_ms.push_back(v);
    }
  }
  out.mean_latency_ms = out.latencies_ms.empty() ? 0 : sum / out.latencies_ms.size();
  return out;
}

}  // namespace framepipe::bench
