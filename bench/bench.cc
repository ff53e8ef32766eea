#include "bench/bench.h"

#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "analysis/analyzer_factory.h"
#include "analysis/cpu/cpu_analyzer.h"
#include "bench/bench_report.h"
#include "bench/video_ingest.h"
#include "bench/workloads.h"
#include "child_process.h"
#include "client/stream_client.h"
#include "common/clock.h"
#include "common/log.h"
#include "enrich/scene_cut.h"
#include "enrich/temporal_stage.h"
#include "google/protobuf/struct.pb.h"
#include "google/protobuf/util/json_util.h"
#include "opencv2/core.hpp"
#include "server/server.h"

#ifdef FRAMEPIPE_BENCH_HAVE_CUDA
#include "analysis/cuda/cuda_analyzer.h"
#endif

namespace framepipe::bench {
namespace {

std::string Machine() {
  std::ifstream in("/proc/cpuinfo");
  std::string line, model;
  while (std::getline(in, line)) {
    if (line.rfind("model name", 0) == 0) {
      model = line.substr(line.find(':') + 2);
      break;
    }
  }
  return absl::StrCat(model, ", ", std::thread::hardware_concurrency(), " hardware threads");
}

double Median(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

// Runs each measurement `repeats` times, interleaved (A B C, B C A, C A B, ...: each round starts
// one configuration later, so none always runs first or right after a given other). The figures
// are medians over rounds; a ratio is the median over rounds of the two configurations' ratio in
// the same round, measured seconds apart, so drift of the shared machine between rounds (other
// guests, frequency) cancels instead of landing on whichever configuration it happened to hit.
struct Samples {
  std::vector<std::vector<double>> runs;  // [configuration][round]
  double Median(size_t i) const { return bench::Median(runs[i]); }
  double Ratio(size_t a, size_t b) const {
    std::vector<double> r;
    for (size_t k = 0; k < runs[a].size(); ++k) {
      if (runs[b][k] > 0) r.push_back(runs[a][k] / runs[b][k]);
    }
    return bench::Median(std::move(r));
  }
  int rounds() const { return runs.empty() ? 0 : static_cast<int>(runs[0].size()); }
  // How a target compared a with b, for its report line.
  std::string Versus(size_t a, size_t b) const {
    return absl::StrFormat("%.1f vs %.1f frames/s (medians; ratio: median of %d paired rounds)",
                           Median(a), Median(b), rounds());
  }
};

Samples Interleaved(int repeats, const std::vector<std::function<double()>>& runs) {
  Samples s;
  s.runs.resize(runs.size());
  for (int r = 0; r < repeats; ++r) {
    for (size_t j = 0; j < runs.size(); ++j) {
      const size_t i = (j + static_cast<size_t>(r)) % runs.size();
      s.runs[i].push_back(runs[i]());
    }
  }
  return s;
}

struct Ctx {
  const BenchOptions* o;
  int repeats = 3;
  Report report;
  int workers;
  double secs;     // per timed compute run
  int64_t frames;  // per pipeline run (scaled by frame size)
  bool Want(const std::string& section) const {
    return o->only.empty() || section.find(o->only) != std::string::npos;
  }
  int64_t FramesFor(const FrameSet& s) const {
    const double mp = s.width * s.height / 1e6;
    return std::max<int64_t>(40, static_cast<int64_t>(frames / std::max(0.3, mp)));
  }
};

// ---------------------------------------------------------------- compute ceilings & pipeline
void ComputeAndPipeline(Ctx& c, const FrameSet& set, bool main_size) {
  const std::string sec = absl::StrCat("In-process, ", set.name, ", ", c.workers, " workers");
  CpuAnalyzer analyzer(CpuAnalyzerOptions{false, 0});
  PipelineConfig pc;
  pc.workers = c.workers;
  pc.frames = c.FramesFor(set);
  pc.max_in_flight = static_cast<uint32_t>(4 * c.workers);
  PipelineConfig uc = pc;
  uc.ordered = false;
  const Samples m = Interleaved(
      c.repeats, {[&] {
                    return RunThreads(c.workers, c.secs, [&](int t, int64_t i) {
                      OurChain(set.frames[static_cast<size_t>(t * 7 + i) % set.frames.size()],
                               analyzer);
                    });
                  },
                  [&] {
                    // Parallel across frames, as a competent developer would: OpenCV's own
                    // threading off.
                    const int saved = cv::getNumThreads();
                    cv::setNumThreads(1);
                    const double fps = RunThreads(c.workers, c.secs, [&](int t, int64_t i) {
                      StockChain(set.frames[static_cast<size_t>(t * 7 + i) % set.frames.size()]);
                    });
                    cv::setNumThreads(saved);
                    return fps;
                  },
                  [&] { return RunPipeline(set, pc).frames_per_second; },
                  [&] { return RunPipeline(set, uc).frames_per_second; },
                  [&] { return RunNaiveResequencer(set, c.workers, pc.frames, false); }});
  const double ideal = m.Median(0), stock = m.Median(1), naive = m.Median(4);
  PipelineRun ordered, unordered;
  ordered.frames_per_second = m.Median(2);
  unordered.frames_per_second = m.Median(3);
  c.report.Add(sec, "ideal: our decode+analysis+enrichment on plain threads", ideal, "frames/s");
  c.report.Add(sec, "stock ceiling: the same definitions as stock OpenCV calls", stock, "frames/s");
  c.report.Add(sec, "pipeline, ordered (resequencer on)", ordered.frames_per_second, "frames/s");
  c.report.Add(sec, "pipeline, unordered (resequencer bypassed)", unordered.frames_per_second,
               "frames/s");
  c.report.Add(sec, "naive C++ (bounded queue -> threads -> std::map resequencer)", naive,
               "frames/s");
  c.report.Add(sec, "ordered / ideal", m.Ratio(2, 0), "x");
  c.report.Add(sec, "ordered / stock ceiling", m.Ratio(2, 1), "x");
  if (main_size) {
    c.report.AddTarget({"ordered pipeline >= 0.97 x our ideal (1280x720 JPEG)", m.Ratio(2, 0), 0.97,
                        false, m.Versus(2, 0)});
    c.report.AddTarget({"ordered pipeline >= 1.2 x stock OpenCV ceiling (1280x720 JPEG)",
                        m.Ratio(2, 1), 1.2, false, m.Versus(2, 1)});
    c.report.AddTarget({"ordered >= 0.98 x unordered (same graph, 1280x720 JPEG)", m.Ratio(2, 3),
                        0.98, false, m.Versus(2, 3)});
    c.report.AddTarget({"in-process pipeline >= 1.0 x naive C++ baseline (1280x720 JPEG)",
                        m.Ratio(2, 4), 1.0, false, m.Versus(2, 4)});
  }
}

void GraphOverhead(Ctx& c) {
  const std::string sec = "Graph overhead, trivial stage bodies";
  FrameSet tiny;
  tiny.name = "64-byte payloads";
  FrameInput f;
  f.kind = PayloadKind::kEncoded;
  f.data.assign(64, 'x');
  tiny.frames.push_back(f);
  const int64_t n = c.o->quick ? 100000 : 300000;
  // The producer is a thread of its own (as gRPC's are for the service): leave it a core.
  const int workers = std::max(1, c.workers - 1);
  PipelineConfig pc;
  pc.workers = workers;
  pc.trivial_stages = true;
  pc.frames = n;
  pc.max_in_flight = 64;
  PipelineConfig pc4 = pc;
  pc4.streams = 4;
  pc4.frames = n / 4;
  const Samples m =
      Interleaved(c.repeats + 2, {[&] { return RunPipeline(tiny, pc).frames_per_second; },
                                  [&] { return RunPipeline(tiny, pc4).frames_per_second; },
                                  [&] { return RunPlainTbbGraph(workers, n); },
                                  [&] { return RunNaiveResequencer(tiny, workers, n, true); }});
  const double us1 = 1e6 / m.Median(0), us4 = 1e6 / m.Median(1), tbb = m.Median(2),
               naive = m.Median(3);
  c.report.Add(
      sec, absl::StrCat("framepipe graph, 1 stream, ", workers, " worker(s) + 1 producer thread"),
      us1, "us/frame");
  c.report.Add(sec, "framepipe graph, 4 streams", us4, "us/frame");
  c.report.Add(sec, "plain oneTBB: limiter(32) -> 3 nodes -> sequencer -> serial sink", 1e6 / tbb,
               "us/frame");
  c.report.Add(sec, "naive C++: queue -> threads -> std::map resequencer", 1e6 / naive, "us/frame");
  c.report.AddTarget({"graph overhead <= 2 us/frame (trivial bodies, credits, per-stream order)",
                      std::max(us1, us4), 2.0, true,
                      absl::StrFormat("1 stream %.2f us, 4 streams %.2f us; plain oneTBB %.2f us",
                                      us1, us4, 1e6 / tbb)});
}

// The ordered temporal stage runs serially per stream, so its cost per frame bounds one stream's
// rate: the scene-cut detector alone and the whole stage (scene change, motion, detector), on the
// analyses of real frames, in calls per second.
void TemporalCost(Ctx& c) {
  const std::string sec = "Ordered temporal stage, per frame (serial within a stream)";
  const FrameSet set = MakeFrameSet(1280, 720, Encoding::kJpeg, 16);
  CpuAnalyzer analyzer(CpuAnalyzerOptions{false, 0});
  std::vector<FrameResult> frames(set.frames.size());
  for (size_t i = 0; i < frames.size(); ++i) {
    Image img, luma;
    if (!DecodeFrame(set.frames[i], {}, &img).ok() ||
        !analyzer.Analyze(img, &frames[i].analysis, &luma).ok()) {
      std::abort();
    }
    frames[i].status = FrameStatus::kOk;
  }
  const int64_t n = c.o->quick ? 300000 : 2000000;
  volatile double sink = 0;
  auto rate = [&](auto&& body) {
    const TimePoint t0 = Now();
    for (int64_t i = 0; i < n; ++i) body(frames[static_cast<size_t>(i) % frames.size()]);
    return static_cast<double>(n) / SecondsBetween(t0, Now());
  };
  const Samples m = Interleaved(
      c.repeats, {[&] {
                    SceneCutDetector d;
                    return rate([&](FrameResult& r) { sink = sink + d.Observe(r.analysis); });
                  },
                  [&] {
                    TemporalStage t;
                    return rate([&](FrameResult& r) { t.Apply(r); });
                  }});
  const double detector = 1e6 / m.Median(0), stage = 1e6 / m.Median(1);
  c.report.Add(sec, "scene-cut detector (SceneCutDetector::Observe)", detector, "us/frame");
  c.report.Add(sec, "whole stage: scene change + motion + detector", stage, "us/frame");
  c.report.AddTarget({"scene-cut detector <= 1 us/frame beyond the existing temporal stage",
                      detector, 1.0, true,
                      absl::StrFormat("detector %.2f us of the stage's %.2f us", detector, stage)});
}

void MetricsCost(Ctx& c, const FrameSet& set) {
  const std::string sec = absl::StrCat("Metrics cost, ", set.name);
  PipelineConfig pc;
  pc.workers = c.workers;
  pc.frames = c.FramesFor(set);
  pc.max_in_flight = static_cast<uint32_t>(4 * c.workers);
  PipelineConfig pm = pc;
  pm.metrics = true;
  FrameSet tiny;
  tiny.name = "trivial";
  FrameInput f;
  f.kind = PayloadKind::kEncoded;
  f.data.assign(64, 'x');
  tiny.frames.push_back(f);
  PipelineConfig tc;
  tc.workers = std::max(1, c.workers - 1);
  tc.trivial_stages = true;
  tc.frames = c.o->quick ? 100000 : 300000;
  tc.max_in_flight = 64;
  PipelineConfig tm = tc;
  tm.metrics = true;
  const Samples m =
      Interleaved(c.repeats, {[&] { return RunPipeline(set, pc).frames_per_second; },
                              [&] { return RunPipeline(set, pm).frames_per_second; },
                              [&] { return RunPipeline(tiny, tc).frames_per_second; },
                              [&] { return RunPipeline(tiny, tm).frames_per_second; }});
  PipelineRun off, on, toff, ton;
  off.frames_per_second = m.Median(0);
  on.frames_per_second = m.Median(1);
  toff.frames_per_second = m.Median(2);
  ton.frames_per_second = m.Median(3);
  c.report.Add(sec, "pipeline, metrics off", off.frames_per_second, "frames/s");
  c.report.Add(sec, "pipeline, metrics on", on.frames_per_second, "frames/s");
  c.report.Add(sec, "metrics on / off", m.Ratio(1, 0), "x");
  c.report.Add(sec, "trivial bodies: metrics cost per frame",
               1e6 / ton.frames_per_second - 1e6 / toff.frames_per_second, "us/frame");
}

void IntraFrame(Ctx& c) {
  const std::string sec = "Single-stream latency, 1920x1080 JPEG, one frame in flight";
  FrameSet set = MakeFrameSet(1920, 1080, Encoding::kJpeg, 8);
  PipelineConfig pc;
  pc.workers = c.workers;
  pc.frames = c.o->quick ? 40 : 120;
  pc.max_in_flight = 1;
  const PipelineRun whole = RunPipeline(set, pc);
  pc.intra_frame_parallel = true;
  const PipelineRun split = RunPipeline(set, pc);
  c.report.Add(sec, "one worker per frame", whole.mean_latency_ms, "ms");
  c.report.Add(sec, "frame split across cores (row bands)", split.mean_latency_ms, "ms");
  c.report.Add(sec, "speed-up", whole.mean_latency_ms / split.mean_latency_ms, "x");
}

// ---------------------------------------------------------------- end to end over gRPC
StreamClientOptions ClientFor(int port, const FrameSet& set, int streams, int64_t frames) {
  StreamClientOptions o;
  o.target = absl::StrCat("127.0.0.1:", port);
  o.streams = streams;
  o.frames = frames;
  o.width = set.width;
  o.height = set.height;
  o.encoding = set.encoding;
  o.distinct_frames = 16;
  o.progress = false;
  o.max_in_flight = 16;
  return o;
}

ClientReport MustRun(const StreamClientOptions& o) {
  auto r = RunStreamClient(o);
  if (!r.ok()) {
    std::fprintf(stderr, "bench client failed: %s\n", std::string(r.status().message()).c_str());
    return {};
  }
  if (!r->ok()) std::fprintf(stderr, "bench client: %s", FormatReport(*r, 0).c_str());
  return *std::move(r);
}

// A real server for the gRPC figures: loopback port 0, no metrics port, the CPU backend, frames
// not split across cores (the streams are the parallelism).
ServerOptions LoopbackServerOptions(const Ctx& c) {
  ServerOptions so;
  so.listen = "127.0.0.1:0";
  so.metrics = "";
  so.workers = c.workers;
  so.backend = "cpu";
  so.intra_frame_parallel = false;
  return so;
}

void EndToEnd(Ctx& c) {
  const std::string sec = "End to end over gRPC on loopback (server and client share the machine)";
  auto server = Server::Start(LoopbackServerOptions(c));
  if (!server.ok()) {
    std::fprintf(stderr, "bench: %s\n", std::string(server.status().message()).c_str());
    return;
  }
  const int port = (*server)->port();
  FrameSet jpeg = MakeFrameSet(1280, 720, Encoding::kJpeg, 16);
  const int64_t n = c.FramesFor(jpeg);
  // Max throughput, interleaved with the in-process figures it is compared with.
  PipelineConfig pc;
  pc.workers = c.workers;
  pc.frames = n;
  pc.max_in_flight = static_cast<uint32_t>(4 * c.workers);
  ClientReport one, four;
  const Samples m =
      Interleaved(c.repeats, {[&] {
                                ClientReport r = MustRun(ClientFor(port, jpeg, 1, n));
                                if (r.frames_per_second >= one.frames_per_second) one = r;
                                return r.frames_per_second;
                              },
                              [&] {
                                ClientReport r =
                                    MustRun(ClientFor(port, jpeg, 4, std::max<int64_t>(n / 4, 20)));
                                if (four.latencies_ms.empty()) four = r;
                                return r.frames_per_second;
                              },
                              [&] { return RunPipeline(jpeg, pc).frames_per_second; },
                              [&] { return RunNaiveResequencer(jpeg, c.workers, n, false); }});
  one.frames_per_second = m.Median(0);
  four.frames_per_second = m.Median(1);
  const double inproc = m.Median(2), naive = m.Median(3);
  c.report.Add(sec, "1280x720 JPEG, 1 stream, max throughput", one.frames_per_second, "frames/s");
  c.report.Add(sec, "1280x720 JPEG, 4 streams, max throughput", four.frames_per_second, "frames/s");
  c.report.Add(sec, "  4 streams: latency p50", four.p50_ms, "ms");
  c.report.Add(sec, "  4 streams: latency p99", four.p99_ms, "ms");
  // Unloaded single-frame service time: one frame at a time, far below capacity.
  StreamClientOptions lone = ClientFor(port, jpeg, 1, c.o->quick ? 20 : 60);
  lone.fps = 5;
  lone.max_in_flight = 1;
  const ClientReport unloaded = MustRun(lone);
  c.report.Add(sec, "unloaded single-frame service time (p50, 5 frames/s)", unloaded.p50_ms, "ms");
  ClientReport at50;
  for (double load : {0.5, 0.8}) {
    StreamClientOptions paced = ClientFor(port, jpeg, 4, c.o->quick ? 60 : 200);
    paced.fps = load * four.frames_per_second / 4;
    const ClientReport r = MustRun(paced);
    const std::string tag =
        absl::StrFormat("paced at %.0f%% (4 x %.1f frames/s)", load * 100, paced.fps);
    c.report.Add(sec, tag + ": p50", r.p50_ms, "ms");
    c.report.Add(sec, tag + ": p99", r.p99_ms, "ms");
    c.report.Add(sec, tag + ": p99.9", r.p999_ms, "ms");
    c.report.AddLatencies(absl::StrFormat("gRPC 4 streams at %.0f%% load", load * 100),
                          r.latencies_ms);
    if (load == 0.5) at50 = r;
  }
  c.report.AddLatencies("gRPC 4 streams, max throughput", four.latencies_ms);
  c.report.AddTarget({"p99 latency at 50% load <= 2 x unloaded single-frame service time",
                      at50.p99_ms / std::max(1e-9, unloaded.p50_ms), 2.0, true,
                      absl::StrFormat("p99 %.2f ms vs %.2f ms", at50.p99_ms, unloaded.p50_ms)});
  c.report.Add(sec, "in-process pipeline, same frames", inproc, "frames/s");
  c.report.Add(sec, "naive C++ baseline in-process, same frames", naive, "frames/s");
  c.report.AddTarget({"end-to-end gRPC, 4 streams >= 0.85 x in-process pipeline (1280x720 JPEG)",
                      m.Ratio(1, 2), 0.85, false, m.Versus(1, 2)});
  c.report.Add("gRPC peers", "framepipe, 1280x720 JPEG, 4 streams", four.frames_per_second,
               "frames/s");
  FrameSet small = MakeFrameSet(320, 240, Encoding::kRaw, 16);
  const ClientReport small_fp = MustRun(ClientFor(port, small, 4, c.o->quick ? 400 : 1500));
  c.report.Add("gRPC peers", "framepipe, 320x240 raw, 4 streams", small_fp.frames_per_second,
               "frames/s");
  c.report.AddTarget({"end-to-end gRPC >= 1.0 x naive C++ baseline (in-process!, 1280x720 JPEG)",
                      m.Ratio(1, 3), 1.0, false, m.Versus(1, 3)});
  (*server)->Shutdown();
}

// What the hostile-client limits cost honest clients: the same workload against five servers
// in this process, side by side in interleaved rounds - the default (the front door, guarding
// plaintext connections inline in gRPC's own reads and writes, every limit on), gRPC's own
// listener (--guard off, the service's limits still on), gRPC's listener with the service's
// per-address shares, timeouts and decode CPU budget off too, gRPC's listener with BDP probing
// on as behind the front door but with nothing to hold its stream windows (not a configuration
// framepipe offers: against it, the guard alone), and the front door relaying (--guard relay,
// the path TLS connections take: a hop through the front door's threads).
void LimitsCost(Ctx& c) {
  const std::string sec = "Hostile-client limits: front door on vs off (same process, paired)";
  constexpr int kServers = 5;
  std::unique_ptr<Server> servers[kServers];
  for (int i = 0; i < kServers; ++i) {
    ServerOptions so = LoopbackServerOptions(c);
    so.guard = i == 0 || i == 4;
    so.guard_relay = i == 4;
    so.unguarded_bdp_probe = i == 3;
    so.max_receive_message_bytes = 64u << 20;
    if (i == 2) {
      so.max_streams_per_peer = so.max_streams;  // no per-address stream, read or credit share
      so.first_frame_timeout = so.idle_timeout = so.write_timeout = std::chrono::seconds(0);
      so.limits.max_decode_ms = 0;  // no CPU budget per decode (--max-decode-ms 0)
    }
    auto s = Server::Start(so);
    if (!s.ok()) {
      std::fprintf(stderr, "bench: %s\n", std::string(s.status().message()).c_str());
      return;
    }
    servers[i] = std::move(s).value();
  }
  for (const FrameSet& set : {MakeFrameSet(1280, 720, Encoding::kJpeg, 16),
                              MakeFrameSet(1920, 1080, Encoding::kRaw, 4)}) {
    const int64_t n = std::max<int64_t>(c.FramesFor(set) / 4, 20);
    // A 2% effect under this VM's run-to-run noise (±5% for a single run): three times the usual
    // number of paired rounds, and the median of their ratios.
    const FrontDoorCounters before = servers[0]->front_door_counters();
    const FrontDoorCounters relay_before = servers[4]->front_door_counters();
    int64_t frames_relayed = 0;
    auto run = [&](int i) {
      return MustRun(ClientFor(servers[i]->port(), set, 4, n)).frames_per_second;
    };
    const Samples m = Interleaved(3 * c.repeats, {[&] { return run(0); }, [&] { return run(1); },
                                                  [&] { return run(2); }, [&] { return run(3); },
                                                  [&] {
                                                    frames_relayed += 4 * n;
                                                    return run(4);
                                                  }});
    const FrontDoorCounters after = servers[0]->front_door_counters();
    const FrontDoorCounters relay_after = servers[4]->front_door_counters();
    const std::string what = absl::StrCat(set.name, ", 4 streams");
    c.report.Add(sec, what + ": front door (default: guarded inline)", m.Median(0), "frames/s");
    c.report.Add(sec, what + ": gRPC's listener (--guard off)", m.Median(1), "frames/s");
    c.report.Add(sec, what + ": on/off", m.Ratio(0, 1), "x");
    c.report.Add(sec, what + ": gRPC's listener, shares, timeouts and decode budget off too",
                 m.Median(2), "frames/s");
    c.report.Add(sec, what + ": service limits on/off (both --guard off)", m.Ratio(1, 2), "x");
    c.report.Add(sec, what + ": gRPC's listener with BDP probing, windows unchecked (no flag)",
                 m.Median(3), "frames/s");
    c.report.Add(sec, what + ": the guard alone (front door / that)", m.Ratio(0, 3), "x");
    const double inl = static_cast<double>(after.bytes_inline - before.bytes_inline);
    const double copied = static_cast<double>(after.bytes_copied - before.bytes_copied);
    c.report.Add(sec, what + ": bytes gRPC kept where it read them (inline, not copied)",
                 100.0 * inl / std::max(1.0, inl + copied), "%");
    c.report.Add(sec, what + ": front door relaying (--guard relay, TLS's path)", m.Median(4),
                 "frames/s");
    c.report.Add(sec, what + ": relay/off", m.Ratio(4, 1), "x");
    // What the relay's hop costs, measured directly (steadier than the throughput ratio).
    const double relay_ms =
        static_cast<double>(relay_after.relay_cpu_ns - relay_before.relay_cpu_ns) / 1e6;
    c.report.Add(sec, what + ": relay CPU per frame (--guard relay)",
                 relay_ms / static_cast<double>(std::max<int64_t>(1, frames_relayed)), "ms");
    const double spliced =
        static_cast<double>(relay_after.bytes_spliced - relay_before.bytes_spliced);
    const double relay_copied =
        static_cast<double>(relay_after.bytes_copied - relay_before.bytes_copied);
    c.report.Add(sec, what + ": bytes spliced past the guard (--guard relay)",
                 100.0 * spliced / std::max(1.0, spliced + relay_copied), "%");
    c.report.AddTarget(
        {absl::StrCat("hostile-client limits cost <= 2% (front door on / off, ", set.name, ")"),
         m.Ratio(0, 1), 0.98, false, m.Versus(0, 1)});
    c.report.AddTarget({absl::StrCat("service limits cost <= 2% (shares, timeouts, decode budget "
                                     "on / off, ",
                                     set.name, ")"),
                        m.Ratio(1, 2), 0.98, false, m.Versus(1, 2)});
  }
  for (auto& s : servers) s->Shutdown();
}

// One `framepipe stream` run as a child process (so that its CPU time is its own, not the
// in-process server's), read back from its --report JSON.
struct ChildClient {
  bool ok = false;
  double fps = 0, bytes_per_frame = 0, cpu_ms_per_frame = 0;
};

ChildClient RunClientProcess(const Ctx& c, int port, const std::string& args,
                             const std::string& report) {
  const std::string cmd =
      absl::StrCat("exec '", c.o->self_binary, "' stream --target 127.0.0.1:", port, " ", args,
                   " --no-progress --report '", report, "' > /dev/null");
  ChildProcess p({"/bin/sh", "-c", cmd});
  const int status = p.Wait();
  ChildClient out;
  std::ifstream in(report);
  std::stringstream text;
  text << in.rdbuf();
  google::protobuf::Struct json;
  if (status != 0 || !google::protobuf::util::JsonStringToMessage(text.str(), &json).ok()) {
    std::fprintf(stderr, "bench: client '%s' failed (status %d): %s\n", args.c_str(), status,
                 p.output().c_str());
    return out;
  }
  auto num = [&](const char* k) {
    auto it = json.fields().find(k);
    return it == json.fields().end() ? 0.0 : it->second.number_value();
  };
  out.ok = true;
  out.fps = num("frames_per_second");
  out.bytes_per_frame = num("bytes_per_frame");
  out.cpu_ms_per_frame = num("client_cpu_ms_per_frame");
  return out;
}

// Compressed video in: the same 720p footage sent as H.264 packets (the server decodes) and as
// JPEG frames, side by side against one in-process server, and the decode-only ceiling.
void VideoIngest(Ctx& c) {
  const std::string sec = "Compressed video in: 720p H.264 packets vs JPEG frames (same footage)";
  char tmpl[] = "/tmp/framepipe-bench-video-XXXXXX";
  if (!mkdtemp(tmpl)) return;
  const std::string dir = tmpl;
  auto clip = c.o->video.empty() ? MakeH264Clip(dir, 150) : absl::StatusOr<std::string>(c.o->video);
  auto footage = clip.ok() ? ReadVideoPackets(*clip) : absl::StatusOr<VideoPackets>(clip.status());
  auto jpegs = footage.ok() ? WriteJpegFrames(*footage, dir + "/jpeg")
                            : absl::StatusOr<int>(footage.status());
  if (!jpegs.ok()) {
    std::fprintf(stderr, "bench: video: %s\n", std::string(jpegs.status().message()).c_str());
    return;
  }
  auto server = Server::Start(LoopbackServerOptions(c));
  if (!server.ok()) return;
  const int port = (*server)->port();
  const int streams = c.o->quick ? 2 : 4;
  const int64_t n = c.o->quick ? 150 : 450;  // per stream
  const std::string each = absl::StrCat(" --streams ", streams, " --frames ", n);
  ChildClient packets, ring;
  const Samples m = Interleaved(
      c.repeats, {[&] {
                    packets = RunClientProcess(
                        c, port,
                        absl::StrCat("--input ", *clip, " --send packets --no-pace --loop", each),
                        dir + "/packets.json");
                    return packets.fps;
                  },
                  [&] {
                    ring = RunClientProcess(c, port, absl::StrCat("--input ", dir, "/jpeg", each),
                                            dir + "/ring.json");
                    return ring.fps;
                  },
                  [&] { return DecodeCeiling(*footage, c.workers, c.secs).value_or(0); }});
  // JPEG mode as a client really runs it: every frame decoded from the video and re-encoded.
  const ChildClient live =
      RunClientProcess(c, port,
                       absl::StrCat("--input ", *clip, " --send images --no-pace --loop --streams ",
                                    streams, " --frames ", n / 2),
                       dir + "/live.json");
  (*server)->Shutdown();
  std::filesystem::remove_all(dir);
  const std::string what =
      absl::StrFormat("%dx%d, %d streams", footage->info.width, footage->info.height, streams);
  c.report.Add(sec, what + ": H.264 packets, server frames/s", m.Median(0), "frames/s");
  c.report.Add(sec, what + ": JPEG frames (pre-encoded), server frames/s", m.Median(1), "frames/s");
  c.report.Add(sec, what + ": decode-only ceiling (libavcodec + our chain, plain threads)",
               m.Median(2), "frames/s");
  c.report.Add(sec, "bytes per frame: H.264 packets", packets.bytes_per_frame, "B");
  c.report.Add(sec, "bytes per frame: JPEG q90", ring.bytes_per_frame, "B");
  c.report.Add(sec, "client CPU per frame: H.264 packets (demux only)", packets.cpu_ms_per_frame,
               "ms");
  c.report.Add(sec, "client CPU per frame: JPEG (decode + re-encode each frame)",
               live.cpu_ms_per_frame, "ms");
  c.report.Add(sec, "JPEG mode with the client re-encoding, frames/s", live.fps, "frames/s");
  c.report.AddTarget({"H.264 ingest >= 0.9 x the decode-only ceiling (720p)", m.Ratio(0, 2), 0.9,
                      false, m.Versus(0, 2)});
  c.report.AddTarget({"H.264 ingest server frames/s >= JPEG ingest's (720p)", m.Ratio(0, 1), 1.0,
                      false, m.Versus(0, 1)});
  c.report.AddTarget(
      {"H.264 packets >= 10x fewer bytes per frame than JPEG q90",
       ring.bytes_per_frame / std::max(1.0, packets.bytes_per_frame), 10.0, false,
       absl::StrFormat("%.0f vs %.0f bytes", ring.bytes_per_frame, packets.bytes_per_frame)});
  c.report.AddTarget(
      {"H.264 packets >= 5x less client CPU per frame than JPEG mode",
       live.cpu_ms_per_frame / std::max(1e-6, packets.cpu_ms_per_frame), 5.0, false,
       absl::StrFormat("%.3f vs %.3f ms", live.cpu_ms_per_frame, packets.cpu_ms_per_frame)});
}

void PythonPeer(Ctx& c) {
  const std::string script = FRAMEPIPE_SOURCE_DIR "/bench/baselines/python_server.py";
  ChildProcess py({c.o->python, script, "--port", "0", "--workers", std::to_string(c.workers)},
                  {std::string("FRAMEPIPE_PY_GEN=") + FRAMEPIPE_PY_GEN_DIR});
  const int port =
      py.WaitForPort(std::chrono::seconds(30), "python_server listening port=([0-9]+)");
  if (port == 0) {
    std::fprintf(stderr, "bench: the Python peer did not start: %s\n", py.output().c_str());
    return;
  }
  FrameSet jpeg = MakeFrameSet(1280, 720, Encoding::kJpeg, 16);
  FrameSet small = MakeFrameSet(320, 240, Encoding::kRaw, 16);
  const ClientReport big = MustRun(ClientFor(port, jpeg, 4, c.o->quick ? 40 : 120));
  const ClientReport raw = MustRun(ClientFor(port, small, 4, c.o->quick ? 200 : 600));
  py.Signal(SIGKILL);
  py.Wait();
  c.report.Add("gRPC peers", "Python grpcio + OpenCV peer, 1280x720 JPEG, 4 streams",
               big.frames_per_second, "frames/s");
  c.report.Add("gRPC peers", "Python grpcio + OpenCV peer, 320x240 raw, 4 streams",
               raw.frames_per_second, "frames/s");
  const double fp_big = c.report.Get("gRPC peers", "framepipe, 1280x720 JPEG, 4 streams");
  const double fp_small = c.report.Get("gRPC peers", "framepipe, 320x240 raw, 4 streams");
  c.report.AddTarget({"end-to-end >= 2 x Python peer (1280x720 JPEG, 4 streams)",
                      fp_big / std::max(1e-9, big.frames_per_second), 2.0, false,
                      absl::StrFormat("%.1f vs %.1f frames/s", fp_big, big.frames_per_second)});
  c.report.AddTarget({"end-to-end >= 3 x Python peer (320x240 raw, 4 streams)",
                      fp_small / std::max(1e-9, raw.frames_per_second), 3.0, false,
                      absl::StrFormat("%.1f vs %.1f frames/s", fp_small, raw.frames_per_second)});
}

void SlowReader(Ctx& c) {
  const std::string sec = "Slow reader: 1280x720 raw frames, one result read per 50 ms";
  const uint32_t max_in_flight = 8;
  ChildProcess server({c.o->self_binary, "serve", "--listen", "127.0.0.1:0", "--metrics", "",
                       "--backend", "cpu", "--workers", std::to_string(c.workers),
                       "--max-in-flight", std::to_string(max_in_flight)});
  const int port = server.WaitForPort();
  if (port == 0) {
    std::fprintf(stderr, "bench: server did not start: %s\n", server.output().c_str());
    return;
  }
  PeakRss rss(server, std::chrono::milliseconds(20));
  FrameSet set = MakeFrameSet(1280, 720, Encoding::kRaw, 2);
  StreamClientOptions o = ClientFor(port, set, 1, c.o->quick ? 80 : 200);
  o.max_in_flight = max_in_flight;
  o.read_delay_ms = 50;
  o.distinct_frames = 2;
  const ClientReport r = MustRun(o);
  rss.Stop();
  server.Signal(SIGTERM);
  server.Wait();
  const double frame_bytes = 1280.0 * 720 * 3;
  const double growth_mib = rss.GrowthMiB();
  const double bound_mib = (1.5 * max_in_flight * frame_bytes) / 1048576.0 + 64;
  c.report.Add(sec, "server RSS before", static_cast<double>(rss.base()) / 1048576.0, "MiB");
  c.report.Add(sec, "server RSS peak", static_cast<double>(rss.peak()) / 1048576.0, "MiB");
  c.report.Add(sec, "results received in order", static_cast<double>(r.results), "frames");
  c.report.AddTarget({"slow-reader RSS growth <= 1.5 x max_in_flight x frame bytes + 64 MiB",
                      growth_mib, bound_mib, true,
                      absl::StrFormat("grew %.1f MiB; max_in_flight=%u, frame %.1f MiB", growth_mib,
                                      max_in_flight, frame_bytes / 1048576.0)});
}

void Gpu(Ctx& c) {
#ifdef FRAMEPIPE_BENCH_HAVE_CUDA
  std::string why;
  if (!CudaDeviceAvailable(&why)) {
    c.report.Add("GPU", "skipped: " + why, 0, "");
    return;
  }
  auto gpu = CudaAnalyzer::Create({0, c.workers});
  if (!gpu.ok()) return;
  std::shared_ptr<Analyzer> a = std::move(gpu).value();
  const std::string sec = "GPU: --backend cuda, " +
                          static_cast<CudaAnalyzer*>(a.get())->device_description() + ", " +
                          std::to_string(c.workers) + " workers";
  // Capacity of one GPU server: the ordered pipeline, 4 streams, CUDA analysis vs the CPU
  // backend on the same host, interleaved. JPEG frames are decoded on the CPU either way.
  for (auto [w, h] : {std::pair{640, 480}, {1280, 720}, {1920, 1080}}) {
    for (Encoding e : {Encoding::kJpeg, Encoding::kRaw}) {
      FrameSet set = MakeFrameSet(w, h, e, 8);
      PipelineConfig pc;
      pc.workers = c.workers;
      pc.streams = 4;
      pc.frames = std::max<int64_t>(40, c.FramesFor(set) * c.workers / 8);
      PipelineConfig cpu = pc;
      pc.analyzer = a;
      const Samples fps =
          Interleaved(c.repeats, {[&] { return RunPipeline(set, pc).frames_per_second; },
                                  [&] { return RunPipeline(set, cpu).frames_per_second; }});
      c.report.Add(sec, set.name + ": CUDA backend, ordered pipeline, 4 streams", fps.Median(0),
                   "frames/s");
      c.report.Add(sec, set.name + ": CPU backend, same host", fps.Median(1), "frames/s");
      c.report.Add(sec, set.name + ": CPU backend per worker", fps.Median(1) / c.workers,
                   "frames/s");
      c.report.Add(sec, set.name + ": CUDA / CPU", fps.Ratio(0, 1), "x");
    }
  }
#else
  c.report.Add("GPU", "skipped: built without the CUDA backend", 0, "");
#endif
}

}  // namespace

int RunBench(const BenchOptions& o) {
  SetLogEnabled(false);
  Ctx c;
  c.o = &o;
  c.workers = o.workers > 0 ? o.workers : static_cast<int>(std::thread::hardware_concurrency());
  c.repeats = o.quick ? 3 : 5;
  c.secs = o.quick ? 0.8 : 2.0;
  c.frames = o.quick ? 120 : 400;
  const std::string machine = Machine();
  std::printf("framepipe bench%s on %s\n", o.quick ? " --quick" : "", machine.c_str());
  std::fflush(stdout);
  const TimePoint t0 = Now();
  auto step = [&](const char* what) {
    std::fprintf(stderr, "[%6.1fs] %s\n", SecondsBetween(t0, Now()), what);
  };
  if (c.Want("in-process")) {
    step("in-process 1280x720 JPEG");
    ComputeAndPipeline(c, MakeFrameSet(1280, 720, Encoding::kJpeg, 16), true);
    if (!o.quick) {
      step("in-process other sizes");
      ComputeAndPipeline(c, MakeFrameSet(640, 480, Encoding::kJpeg, 16), false);
      ComputeAndPipeline(c, MakeFrameSet(1920, 1080, Encoding::kJpeg, 16), false);
      ComputeAndPipeline(c, MakeFrameSet(640, 480, Encoding::kRaw, 16), false);
      ComputeAndPipeline(c, MakeFrameSet(1280, 720, Encoding::kRaw, 16), false);
      ComputeAndPipeline(c, MakeFrameSet(1920, 1080, Encoding::kRaw, 16), false);
    }
  }
  if (c.Want("overhead")) {
    step("graph overhead");
    GraphOverhead(c);
  }
  if (c.Want("temporal")) {
    step("temporal stage cost");
    TemporalCost(c);
  }
  if (c.Want("metrics")) {
    step("metrics cost");
    MetricsCost(c, MakeFrameSet(1280, 720, Encoding::kJpeg, 16));
  }
  if (c.Want("latency")) {
    step("intra-frame parallelism");
    IntraFrame(c);
  }
  if (c.Want("grpc")) {
    step("end to end over gRPC");
    EndToEnd(c);
    step("Python peer");
    PythonPeer(c);
  }
  if (c.Want("limits")) {
    step("limits cost");
    LimitsCost(c);
  }
  if (c.Want("video")) {
    step("compressed video ingest");
    VideoIngest(c);
  }
  if (c.Want("slow")) {
    step("slow reader");
    SlowReader(c);
  }
  if (c.Want("gpu")) {
    step("GPU");
    Gpu(c);
  }
  step("done");
  std::printf("%s", c.report.Table().c_str());
  std::printf("\n(%.0f s)\n", SecondsBetween(t0, Now()));
  if (!o.json_path.empty()) {
    std::ofstream(o.json_path) << c.report.Json(machine);
    std::printf("wrote %s\n", o.json_path.c_str());
  }
  std::fflush(stdout);  // before the plot script's output, when stdout is a file
  if (!o.plot_dir.empty()) {
    std::string json = o.json_path;
    if (json.empty()) {
      json = o.plot_dir + "/bench.json";
      std::ofstream(json) << c.report.Json(machine);
    }
    const std::string cmd = absl::StrCat(o.python, " ", FRAMEPIPE_SOURCE_DIR,
                                         "/scripts/plot_bench.py ", json, " ", o.plot_dir);
    if (std::system(cmd.c_str()) != 0) std::fprintf(stderr, "plotting failed: %s\n", cmd.c_str());
  }
  int failed = 0;
  for (const auto& t : c.report.targets()) failed += t.pass() ? 0 : 1;
  return 0;  // the benchmark reports; falling short of a target is not an error of the run
}

}  // namespace framepipe::bench
