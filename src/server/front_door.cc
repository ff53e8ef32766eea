#include "server/front_door.h"

#include "server/front_door_impl.h"

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

namespace front_door {

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

}  // namespace front_door

using front_door::Errno;
using front_door::kLinger;
using front_door::OpenSslError;
using front_door::PeerString;

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
  // OpenSSL writes to the client socket with write(), and splice() has no MSG_NOSIGNAL: a peer
  // gone mid-write must be an EPIPE for that connection, not a SIGPIPE for the process.
  signal(SIGPIPE, SIG_IGN);
  if (!o.tls.cert_file.empty()) FP_RETURN_IF_ERROR(impl->SetUpTls());
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

namespace {

absl::Status SplitHostPort(const std::string& listen, std::string* host, std::string* port) {
  size_t sep;
  if (!listen.empty() && listen[0] == '[') {
    sep = listen.find("]:");
    if (sep == std::string::npos) {
      return absl::InvalidArgumentError(absl::StrCat("bad listen address ", listen));
    }
    *host = listen.substr(1, sep - 1);
    *port = listen.substr(sep + 2);
  } else {
    sep = listen.rfind(':');
    if (sep == std::string::npos) {
      return absl::InvalidArgumentError(
          absl::StrCat("bad listen address ", listen, " (expected host:port)"));
    }
    *host = listen.substr(0, sep);
    *port = listen.substr(sep + 1);
  }
  int n = 0;
  if (!absl::SimpleAtoi(*port, &n) || n < 0 || n > 65535) {
    return absl::InvalidArgumentError(absl::StrCat("bad port in listen address ", listen));
  }
  return absl::OkStatus();
}

// A listening socket on `ai`, on `port` when not 0 (every address of a host on the port the first
// one got); the bound port in *port. -1 and *err on failure.
int ListenOn(addrinfo* ai, int* port, std::string* err) {
  const int fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (fd < 0) return -1;
  int one = 1;
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  if (ai->ai_family == AF_INET6) {
    int zero = 0;  // "[::]" takes IPv4 clients too, as gRPC's own listener does
    setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &zero, sizeof(zero));
  }
  if (*port != 0) {
    const uint16_t p = htons(static_cast<uint16_t>(*port));
    if (ai->ai_family == AF_INET) reinterpret_cast<sockaddr_in*>(ai->ai_addr)->sin_port = p;
    if (ai->ai_family == AF_INET6) reinterpret_cast<sockaddr_in6*>(ai->ai_addr)->sin6_port = p;
  }
  if (bind(fd, ai->ai_addr, ai->ai_addrlen) != 0 || ::listen(fd, 1024) != 0) {
    *err = Errno("cannot listen");
    close(fd);
    return -1;
  }
  sockaddr_storage ss{};
  socklen_t len = sizeof(ss);
  getsockname(fd, reinterpret_cast<sockaddr*>(&ss), &len);
  *port = ss.ss_family == AF_INET ? ntohs(reinterpret_cast<sockaddr_in*>(&ss)->sin_port)
                                  : ntohs(reinterpret_cast<sockaddr_in6*>(&ss)->sin6_port);
  return fd;
}

}  // namespace

absl::Status FrontDoor::Impl::BindUnix(const std::string& path) {
  sockaddr_un sa{};
  sa.sun_family = AF_UNIX;
  if (path.empty() || path.size() >= sizeof(sa.sun_path)) {
    return absl::InvalidArgumentError(absl::StrCat("bad unix socket path in ", options.listen));
  }
  std::memcpy(sa.sun_path, path.data(), path.size());
  unlink(path.c_str());
  const int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (fd < 0 || bind(fd, reinterpret_cast<sockaddr*>(&sa), sizeof(sa)) != 0 ||
      ::listen(fd, 1024) != 0) {
    const std::string err = Errno("cannot listen");
    if (fd >= 0) close(fd);
    return absl::UnavailableError(absl::StrCat(err, " on ", options.listen));
  }
  listen_fds.push_back(fd);
  return absl::OkStatus();
}

absl::Status FrontDoor::Impl::BindAll() {
  const std::string& listen = options.listen;
  address = listen;
  if (listen.rfind("unix:", 0) == 0) return BindUnix(listen.substr(5));
  std::string host, port_str;
  FP_RETURN_IF_ERROR(SplitHostPort(listen, &host, &port_str));
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
    const int fd = ListenOn(ai, &port, &err);
    if (fd >= 0) listen_fds.push_back(fd);
  }
  freeaddrinfo(res);
  if (listen_fds.empty()) {
    return absl::UnavailableError(
        absl::StrCat(err.empty() ? "cannot listen" : err, " on ", listen));
  }
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
    int p[2];
    if (pipe2(p, O_NONBLOCK | O_CLOEXEC) == 0) {
      t->pipe_r = p[0];
      t->pipe_w = p[1];
      // As large as the system allows unprivileged (fs.pipe-max-size, 1 MiB by default): one
      // splice moves that much of a message body.
      const int size = fcntl(t->pipe_w, F_SETPIPE_SZ, static_cast<int>(front_door::kPipeBytes));
      t->pipe_bytes = size > 0 ? static_cast<size_t>(size)
                               : static_cast<size_t>(fcntl(t->pipe_w, F_GETPIPE_SZ));
    }
    Impl::IoThread* raw = t.get();
    t->thread = std::thread([&m, raw] { m.IoLoop(raw); });
    m.io.push_back(std::move(t));
  }
  if (m.options.inline_plaintext && !m.ssl_ctx) {
    m.inline_epoll = epoll_create1(EPOLL_CLOEXEC);
    m.inline_wake = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    epoll_event ev{};
    ev.events = EPOLLIN;
    ev.data.fd = m.inline_wake;
    epoll_ctl(m.inline_epoll, EPOLL_CTL_ADD, m.inline_wake, &ev);
    m.inline_thread = std::thread([&m] { m.InlineLoop(); });
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
  m.StopInline();
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
    if (t->pipe_r >= 0) close(t->pipe_r);
    if (t->pipe_w >= 0) close(t->pipe_w);
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
  c.bytes_copied = m.bytes_copied;
  c.bytes_spliced = m.bytes_spliced;
  c.bytes_inline = m.bytes_inline;
  c.relay_cpu_ns = m.RelayCpuNanos();
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
  TokenBucket& b =
      connect_rate.try_emplace(host, TokenBucket{options.peer_connect_burst}).first->second;
  if (!b.Take(options.peer_connects_per_second, options.peer_connect_burst, now)) {
    if (mine == 0) by_peer.erase(host);
    return ConnectionRefusal::kPeerRate;
  }
  // Forget addresses whose bucket is full again (bounded memory under address churn).
  if (connect_rate.size() > 4096) {
    for (auto r = connect_rate.begin(); r != connect_rate.end();) {
      const bool full =
          r->second.FullAt(options.peer_connects_per_second, options.peer_connect_burst, now);
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
      if ((errno == EMFILE || errno == ENFILE) && reserve_fd >= 0 && RefuseForLackOfFds(lfd)) {
        continue;
      }
      return;  // EAGAIN, or an error the next poll retries
    }
    const std::string peer = PeerString(ss);
    const std::string host = PeerHost(peer, options.peer_ipv6_prefix);
    const TimePoint now = time->Now();
    if (auto why = Admit(host, now)) {
      Refuse(fd, peer, host, *why, RefusalDetail(*why));
      continue;
    }
    ++total;
    Relay(fd, peer, host, now);
  }
}

// Out of descriptors: gives up the spare one to take the waiting connection off the queue and
// close it, so the listener never stalls (gRPC 1.51's stops for good here). False when no spare
// descriptor could be had again (the accept loop backs off and retries).
bool FrontDoor::Impl::RefuseForLackOfFds(int lfd) {
  close(reserve_fd);
  reserve_fd = -1;
  const int victim = accept4(lfd, nullptr, nullptr, SOCK_CLOEXEC);
  if (victim >= 0) close(victim);
  ++refused[static_cast<int>(ConnectionRefusal::kFdLimit)];
  Note("*", "refused_fd_limit", "out of file descriptors (RLIMIT_NOFILE): connection closed");
  reserve_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
  return reserve_fd >= 0;
}

std::string FrontDoor::Impl::RefusalDetail(ConnectionRefusal why) const {
  switch (why) {
    case ConnectionRefusal::kMaxConnections:
      return absl::StrCat("the server is at its limit of ", options.max_connections,
                          " connections (--max-connections)");
    case ConnectionRefusal::kPeerLimit:
      return absl::StrCat("this address has ", options.max_connections_per_peer,
                          " connections open, the limit per address (--max-connections-per-peer)");
    default:
      return absl::StrCat("this address opens connections faster than ",
                          options.peer_connects_per_second, "/s");
  }
}

// An admitted connection: guarded inline (gRPC gets the client socket itself, see
// front_door_inline.cc) or relayed (a socket pair, gRPC gets one end, a relay thread the other
// and the client socket).
void FrontDoor::Impl::Relay(int fd, const std::string& peer, const std::string& host,
                            TimePoint now) {
  std::shared_ptr<StreamQuota> quota;
  if (options.max_http2_streams_per_peer > 0) {
    std::lock_guard<std::mutex> l(mu);
    auto& q = stream_quota[host];
    if (!q) q = std::make_shared<StreamQuota>(options.max_http2_streams_per_peer);
    quota = q;
  }
  int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
  if (CanInline(fd)) {
    RelayInline(fd, peer, host, now, std::move(quota));
    return;
  }
  int pair[2];
  if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, pair) != 0) {
    close(fd);
    Forget(host);
    ++refused[static_cast<int>(ConnectionRefusal::kFdLimit)];
    Note(host, "refused_fd_limit", Errno("socketpair"));
    return;
  }
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
  c->guard = std::make_unique<Http2Guard>(options.http2, std::move(quota));
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

void FrontDoor::Impl::Forget(const std::string& host) {
  std::lock_guard<std::mutex> l(mu);
  --active;
  auto it = by_peer.find(host);
  if (it != by_peer.end() && --it->second == 0) {
    by_peer.erase(it);
    stream_quota.erase(host);  // guards still alive keep theirs until they go
  }
}

void FrontDoor::Impl::Refuse(int fd, const std::string& peer, const std::string& host,
                             ConnectionRefusal why, const std::string& detail) {
  ++refused[static_cast<int>(why)];
  Note(host, absl::StrCat("refused_", ConnectionRefusalLabel(why)), detail);
  // A plaintext gRPC client reads the GOAWAY and reports why; with TLS there is no handshake to
  // spend on a refused connection: it is just closed.
  Linger(fd, peer, host,
         ssl_ctx ? "" : Http2Guard::RefusalFrames(absl::StrCat("framepipe: ", detail)),
         /*counted=*/false);
}

void FrontDoor::Impl::Linger(int fd, const std::string& peer, const std::string& host,
                             std::string to_client, bool counted) {
  auto* c = new Connection;
  c->client_fd = fd;
  c->peer = peer;
  c->peer_host = host;
  c->closing = true;
  c->counted = counted;  // an admitted connection's slot comes back when the relay closes it
  c->deadline = time->Now() + kLinger;
  c->to_client.data = std::move(to_client);
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

}  // namespace framepipe
