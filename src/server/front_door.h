// FrontDoor: the server's own listener, in front of gRPC. It accepts TCP connections itself and
// hands each to gRPC (grpc::AddInsecureChannelFromFd) behind an Http2Guard, which stops the
// HTTP/2 attacks gRPC 1.51 has no defence for (header floods, rapid reset, oversized messages at
// their length prefix). Owning accept() also fixes what 1.51's listener gets wrong: after EMFILE
// it never accepts again; here the process' file limit is raised to its hard limit at start,
// connections are capped below it (total and per client address, plus a per-address connect
// rate), a refused connection gets an HTTP/2 GOAWAY saying why, and accepting resumes as soon as
// descriptors free up.
//
// Plaintext connections are guarded inline (front_door_inline.cc): gRPC gets the client's socket
// itself and the guard runs inside gRPC's own reads and writes of it, so honest bytes are never
// copied or moved through another socket. TLS connections (and all of them with
// inline_plaintext off: --guard relay) are relayed: the front door terminates TLS (OpenSSL),
// runs the guard and passes the bytes on over a local socket pair (front_door_relay.cc),
// splicing the runs of message body the guard has judged from the client's socket to gRPC's,
// kernel to kernel; the service checks bearer tokens itself.
//
// Threads: one acceptor, `io_threads` relay threads (epoll), each relayed connection owned by one
// of them, and one thread for the inline connections' deadlines and queued writes. All public
// methods are thread-safe.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "common/clock.h"
#include "server/http2_guard.h"

namespace grpc {
class Server;
}

namespace framepipe {

class PeerLog;

struct FrontDoorTls {
  std::string cert_file;       // PEM chain; TLS on when set
  std::string key_file;        // PEM key
  std::string client_ca_file;  // PEM roots: require and verify client certificates (mTLS)
};

struct FrontDoorOptions {
  std::string listen;  // host:port, [v6]:port, unix:/path; port 0 picks one
  Http2Limits http2;
  uint32_t max_connections = 0;             // 0: from the file limit (see FrontDoor::Bind)
  uint32_t max_connections_per_peer = 256;  // open connections from one client address
  int peer_ipv6_prefix = 64;  // IPv6 clients count as one address per prefix (see PeerHost)
  // HTTP/2 streams open at gRPC that one address's connections may have together (any method:
  // gRPC holds each call, ~17 KiB, before framepipe's service sees it). 0 = no limit.
  uint32_t max_http2_streams_per_peer = 0;
  double peer_connects_per_second = 200;  // new connections one address may open, sustained
  double peer_connect_burst = 1000;
  std::chrono::milliseconds handshake_timeout{10000};  // TLS + HTTP/2 preface and SETTINGS
  // Plaintext connections are guarded inline (front_door_inline.cc: the guard runs in gRPC's own
  // reads and writes of the client's socket, nothing relayed); false: relayed, as TLS ones are.
  bool inline_plaintext = true;
  int io_threads = 1;
  size_t buffer_bytes = 256 * 1024;  // per direction per connection, before reading pauses
  FrontDoorTls tls;
  PeerLog* peer_log = nullptr;  // aggregated logging of refusals and violations (not owned)
  const TimeSource* time = TimeSource::Real();
};

// Why a connection was refused at accept.
enum class ConnectionRefusal { kMaxConnections, kPeerLimit, kPeerRate, kFdLimit, kCount };
const char* ConnectionRefusalLabel(ConnectionRefusal r);

struct FrontDoorCounters {
  uint64_t connections_active = 0;
  uint64_t connections_total = 0;
  uint64_t refused[static_cast<int>(ConnectionRefusal::kCount)] = {};
  uint64_t violations[static_cast<int>(Http2Violation::kCount)] = {};
  uint64_t rejected_streams[static_cast<int>(StreamRejection::kCount)] = {};
  // Client bytes relayed to gRPC: read through the guard, or spliced past it (message bodies it
  // had judged, moved kernel to kernel).
  uint64_t bytes_copied = 0;
  uint64_t bytes_spliced = 0;
  uint64_t bytes_inline = 0;  // read by gRPC itself through the inline guard, as they came
  uint64_t relay_cpu_ns = 0;  // CPU time of the relay threads: what the front door's hop costs
  uint64_t handshake_timeouts = 0;
  uint64_t tls_failures = 0;
  uint32_t max_connections = 0;
};

class FrontDoor {
 public:
  // Binds and listens (so the port is known before gRPC starts). Raises RLIMIT_NOFILE's soft
  // limit to the hard limit; max_connections 0 becomes (limit - 256) / 3 (a relayed connection
  // holds three descriptors), at most 16384.
  static absl::StatusOr<std::unique_ptr<FrontDoor>> Bind(FrontDoorOptions options);
  ~FrontDoor();

  // Starts accepting; each connection is handed to `server` (started, no listening ports).
  void Start(grpc::Server* server);
  // Closes the listener (a drain). Open connections keep flowing.
  void StopAccepting();
  // Closes every connection and joins the threads. Idempotent.
  void Stop();

  int port() const;
  const std::string& address() const;
  // gRPC's peer string for a relayed connection ("fd:17") -> the client's ("ipv4:1.2.3.4:5").
  std::string ResolvePeer(const std::string& grpc_peer) const;
  FrontDoorCounters counters() const;

  struct Impl;

 private:
  explicit FrontDoor(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace framepipe
