#include "service/server.h"

#include <malloc.h>

#include <algorithm>
#include <condition_variable>
#include <mutex>

#include "absl/strings/str_cat.h"
#include "analysis/analyzer_factory.h"
#include "grpcpp/ext/proto_server_reflection_plugin.h"
#include "grpcpp/grpcpp.h"
#include "grpcpp/health_check_service_interface.h"
#include "grpcpp/resource_quota.h"
#include "pipeline/standard_stages.h"
#include "service/frame_service.h"
#include "service/log.h"
#include "service/metrics.h"

namespace framepipe {

inline constexpr const char* kVersion = "0.1.0";

struct Server::Impl {
  ServerOptions options;
  BackendChoice backend;
  std::unique_ptr<Metrics> metrics;  // outlives the pipeline and the service
  std::unique_ptr<Pipeline> pipeline;
  std::unique_ptr<FrameService> service;
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
};

Server::Server(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

absl::StatusOr<std::unique_ptr<Server>> Server::Start(const ServerOptions& options) {
  auto impl = std::make_unique<Impl>();
  impl->options = options;
  const int workers =
      options.workers > 0 ? options.workers : std::max(1u, std::thread::hardware_concurrency());

  BackendOptions bo;
  bo.backend = options.backend;
  bo.device = options.device;
  bo.workers = workers;
  bo.cpu.intra_frame_parallel = options.intra_frame_parallel;
  auto backend = CreateAnalyzer(bo);
  if (!backend.ok()) return backend.status();
  impl->backend = std::move(backend).value();
  if (options.backend == "auto" && impl->backend.name == "cpu") {
    LogLine("backend_fallback").Add("backend", "cpu").Add("reason", impl->backend.detail).Emit();
  }

  auto creds = MakeServerCredentials(options.security);
  if (!creds.ok()) return creds.status();
  impl->metrics_address = options.metrics;
  if (!options.security.auth_token_file.empty() && !options.metrics_public &&
      (impl->metrics_address.rfind("0.0.0.0:", 0) == 0 ||
       impl->metrics_address.rfind("[::]:", 0) == 0)) {
    // Authenticated gRPC but an open metrics port would leak stream counts and timings.
    impl->metrics_address =
        "127.0.0.1:" + impl->metrics_address.substr(impl->metrics_address.rfind(':') + 1);
  }
  if (!impl->metrics_address.empty()) {
    impl->metrics = std::make_unique<Metrics>(kVersion, impl->backend.name, workers);
    absl::Status st = impl->metrics->Serve(impl->metrics_address);
    if (!st.ok()) return st;
  }

  PipelineOptions po;
  po.observer = impl->metrics.get();
  po.workers = workers;
  po.global_max_in_flight = options.global_max_in_flight;
  // --max-memory-mb: 5/8 for frames in flight (payload + decoded pixels + luma), 1/4 for
  // messages being received (the service's read budget: gRPC's buffers plus the parsed copy),
  // 1/8 left for what grows with the load but is not a frame: gRPC's per-connection buffers and
  // the result messages being written, the threads' stacks, malloc's overhead. (With 7/8 or
  // all of it given to frames, 50 clients of 1080p raw frames pushed resident memory to 0.9-1.0x
  // of the budget; the ceiling must hold for the process, not only for the frames.)
  const uint64_t memory = options.max_memory_mb << 20;
  po.global_max_bytes = memory - memory / 4 - memory / 8;
  if (memory > 0) {
    // Frame-sized buffers (over 1 MiB) are mapped and unmapped one by one, so freed frames go
    // back to the system at once instead of lingering in malloc's per-thread arenas: resident
    // memory then follows the budget. (glibc otherwise raises this threshold as it sees big
    // frees.)
    mallopt(M_MMAP_THRESHOLD, 1 << 20);
  }
  StandardStageOptions so;
  so.limits = options.limits;
  so.enrich = options.enrich;
  Stages stages = MakeStandardStages(impl->backend.analyzer, so);
  if (options.wrap_stages) stages = options.wrap_stages(std::move(stages));
  auto pipeline = Pipeline::Create(po, std::move(stages));
  if (!pipeline.ok()) return pipeline.status();
  impl->pipeline = std::move(pipeline).value();

  ServiceOptions svc;
  svc.default_max_in_flight = options.max_in_flight;
  svc.max_stream_in_flight = std::max(options.max_stream_in_flight, options.max_in_flight);
  svc.max_streams = options.max_streams;
  svc.limits = options.limits;
  svc.max_streams_per_peer = options.max_streams_per_peer > 0
                                 ? options.max_streams_per_peer
                                 : std::max<uint32_t>(1, options.max_streams / 4);
  svc.first_frame_timeout = options.first_frame_timeout;
  svc.idle_timeout = options.idle_timeout;
  svc.read_budget_bytes = memory / 4;
  svc.first_read_bytes = std::min<uint64_t>(options.max_receive_message_bytes, memory / 16);
  svc.backend = impl->backend.name;
  svc.version = kVersion;
  impl->service = std::make_unique<FrameService>(impl->pipeline.get(), svc, impl->metrics.get());

  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  builder.AddListeningPort(options.listen, *creds, &impl->port);
  builder.RegisterService(impl->service.get());
  builder.SetMaxReceiveMessageSize(static_cast<int>(options.max_receive_message_bytes));
  builder.SetMaxSendMessageSize(4 << 20);
  // gRPC's own buffers are bounded too: a fixed per-stream window (no BDP-driven growth) and a
  // resource quota over all connections.
  builder.AddChannelArgument(GRPC_ARG_HTTP2_BDP_PROBE, 0);
  // With a memory budget, a stream not being read may buffer only 64 KiB.
  builder.AddChannelArgument(
      GRPC_ARG_HTTP2_STREAM_LOOKAHEAD_BYTES,
      static_cast<int>(memory > 0 ? std::min<size_t>(options.stream_window_bytes, 65536)
                                  : options.stream_window_bytes));
  // A last-resort guard only: under pressure gRPC resets streams rather than pushing back, so
  // the bounds that matter are the credits and the read budget above.
  grpc::ResourceQuota quota("framepipe");
  quota.Resize(std::max<size_t>(memory, options.transport_memory_mb << 20));
  builder.SetResourceQuota(quota);
  impl->grpc_server = builder.BuildAndStart();
  if (!impl->grpc_server || impl->port == 0) {
    impl->pipeline->Stop(std::chrono::seconds(1));
    return absl::UnavailableError(absl::StrCat("cannot listen on ", options.listen));
  }
  // Health answers for the server ("") and for the service by name; draining flips both.
  if (auto* health = impl->grpc_server->GetHealthCheckService()) {
    health->SetServingStatus(v1::FramePipeline::service_full_name(), true);
    health->SetServingStatus(true);
  }
  if (!options.health_listen.empty()) {
    // Plaintext, unauthenticated, health only: for Kubernetes' gRPC probes and load balancers
    // when the main port requires TLS or tokens.
    grpc::ServerBuilder hb;
    hb.AddListeningPort(options.health_listen, grpc::InsecureServerCredentials(),
                        &impl->health_port);
    impl->health_server = hb.BuildAndStart();
    if (!impl->health_server || impl->health_port == 0) {
      impl->grpc_server->Shutdown(std::chrono::system_clock::now());
      impl->pipeline->Stop(std::chrono::seconds(1));
      return absl::UnavailableError(absl::StrCat("cannot listen on ", options.health_listen));
    }
    if (auto* health = impl->health_server->GetHealthCheckService()) {
      health->SetServingStatus(v1::FramePipeline::service_full_name(), true);
      health->SetServingStatus(true);
    }
  }
  LogLine("server_started")
      .Add("listen", options.listen)
      .Add("port", impl->port)
      .Add("backend", impl->backend.name)
      .Add("backend_detail", impl->backend.detail)
      .Add("tls", !options.security.tls_cert.empty())
      .Add("mtls", !options.security.tls_client_ca.empty())
      .Add("auth", !options.security.auth_token_file.empty())
      .Add("health_port", impl->health_port)
      .Add("workers", workers)
      .Add("max_in_flight", options.max_in_flight)
      .Add("global_max_in_flight", options.global_max_in_flight)
      .Add("max_streams", options.max_streams)
      .Add("version", kVersion)
      .Emit();
  if (impl->metrics) {
    LogLine("metrics_listening")
        .Add("address", impl->metrics_address)
        .Add("port", impl->metrics->port())
        .Add("path", "/metrics")
        .Emit();
  }
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

bool Server::Shutdown() {
  {
    std::lock_guard<std::mutex> l(impl_->mu);
    if (impl_->shutting_down) return impl_->drained;
    impl_->shutting_down = true;
  }
  const TimePoint start = Now();
  const TimePoint deadline = start + impl_->options.drain_timeout;
  const uint32_t open = impl_->service->active_streams();
  if (auto* health = impl_->grpc_server->GetHealthCheckService()) {
    health->SetServingStatus(false);
  }
  if (impl_->health_server) {
    if (auto* health = impl_->health_server->GetHealthCheckService()) {
      health->SetServingStatus(false);
    }
  }
  impl_->service->BeginDrain();
  const bool drained = impl_->service->WaitForStreams(deadline);
  // Every stream has finished. gRPC now sends GOAWAY and waits until the clients have closed their
  // connections, or until the deadline, then cuts what is left. Give them up to a second (never
  // past the drain timeout; none if it ran out): a client that was still sending frames when its
  // call ended must first read the status, and a connection cut with its frames unread in the
  // server's socket answers its next write with a reset that can overtake that status ("Broken
  // pipe" instead of "...answered (N frames)"). Idle gRPC clients close at once on GOAWAY.
  const Clock::duration grace =
      drained ? std::clamp<Clock::duration>(deadline - Now(), {}, std::chrono::seconds(1))
              : Clock::duration::zero();
  impl_->grpc_server->Shutdown(
      std::chrono::system_clock::now() +
      std::chrono::duration_cast<std::chrono::system_clock::duration>(grace));
  impl_->grpc_server->Wait();
  if (impl_->health_server) {
    impl_->health_server->Shutdown(std::chrono::system_clock::now());
    impl_->health_server->Wait();
  }
  impl_->pipeline->Stop(std::chrono::milliseconds(100));
  LogLine("server_stopped")
      .Add("drained", drained)
      .Add("streams_at_shutdown", open)
      .Add("drain_s", SecondsBetween(start, Now()))
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
