// Server: what `framepipe serve` runs - the analysis backend, the pipeline, the gRPC server with
// the FramePipeline service, grpc.health.v1 and reflection, and graceful drain.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "analysis/decoder.h"
#include "common/clock.h"
#include "enrich/enricher.h"
#include "pipeline/stage.h"
#include "server/front_door.h"
#include "server/security.h"

namespace framepipe {

struct ServerOptions {
  std::string listen = "0.0.0.0:50051";
  std::string metrics = "0.0.0.0:9464";  // Prometheus /metrics; "" disables
  bool metrics_public = false;  // with auth on, keep a 0.0.0.0 metrics address (else loopback)
  std::string health_listen;    // extra plaintext port serving only grpc.health.v1 ("" = none)
  ServerSecurityOptions security;
  int workers = 0;             // 0 = hardware threads
  uint32_t max_in_flight = 8;  // default per-stream window
  uint32_t max_stream_in_flight = 1024;
  uint32_t global_max_in_flight = 256;
  uint64_t max_memory_mb = 0;  // budget for frames in flight (0 = count limits only)
  // The budget is a hard ceiling the operator chose (--max-memory-mb N): freed frames go back to
  // the system at once and unread streams buffer 64 KiB. Off for the automatic default budget,
  // which only bounds what frames may claim.
  bool strict_memory = true;
  std::string backend = "auto";  // auto | cpu | cuda
  int device = 0;
  std::chrono::milliseconds drain_timeout{10000};
  uint32_t max_streams = 256;
  size_t max_receive_message_bytes = 32u << 20;
  // The front door (front_door.h): the server's own listener relaying each connection to gRPC
  // through an HTTP/2 guard. Off only behind a proxy that enforces the same limits.
  bool guard = true;
  // With the guard on, plaintext connections are guarded inline (the guard runs in gRPC's own
  // reads and writes of the client's socket); true relays them through the front door's threads
  // as TLS connections always are (--guard relay).
  bool guard_relay = false;
  uint32_t max_connections = 0;  // 0: from the file limit
  uint32_t max_connections_per_peer = 256;
  // HTTP/2 streams of any method open at gRPC from one address (front door only); 0 = four
  // times the per-address stream cap, at least --max-concurrent-streams.
  uint32_t max_http2_streams_per_peer = 0;
  // "One client address" for every per-address limit: an IPv4 address, or an IPv6 prefix of
  // this many bits (a host is usually given a /64; 128 counts each IPv6 address alone).
  int peer_ipv6_prefix = 64;
  uint32_t max_concurrent_streams = 100;  // HTTP/2 streams per connection (SETTINGS)
  uint32_t max_header_bytes = 16384;      // request metadata (gRPC's limit, decoded)
  Http2Limits http2;                      // the guard's limits (max_message_bytes is set from
                                          // max_receive_message_bytes)
  std::chrono::milliseconds handshake_timeout{10000};
  int io_threads = 0;                     // front-door relay threads; 0 = one per 8 workers
  size_t transport_memory_mb = 512;       // gRPC ResourceQuota: buffers of all connections
  size_t stream_window_bytes = 1u << 20;  // HTTP/2 per-stream receive window (fixed: gRPC's
                                          // BDP growth of it is cut back by the front door)
  // gRPC's BDP probing with the guard off too: stream windows then grow unchecked. Only for
  // `framepipe bench`, to measure the front door's hop apart from what probing saves; no flag.
  bool unguarded_bdp_probe = false;
  uint32_t max_streams_per_peer = 0;  // streams from one IP address; 0 = max_streams / 4
  std::chrono::milliseconds first_frame_timeout{10000};  // a call with no frame by then ends
  std::chrono::milliseconds idle_timeout{60000};         // a stream silent this long ends (0=off)
  // A stream whose client accepts no result this long is cancelled (0 = off).
  std::chrono::milliseconds write_timeout{60000};
  bool intra_frame_parallel = true;
  DecodeLimits limits;
  // Where video streams decode: "auto" (NVDEC when the CUDA backend is active and FFmpeg can open
  // a CUDA device, else the CPU), "cpu", or "nvdec" (try NVDEC whatever the analysis backend).
  // A failed NVDEC attempt falls back to the CPU with one log line (video_decoder_fallback).
  std::string video_decoder = "auto";
  EnrichConfig enrich;
  // The clock of stream timeouts (first frame, idle), frame deadlines and the drain; tests pass a
  // fake one and move it. The front door's connection limits keep the real clock.
  const TimeSource* time = TimeSource::Real();
  // Decorates the standard stages before the pipeline is built (tracing, fault injection in
  // tests). Empty = use them as they are.
  std::function<Stages(Stages)> wrap_stages;
};

class Server {
 public:
  static absl::StatusOr<std::unique_ptr<Server>> Start(const ServerOptions& options);
  // Shuts down (without waiting for a drain) if Shutdown() was not called.
  ~Server();

  int port() const;  // the bound port (useful with --listen 127.0.0.1:0)
  // The front door's counters (connections, refusals, guard violations); zero with guard off.
  FrontDoorCounters front_door_counters() const;
  int metrics_port() const;                    // 0 when metrics are disabled
  const std::string& metrics_address() const;  // where /metrics is served ("" when disabled)
  int health_port() const;                     // the --health-listen port (0 when none)
  const std::string& backend() const;
  const std::string& backend_detail() const;
  int workers() const;

  // Graceful: health NOT_SERVING, no new streams, every admitted frame answered and written,
  // then the gRPC server and pipeline stop. Bounded by drain_timeout; returns true if every
  // stream finished within it. Idempotent.
  bool Shutdown();
  // Blocks until Shutdown() has completed (from another thread or a signal handler's thread).
  void Wait();

  struct Impl;
  // The metrics (null when disabled); for tests.
  const class Metrics* metrics() const;

 private:
  explicit Server(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace framepipe
