#include "server/front_door.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <poll.h>
#include <pthread.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <unistd.h>
#include <csignal>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <list>
#include <map>
#include <mutex>
#include <optional>
#include <thread>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "common/log.h"
#include "common/status.h"
#include "grpcpp/server.h"
#include "grpcpp/server_posix.h"
#include "server/peer_log.h"

namespace framepipe {

const char* ConnectionRefusalLabel(ConnectionRefusal r) {
  static const char* kNames[] = {"max_connections", "peer_limit", "peer_rate", "fd_limit"};
  return kNames[static_cast<int>(r)];
}

namespace {

constexpr size_t kReadChunk = 256 * 1024;
constexpr size_t kMaxLingering = 256;  // refused or violating connections flushing their GOAWAY
constexpr auto kLinger = std::chrono::seconds(1);
constexpr auto kTick = std::chrono::milliseconds(100);

std::string PeerString(const sockaddr_storage& ss) {
  char host[INET6_ADDRSTRLEN] = {};
  if (ss.ss_family == AF_INET) {
    const auto* a = reinterpret_cast<const sockaddr_in*>(&ss);
    inet_ntop(AF_INET, &a->sin_addr, host, sizeof(host));
    return absl::StrCat("ipv4:", host, ":", ntohs(a->sin_port));
  }
  if (ss.ss_family == AF_INET6) {
    const auto* a = reinterpret_cast<const sockaddr_in6*>(&ss);
    if (IN6_IS_ADDR_V4MAPPED(&a->sin6_addr)) {  // an IPv4 client on a dual-stack listener
      in_addr v4;
      std::memcpy(&v4, a->sin6_addr.s6_addr + 12, 4);
      inet_ntop(AF_INET, &v4, host, sizeof(host));
      return absl::StrCat("ipv4:", host, ":", ntohs(a->sin6_port));
    }
    inet_ntop(AF_INET6, &a->sin6_addr, host, sizeof(host));
    return absl::StrCat("ipv6:[", host, "]:", ntohs(a->sin6_port));
  }
  return "unix:";
}

std::string Errno(const char* what) { return absl::StrCat(what, ": ", std::strerror(errno)); }

std::string OpenSslError() {
  std::string out;
  while (unsigned long e = ERR_get_error()) {
    char buf[256];
    ERR_error_string_n(e, buf, sizeof(buf));
    absl::StrAppend(&out, out.empty() ? "" : "; ", buf);
  }
  return out.empty() ? "unknown TLS error" : out;
}

// A byte queue written at the back and consumed from the front.
struct Buffer {
  std::string data;
  size_t off = 0;
  size_t size() const { return data.size() - off; }
  const char* begin() const { return data.data() + off; }
  void Consume(size_t n) {
    off += n;
    if (off == data.size()) {
      data.clear();
      off = 0;
    } else if (off > 64 * 1024 && off > data.size() / 2) {
      data.erase(0, off);
      off = 0;
    }
  }
};

struct Bucket {
  double tokens;
  TimePoint last;
};

void Append(Buffer* b, const Http2Out& out) {
  for (std::string_view p : out.parts()) b->data.append(p);
}

// Writes `out` to `fd` straight from where it lies when nothing is queued before it (one sendmsg,
// no copy); what the socket does not take, and everything when bytes are already queued, goes to
// `queue`. False when the socket failed.
bool WriteOrQueue(int fd, Buffer* queue, const Http2Out& out) {
  if (out.empty()) return true;
  if (queue->size() > 0 || fd < 0) {
    Append(queue, out);
    return true;
  }
  const auto& parts = out.parts();
  size_t done = 0;
  for (size_t first = 0; first < parts.size();) {
    iovec iov[64];
    size_t n = 0, want = 0;
    for (size_t i = first; i < parts.size() && n < 64; ++i, ++n) {
      iov[n] = {const_cast<char*>(parts[i].data()), parts[i].size()};
      want += parts[i].size();
    }
    msghdr msg{};
    msg.msg_iov = iov;
    msg.msg_iovlen = n;
    // A peer that went away answers with EPIPE, not a SIGPIPE that would kill the process.
    const ssize_t w = sendmsg(fd, &msg, MSG_NOSIGNAL);
    if (w < 0) {
      if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) return false;
      break;
    }
    done += static_cast<size_t>(w);
    if (static_cast<size_t>(w) < want) break;
    first += n;
  }
  // Queue what is left: skip the `done` bytes already written.
  for (std::string_view p : parts) {
    if (done >= p.size()) {
      done -= p.size();
      continue;
    }
    queue->data.append(p.substr(done));
    done = 0;
  }
  return true;
}

}  // namespace

struct Connection;

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
  TimePoint deadline{};  // handshake deadline, or the end of the linger when closing
  Endpoint client_ep{nullptr, true};
  Endpoint server_ep{nullptr, false};
};

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
    std::unique_ptr<char[]> scratch{new char[kReadChunk]};
  };
  std::vector<std::unique_ptr<IoThread>> io;
  size_t next_io = 0;

  // Connection counts and peer names, shared by the acceptor and the relay threads.
  mutable std::mutex mu;
  uint32_t active = 0;
  std::map<std::string, uint32_t> by_peer;
  std::map<std::string, Bucket> connect_rate;
  std::vector<std::string> peer_by_fd;  // gRPC's end of the pair -> the client's address
  std::atomic<uint64_t> total{0};
  std::atomic<uint64_t> refused[static_cast<int>(ConnectionRefusal::kCount)] = {};
  std::atomic<uint64_t> violations[static_cast<int>(Http2Violation::kCount)] = {};
  std::atomic<uint64_t> rejected_streams[static_cast<int>(StreamRejection::kCount)] = {};
  std::atomic<uint64_t> handshake_timeouts{0};
  std::atomic<uint64_t> tls_failures{0};

  ~Impl();
  absl::Status BindAll();
  absl::Status SetUpTls();
  void AcceptLoop();
  void AcceptReady(int lfd);
  void Refuse(int fd, const std::string& peer, const std::string& host, ConnectionRefusal why,
              const std::string& detail);
  std::optional<ConnectionRefusal> Admit(const std::string& host, TimePoint now);
  void Hand(Connection* c);
  void IoLoop(IoThread* t);
  void Adopt(IoThread* t, Connection* c);
  void OnEvent(IoThread* t, Endpoint* ep, uint32_t events);
  void ReadClient(IoThread* t, Connection* c);
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

FrontDoor::Impl::~Impl() {
  for (int fd : listen_fds) close(fd);
  if (reserve_fd >= 0) close(reserve_fd);
  if (stop_fd >= 0) close(stop_fd);
  if (ssl_ctx) SSL_CTX_free(ssl_ctx);
}

FrontDoor::FrontDoor(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
FrontDoor::~FrontDoor() { Stop(); }

absl::StatusOr<std::unique_ptr<FrontDoor>> FrontDoor::Bind(FrontDoorOptions options) {
  auto impl = std::make_unique<Impl>();
  impl->time = options.time ? options.time : TimeSource::Real();
  impl->options = std::move(options);
  FrontDoorOptions& o = impl->options;
  // The file limit: raise the soft limit to the hard one, then keep connections well below it.
  rlimit rl{};
  if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
    rlimit raised = rl;
    raised.rlim_cur = rl.rlim_max;
    if (setrlimit(RLIMIT_NOFILE, &raised) == 0) rl = raised;
  }
  if (o.max_connections == 0) {
    const uint64_t limit = rl.rlim_cur == RLIM_INFINITY ? 1u << 20 : rl.rlim_cur;
    o.max_connections =
        static_cast<uint32_t>(std::clamp<uint64_t>(limit > 256 ? (limit - 256) / 3 : 1, 1, 16384));
  }
  if (o.max_connections_per_peer == 0) o.max_connections_per_peer = o.max_connections;
  o.io_threads = std::max(1, o.io_threads);
  if (!o.tls.cert_file.empty()) {
    // OpenSSL writes to the client socket with write(): a client gone mid-write must be an EPIPE
    // for that connection, not a SIGPIPE for the process.
    signal(SIGPIPE, SIG_IGN);
    FP_RETURN_IF_ERROR(impl->SetUpTls());
  }
  FP_RETURN_IF_ERROR(impl->BindAll());
  impl->reserve_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
  impl->stop_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  return std::unique_ptr<FrontDoor>(new FrontDoor(std::move(impl)));
}

absl::Status FrontDoor::Impl::SetUpTls() {
  const FrontDoorTls& t = options.tls;
  ssl_ctx = SSL_CTX_new(TLS_server_method());
  if (!ssl_ctx) return absl::InternalError("cannot create a TLS context: " + OpenSslError());
  SSL_CTX_set_min_proto_version(ssl_ctx, TLS1_2_VERSION);
  SSL_CTX_set_mode(ssl_ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER |
                                SSL_MODE_RELEASE_BUFFERS);
  SSL_CTX_set_options(ssl_ctx, SSL_OP_NO_RENEGOTIATION | SSL_OP_NO_COMPRESSION);
  if (SSL_CTX_use_certificate_chain_file(ssl_ctx, t.cert_file.c_str()) != 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("cannot use TLS certificate ", t.cert_file, ": ", OpenSslError()));
  }
  if (SSL_CTX_use_PrivateKey_file(ssl_ctx, t.key_file.c_str(), SSL_FILETYPE_PEM) != 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("cannot use TLS key ", t.key_file, ": ", OpenSslError()));
  }
  if (SSL_CTX_check_private_key(ssl_ctx) != 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("TLS key ", t.key_file, " does not match certificate ", t.cert_file));
  }
  if (!t.client_ca_file.empty()) {
    if (SSL_CTX_load_verify_locations(ssl_ctx, t.client_ca_file.c_str(), nullptr) != 1) {
      return absl::InvalidArgumentError(
          absl::StrCat("cannot use client CA ", t.client_ca_file, ": ", OpenSslError()));
    }
    if (STACK_OF(X509_NAME)* names = SSL_load_client_CA_file(t.client_ca_file.c_str())) {
      SSL_CTX_set_client_CA_list(ssl_ctx, names);
    }
    SSL_CTX_set_verify(ssl_ctx, SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT, nullptr);
  }
  // gRPC clients require HTTP/2 by ALPN.
  SSL_CTX_set_alpn_select_cb(
      ssl_ctx,
      [](SSL*, const unsigned char** out, unsigned char* outlen, const unsigned char* in,
         unsigned int inlen, void*) -> int {
        static const unsigned char kH2[] = {2, 'h', '2'};
        unsigned char* selected = nullptr;
        if (SSL_select_next_proto(&selected, outlen, kH2, sizeof(kH2), in, inlen) !=
            OPENSSL_NPN_NEGOTIATED) {
          return SSL_TLSEXT_ERR_ALERT_FATAL;
        }
        *out = selected;
        return SSL_TLSEXT_ERR_OK;
      },
      nullptr);
  return absl::OkStatus();
}

absl::Status FrontDoor::Impl::BindAll() {
  const std::string& listen = options.listen;
  if (listen.rfind("unix:", 0) == 0) {
    const std::string path = listen.substr(5);
    sockaddr_un sa{};
    sa.sun_family = AF_UNIX;
    if (path.empty() || path.size() >= sizeof(sa.sun_path)) {
      return absl::InvalidArgumentError(absl::StrCat("bad unix socket path in ", listen));
    }
    std::memcpy(sa.sun_path, path.data(), path.size());
    unlink(path.c_str());
    const int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0 || bind(fd, reinterpret_cast<sockaddr*>(&sa), sizeof(sa)) != 0 ||
        ::listen(fd, 1024) != 0) {
      const std::string err = Errno("cannot listen");
      if (fd >= 0) close(fd);
      return absl::UnavailableError(absl::StrCat(err, " on ", listen));
    }
    listen_fds.push_back(fd);
    address = listen;
    return absl::OkStatus();
  }
  std::string host, port_str;
  if (!listen.empty() && listen[0] == '[') {
    const size_t end = listen.find("]:");
    if (end == std::string::npos) {
      return absl::InvalidArgumentError(absl::StrCat("bad listen address ", listen));
    }
    host = listen.substr(1, end - 1);
    port_str = listen.substr(end + 2);
  } else {
    const size_t colon = listen.rfind(':');
    if (colon == std::string::npos) {
      return absl::InvalidArgumentError(
          absl::StrCat("bad listen address ", listen, " (expected host:port)"));
    }
    host = listen.substr(0, colon);
    port_str = listen.substr(colon + 1);
  }
  int want_port = 0;
  if (!absl::SimpleAtoi(port_str, &want_port) || want_port < 0 || want_port > 65535) {
    return absl::InvalidArgumentError(absl::StrCat("bad port in listen address ", listen));
  }
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
  addrinfo* res = nullptr;
  const int gai = getaddrinfo(host.empty() || host == "*" ? nullptr : host.c_str(),
                              port_str.c_str(), &hints, &res);
  if (gai != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("cannot resolve listen address ", listen, ": ", gai_strerror(gai)));
  }
  std::string err;
  for (addrinfo* ai = res; ai; ai = ai->ai_next) {
    const int fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0) continue;
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (ai->ai_family == AF_INET6) {
      int zero = 0;  // "[::]" takes IPv4 clients too, as gRPC's own listener does
      setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &zero, sizeof(zero));
    }
    if (port != 0) {  // port 0 asked for: every address on the port the first one got
      if (ai->ai_family == AF_INET) {
        reinterpret_cast<sockaddr_in*>(ai->ai_addr)->sin_port = htons(static_cast<uint16_t>(port));
      } else if (ai->ai_family == AF_INET6) {
        reinterpret_cast<sockaddr_in6*>(ai->ai_addr)->sin6_port =
            htons(static_cast<uint16_t>(port));
      }
    }
    if (bind(fd, ai->ai_addr, ai->ai_addrlen) != 0 || ::listen(fd, 1024) != 0) {
      err = Errno("cannot listen");
      close(fd);
      continue;
    }
    sockaddr_storage ss{};
    socklen_t len = sizeof(ss);
    getsockname(fd, reinterpret_cast<sockaddr*>(&ss), &len);
    port = ss.ss_family == AF_INET ? ntohs(reinterpret_cast<sockaddr_in*>(&ss)->sin_port)
                                   : ntohs(reinterpret_cast<sockaddr_in6*>(&ss)->sin6_port);
    listen_fds.push_back(fd);
  }
  freeaddrinfo(res);
  if (listen_fds.empty()) {
    return absl::UnavailableError(
        absl::StrCat(err.empty() ? "cannot listen" : err, " on ", listen));
  }
  address = listen;
  return absl::OkStatus();
}

void FrontDoor::Start(grpc::Server* server) {
  Impl& m = *impl_;
  m.server = server;
  for (int i = 0; i < m.options.io_threads; ++i) {
    auto t = std::make_unique<Impl::IoThread>();
    t->epoll_fd = epoll_create1(EPOLL_CLOEXEC);
    t->wake_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    epoll_event ev{};
    ev.events = EPOLLIN;
    ev.data.ptr = nullptr;  // the wake fd
    epoll_ctl(t->epoll_fd, EPOLL_CTL_ADD, t->wake_fd, &ev);
    Impl::IoThread* raw = t.get();
    t->thread = std::thread([&m, raw] { m.IoLoop(raw); });
    m.io.push_back(std::move(t));
  }
  m.accepting = true;
  m.acceptor = std::thread([&m] { m.AcceptLoop(); });
}

void FrontDoor::StopAccepting() {
  Impl& m = *impl_;
  if (m.accepting.exchange(false)) {
    uint64_t one = 1;
    (void)write(m.stop_fd, &one, sizeof(one));
    if (m.acceptor.joinable()) m.acceptor.join();
  }
  // Closed, not just unattended: a new client is refused at once (and retries elsewhere) instead
  // of completing a TCP handshake with a backlog nobody reads.
  for (int fd : m.listen_fds) close(fd);
  m.listen_fds.clear();
}

void FrontDoor::Stop() {
  Impl& m = *impl_;
  if (m.stopped) return;
  m.stopped = true;
  StopAccepting();
  m.stopping = true;
  for (auto& t : m.io) {
    uint64_t one = 1;
    (void)write(t->wake_fd, &one, sizeof(one));
    if (t->thread.joinable()) t->thread.join();
    for (Connection* c : t->conns) m.Close(t.get(), c);
    for (Connection* c : t->conns) delete c;
    t->conns.clear();
    for (Connection* c : t->incoming) {
      if (c->client_fd >= 0) close(c->client_fd);
      if (c->server_fd >= 0) close(c->server_fd);
      if (c->ssl) SSL_free(c->ssl);
      delete c;
    }
    t->incoming.clear();
    close(t->epoll_fd);
    close(t->wake_fd);
  }
}

int FrontDoor::port() const { return impl_->port; }
const std::string& FrontDoor::address() const { return impl_->address; }

std::string FrontDoor::ResolvePeer(const std::string& grpc_peer) const {
  int fd = -1;
  if (grpc_peer.rfind("fd:", 0) != 0 || !absl::SimpleAtoi(grpc_peer.substr(3), &fd) || fd < 0) {
    return grpc_peer;
  }
  std::lock_guard<std::mutex> l(impl_->mu);
  if (static_cast<size_t>(fd) >= impl_->peer_by_fd.size() || impl_->peer_by_fd[fd].empty()) {
    return grpc_peer;
  }
  return impl_->peer_by_fd[fd];
}

FrontDoorCounters FrontDoor::counters() const {
  const Impl& m = *impl_;
  FrontDoorCounters c;
  {
    std::lock_guard<std::mutex> l(m.mu);
    c.connections_active = m.active;
  }
  c.connections_total = m.total.load();
  for (int i = 0; i < static_cast<int>(ConnectionRefusal::kCount); ++i) c.refused[i] = m.refused[i];
  for (int i = 0; i < static_cast<int>(Http2Violation::kCount); ++i) {
    c.violations[i] = m.violations[i];
  }
  for (int i = 0; i < static_cast<int>(StreamRejection::kCount); ++i) {
    c.rejected_streams[i] = m.rejected_streams[i];
  }
  c.handshake_timeouts = m.handshake_timeouts;
  c.tls_failures = m.tls_failures;
  c.max_connections = m.options.max_connections;
  return c;
}

void FrontDoor::Impl::Note(const std::string& host, const std::string& key,
                           const std::string& line_detail) {
  if (options.peer_log && !options.peer_log->AllowEvent(host, key, time->Now())) return;
  LogLine("front_door").Add("peer", host).Add("event", key).Add("detail", line_detail).Emit();
}

// ---- accepting

void FrontDoor::Impl::AcceptLoop() {
  pthread_setname_np(pthread_self(), "fp-accept");
  std::vector<pollfd> fds;
  for (int fd : listen_fds) fds.push_back({fd, POLLIN, 0});
  fds.push_back({stop_fd, POLLIN, 0});
  bool starved = false;  // out of descriptors even for the reserve: back off a little
  while (accepting) {
    const int n = poll(fds.data(), fds.size(), starved ? 50 : -1);
    if (n < 0 && errno != EINTR) break;
    if (!accepting) break;
    starved = false;
    for (size_t i = 0; i + 1 < fds.size(); ++i) {
      if (fds[i].revents & POLLIN) AcceptReady(fds[i].fd);
    }
    if (reserve_fd < 0) {
      reserve_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
      starved = reserve_fd < 0;
    }
  }
}

std::optional<ConnectionRefusal> FrontDoor::Impl::Admit(const std::string& host, TimePoint now) {
  std::lock_guard<std::mutex> l(mu);
  if (active >= options.max_connections) return ConnectionRefusal::kMaxConnections;
  uint32_t& mine = by_peer[host];
  if (mine >= options.max_connections_per_peer) return ConnectionRefusal::kPeerLimit;
  auto [it, fresh] = connect_rate.try_emplace(host, Bucket{options.peer_connect_burst, now});
  Bucket& b = it->second;
  if (!fresh) {
    b.tokens = std::min(options.peer_connect_burst,
                        b.tokens + options.peer_connects_per_second * SecondsBetween(b.last, now));
    b.last = now;
  }
  if (b.tokens < 1) {
    if (mine == 0) by_peer.erase(host);
    return ConnectionRefusal::kPeerRate;
  }
  b.tokens -= 1;
  // Forget addresses whose bucket is full again (bounded memory under address churn).
  if (connect_rate.size() > 4096) {
    for (auto r = connect_rate.begin(); r != connect_rate.end();) {
      const bool full = r->second.tokens + options.peer_connects_per_second *
                                               SecondsBetween(r->second.last, now) >=
                        options.peer_connect_burst;
      r = full ? connect_rate.erase(r) : std::next(r);
    }
  }
  ++mine;
  ++active;
  return std::nullopt;
}

void FrontDoor::Impl::AcceptReady(int lfd) {
  for (;;) {
    sockaddr_storage ss{};
    socklen_t len = sizeof(ss);
    const int fd =
        accept4(lfd, reinterpret_cast<sockaddr*>(&ss), &len, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0) {
      if (errno == EINTR || errno == ECONNABORTED) continue;
      if ((errno == EMFILE || errno == ENFILE) && reserve_fd >= 0) {
        // Out of descriptors: give up the spare one to take the waiting connection off the
        // queue and close it, so the listener never stalls (gRPC 1.51's stops for good here).
        close(reserve_fd);
        reserve_fd = -1;
        const int victim = accept4(lfd, nullptr, nullptr, SOCK_CLOEXEC);
        if (victim >= 0) close(victim);
        ++refused[static_cast<int>(ConnectionRefusal::kFdLimit)];
        Note("*", "refused_fd_limit", "out of file descriptors (RLIMIT_NOFILE): connection closed");
        reserve_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
        if (reserve_fd < 0) return;  // still none: the loop backs off and retries
        continue;
      }
      return;  // EAGAIN, or an error the next poll retries
    }
    const std::string peer = PeerString(ss);
    const std::string host = PeerHost(peer);
    const TimePoint now = time->Now();
    if (auto why = Admit(host, now)) {
      std::string detail;
      switch (*why) {
        case ConnectionRefusal::kMaxConnections:
          detail = absl::StrCat("the server is at its limit of ", options.max_connections,
                                " connections (--max-connections)");
          break;
        case ConnectionRefusal::kPeerLimit:
          detail = absl::StrCat("this address has ", options.max_connections_per_peer,
                                " connections open, the limit per address "
                                "(--max-connections-per-peer)");
          break;
        default:
          detail = absl::StrCat("this address opens connections faster than ",
                                options.peer_connects_per_second, "/s");
          break;
      }
      Refuse(fd, peer, host, *why, detail);
      continue;
    }
    ++total;
    int pair[2];
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, pair) != 0) {
      close(fd);
      {
        std::lock_guard<std::mutex> l(mu);
        --active;
        if (--by_peer[host] == 0) by_peer.erase(host);
      }
      ++refused[static_cast<int>(ConnectionRefusal::kFdLimit)];
      Note(host, "refused_fd_limit", Errno("socketpair"));
      continue;
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    // Larger local buffers: fewer wake-ups per megabyte relayed (FORCE works as root; otherwise
    // the kernel caps the request at net.core.wmem_max / rmem_max).
    const int big = 4 << 20;
    for (int end : pair) {
      if (setsockopt(end, SOL_SOCKET, SO_SNDBUFFORCE, &big, sizeof(big)) != 0) {
        setsockopt(end, SOL_SOCKET, SO_SNDBUF, &big, sizeof(big));
      }
      if (setsockopt(end, SOL_SOCKET, SO_RCVBUFFORCE, &big, sizeof(big)) != 0) {
        setsockopt(end, SOL_SOCKET, SO_RCVBUF, &big, sizeof(big));
      }
    }
    auto* c = new Connection;
    c->client_fd = fd;
    c->server_fd = pair[0];
    c->peer = peer;
    c->peer_host = host;
    c->counted = true;
    c->guard = std::make_unique<Http2Guard>(options.http2);
    c->deadline = now + options.handshake_timeout;
    if (ssl_ctx) {
      c->ssl = SSL_new(ssl_ctx);
      SSL_set_fd(c->ssl, fd);
      SSL_set_accept_state(c->ssl);
      c->tls_handshaking = true;
    }
    {
      std::lock_guard<std::mutex> l(mu);
      if (peer_by_fd.size() <= static_cast<size_t>(pair[1])) peer_by_fd.resize(pair[1] + 1);
      peer_by_fd[pair[1]] = peer;
    }
    grpc::AddInsecureChannelFromFd(server, pair[1]);  // gRPC owns pair[1] from here
    Hand(c);
  }
}

void FrontDoor::Impl::Refuse(int fd, const std::string& peer, const std::string& host,
                             ConnectionRefusal why, const std::string& detail) {
  ++refused[static_cast<int>(why)];
  Note(host, absl::StrCat("refused_", ConnectionRefusalLabel(why)), detail);
  auto* c = new Connection;
  c->client_fd = fd;
  c->peer = peer;
  c->peer_host = host;
  c->closing = true;
  c->deadline = time->Now() + kLinger;
  if (!ssl_ctx) {
    // A plaintext gRPC client reads the GOAWAY and reports why; with TLS there is no handshake
    // to spend on a refused connection: it is just closed.
    c->to_client.data = Http2Guard::RefusalFrames(absl::StrCat("framepipe: ", detail));
  }
  Hand(c);
}

void FrontDoor::Impl::Hand(Connection* c) {
  IoThread* t = io[next_io++ % io.size()].get();
  {
    std::lock_guard<std::mutex> l(t->mu);
    t->incoming.push_back(c);
  }
  uint64_t one = 1;
  (void)write(t->wake_fd, &one, sizeof(one));
}

// ---- relaying

void FrontDoor::Impl::IoLoop(IoThread* t) {
  pthread_setname_np(pthread_self(), "fp-relay");
  std::vector<epoll_event> events(256);
  std::vector<Connection*> closed;
  TimePoint next_check = time->Now() + kTick;
  while (!stopping) {
    const int n = epoll_wait(t->epoll_fd, events.data(), static_cast<int>(events.size()),
                             static_cast<int>(kTick.count()));
    if (n < 0 && errno != EINTR) break;
    for (int i = 0; i < n; ++i) {
      if (events[i].data.ptr == nullptr) {
        uint64_t v;
        (void)read(t->wake_fd, &v, sizeof(v));
        std::vector<Connection*> fresh;
        {
          std::lock_guard<std::mutex> l(t->mu);
          fresh.swap(t->incoming);
        }
        for (Connection* c : fresh) Adopt(t, c);
        continue;
      }
      auto* ep = static_cast<Endpoint*>(events[i].data.ptr);
      if (!ep->conn->dead) OnEvent(t, ep, events[i].events);
    }
    const TimePoint now = time->Now();
    if (now >= next_check) {
      CheckDeadlines(t, now);
      next_check = now + kTick;
    }
    // Free what closed during this batch (events of the same batch may still name it above).
    for (auto it = t->conns.begin(); it != t->conns.end();) {
      if ((*it)->dead) {
        delete *it;
        it = t->conns.erase(it);
      } else {
        ++it;
      }
    }
  }
}

void FrontDoor::Impl::Adopt(IoThread* t, Connection* c) {
  c->client_ep.conn = c;
  c->server_ep.conn = c;
  t->conns.push_back(c);
  epoll_event ev{};
  ev.data.ptr = &c->client_ep;
  ev.events = 0;
  epoll_ctl(t->epoll_fd, EPOLL_CTL_ADD, c->client_fd, &ev);
  if (c->server_fd >= 0) {
    ev.data.ptr = &c->server_ep;
    epoll_ctl(t->epoll_fd, EPOLL_CTL_ADD, c->server_fd, &ev);
  }
  if (c->closing) FlushToClient(t, c);  // a refusal: its GOAWAY, then FIN
  if (!c->dead) UpdateInterest(t, c);
}

void FrontDoor::Impl::OnEvent(IoThread* t, Endpoint* ep, uint32_t events) {
  Connection* c = ep->conn;
  if (ep->client) {
    if (c->closing) {
      if (events & EPOLLOUT) FlushToClient(t, c);
      if (!c->dead && (events & (EPOLLIN | EPOLLHUP | EPOLLERR))) DiscardFromClient(t, c);
    } else if (c->tls_handshaking) {
      ContinueHandshake(t, c);
    } else {
      if ((events & EPOLLOUT) || ((events & EPOLLIN) && c->ssl_write_wants_read)) {
        FlushToClient(t, c);
      }
      if (!c->dead && ((events & (EPOLLIN | EPOLLHUP | EPOLLERR)) ||
                       ((events & EPOLLOUT) && c->ssl_read_wants_write))) {
        ReadClient(t, c);
      }
    }
  } else {
    if (events & EPOLLOUT) {
      FlushToServer(c);
      // Room again towards gRPC: OpenSSL may hold decrypted bytes no socket event announces.
      if (c->ssl && !c->tls_handshaking && SSL_pending(c->ssl) > 0) ReadClient(t, c);
    }
    if (!c->dead && (events & (EPOLLIN | EPOLLHUP | EPOLLERR))) ReadServer(t, c);
  }
  if (!c->dead) UpdateInterest(t, c);
}

// A closing connection: what the client still sends is read and dropped (closing a socket with
// unread data would send a reset that can overtake the GOAWAY); its FIN ends the linger.
void FrontDoor::Impl::DiscardFromClient(IoThread* t, Connection* c) {
  for (;;) {
    const ssize_t n = read(c->client_fd, t->scratch.get(), kReadChunk);
    if (n > 0) continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) return;
    Close(t, c);  // EOF or error: nothing more to wait for
    return;
  }
}

void FrontDoor::Impl::ContinueHandshake(IoThread* t, Connection* c) {
  ERR_clear_error();
  const int r = SSL_do_handshake(c->ssl);
  if (r == 1) {
    c->tls_handshaking = false;
    c->ssl_read_wants_write = false;
    ReadClient(t, c);  // data may already be decrypted and buffered inside OpenSSL
    return;
  }
  const int err = SSL_get_error(c->ssl, r);
  if (err == SSL_ERROR_WANT_READ || err == SSL_ERROR_WANT_WRITE) {
    c->ssl_read_wants_write = err == SSL_ERROR_WANT_WRITE;
    return;
  }
  ++tls_failures;
  Note(c->peer_host, "tls_handshake_failed", OpenSslError());
  Close(t, c);
}

void FrontDoor::Impl::ReadClient(IoThread* t, Connection* c) {
  char* const buf = t->scratch.get();
  while (!c->dead && !c->client_eof && !c->closing && c->to_server.size() < options.buffer_bytes) {
    ssize_t n;
    if (c->ssl) {
      ERR_clear_error();
      const int r = SSL_read(c->ssl, buf, static_cast<int>(kReadChunk));
      c->ssl_read_wants_write = false;
      if (r > 0) {
        n = r;
      } else {
        const int err = SSL_get_error(c->ssl, r);
        if (err == SSL_ERROR_WANT_READ) return;
        if (err == SSL_ERROR_WANT_WRITE) {
          c->ssl_read_wants_write = true;
          return;
        }
        n = (err == SSL_ERROR_ZERO_RETURN || (err == SSL_ERROR_SYSCALL && errno == 0)) ? 0 : -1;
        if (n < 0) errno = ECONNRESET;
      }
    } else {
      n = read(c->client_fd, buf, kReadChunk);
    }
    if (n < 0) {
      if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) return;
      Close(t, c);  // reset by the client
      return;
    }
    if (n == 0) {
      c->client_eof = true;
      FlushToServer(c);
      return;
    }
    Http2Out to_server, to_client;
    const bool ok = c->guard->FromClient(std::string_view(buf, static_cast<size_t>(n)), time->Now(),
                                         &to_server, &to_client);
    Append(&c->to_client, to_client);
    if (ok && !c->server_shut && !WriteOrQueue(c->server_fd, &c->to_server, to_server)) {
      c->to_server = Buffer{};  // gRPC is gone; its EOF closes the connection
    }
    for (int r = 0; r < static_cast<int>(StreamRejection::kCount); ++r) {
      if (uint64_t k = c->guard->TakeRejections(static_cast<StreamRejection>(r))) {
        rejected_streams[r] += k;
        Note(c->peer_host,
             absl::StrCat("stream_", StreamRejectionLabel(static_cast<StreamRejection>(r))),
             "a stream was ended at a message's length prefix");
      }
    }
    if (!ok) {
      GuardViolation(t, c);
      return;
    }
    if (c->guard->preface_received() && c->deadline != TimePoint{} && !c->closing) {
      c->deadline = TimePoint{};  // the handshake is over
    }
    FlushToServer(c);
    FlushToClient(t, c);
  }
}

void FrontDoor::Impl::ReadServer(IoThread* t, Connection* c) {
  char* const buf = t->scratch.get();
  while (!c->dead && !c->server_eof && c->to_client.size() < options.buffer_bytes) {
    const ssize_t n = read(c->server_fd, buf, kReadChunk);
    if (n < 0) {
      if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) return;
      c->server_eof = true;
    } else if (n == 0) {
      c->server_eof = true;
    }
    if (c->server_eof) {
      // gRPC closed the connection: pass on what it sent, then close towards the client.
      FlushToClient(t, c);
      if (!c->dead) StartClosing(t, c);
      return;
    }
    Http2Out to_server, to_client;
    const bool ok = c->guard->FromServer(std::string_view(buf, static_cast<size_t>(n)), time->Now(),
                                         &to_server, &to_client);
    Append(&c->to_server, to_server);
    if (c->ssl) {
      Append(&c->to_client, to_client);
    } else if (!WriteOrQueue(c->client_fd, &c->to_client, to_client)) {
      Close(t, c);  // the client is gone
      return;
    }
    if (!ok) {
      GuardViolation(t, c);
      return;
    }
    FlushToClient(t, c);
    FlushToServer(c);
  }
}

void FrontDoor::Impl::FlushToServer(Connection* c) {
  while (c->to_server.size() > 0 && !c->server_shut && c->server_fd >= 0) {
    const ssize_t n = send(c->server_fd, c->to_server.begin(), c->to_server.size(), MSG_NOSIGNAL);
    if (n < 0) {
      if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) return;
      c->to_server = Buffer{};  // gRPC is gone; its EOF closes the connection
      return;
    }
    c->to_server.Consume(static_cast<size_t>(n));
  }
  if (c->client_eof && c->to_server.size() == 0 && !c->server_shut && c->server_fd >= 0) {
    shutdown(c->server_fd, SHUT_WR);  // the client is done sending: tell gRPC
    c->server_shut = true;
  }
}

void FrontDoor::Impl::FlushToClient(IoThread* t, Connection* c) {
  c->ssl_write_wants_read = false;
  while (c->to_client.size() > 0) {
    ssize_t n;
    if (c->ssl) {
      ERR_clear_error();
      const int r = SSL_write(c->ssl, c->to_client.begin(),
                              static_cast<int>(std::min<size_t>(c->to_client.size(), 1 << 30)));
      if (r > 0) {
        n = r;
      } else {
        const int err = SSL_get_error(c->ssl, r);
        if (err == SSL_ERROR_WANT_WRITE) return;
        if (err == SSL_ERROR_WANT_READ) {
          c->ssl_write_wants_read = true;
          return;
        }
        Close(t, c);
        return;
      }
    } else {
      n = send(c->client_fd, c->to_client.begin(), c->to_client.size(), MSG_NOSIGNAL);
      if (n < 0) {
        if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) return;
        Close(t, c);  // the client is gone
        return;
      }
    }
    c->to_client.Consume(static_cast<size_t>(n));
  }
  if (c->closing && !c->client_shut) {
    if (c->ssl) SSL_shutdown(c->ssl);
    shutdown(c->client_fd, SHUT_WR);
    c->client_shut = true;
  }
  if (c->server_eof && c->client_eof && c->to_client.size() == 0) Close(t, c);
}

void FrontDoor::Impl::GuardViolation(IoThread* t, Connection* c) {
  const Http2Violation v = c->guard->violation();
  ++violations[static_cast<int>(v)];
  Note(c->peer_host, absl::StrCat("closed_", Http2ViolationLabel(v)), c->guard->violation_detail());
  StartClosing(t, c);
}

// Stops relaying: gRPC's side is closed at once, the client gets what is queued for it (a
// GOAWAY saying why, say) and is closed after it read it or after a second.
void FrontDoor::Impl::StartClosing(IoThread* t, Connection* c) {
  if (c->server_fd >= 0) {
    epoll_ctl(t->epoll_fd, EPOLL_CTL_DEL, c->server_fd, nullptr);
    close(c->server_fd);
    c->server_fd = -1;
  }
  c->to_server = Buffer{};
  c->server_eof = true;
  c->closing = true;
  c->deadline = time->Now() + kLinger;
  FlushToClient(t, c);
  if (!c->dead) UpdateInterest(t, c);
}

void FrontDoor::Impl::UpdateInterest(IoThread* t, Connection* c) {
  uint32_t want_client = 0;
  if (c->tls_handshaking) {
    want_client = c->ssl_read_wants_write ? EPOLLOUT : EPOLLIN;
  } else {
    // While closing, keep reading (and discarding) so the close is a FIN, not a reset.
    if (c->closing || (!c->client_eof && c->to_server.size() < options.buffer_bytes)) {
      want_client |= c->ssl_read_wants_write ? EPOLLOUT : EPOLLIN;
    }
    if (c->to_client.size() > 0) want_client |= c->ssl_write_wants_read ? EPOLLIN : EPOLLOUT;
  }
  if (want_client != c->client_ep.interest) {
    epoll_event ev{};
    ev.events = want_client;
    ev.data.ptr = &c->client_ep;
    epoll_ctl(t->epoll_fd, EPOLL_CTL_MOD, c->client_fd, &ev);
    c->client_ep.interest = want_client;
  }
  if (c->server_fd >= 0) {
    uint32_t want_server = 0;
    if (!c->server_eof && c->to_client.size() < options.buffer_bytes) want_server |= EPOLLIN;
    if (c->to_server.size() > 0) want_server |= EPOLLOUT;
    if (want_server != c->server_ep.interest) {
      epoll_event ev{};
      ev.events = want_server;
      ev.data.ptr = &c->server_ep;
      epoll_ctl(t->epoll_fd, EPOLL_CTL_MOD, c->server_fd, &ev);
      c->server_ep.interest = want_server;
    }
  }
}

void FrontDoor::Impl::Close(IoThread* t, Connection* c) {
  if (c->dead) return;
  c->dead = true;
  if (c->client_fd >= 0) {
    epoll_ctl(t->epoll_fd, EPOLL_CTL_DEL, c->client_fd, nullptr);
    close(c->client_fd);
    c->client_fd = -1;
  }
  if (c->server_fd >= 0) {
    epoll_ctl(t->epoll_fd, EPOLL_CTL_DEL, c->server_fd, nullptr);
    close(c->server_fd);
    c->server_fd = -1;
  }
  if (c->ssl) {
    SSL_free(c->ssl);
    c->ssl = nullptr;
  }
  if (c->counted) {
    std::lock_guard<std::mutex> l(mu);
    --active;
    auto it = by_peer.find(c->peer_host);
    if (it != by_peer.end() && --it->second == 0) by_peer.erase(it);
  }
}

void FrontDoor::Impl::CheckDeadlines(IoThread* t, TimePoint now) {
  size_t lingering = 0;
  for (Connection* c : t->conns) {
    if (c->dead) continue;
    if (c->closing) {
      if (now >= c->deadline || ++lingering > kMaxLingering) Close(t, c);
      continue;
    }
    if (c->deadline != TimePoint{} && now >= c->deadline) {
      ++handshake_timeouts;
      Note(c->peer_host, "closed_handshake_timeout",
           "no TLS handshake or HTTP/2 preface in time (slow or idle client)");
      Close(t, c);
    }
  }
}

}  // namespace framepipe
