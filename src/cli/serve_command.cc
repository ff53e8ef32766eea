// `framepipe serve`: the service, until SIGTERM/SIGINT (then a drain, then exit 0).
#include <csignal>
#include <memory>
#include <thread>

#include "CLI/CLI.hpp"
#include "cli/commands.h"
#include "cli/flags.h"
#include "common/log.h"
#include "server/server.h"

namespace framepipe {
namespace {

struct ServeArgs {
  ServerOptions server;
  std::string memory = "auto";
  std::string guard = "on";
};

int RunServe(ServeArgs& a) {
  ServerOptions& o = a.server;
  o.guard = a.guard != "off";
  o.guard_relay = a.guard == "relay";
  auto mb = ParseMemoryBudgetMb(a.memory);
  if (!mb.ok()) return Fail(std::string(mb.status().message()));
  o.max_memory_mb = *mb;
  o.strict_memory = a.memory != "auto";
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

void AddAddressFlags(CLI::App* cmd, ServerOptions* o) {
  cmd->add_option("--listen", o->listen, "Address to listen on (host:port; port 0 picks one)")
      ->capture_default_str();
  cmd->add_option("--metrics", o->metrics,
                  "Prometheus /metrics address (host:port; \"\" disables). 0.0.0.0 because "
                  "Prometheus scrapes from another host or pod; loopback with --auth-token-file "
                  "unless --metrics-public")
      ->capture_default_str();
  cmd->add_option("--health-listen", o->health_listen,
                  "Extra plaintext port serving only grpc.health.v1 (for Kubernetes gRPC "
                  "probes and load balancers when the main port needs TLS or tokens)");
  cmd->add_flag("--metrics-public", o->metrics_public,
                "With --auth-token-file, still serve metrics on 0.0.0.0 (default: loopback)");
}

void AddSecurityFlags(CLI::App* cmd, ServerSecurityOptions* o) {
  cmd->add_option("--tls-cert", o->tls_cert, "PEM certificate chain: serve TLS");
  cmd->add_option("--tls-key", o->tls_key, "PEM private key for --tls-cert");
  cmd->add_option("--tls-client-ca", o->tls_client_ca,
                  "PEM CA bundle: require client certificates signed by it (mutual TLS)");
  cmd->add_option("--auth-token-file", o->auth_token_file,
                  "Bearer tokens, one per line: every call must send 'authorization: Bearer "
                  "<token>' (needs TLS; health checks are exempt)");
}

void AddPipelineFlags(CLI::App* cmd, ServeArgs* a) {
  ServerOptions* o = &a->server;
  cmd->add_option("--workers", o->workers,
                  "Pipeline worker threads shared by all streams (0 = hardware threads)")
      ->capture_default_str();
  cmd->add_option("--backend", o->backend,
                  "Analysis backend: auto (CUDA when a GPU is usable, else CPU), cpu, cuda")
      ->envname("FRAMEPIPE_BACKEND")
      ->check(CLI::IsMember({"auto", "cpu", "cuda"}))
      ->capture_default_str();
  cmd->add_option("--device", o->device, "CUDA device index")->capture_default_str();
  cmd->add_option("--video-decoder", o->video_decoder,
                  "Where H.264/HEVC streams decode: auto (NVDEC when the CUDA backend is active "
                  "and FFmpeg opens a CUDA device, else CPU), cpu, nvdec (try NVDEC; falls back "
                  "to CPU with one log line)")
      ->check(CLI::IsMember({"auto", "cpu", "nvdec"}))
      ->capture_default_str();
  cmd->add_option("--max-in-flight", o->max_in_flight,
                  "Default per-stream window: frames admitted and not yet answered. A client "
                  "may ask for another value in StreamConfig, up to --max-stream-in-flight")
      ->capture_default_str();
  cmd->add_option("--max-stream-in-flight", o->max_stream_in_flight,
                  "Largest max_in_flight a client may request")
      ->capture_default_str();
  cmd->add_option("--global-max-in-flight", o->global_max_in_flight,
                  "Frames in flight across all streams; when reached, streams stop reading "
                  "(flow control pushes back to the clients). One client address's streams hold "
                  "at most --max-streams-per-peer / --max-streams of it")
      ->capture_default_str();
  cmd->add_option("--max-memory-mb", a->memory,
                  "Memory budget for the whole process' growth under load: 5/8 for frames in "
                  "flight (payload + decoded pixels + luma, charged from the image header "
                  "before decoding), 1/4 for messages being received, 1/8 for connections, "
                  "results and threads; when frames or reads use up theirs, streams stop "
                  "reading (flow control pushes back). auto: half the memory of the machine or "
                  "container (256 MiB..16 GiB); N: a hard ceiling of N MiB; 0: count limits only")
      ->capture_default_str();
  AddDurationFlag(cmd, "--drain-timeout", &o->drain_timeout, "10s",
                  "On SIGTERM/SIGINT: how long to finish and write in-flight frames before "
                  "exiting (e.g. 10s, 500ms)");
  cmd->add_flag("!--no-intra-frame-parallel", o->intra_frame_parallel,
                "Do not split large frames across cores");
  cmd->add_option("--transport-memory-mb", o->transport_memory_mb,
                  "gRPC buffer memory across all connections (resource quota), when "
                  "--max-memory-mb is 0")
      ->capture_default_str();
}

// Every limit a client runs into (README: Limits and threat model).
void AddStreamLimitFlags(CLI::App* cmd, ServerOptions* o) {
  cmd->add_option("--max-streams", o->max_streams,
                  "Concurrent streams; more are refused with RESOURCE_EXHAUSTED")
      ->capture_default_str();
  cmd->add_option("--max-streams-per-peer", o->max_streams_per_peer,
                  "Concurrent streams from one client IP address; more are refused with "
                  "RESOURCE_EXHAUSTED (0 = a quarter of --max-streams). The address's share of "
                  "the receive budget is the same fraction of it")
      ->capture_default_str();
  AddDurationFlag(cmd, "--idle-timeout", &o->idle_timeout, "60s",
                  "End streams that send nothing for this long while the server waits for "
                  "their next message (DEADLINE_EXCEEDED; 0 = never)");
  AddDurationFlag(cmd, "--write-timeout", &o->write_timeout, "60s",
                  "Cancel streams whose client has accepted no result for this long (it stopped "
                  "reading: its frames' results wait, holding their credits; 0 = never)");
  AddDurationFlag(cmd, "--first-frame-timeout", &o->first_frame_timeout, "10s",
                  "End calls whose first frame has not arrived this long after they started "
                  "(a StreamConfig alone does not count; 0 = never)");
  cmd->add_option("--max-message-bytes", o->max_receive_message_bytes,
                  "Largest request message accepted, checked at its length prefix "
                  "(RESOURCE_EXHAUSTED beyond)")
      ->capture_default_str();
  cmd->add_option("--max-width", o->limits.max_width,
                  "Largest frame width; wider frames get INVALID_ARGUMENT")
      ->capture_default_str();
  cmd->add_option("--max-height", o->limits.max_height, "Largest frame height")
      ->capture_default_str();
  cmd->add_option("--max-decode-ms", o->limits.max_decode_ms,
                  "CPU time one frame's decode may take (decode bombs); over it the frame gets "
                  "INVALID_ARGUMENT (0 = no limit)")
      ->capture_default_str();
}

void AddConnectionLimitFlags(CLI::App* cmd, ServeArgs* a) {
  ServerOptions* o = &a->server;
  cmd->add_option("--guard", a->guard,
                  "The front door: framepipe's own listener, handing each connection to gRPC "
                  "behind an HTTP/2 guard (header floods, rapid reset, message size at the "
                  "length prefix, connection caps, EMFILE recovery). on: plaintext connections "
                  "are guarded inline, in gRPC's own reads and writes (TLS ones are relayed "
                  "through the front door's threads); relay: every connection is relayed; off: "
                  "gRPC listens itself (only behind a proxy that enforces the same)")
      ->check(CLI::IsMember({"on", "relay", "off"}))
      ->capture_default_str();
  cmd->add_option("--max-connections", o->max_connections,
                  "Open client connections; more are refused with a GOAWAY saying why (0 = "
                  "from the open-files limit, which is raised to its hard limit at start)")
      ->capture_default_str();
  cmd->add_option("--max-connections-per-peer", o->max_connections_per_peer,
                  "Open connections from one client IP address")
      ->capture_default_str();
  cmd->add_option("--max-http2-streams-per-peer", o->max_http2_streams_per_peer,
                  "HTTP/2 streams of any method (health Watch calls, calls whose request has not "
                  "come) one client address may have open at the server; more are ended at "
                  "their headers with RESOURCE_EXHAUSTED (0 = 4 x --max-streams-per-peer)")
      ->capture_default_str();
  cmd->add_option("--peer-ipv6-prefix", o->peer_ipv6_prefix,
                  "What one client address is for IPv6 clients in every per-address limit and "
                  "log line: a prefix of this many bits (a host is usually given a whole /64; "
                  "128 = each address on its own)")
      ->check(CLI::Range(16, 128))
      ->capture_default_str();
  cmd->add_option("--max-concurrent-streams", o->max_concurrent_streams,
                  "HTTP/2 streams one connection may have open (SETTINGS_MAX_CONCURRENT_STREAMS)")
      ->capture_default_str();
  cmd->add_option("--max-header-bytes", o->max_header_bytes,
                  "Request metadata per call, decoded (a header block over 4x this, encoded, "
                  "closes the connection)")
      ->capture_default_str();
  cmd->add_option("--max-resets-per-second", o->http2.resets_per_second,
                  "Stream resets (and refused streams) one connection may cause per second, "
                  "sustained, before it is closed (HTTP/2 rapid reset)")
      ->capture_default_str();
}

void AddEnrichFlags(CLI::App* cmd, EnrichConfig* e) {
  cmd->add_option("--dark-luma", e->dark_mean_luma, "Enrichment.dark when mean luma is below this")
      ->capture_default_str();
  cmd->add_option("--overexposed-luma", e->overexposed_mean_luma,
                  "Enrichment.overexposed when mean luma is above this")
      ->capture_default_str();
  cmd->add_option("--blurry-sharpness", e->blurry_sharpness,
                  "Enrichment.blurry when sharpness (Laplacian variance) is below this")
      ->capture_default_str();
  cmd->add_option("--scene-cut", e->scene_cut.threshold,
                  "Enrichment.scene_cut when cut_score (the causal scene-cut detector's "
                  "confidence) is at least this (0..1; lower finds more cuts, and more false ones)")
      ->check(CLI::Range(0.0, 1.0))
      ->capture_default_str();
}

}  // namespace

void AddServeCommand(CLI::App& app, CommandRun* run) {
  auto args = std::make_shared<ServeArgs>();
  CLI::App* cmd = app.add_subcommand("serve", "Run the gRPC service");
  AddAddressFlags(cmd, &args->server);
  AddPipelineFlags(cmd, args.get());
  AddStreamLimitFlags(cmd, &args->server);
  AddConnectionLimitFlags(cmd, args.get());
  AddEnrichFlags(cmd, &args->server.enrich);
  AddSecurityFlags(cmd, &args->server.security);
  AddLogFormatFlag(cmd, "Log lines as text or json");
  cmd->callback([run, args] { *run = [args] { return RunServe(*args); }; });
}

}  // namespace framepipe
