// FrontDoor's internals, shared by its two halves: front_door.cc (listening, accepting,
// admission) and front_door_relay.cc (the relay threads). Not for use outside src/server.
#pragma once

#include <openssl/ssl.h>
#include <sys/socket.h>

#include <algorithm>
#include <atomic>
#include <ctime>
#include <list>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "common/token_bucket.h"
#include "server/front_door.h"

namespace grpc {
class Server;
}

namespace framepipe {
namespace front_door {

constexpr size_t kReadChunk = 256 * 1024;
// Splicing: worth a pipe round trip from this many judged bytes on; the read after a splice is
// short, so that the next frame's header, not a chunk of its body, is what gets copied.
constexpr size_t kMinSplice = 64 * 1024;
constexpr size_t kReadAfterSplice = 4096;
constexpr size_t kPipeBytes = 1 << 20;
constexpr size_t kMaxLingering = 256;  // refused or violating connections flushing their GOAWAY
constexpr auto kLinger = std::chrono::seconds(1);
constexpr auto kTick = std::chrono::milliseconds(100);

// How much the relay reads from a client socket it can splice from, given the judged message
// body waiting there (`judged`, too short to splice) and whether the connection is in bulk
// transfer: the judged rest and the next frame's header, not a chunk of the body behind them
// (that body is spliced once its header is judged); at a frame boundary in bulk transfer, a
// little, for the same reason; else a full chunk (control frames, small messages).
inline size_t ReadSize(size_t judged, bool bulk) {
  if (judged > 0) return std::min(kReadChunk, judged + kReadAfterSplice);
  return bulk ? kReadAfterSplice : kReadChunk;
}

std::string PeerString(const sockaddr_storage& ss);
const char* RejectionDetail(StreamRejection r);
std::string Errno(const char* what);
std::string OpenSslError();

// A byte queue written at the back and consumed from the front.
struct Buffer {
  std::string data;
  size_t off = 0;
  size_t size() const { return data.size() - off; }
  const char* begin() const { return data.data() + off; }
  void Consume(size_t n);
};

struct Connection;
struct InlineConn;  // front_door_inline.cc

// One end of a relayed connection in an epoll set.
struct Endpoint {
  Connection* conn;
  bool client;
  uint32_t interest = 0;  // events currently registered
};

struct Connection {
  int client_fd = -1;
  int server_fd = -1;  // our end of the socket pair (-1: refused, nothing behind it)
  SSL* ssl = nullptr;
  bool tls_handshaking = false;
  bool ssl_read_wants_write = false;
  bool ssl_write_wants_read = false;
  std::string peer;       // "ipv4:1.2.3.4:5678"
  std::string peer_host;  // "1.2.3.4"
  std::unique_ptr<Http2Guard> guard;
  Buffer to_server;
  Buffer to_client;
  bool client_eof = false;   // the client sent FIN (or close_notify)
  bool server_eof = false;   // gRPC closed its side
  bool server_shut = false;  // we shut our write side towards gRPC
  bool client_shut = false;  // we shut our write side towards the client
  bool closing = false;      // flush to_client, then close (refused, violation)
  bool dead = false;
  bool counted = false;  // holds a slot in the connection counts
  // Bulk transfer: the last frame boundary read led to a splice, so the next one is read a
  // little at a time too (its header, not a chunk of the body behind it, gets copied). Cleared
  // when a small read finds no body to splice behind the header (small frames: read chunks).
  bool bulk = false;
  TimePoint deadline{};  // handshake deadline, or the end of the linger when closing
  Endpoint client_ep{nullptr, true};
  Endpoint server_ep{nullptr, false};
};

}  // namespace front_door

using front_door::Buffer;
using front_door::Connection;
using front_door::Endpoint;

// The state behind a FrontDoor. Threads: the acceptor (AcceptLoop and what it calls), the relay
// threads (IoLoop and what it calls, each owning its connections); `mu` guards what they share.
struct FrontDoor::Impl {
  FrontDoorOptions options;
  const TimeSource* time;
  std::vector<int> listen_fds;
  int port = 0;
  std::string address;
  int reserve_fd = -1;  // a spare descriptor, given up to accept-and-refuse at EMFILE
  int stop_fd = -1;     // eventfd: wakes the acceptor
  SSL_CTX* ssl_ctx = nullptr;
  grpc::Server* server = nullptr;
  std::thread acceptor;
  std::atomic<bool> accepting{false};
  std::atomic<bool> stopping{false};
  bool stopped = false;

  struct IoThread {
    int epoll_fd = -1;
    int wake_fd = -1;
    std::mutex mu;
    std::vector<Connection*> incoming;  // handed over by the acceptor
    std::thread thread;
    std::list<Connection*> conns;  // owned, touched only by this thread
    // Read scratch, on the heap: a large thread_local would grow every thread's static TLS and
    // make pthread_create fail for libraries that start threads with small stacks (civetweb).
    std::unique_ptr<char[]> scratch{new char[front_door::kReadChunk]};
    // The splice pipe, shared by this thread's connections: emptied after every use.
    int pipe_r = -1;
    int pipe_w = -1;
    size_t pipe_bytes = 0;
    // This thread's CPU time (framepipe_relay_cpu_seconds_total), under `mu`: read from its
    // clock while it runs, kept when it ends.
    clockid_t cpu_clock{};
    bool cpu_live = false;
    uint64_t cpu_ns = 0;
  };
  // CPU time of the relay threads so far, in nanoseconds.
  uint64_t RelayCpuNanos() const;
  std::vector<std::unique_ptr<IoThread>> io;
  size_t next_io = 0;

  // Connection counts and peer names, shared by the acceptor and the relay threads.
  mutable std::mutex mu;
  uint32_t active = 0;
  std::map<std::string, uint32_t> by_peer;
  std::map<std::string, TokenBucket> connect_rate;  // connects per address
  // Streams open at gRPC per address, shared by its connections' guards.
  std::map<std::string, std::shared_ptr<StreamQuota>> stream_quota;
  std::vector<std::string> peer_by_fd;  // gRPC's end of the pair -> the client's address
  std::atomic<uint64_t> total{0};
  std::atomic<uint64_t> refused[static_cast<int>(ConnectionRefusal::kCount)] = {};
  std::atomic<uint64_t> violations[static_cast<int>(Http2Violation::kCount)] = {};
  std::atomic<uint64_t> rejected_streams[static_cast<int>(StreamRejection::kCount)] = {};
  std::atomic<uint64_t> bytes_copied{0};
  std::atomic<uint64_t> bytes_inline{0};  // read by gRPC as they came, through the inline guard
  std::atomic<uint64_t> bytes_spliced{0};
  std::atomic<uint64_t> handshake_timeouts{0};
  std::atomic<uint64_t> tls_failures{0};

  // The inline path (front_door_inline.cc): plaintext connections go to gRPC themselves, their
  // guard runs in gRPC's reads and writes; this thread writes what their sockets did not take
  // at once and enforces their handshake deadline.
  int inline_epoll = -1;
  int inline_wake = -1;  // eventfd: wakes the inline thread
  std::thread inline_thread;
  std::map<int, front_door::InlineConn*> inline_conns;  // under front_door_inline.cc's lock
  bool CanInline(int fd) const;
  void RelayInline(int fd, const std::string& peer, const std::string& host, TimePoint now,
                   std::shared_ptr<StreamQuota> quota);
  void InlineLoop();
  void StopInline();
  // A connection that is over but for `to_client` (a refusal's GOAWAY, frames an inline
  // connection still had queued when gRPC closed it): a relay thread writes them, shuts down and
  // closes after the client's FIN or kLinger. `counted`: it holds a slot in the counts.
  void Linger(int fd, const std::string& peer, const std::string& host, std::string to_client,
              bool counted);
  // The guard's stream rejections and violation, to the counters and the peer log.
  void CountRejections(Http2Guard* g, const std::string& host);
  void CountViolation(const Http2Guard& g, const std::string& host);

  ~Impl();
  absl::Status BindAll();
  absl::Status BindUnix(const std::string& path);
  absl::Status SetUpTls();
  void AcceptLoop();
  void AcceptReady(int lfd);
  bool RefuseForLackOfFds(int lfd);
  std::string RefusalDetail(ConnectionRefusal why) const;
  void Relay(int fd, const std::string& peer, const std::string& host, TimePoint now);
  // An admitted connection is gone: its slot in the counts comes back.
  void Forget(const std::string& host);
  void Refuse(int fd, const std::string& peer, const std::string& host, ConnectionRefusal why,
              const std::string& detail);
  std::optional<ConnectionRefusal> Admit(const std::string& host, TimePoint now);
  void Hand(Connection* c);
  void IoLoop(IoThread* t);
  void Adopt(IoThread* t, Connection* c);
  void OnEvent(IoThread* t, Endpoint* ep, uint32_t events);
  void ReadClient(IoThread* t, Connection* c);
  // Moves judged message body from the client to gRPC through the thread's pipe: 1 when bytes
  // moved, 0 when there is nothing to splice (read instead), -1 when reading must stop for now.
  int SpliceFromClient(IoThread* t, Connection* c);
  void ReadServer(IoThread* t, Connection* c);
  void FlushToServer(Connection* c);
  void FlushToClient(IoThread* t, Connection* c);
  void ContinueHandshake(IoThread* t, Connection* c);
  void DiscardFromClient(IoThread* t, Connection* c);
  void GuardViolation(IoThread* t, Connection* c);
  void UpdateInterest(IoThread* t, Connection* c);
  void StartClosing(IoThread* t, Connection* c);
  void Close(IoThread* t, Connection* c);
  void CheckDeadlines(IoThread* t, TimePoint now);
  void Note(const std::string& host, const std::string& key, const std::string& line_detail);
};

}  // namespace framepipe
