#include "client/stream_client.h"

#include <netdb.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <filesystem>
#include <set>
#include <thread>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "client/stream_driver.h"
#include "common/clock.h"
#include "common/log.h"
#include "common/status.h"
#include "grpcpp/grpcpp.h"

namespace framepipe {
namespace {

using client_internal::ClientTotals;
using client_internal::Scheduler;
using client_internal::StreamDriver;

// How many servers a target names: an ipv4:/ipv6: list, or the addresses a dns: name resolves
// to now (what gRPC's resolver will find); 1 for anything else.
int CountAddresses(const std::string& target) {
  if (absl::StartsWith(target, "ipv4:") || absl::StartsWith(target, "ipv6:")) {
    return 1 + static_cast<int>(std::count(target.begin(), target.end(), ','));
  }
  if (!absl::StartsWith(target, "dns:")) return 1;
  std::string rest = target.substr(4);
  if (absl::StartsWith(rest, "//")) {  // dns://authority/host:port
    const size_t slash = rest.find('/', 2);
    rest = slash == std::string::npos ? "" : rest.substr(slash + 1);
  } else if (absl::StartsWith(rest, "/")) {
    rest = rest.substr(1);
  }
  std::string host = rest, port = "443";
  if (absl::StartsWith(rest, "[")) {  // [v6]:port
    const size_t close = rest.find(']');
    host = rest.substr(1, close == std::string::npos ? std::string::npos : close - 1);
    if (close != std::string::npos && close + 2 <= rest.size()) port = rest.substr(close + 2);
  } else if (const size_t colon = rest.rfind(':'); colon != std::string::npos) {
    host = rest.substr(0, colon);
    port = rest.substr(colon + 1);
  }
  addrinfo hints{};
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* res = nullptr;
  if (getaddrinfo(host.c_str(), port.c_str(), &hints, &res) != 0) return 1;
  std::set<std::string> unique;
  for (addrinfo* a = res; a; a = a->ai_next) {
    unique.insert(std::string(reinterpret_cast<const char*>(a->ai_addr), a->ai_addrlen));
  }
  freeaddrinfo(res);
  return std::max<int>(1, static_cast<int>(unique.size()));
}

// round_robin picks among the servers already connected: streams started while only the first
// connection is up would all land on that one server and stay there. So before the streams
// start, probe with GetStats (each call goes to the next connected server) until `expected`
// different servers (Stats.instance) have answered, or the deadline. Returns how many did.
int WaitForServers(grpc::Channel* channel, v1::FramePipeline::Stub* stub, int expected,
                   std::chrono::system_clock::time_point deadline) {
  if (!channel->WaitForConnected(deadline)) return 0;
  std::set<std::string> seen;
  while (static_cast<int>(seen.size()) < expected && std::chrono::system_clock::now() < deadline) {
    for (int i = 0; i < expected; ++i) {
      grpc::ClientContext ctx;
      ctx.set_deadline(deadline);
      v1::Stats st;
      if (stub->GetStats(&ctx, v1::GetStatsRequest(), &st).ok()) seen.insert(st.instance());
    }
    if (static_cast<int>(seen.size()) < expected) {
      // The others are still connecting (or down): look again shortly.
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
  }
  return static_cast<int>(seen.size());
}

SourceOptions SourceOptionsOf(const StreamClientOptions& o) {
  SourceOptions so;
  so.input = o.input;
  so.frames = o.frames;
  so.loop = o.loop;
  so.fps = o.fps;
  so.unpaced = o.unpaced;
  so.width = o.width;
  so.height = o.height;
  so.scene_length = o.scene_length;
  so.distinct_frames = o.distinct_frames;
  so.encoding = o.encoding;
  so.jpeg_quality = o.jpeg_quality;
  so.keep_images = !o.overlay_path.empty();
  so.send_packets = o.send_packets;
  return so;
}

// Fail before streaming, not after: the overlay's directory must exist and be writable.
absl::Status CheckOverlayPath(const std::string& overlay_path) {
  if (overlay_path.empty()) return absl::OkStatus();
  const std::filesystem::path dir = std::filesystem::absolute(overlay_path).parent_path();
  std::error_code ec;
  if (!std::filesystem::is_directory(dir, ec) || access(dir.c_str(), W_OK) != 0) {
    return absl::InvalidArgumentError(absl::StrCat("cannot write --overlay '", overlay_path, "': ",
                                                   dir.string(), " is not a writable directory"));
  }
  return absl::OkStatus();
}

// One channel for all streams. With a multi-address target (dns:///..., ipv4:a:p,b:p) the
// round_robin policy spreads the streams (RPCs) over the servers; each stream stays on one.
absl::StatusOr<std::shared_ptr<grpc::Channel>> OpenChannel(const StreamClientOptions& o) {
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(64 << 20);
  args.SetMaxSendMessageSize(64 << 20);
  args.SetLoadBalancingPolicyName("round_robin");
  FP_ASSIGN_OR_RETURN(const ClientCredentials creds, MakeClientCredentials(o.security));
  if (!creds.server_name_override.empty()) {
    args.SetSslTargetNameOverride(creds.server_name_override);
  }
  auto channel = grpc::CreateCustomChannel(o.target, creds.channel, args);
  const int servers = CountAddresses(o.target);
  if (servers > 1) {
    auto probe = v1::FramePipeline::NewStub(channel);
    const int ready = WaitForServers(channel.get(), probe.get(), servers,
                                     std::chrono::system_clock::now() + std::chrono::seconds(2));
    if (ready < servers) {
      LogLine("client_servers")
          .Add("target", o.target)
          .Add("expected", servers)
          .Add("ready", ready)
          .Emit();
    }
  }
  return channel;
}

// A live "received/total  frames/s" line on stderr while the streams run.
class ProgressLine {
 public:
  ProgressLine(const StreamClientOptions& o, const ClientTotals& totals) {
    if (!o.progress) return;
    thread_ = std::thread([this, &totals, total = o.frames > 0 ? o.frames * o.streams : 0] {
      std::unique_lock<std::mutex> l(mu_);
      while (!cv_.wait_for(l, std::chrono::milliseconds(500), [&] { return done_; })) {
        const int64_t r = totals.received.load();
        const double secs = SecondsBetween(totals.start, Now());
        std::fprintf(stderr, "\r  %lld/%lld results  %.1f frames/s   ", static_cast<long long>(r),
                     static_cast<long long>(total), secs > 0 ? static_cast<double>(r) / secs : 0.0);
      }
      std::fprintf(stderr, "\r%60s\r", "");
    });
  }
  ~ProgressLine() {
    {
      std::lock_guard<std::mutex> l(mu_);
      done_ = true;
    }
    cv_.notify_all();
    if (thread_.joinable()) thread_.join();
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  bool done_ = false;
  std::thread thread_;
};

// Totals, percentiles and stage means from what the streams collected.
void Summarise(ClientTotals* sh, ClientReport* report) {
  report->seconds = SecondsBetween(sh->start, Now());
  for (const auto& s : report->streams) {
    report->frames_sent += s.sent;
    report->results += s.received;
  }
  report->frames_per_second =
      report->seconds > 0 ? static_cast<double>(report->results) / report->seconds : 0;
  if (report->frames_sent > 0) {
    const double n = static_cast<double>(report->frames_sent);
    report->bytes_per_frame = static_cast<double>(sh->payload_bytes.load()) / n;
    report->client_cpu_ms_per_frame = (ProcessCpuSeconds() - sh->cpu_start_s) * 1000 / n;
  }
  report->latencies_ms = std::move(sh->latencies_ms);
  report->latency_times_s = std::move(sh->latency_times_s);
  const auto& lat = report->latencies_ms;
  report->p50_ms = Percentile(lat, 50);
  report->p90_ms = Percentile(lat, 90);
  report->p99_ms = Percentile(lat, 99);
  report->p999_ms = Percentile(lat, 99.9);
  report->max_ms = lat.empty() ? 0 : *std::max_element(lat.begin(), lat.end());
  double sum = 0;
  for (double v : lat) sum += v;
  report->mean_ms = lat.empty() ? 0 : sum / static_cast<double>(lat.size());
  if (sh->timed > 0) {
    const double n = static_cast<double>(sh->timed);
    double* means[6] = {&report->queue_ms,  &report->decode_ms,  &report->analyse_ms,
                        &report->enrich_ms, &report->reorder_ms, &report->total_ms};
    for (int k = 0; k < 6; ++k) *means[k] = sh->sum_ms[k] / n;
  }
  report->by_status = sh->by_status;
  report->server_total_p99_ms = Percentile(std::move(sh->server_total_ms), 99);
  report->first_results = std::move(sh->first_results);
}

}  // namespace

absl::StatusOr<ClientReport> RunStreamClient(const StreamClientOptions& o) {
  PrimeProcessClocks();
  if (o.streams < 1) return absl::InvalidArgumentError("--streams must be at least 1");
  FP_RETURN_IF_ERROR(CheckOverlayPath(o.overlay_path));
  if (o.send_packets && !o.overlay_path.empty()) {
    return absl::InvalidArgumentError(
        "--overlay draws on decoded frames; with --send packets the client decodes nothing");
  }
  ClientTotals sh;
  sh.options = &o;
  FP_ASSIGN_OR_RETURN(sh.make_source, MakeSourceFactory(SourceOptionsOf(o)));
  if (!o.out_jsonl.empty()) {
    sh.out.open(o.out_jsonl, std::ios::trunc);
    if (!sh.out) return absl::InvalidArgumentError(absl::StrCat("cannot write ", o.out_jsonl));
  }
  FP_ASSIGN_OR_RETURN(std::shared_ptr<grpc::Channel> channel, OpenChannel(o));
  std::vector<std::unique_ptr<FrameSource>> sources;
  for (int k = 0; k < o.streams; ++k) {
    sources.push_back(sh.make_source(k));
    if (!sources.back()) {
      return absl::InvalidArgumentError(
          absl::StrCat("cannot open --input '", o.input, "' again for stream ", k));
    }
  }
  ClientReport report;
  report.streams.resize(static_cast<size_t>(o.streams));
  sh.start = Now();
  sh.cpu_start_s = ProcessCpuSeconds();
  {
    ProgressLine progress(o, sh);
    auto stub = v1::FramePipeline::NewStub(channel);
    Scheduler scheduler;
    std::vector<std::unique_ptr<StreamDriver>> drivers;
    for (int k = 0; k < o.streams; ++k) {
      drivers.push_back(
          std::make_unique<StreamDriver>(k, stub.get(), &sh, &scheduler, std::move(sources[k])));
    }
    for (auto& d : drivers) d->Start();
    for (int k = 0; k < o.streams; ++k) report.streams[k] = drivers[k]->Wait();
  }
  Summarise(&sh, &report);
  return report;
}

}  // namespace framepipe
