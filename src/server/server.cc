#include "server/server.h"

#include <malloc.h>

#include <algorithm>
#include <condition_variable>
#include <mutex>

#include "absl/strings/str_cat.h"
#include "analysis/analyzer_factory.h"
#include "analysis/video_decoder.h"
#include "common/log.h"
#include "common/secrets.h"
#include "common/status.h"
#include "grpcpp/ext/proto_server_reflection_plugin.h"
#include "grpcpp/grpcpp.h"
#include "grpcpp/health_check_service_interface.h"
#include "grpcpp/resource_quota.h"
#include "grpcpp/support/server_interceptor.h"
#include "pipeline/standard_stages.h"
#include "server/frame_service.h"
#include "server/metrics.h"
#include "server/peer_log.h"

namespace framepipe {

inline constexpr const char* kVersion = FRAMEPIPE_VERSION;

namespace {

// Concurrent Process calls from one address: the flag, or a quarter of --max-streams.
uint32_t StreamsPerPeer(const ServerOptions& o) {
  return o.max_streams_per_peer > 0 ? o.max_streams_per_peer
                                    : std::max<uint32_t>(1, o.max_streams / 4);
}

// Requests one reflection stream may make (grpcurl describing framepipe's API makes a dozen).
constexpr uint32_t kMaxReflectionRequests = 256;

// A hard memory ceiling (--max-memory-mb N), as opposed to the automatic budget or none.
bool HardMemoryCeiling(const ServerOptions& o) { return o.strict_memory && o.max_memory_mb > 0; }

// A stream's HTTP/2 receive window: under a hard ceiling, a stream not being read may buffer
// only 64 KiB (the automatic budget keeps gRPC's windows as they are).
uint32_t StreamWindow(const ServerOptions& o) {
  return static_cast<uint32_t>(HardMemoryCeiling(o) ? std::min<size_t>(o.stream_window_bytes, 65536)
                                                    : o.stream_window_bytes);
}

// The HTTP/2 and gRPC limits every transport of this server gets (gRPC's own knobs; the front
// door adds what gRPC 1.51 lacks). `relayed`: every connection comes through the front door's
// relay (TLS, --guard relay), not guarded inline.
void ApplyTransportLimits(const ServerOptions& o, bool relayed, grpc::ServerBuilder* b) {
  b->SetMaxReceiveMessageSize(static_cast<int>(o.max_receive_message_bytes));
  b->SetMaxSendMessageSize(4 << 20);
  // Frames are JPEG, PNG or raw pixels: compression gains nothing and a compressed message is a
  // decompression bomb (gRPC 1.51 inflates it whole before any size check). Identity only: a
  // compressed call is refused (UNIMPLEMENTED) at its headers.
  b->SetCompressionAlgorithmSupportStatus(GRPC_COMPRESS_DEFLATE, false);
  b->SetCompressionAlgorithmSupportStatus(GRPC_COMPRESS_GZIP, false);
  b->AddChannelArgument(GRPC_ARG_MAX_CONCURRENT_STREAMS,
                        static_cast<int>(o.max_concurrent_streams));
  b->AddChannelArgument(GRPC_ARG_MAX_METADATA_SIZE, static_cast<int>(o.max_header_bytes));
  b->AddChannelArgument(GRPC_ARG_HTTP2_MAX_FRAME_SIZE, static_cast<int>(o.http2.max_frame_bytes));
  // Dead peers: ping a connection silent for a minute, drop it if the ping is not answered.
  b->AddChannelArgument(GRPC_ARG_KEEPALIVE_TIME_MS, 60000);
  b->AddChannelArgument(GRPC_ARG_KEEPALIVE_TIMEOUT_MS, 20000);
  // Clients may not ping more than once a minute without data (gRPC closes after 2 strikes).
  b->AddChannelArgument(GRPC_ARG_HTTP2_MIN_RECV_PING_INTERVAL_WITHOUT_DATA_MS, 60000);
  b->AddChannelArgument(GRPC_ARG_HTTP2_MAX_PING_STRIKES, 2);
  // Connections with no call for 10 minutes are closed (clients reconnect transparently).
  b->AddChannelArgument(GRPC_ARG_MAX_CONNECTION_IDLE_MS, 600000);
  // gRPC's own buffers are bounded too: a fixed per-stream window and a resource quota over all
  // connections. Without BDP probing gRPC 1.51 keeps the connection's window at 64 KiB, so a
  // client sends 64 KiB and waits for a WINDOW_UPDATE, about four round trips per 720p JPEG and
  // ninety per raw 1080p frame: through the relay each one a hop through the front door's threads
  // (relay CPU 0.30-0.35 ms per 720p JPEG without probing, 0.12 ms with). BDP probing raises the
  // connection window, but also the stream window gRPC announces; behind the front door the guard
  // lowers that back to the fixed window before the client sees it
  // (Http2Limits::max_initial_window), so probing is on for relayed connections only. Guarded
  // inline, a round trip costs what it does to gRPC's own listener, and probing costs more than
  // it saves (bench, raw 1080p: gRPC's listener with probing 157.9 frames/s, without 167.9). Nor
  // under a hard ceiling: with it, multi-megabyte messages arrive in whole DATA frames and many
  // at once, and fifty clients sending raw 1080p under --max-memory-mb 320 took the process up to
  // 331 MiB past its start (267-279 MiB without; ReliabilityTest.MemoryCeiling* beside a CPU
  // load).
  const bool probe = (relayed || o.unguarded_bdp_probe) && !HardMemoryCeiling(o);
  b->AddChannelArgument(GRPC_ARG_HTTP2_BDP_PROBE, probe ? 1 : 0);
  b->AddChannelArgument(GRPC_ARG_HTTP2_STREAM_LOOKAHEAD_BYTES, static_cast<int>(StreamWindow(o)));
}

void SetServing(grpc::Server* s, bool serving) {
  if (!s) return;
  if (auto* health = s->GetHealthCheckService()) {
    health->SetServingStatus(v1::FramePipeline::service_full_name(), serving);
    health->SetServingStatus(serving);
  }
}

}  // namespace

struct Server::Impl {
  ServerOptions options;
  BackendChoice backend;
  std::string video_device = "cpu";   // where video streams decode: "cpu" | "nvdec"
  std::unique_ptr<PeerLog> peer_log;  // shared by the front doors and the service
  std::unique_ptr<Metrics> metrics;   // outlives the pipeline and the service
  std::unique_ptr<Pipeline> pipeline;
  std::unique_ptr<FrameService> service;
  std::unique_ptr<FrontDoor> front_door;         // null with guard off
  std::unique_ptr<FrontDoor> health_front_door;  // --health-listen behind its own front door
  std::unique_ptr<grpc::Server> grpc_server;
  std::unique_ptr<grpc::Server> health_server;  // --health-listen
  int port = 0;
  int health_port = 0;
  std::string metrics_address;

  std::mutex mu;
  std::condition_variable cv;
  bool shutting_down = false;
  bool shut_down = false;
  bool drained = false;

  absl::Status StartMetrics(int workers);
  absl::Status StartPipeline(int workers, uint64_t memory);
  absl::StatusOr<std::unique_ptr<FrontDoor>> BindFrontDoor(const std::string& listen, bool tls);
  absl::Status StartGrpc(uint64_t memory);
  absl::Status StartHealthPort();
  void LogStarted(int workers) const;
};

Server::Server(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

absl::Status Server::Impl::StartMetrics(int workers) {
  metrics_address = options.metrics;
  if (!options.security.auth_token_file.empty() && !options.metrics_public &&
      (metrics_address.rfind("0.0.0.0:", 0) == 0 || metrics_address.rfind("[::]:", 0) == 0)) {
    // Authenticated gRPC but an open metrics port would leak stream counts and timings.
    metrics_address = "127.0.0.1:" + metrics_address.substr(metrics_address.rfind(':') + 1);
  }
  if (metrics_address.empty()) return absl::OkStatus();
  metrics = std::make_unique<Metrics>(kVersion, backend.name, workers);
  return metrics->Serve(metrics_address);
}

absl::Status Server::Impl::StartPipeline(int workers, uint64_t memory) {
  PipelineOptions po;
  po.observer = metrics.get();
  po.time = options.time;
  po.workers = workers;
  po.global_max_in_flight = options.global_max_in_flight;
  // --max-memory-mb: 5/8 for frames in flight (payload + decoded pixels + luma), 1/4 for
  // messages being received (the service's read budget: gRPC's buffers plus the parsed copy),
  // 1/8 left for what grows with the load but is not a frame: gRPC's per-connection buffers and
  // the result messages being written, the threads' stacks, malloc's overhead. (With 7/8 or
  // all of it given to frames, 50 clients of 1080p raw frames pushed resident memory to 0.9-1.0x
  // of the budget; the ceiling must hold for the process, not only for the frames.)
  po.global_max_bytes = memory - memory / 4 - memory / 8;
  if (HardMemoryCeiling(options)) {
    // Frame-sized buffers (over 1 MiB) are mapped and unmapped one by one, so freed frames go
    // back to the system at once instead of lingering in malloc's per-thread arenas: resident
    // memory then follows the budget. (glibc otherwise raises this threshold as it sees big
    // frees.)
    mallopt(M_MMAP_THRESHOLD, 1 << 20);
  }
  StandardStageOptions so;
  so.limits = options.limits;
  so.enrich = options.enrich;
  Stages stages = MakeStandardStages(backend.analyzer, so);
  if (options.wrap_stages) stages = options.wrap_stages(std::move(stages));
  FP_ASSIGN_OR_RETURN(pipeline, Pipeline::Create(po, std::move(stages)));
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<FrontDoor>> Server::Impl::BindFrontDoor(const std::string& listen,
                                                                       bool tls) {
  FrontDoorOptions fo;
  fo.listen = listen;
  fo.http2 = options.http2;
  // Encoded header blocks: HPACK never shrinks text below ~5/8, so 4x the decoded limit only
  // stops blocks gRPC would refuse anyway - before gRPC buffers them.
  fo.http2.max_header_block_bytes = 4 * options.max_header_bytes;
  fo.http2.max_message_bytes = options.max_receive_message_bytes;
  fo.http2.max_tracked_streams = std::max<uint32_t>(2 * options.max_concurrent_streams, 64);
  fo.http2.max_initial_window = StreamWindow(options);
  // Calls whose handler reads one message (gRPC's health service, framepipe's unary GetStats)
  // and the reflection stream: gRPC 1.51 takes and holds whatever else they are sent.
  fo.http2.max_messages_by_path = {
      {"/grpc.health.v1.Health/Check", 1},
      {"/grpc.health.v1.Health/Watch", 1},
      {absl::StrCat("/", v1::FramePipeline::service_full_name(), "/GetStats"), 1},
      {"/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo", kMaxReflectionRequests},
  };
  fo.max_connections = options.max_connections;
  fo.max_connections_per_peer = options.max_connections_per_peer;
  fo.peer_ipv6_prefix = options.peer_ipv6_prefix;
  fo.max_http2_streams_per_peer =
      options.max_http2_streams_per_peer > 0
          ? options.max_http2_streams_per_peer
          : std::max(4 * StreamsPerPeer(options), options.max_concurrent_streams);
  fo.handshake_timeout = options.handshake_timeout;
  fo.inline_plaintext = !options.guard_relay;
  fo.io_threads = options.io_threads > 0
                      ? options.io_threads
                      : std::max(1, (options.workers > 0
                                         ? options.workers
                                         : static_cast<int>(std::thread::hardware_concurrency())) /
                                        8);
  fo.peer_log = peer_log.get();
  if (tls) {
    fo.tls.cert_file = options.security.tls_cert;
    fo.tls.key_file = options.security.tls_key;
    fo.tls.client_ca_file = options.security.tls_client_ca;
  }
  return FrontDoor::Bind(std::move(fo));
}

absl::Status Server::Impl::StartGrpc(uint64_t memory) {
  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  if (!front_door) {
    FP_ASSIGN_OR_RETURN(auto creds, MakeServerCredentials(options.security));
    builder.AddListeningPort(options.listen, creds, &port);
  }
  builder.RegisterService(service.get());
  ApplyTransportLimits(
      options, front_door != nullptr && (options.guard_relay || !options.security.tls_cert.empty()),
      &builder);
  // A last-resort guard only: under pressure gRPC resets streams rather than pushing back, so
  // the bounds that matter are the credits and the read budget above.
  grpc::ResourceQuota quota("framepipe");
  quota.Resize(std::max<size_t>(memory, options.transport_memory_mb << 20));
  builder.SetResourceQuota(quota);
  if (front_door && !options.security.auth_token_file.empty()) {
    FP_ASSIGN_OR_RETURN(auto tokens, ReadAuthTokens(options.security.auth_token_file));
    std::vector<std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface>> gates;
    gates.push_back(MakeTokenGate(std::move(tokens)));
    builder.experimental().SetInterceptorCreators(std::move(gates));
  }
  grpc_server = builder.BuildAndStart();
  if (!grpc_server || (!front_door && port == 0)) {
    return absl::UnavailableError(absl::StrCat("cannot listen on ", options.listen));
  }
  if (front_door) {
    port = front_door->port();
    front_door->Start(grpc_server.get());
  }
  SetServing(grpc_server.get(), true);
  return absl::OkStatus();
}

// Plaintext, unauthenticated, health only: for Kubernetes' gRPC probes and load balancers when
// the main port requires TLS or tokens.
absl::Status Server::Impl::StartHealthPort() {
  if (options.health_listen.empty()) return absl::OkStatus();
  grpc::ServerBuilder hb;
  if (options.guard) {
    FP_ASSIGN_OR_RETURN(health_front_door, BindFrontDoor(options.health_listen, false));
  } else {
    hb.AddListeningPort(options.health_listen, grpc::InsecureServerCredentials(), &health_port);
  }
  hb.AddChannelArgument(GRPC_ARG_MAX_CONCURRENT_STREAMS, 16);
  hb.AddChannelArgument(GRPC_ARG_MAX_METADATA_SIZE, static_cast<int>(options.max_header_bytes));
  hb.SetMaxReceiveMessageSize(4096);
  health_server = hb.BuildAndStart();
  if (health_front_door && health_server) {
    health_port = health_front_door->port();
    health_front_door->Start(health_server.get());
  }
  if (!health_server || health_port == 0) {
    return absl::UnavailableError(absl::StrCat("cannot listen on ", options.health_listen));
  }
  SetServing(health_server.get(), true);
  return absl::OkStatus();
}

void Server::Impl::LogStarted(int workers) const {
  LogLine("server_started")
      .Add("listen", options.listen)
      .Add("port", port)
      .Add("backend", backend.name)
      .Add("backend_detail", backend.detail)
      .Add("video_decoder", video_device)
      .Add("tls", !options.security.tls_cert.empty())
      .Add("mtls", !options.security.tls_client_ca.empty())
      .Add("auth", !options.security.auth_token_file.empty())
      .Add("guard", front_door != nullptr)
      .Add("max_connections", front_door ? front_door->counters().max_connections : 0u)
      .Add("health_port", health_port)
      .Add("workers", workers)
      .Add("max_in_flight", options.max_in_flight)
      .Add("global_max_in_flight", options.global_max_in_flight)
      .Add("max_streams", options.max_streams)
      .Add("max_memory_mb", options.max_memory_mb)
      .Add("version", kVersion)
      .Emit();
  if (metrics) {
    LogLine("metrics_listening")
        .Add("address", metrics_address)
        .Add("port", metrics->port())
        .Add("path", "/metrics")
        .Emit();
  }
}

absl::StatusOr<std::unique_ptr<Server>> Server::Start(const ServerOptions& options) {
  PrimeProcessClocks();
  auto impl = std::make_unique<Impl>();
  impl->options = options;
  const int workers =
      options.workers > 0 ? options.workers : std::max(1u, std::thread::hardware_concurrency());
  FP_RETURN_IF_ERROR(ValidateServerSecurity(options.security));
  if (options.peer_ipv6_prefix < 16 || options.peer_ipv6_prefix > 128) {
    return absl::InvalidArgumentError(
        absl::StrCat("peer IPv6 prefix /", options.peer_ipv6_prefix, " is not in /16 to /128"));
  }
  BackendOptions bo;
  bo.backend = options.backend;
  bo.device = options.device;
  bo.workers = workers;
  bo.cpu.intra_frame_parallel = options.intra_frame_parallel;
  FP_ASSIGN_OR_RETURN(impl->backend, CreateAnalyzer(bo));
  if (options.backend == "auto" && impl->backend.name == "cpu") {
    LogLine("backend_fallback").Add("backend", "cpu").Add("reason", impl->backend.detail).Emit();
  }
  impl->peer_log = std::make_unique<PeerLog>();
  if (options.guard) {
    FP_ASSIGN_OR_RETURN(impl->front_door,
                        impl->BindFrontDoor(options.listen, !options.security.tls_cert.empty()));
  }
  FP_RETURN_IF_ERROR(impl->StartMetrics(workers));
  if (impl->metrics && impl->front_door) {
    FrontDoor* fd = impl->front_door.get();
    impl->metrics->SetFrontDoorSource([fd] { return fd->counters(); });
  }
  const uint64_t memory = options.max_memory_mb << 20;
  FP_RETURN_IF_ERROR(impl->StartPipeline(workers, memory));

  ServiceOptions svc;
  svc.time = options.time;
  svc.default_max_in_flight = options.max_in_flight;
  svc.max_stream_in_flight = std::max(options.max_stream_in_flight, options.max_in_flight);
  svc.max_streams = options.max_streams;
  svc.max_streams_per_peer = StreamsPerPeer(options);
  svc.peer_ipv6_prefix = options.peer_ipv6_prefix;
  svc.first_frame_timeout = options.first_frame_timeout;
  svc.idle_timeout = options.idle_timeout;
  svc.write_timeout = options.write_timeout;
  // One address's streams hold at most the same fraction of the global in-flight limit as of
  // the streams (a quarter by default): a client that stops reading its results keeps its
  // frames' credits, but never the credits every other client needs.
  svc.max_in_flight_per_peer = PeerInFlightShare(options.global_max_in_flight, svc);
  svc.limits = options.limits;
  svc.read_budget_bytes = memory / 4;
  // A call's first message is assumed to need a quarter of its address's share of the read
  // budget (at most the message limit, at least 1 MiB): four calls of one address read their
  // first message at once, and calls that never send one tie up no more than that share.
  const uint64_t share = PeerReadShare(svc) > 0 ? PeerReadShare(svc) : svc.read_budget_bytes;
  svc.first_read_bytes =
      std::min<uint64_t>(options.max_receive_message_bytes, std::max<uint64_t>(1 << 20, share / 4));
  svc.backend = impl->backend.name;
  svc.version = kVersion;
  if (options.video_decoder == "nvdec" ||
      (options.video_decoder == "auto" && impl->backend.name == "cuda")) {
    const std::string why_not = PrepareHardwareVideoDecoding();
    svc.video_hardware = why_not.empty();
    if (!why_not.empty()) {
      LogLine("video_decoder_fallback").Add("device", "cpu").Add("reason", why_not).Emit();
    }
  } else if (options.video_decoder != "auto" && options.video_decoder != "cpu") {
    return absl::InvalidArgumentError(absl::StrCat(
        "--video-decoder must be auto, cpu or nvdec, not '", options.video_decoder, "'"));
  }
  impl->video_device = svc.video_hardware ? "nvdec" : "cpu";
  svc.peer_log = impl->peer_log.get();
  if (impl->front_door) {
    FrontDoor* fd = impl->front_door.get();
    svc.resolve_peer = [fd](const std::string& p) { return fd->ResolvePeer(p); };
    if (!options.security.auth_token_file.empty()) {
      FP_ASSIGN_OR_RETURN(svc.auth_tokens, ReadAuthTokens(options.security.auth_token_file));
    }
  }
  impl->service = std::make_unique<FrameService>(impl->pipeline.get(), svc, impl->metrics.get());

  absl::Status st = impl->StartGrpc(memory);
  if (st.ok()) st = impl->StartHealthPort();
  if (!st.ok()) {
    if (impl->front_door) impl->front_door->Stop();
    if (impl->grpc_server) impl->grpc_server->Shutdown(std::chrono::system_clock::now());
    impl->pipeline->Stop(std::chrono::seconds(1));
    return st;
  }
  impl->LogStarted(workers);
  return std::unique_ptr<Server>(new Server(std::move(impl)));
}

Server::~Server() {
  bool done;
  {
    std::lock_guard<std::mutex> l(impl_->mu);
    done = impl_->shut_down || impl_->shutting_down;
  }
  if (!done) {
    impl_->options.drain_timeout = std::chrono::milliseconds(0);
    Shutdown();
  }
  Wait();
}

int Server::port() const { return impl_->port; }
int Server::metrics_port() const { return impl_->metrics ? impl_->metrics->port() : 0; }
const std::string& Server::metrics_address() const { return impl_->metrics_address; }
int Server::health_port() const { return impl_->health_port; }
const Metrics* Server::metrics() const { return impl_->metrics.get(); }
const std::string& Server::backend() const { return impl_->backend.name; }
const std::string& Server::backend_detail() const { return impl_->backend.detail; }
int Server::workers() const { return impl_->pipeline->workers(); }
FrontDoorCounters Server::front_door_counters() const {
  return impl_->front_door ? impl_->front_door->counters() : FrontDoorCounters{};
}

bool Server::Shutdown() {
  {
    std::lock_guard<std::mutex> l(impl_->mu);
    if (impl_->shutting_down) return impl_->drained;
    impl_->shutting_down = true;
  }
  const TimeSource* time = impl_->options.time;
  const TimePoint start = time->Now();
  const TimePoint deadline = start + impl_->options.drain_timeout;
  const uint32_t open = impl_->service->active_streams();
  SetServing(impl_->grpc_server.get(), false);
  SetServing(impl_->health_server.get(), false);
  impl_->service->BeginDrain();
  const bool drained = impl_->service->WaitForStreams(deadline);
  // Every stream has finished. gRPC now sends GOAWAY and waits until the clients have closed their
  // connections, or until the deadline, then cuts what is left. Give them up to a second (never
  // past the drain timeout; none if it ran out): a client that was still sending frames when its
  // call ended must first read the status, and a connection cut with its frames unread in the
  // server's socket answers its next write with a reset that can overtake that status ("Broken
  // pipe" instead of "...answered (N frames)"). Idle gRPC clients close at once on GOAWAY.
  const Clock::duration grace =
      drained ? std::clamp<Clock::duration>(deadline - time->Now(), {}, std::chrono::seconds(1))
              : Clock::duration::zero();
  // No new connections from here (gRPC must not be handed one while it shuts down).
  if (impl_->front_door) impl_->front_door->StopAccepting();
  impl_->grpc_server->Shutdown(
      std::chrono::system_clock::now() +
      std::chrono::duration_cast<std::chrono::system_clock::duration>(grace));
  impl_->grpc_server->Wait();
  if (impl_->front_door) impl_->front_door->Stop();
  if (impl_->health_server) {
    if (impl_->health_front_door) impl_->health_front_door->StopAccepting();
    impl_->health_server->Shutdown(std::chrono::system_clock::now());
    impl_->health_server->Wait();
    if (impl_->health_front_door) impl_->health_front_door->Stop();
  }
  impl_->pipeline->Stop(std::chrono::milliseconds(100));
  LogLine("server_stopped")
      .Add("drained", drained)
      .Add("streams_at_shutdown", open)
      .Add("drain_s", SecondsBetween(start, time->Now()))
      .Emit();
  // Notify under the lock: a waiter may destroy this Server as soon as it sees shut_down.
  std::lock_guard<std::mutex> l(impl_->mu);
  impl_->shut_down = true;
  impl_->drained = drained;
  impl_->cv.notify_all();
  return drained;
}

void Server::Wait() {
  std::unique_lock<std::mutex> l(impl_->mu);
  impl_->cv.wait(l, [&] { return impl_->shut_down; });
}

}  // namespace framepipe
