// framepipe: one binary - `serve` (the service), `stream` (the client), `health` (a gRPC
// health probe for containers and Kubernetes) and `bench` (the benchmark suite).
#include <unistd.h>

#include <csignal>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <thread>

#include "CLI/CLI.hpp"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "common/clock.h"
#include "grpcpp/grpcpp.h"
#include "service/cli_util.h"
#include "service/health_probe.h"
#include "service/log.h"
#include "service/server.h"
#include "service/stream_client.h"

#ifdef FRAMEPIPE_WITH_BENCH
#include "bench/bench.h"
#endif

namespace framepipe {
namespace {

int Fail(const std::string& what) {
  std::fprintf(stderr, "framepipe: %s\n", what.c_str());
  return 2;
}

int RunServe(ServerOptions o, const std::string& drain, const std::string& idle,
             const std::string& first_frame, const std::string& guard, const std::string& memory,
             const std::string& log_format) {
  SetLogFormat(log_format == "json" ? LogFormat::kJson : LogFormat::kText);
  auto d = ParseDuration(drain);
  if (!d.ok()) return Fail(std::string(d.status().message()));
  o.drain_timeout = *d;
  auto it = ParseDuration(idle);
  if (!it.ok()) return Fail(std::string(it.status().message()));
  o.idle_timeout = *it;
  o.guard = guard == "on";
  auto mb = ParseMemoryBudgetMb(memory);
  if (!mb.ok()) return Fail(std::string(mb.status().message()));
  o.max_memory_mb = *mb;
  o.strict_memory = memory != "auto";
  auto ff = ParseDuration(first_frame);
  if (!ff.ok()) return Fail(std::string(ff.status().message()));
  o.first_frame_timeout = *ff;
  // Signals are taken by a dedicated thread (sigwait), so they are blocked everywhere else,
  // including every thread gRPC and oneTBB start from here on.
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGINT);
  pthread_sigmask(SIG_BLOCK, &set, nullptr);
  auto server = Server::Start(o);
  if (!server.ok()) return Fail(std::string(server.status().message()));
  // The only way to stop a server is a signal: this thread takes it, drains the server and
  // returns; main joins it before the server is destroyed.
  std::thread signals([&] {
    int sig = 0;
    sigwait(&set, &sig);
    LogLine("signal").Add("signal", sig == SIGTERM ? "SIGTERM" : "SIGINT").Emit();
    (*server)->Shutdown();
  });
  signals.join();
  return 0;
}

int RunStream(StreamClientOptions o, const std::string& size, const std::string& encode,
              const std::string& overload, const std::string& input, const std::string& report_path,
              const std::string& plot_path, const std::string& log_format) {
  SetLogFormat(log_format == "json" ? LogFormat::kJson : LogFormat::kText);
  if (!size.empty()) {
    absl::Status st = ParseSize(size, &o.width, &o.height);
    if (!st.ok()) return Fail(std::string(st.message()));
  }
  if (encode == "jpeg") {
    o.encoding = Encoding::kJpeg;
  } else if (encode == "png") {
    o.encoding = Encoding::kPng;
  } else if (encode == "raw") {
    o.encoding = Encoding::kRaw;
  } else {
    return Fail("--encode must be jpeg, png or raw");
  }
  o.drop_oldest = overload == "drop-oldest";
  o.input = input;
  auto report = RunStreamClient(o);
  if (!report.ok()) return Fail(std::string(report.status().message()));
  std::fputs(FormatReport(*report, o.show).c_str(), stdout);
  for (const auto& st : report->streams) {
    LogLine line("client_stream");
    line.Add("id", st.id).Add("sent", st.sent).Add("received", st.received);
    for (int i = 1; i < kFrameStatusCount; ++i) {
      if (st.by_status[i] > 0)
        line.Add(FrameStatusLabel(static_cast<FrameStatus>(i)), st.by_status[i]);
    }
    line.Add("in_order", st.in_order)
        .Add("complete", st.complete)
        .Add("duration_s", st.seconds)
        .Add("p99_ms", st.p99_ms)
        .Add("rpc_status", st.rpc_status);
    line.Emit();
  }
  std::string json_path = report_path;
  if (json_path.empty() && !plot_path.empty()) json_path = plot_path + ".json";
  if (!json_path.empty()) {
    std::ofstream(json_path) << ReportJson(*report);
    std::printf("report: %s\n", json_path.c_str());
  }
  if (!plot_path.empty()) {
    const std::string cmd = "/usr/bin/python3 " + std::string(FRAMEPIPE_SCRIPTS_DIR) +
                            "/plot_latency.py '" + json_path + "' '" + plot_path + "' >/dev/null";
    if (std::system(cmd.c_str()) != 0) {
      std::fprintf(stderr, "framepipe: plotting failed (%s)\n", cmd.c_str());
    } else {
      std::printf("plot: %s\n", plot_path.c_str());
    }
  }
  return report->ok() ? 0 : 1;
}

}  // namespace
}  // namespace framepipe

int main(int argc, char** argv) {
  using namespace framepipe;
  // Debian builds Abseil without NDEBUG, which leaves absl::Mutex's debug-only deadlock detector
  // on: every lock taken while holding another (gRPC's internals, all the time) goes through a
  // process-wide graph under a global lock, ~6x the cost of the lock pair, and a lock-order cycle
  // it believes it saw aborts the process. Abseil's release builds run without it; so do we.
  absl::SetMutexDeadlockDetectionMode(absl::OnDeadlockCycle::kIgnore);
  PrimeProcessClocks();
  CLI::App app{"framepipe: ordered, bounded analysis of live video frames over gRPC"};
  app.require_subcommand(1);

  // ---- serve
  ServerOptions so;
  std::string drain = "10s", idle = "60s", first_frame = "10s", log_format = "text";
  auto* serve = app.add_subcommand("serve", "Run the gRPC service");
  serve->add_option("--listen", so.listen, "Address to listen on (host:port; port 0 picks one)")
      ->capture_default_str();
  serve
      ->add_option("--metrics", so.metrics,
                   "Prometheus /metrics address (host:port; \"\" disables)")
      ->capture_default_str();
  serve
      ->add_option("--workers", so.workers,
                   "Pipeline worker threads shared by all streams (0 = hardware threads)")
      ->capture_default_str();
  serve
      ->add_option("--max-in-flight", so.max_in_flight,
                   "Default per-stream window: frames admitted and not yet answered. A client "
                   "may ask for another value in StreamConfig, up to --max-stream-in-flight")
      ->capture_default_str();
  serve
      ->add_option("--max-stream-in-flight", so.max_stream_in_flight,
                   "Largest max_in_flight a client may request")
      ->capture_default_str();
  serve
      ->add_option("--global-max-in-flight", so.global_max_in_flight,
                   "Frames in flight across all streams; when reached, streams stop reading "
                   "(flow control pushes back to the clients)")
      ->capture_default_str();
  std::string memory = "auto";
  serve
      ->add_option("--max-memory-mb", memory,
                   "Memory budget for the whole process' growth under load: 5/8 for frames in "
                   "flight (payload + decoded pixels + luma, charged from the image header "
                   "before decoding), 1/4 for messages being received, 1/8 for connections, "
                   "results and threads; when frames or reads use up theirs, streams stop "
                   "reading (flow control pushes back). auto: half the memory of the machine or "
                   "container (256 MiB..16 GiB); N: a hard ceiling of N MiB; 0: count limits only")
      ->capture_default_str();
  serve
      ->add_option("--max-decode-ms", so.limits.max_decode_ms,
                   "CPU time one frame's decode may take (decode bombs); over it the frame gets "
                   "INVALID_ARGUMENT (0 = no limit)")
      ->capture_default_str();
  serve
      ->add_option("--backend", so.backend,
                   "Analysis backend: auto (CUDA when a GPU is usable, else CPU), cpu, cuda")
      ->check(CLI::IsMember({"auto", "cpu", "cuda"}))
      ->capture_default_str();
  serve->add_option("--device", so.device, "CUDA device index")->capture_default_str();
  serve
      ->add_option("--drain-timeout", drain,
                   "On SIGTERM/SIGINT: how long to finish and write in-flight frames before "
                   "exiting (e.g. 10s, 500ms)")
      ->capture_default_str();
  serve
      ->add_option("--max-streams", so.max_streams,
                   "Concurrent streams; more are refused with RESOURCE_EXHAUSTED")
      ->capture_default_str();
  serve
      ->add_option("--max-message-bytes", so.max_receive_message_bytes,
                   "Largest request message accepted (gRPC answers RESOURCE_EXHAUSTED beyond)")
      ->capture_default_str();
  serve
      ->add_option("--max-width", so.limits.max_width,
                   "Largest frame width; wider frames get INVALID_ARGUMENT")
      ->capture_default_str();
  serve->add_option("--max-height", so.limits.max_height, "Largest frame height")
      ->capture_default_str();
  serve
      ->add_option("--idle-timeout", idle,
                   "End streams that send nothing for this long while the server waits for "
                   "their next message (DEADLINE_EXCEEDED; 0 = never)")
      ->capture_default_str();
  serve
      ->add_option("--first-frame-timeout", first_frame,
                   "End calls whose first frame has not arrived this long after they started "
                   "(a StreamConfig alone does not count; 0 = never)")
      ->capture_default_str();
  std::string guard = "on";
  serve
      ->add_option("--guard", guard,
                   "The front door: framepipe's own listener, relaying each connection to gRPC "
                   "through an HTTP/2 guard (header floods, rapid reset, message size at the "
                   "length prefix, connection caps, EMFILE recovery). off: gRPC listens itself "
                   "(only behind a proxy that enforces the same)")
      ->check(CLI::IsMember({"on", "off"}))
      ->capture_default_str();
  serve
      ->add_option("--max-connections", so.max_connections,
                   "Open client connections; more are refused with a GOAWAY saying why (0 = "
                   "from the open-files limit, which is raised to its hard limit at start)")
      ->capture_default_str();
  serve
      ->add_option("--max-connections-per-peer", so.max_connections_per_peer,
                   "Open connections from one client IP address")
      ->capture_default_str();
  serve
      ->add_option("--max-concurrent-streams", so.max_concurrent_streams,
                   "HTTP/2 streams one connection may have open (SETTINGS_MAX_CONCURRENT_STREAMS)")
      ->capture_default_str();
  serve
      ->add_option("--max-header-bytes", so.max_header_bytes,
                   "Request metadata per call, decoded (a header block over 4x this, encoded, "
                   "closes the connection)")
      ->capture_default_str();
  serve
      ->add_option("--max-resets-per-second", so.http2.resets_per_second,
                   "Stream resets (and refused streams) one connection may cause per second, "
                   "sustained, before it is closed (HTTP/2 rapid reset)")
      ->capture_default_str();
  serve
      ->add_option("--max-streams-per-peer", so.max_streams_per_peer,
                   "Concurrent streams from one client IP address; more are refused with "
                   "RESOURCE_EXHAUSTED (0 = a quarter of --max-streams)")
      ->capture_default_str();
  serve
      ->add_option("--transport-memory-mb", so.transport_memory_mb,
                   "gRPC buffer memory across all connections (resource quota), when "
                   "--max-memory-mb is 0")
      ->capture_default_str();
  serve
      ->add_option("--dark-luma", so.enrich.dark_mean_luma,
                   "Enrichment.dark when mean luma is below this")
      ->capture_default_str();
  serve
      ->add_option("--overexposed-luma", so.enrich.overexposed_mean_luma,
                   "Enrichment.overexposed when mean luma is above this")
      ->capture_default_str();
  serve
      ->add_option("--blurry-sharpness", so.enrich.blurry_sharpness,
                   "Enrichment.blurry when sharpness (Laplacian variance) is below this")
      ->capture_default_str();
  serve
      ->add_option("--scene-cut", so.enrich.scene_cut_threshold,
                   "Enrichment.scene_cut when scene_change is above this (0..1)")
      ->capture_default_str();
  serve->add_flag("!--no-intra-frame-parallel", so.intra_frame_parallel,
                  "Do not split large frames across cores");
  serve->add_option("--tls-cert", so.security.tls_cert, "PEM certificate chain: serve TLS");
  serve->add_option("--tls-key", so.security.tls_key, "PEM private key for --tls-cert");
  serve->add_option("--tls-client-ca", so.security.tls_client_ca,
                    "PEM CA bundle: require client certificates signed by it (mutual TLS)");
  serve->add_option("--auth-token-file", so.security.auth_token_file,
                    "Bearer tokens, one per line: every call must send 'authorization: Bearer "
                    "<token>' (needs TLS; health checks are exempt)");
  serve->add_flag("--metrics-public", so.metrics_public,
                  "With --auth-token-file, still serve metrics on 0.0.0.0 (default: loopback)");
  serve->add_option("--health-listen", so.health_listen,
                    "Extra plaintext port serving only grpc.health.v1 (for Kubernetes gRPC "
                    "probes and load balancers when the main port needs TLS or tokens)");
  serve->add_option("--log-format", log_format, "Log lines as text or json")
      ->check(CLI::IsMember({"text", "json"}))
      ->capture_default_str();

  // ---- stream
  StreamClientOptions co;
  std::string size = "1280x720", encode = "jpeg", overload = "block", input;
  auto* stream = app.add_subcommand("stream", "Stream frames to a server and check the results");
  stream
      ->add_option("--target", co.target,
                   "Server: host:port or a gRPC target URI (dns:///host:port, "
                   "ipv4:a:p,b:p - streams spread round-robin over the addresses)")
      ->capture_default_str();
  auto* frames_opt = stream->add_option("--frames", co.frames,
                                        "Frames per stream (default 300; with a video --input "
                                        "the default is 0: until the video ends)");
  stream->add_option("--streams", co.streams, "Parallel streams")->capture_default_str();
  stream
      ->add_option("--fps", co.fps,
                   "Frames per second per stream (0 = as fast as credits allow; videos play "
                   "at their own rate unless set)")
      ->capture_default_str();
  stream->add_option("--size", size, "Synthetic frame size WxH")->capture_default_str();
  stream->add_option("--input", input,
                     "A video file (MP4/MKV/AVI...), a camera or stream URL (rtsp://...), or a "
                     "directory of JPEG/PNG images (sorted, cycled); default: synthetic video");
  stream->add_flag("--loop", co.loop, "Video files: start over at the end");
  stream->add_flag("--no-pace", co.unpaced,
                   "Video files: send as fast as the server takes frames instead of at the "
                   "file's frame rate (offline processing of recordings)");
  stream->add_option("--overlay", co.overlay_path,
                     "Write the frames back into this video with their results drawn on them "
                     "(stream k > 0 writes NAME-k.mp4)");
  stream->add_option("--encode", encode, "How frames are sent: jpeg, png, raw (BGR8)")
      ->check(CLI::IsMember({"jpeg", "png", "raw"}))
      ->capture_default_str();
  stream->add_option("--jpeg-quality", co.jpeg_quality, "JPEG quality")->capture_default_str();
  stream->add_option("--scene-length", co.scene_length, "Synthetic: frames per scene")
      ->capture_default_str();
  stream
      ->add_option("--max-in-flight", co.max_in_flight,
                   "StreamConfig.max_in_flight (0 = server default)")
      ->capture_default_str();
  stream
      ->add_option("--window", co.window,
                   "Frames sent and not yet answered per stream, client side (0: unlimited - "
                   "the server's credits pace the sender - but --max-in-flight + 2 for live "
                   "cameras, which skip frames rather than queue them)")
      ->capture_default_str();
  stream->add_option("--overload", overload, "block or drop-oldest")
      ->check(CLI::IsMember({"block", "drop-oldest"}))
      ->capture_default_str();
  stream
      ->add_option("--frame-timeout-ms", co.frame_timeout_ms,
                   "StreamConfig.frame_timeout_ms (0 = none)")
      ->capture_default_str();
  stream->add_flag("--thumbnail", co.include_thumbnail, "Ask for thumbnails");
  stream->add_option("--out", co.out_jsonl, "Write one JSON line per result to this file");
  stream->add_option("--show", co.show, "Print a table of the first N results of stream 0")
      ->capture_default_str();
  stream->add_option("--timeout", co.rpc_timeout_s, "RPC deadline in seconds (0 = none)")
      ->capture_default_str();
  stream
      ->add_option("--read-delay-ms", co.read_delay_ms,
                   "Pause after reading each result (simulates a slow consumer)")
      ->capture_default_str();
  stream
      ->add_option("--retry", co.retries,
                   "Reopen a stream up to N times after UNAVAILABLE / RESOURCE_EXHAUSTED "
                   "(exponential backoff from 100 ms); frames lost with a failed connection are "
                   "listed by seq")
      ->capture_default_str();
  bool no_progress = false;
  stream->add_flag("--no-progress", no_progress, "No live progress line");
  std::string report_path, plot_path, client_log_format = "text";
  stream->add_option("--tls-ca", co.security.tls_ca, "PEM roots to verify the server: use TLS");
  stream->add_option("--tls-cert", co.security.tls_cert, "Client certificate (mutual TLS)");
  stream->add_option("--tls-key", co.security.tls_key, "Client key (mutual TLS)");
  stream->add_option("--tls-server-name", co.security.tls_server_name,
                     "Name to check in the server certificate (default: the target host)");
  stream->add_option("--auth-token-file", co.security.auth_token_file,
                     "Send the file's first token as 'authorization: Bearer <token>'");
  stream->add_option("--report", report_path,
                     "Write a JSON report: totals, latency percentiles, stage means, samples");
  stream->add_option("--plot", plot_path,
                     "Draw latency over time and its CDF into this PNG (needs python3-matplotlib)");
  stream->add_option("--log-format", client_log_format, "Per-stream log lines: text or json")
      ->check(CLI::IsMember({"text", "json"}))
      ->capture_default_str();

  // ---- health
  std::string health_target = "127.0.0.1:50051", health_service;
  double health_timeout = 3;
  auto* health = app.add_subcommand(
      "health", "Exit 0 if the server's grpc.health.v1 status is SERVING (container probes)");
  health->add_option("--target", health_target, "Server address")->capture_default_str();
  health->add_option("--service", health_service, "Service name to check ('' = server)");
  health->add_option("--timeout", health_timeout, "Seconds to wait")->capture_default_str();
  ClientSecurityOptions health_security;
  health->add_option("--tls-ca", health_security.tls_ca, "PEM roots: use TLS");
  health->add_option("--tls-cert", health_security.tls_cert, "Client certificate (mutual TLS)");
  health->add_option("--tls-key", health_security.tls_key, "Client key (mutual TLS)");
  health->add_option("--tls-server-name", health_security.tls_server_name,
                     "Name to check in the server certificate");

#ifdef FRAMEPIPE_WITH_BENCH
  bench::BenchOptions bo;
  auto* bench_cmd = app.add_subcommand(
      "bench", "Benchmark suite: ceilings, pipeline, graph overhead, gRPC end to end, peers");
  bench_cmd->add_flag("--quick", bo.quick, "Shorter runs, main frame size only (< 2 minutes)");
  bench_cmd->add_option("--json", bo.json_path, "Write the results as JSON");
  bench_cmd->add_option("--plot", bo.plot_dir, "Write PNG plots into this directory");
  bench_cmd->add_option("--workers", bo.workers, "Workers / threads (0 = hardware threads)");
  bench_cmd->add_option("--only", bo.only,
                        "Only sections whose name contains this: in-process, overhead, metrics, "
                        "latency, grpc, limits, slow, gpu");
  bench_cmd->add_option("--python", bo.python, "Interpreter for the Python peer")
      ->capture_default_str();
#endif

  CLI11_PARSE(app, argc, argv);
#ifdef FRAMEPIPE_WITH_BENCH
  if (bench_cmd->parsed()) {
    char self[4096];
    const ssize_t n = readlink("/proc/self/exe", self, sizeof(self) - 1);
    bo.self_binary = n > 0 ? std::string(self, static_cast<size_t>(n)) : std::string(argv[0]);
    return bench::RunBench(bo);
  }
#endif

  if (serve->parsed()) return RunServe(so, drain, idle, first_frame, guard, memory, log_format);
  if (stream->parsed()) {
    co.progress = !no_progress && isatty(fileno(stderr));
    std::error_code ec;
    if (frames_opt->count() == 0 && !input.empty() && !std::filesystem::is_directory(input, ec)) {
      co.frames = 0;  // a video: all of it
    }
    return RunStream(co, size, encode, overload, input, report_path, plot_path, client_log_format);
  }
  if (health->parsed()) {
    auto st = CheckHealth(health_target, health_service, health_timeout, health_security);
    if (!st.ok()) {
      std::fprintf(stderr, "%s\n", std::string(st.message()).c_str());
      return 1;
    }
    std::printf("SERVING\n");
    return 0;
  }
  return 0;
}
