// The front door's inline path: a plaintext client's socket goes to gRPC itself, and the
// connection's Http2Guard runs inside gRPC's own reads and writes of it. No relay thread, no
// socket pair, no second trip through the kernel: gRPC 1.51 reads its connections with recvmsg
// and writes them with sendmsg, imported from the C library, so this executable's definitions of
// recvmsg, sendmsg, shutdown and close below stand in for the library's for every caller; for a
// descriptor the front door has not registered they make the system call, as the library would
// (after one relaxed atomic load and an array read), for a registered one:
//
//  * recvmsg reads from the socket into gRPC's buffer and has the guard judge what came. When
//    the guard passes on exactly those bytes (honest traffic: its frames pass as they came, see
//    Http2Limits::inline_mode) gRPC keeps them where they are - nothing is copied. Otherwise
//    (a frame carried over from the previous read, a stream the guard ended, its own frames for
//    gRPC) gRPC gets the guard's output instead, copied into its buffer; what does not fit waits
//    for gRPC's next read (reported as pending through TCP_INQ, so gRPC reads again at once). A
//    connection the guard ended reads as closed.
//  * sendmsg has the guard judge what gRPC writes, then writes it (or, when the guard changes
//    it - a SETTINGS window lowered, its own frames for the client inserted at a frame boundary
//    - the guard's output). gRPC is told every byte went; what the socket did not take waits in
//    the connection's queue, written first, and gRPC's next write waits (EAGAIN) while the queue
//    is not empty. The door's inline thread writes the queue when the socket has room again, so
//    nothing waits for gRPC to write again.
//  * shutdown and close: a connection ended with frames still queued for the client (a GOAWAY
//    saying why) is not shut down under them; at close it goes to a relay thread that writes
//    them, shuts down and closes after the client's FIN or a second, as for refused connections.
//
// TLS connections keep the relay (the guard needs the plaintext), so does --guard relay.
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstring>
#include <mutex>

#include "grpcpp/server_posix.h"

#include "absl/strings/str_cat.h"
#include "server/front_door_impl.h"

namespace framepipe {
namespace front_door {
namespace {

// Descriptors below this can be guarded inline (a connection on a higher one is relayed).
constexpr int kMaxInlineFd = 1 << 16;

// The system calls themselves, not the C library's functions through the dynamic linker (which
// would find these stand-ins' names again, or a sanitizer's wrappers): gRPC and Abseil come
// uninstrumented from Debian, and ThreadSanitizer, which ignores what they call through its
// wrappers, would take a call forwarded from here for framepipe's own and report the descriptor
// races it cannot see them order.
ssize_t SysRecvmsg(int fd, msghdr* msg, int flags) { return syscall(SYS_recvmsg, fd, msg, flags); }
ssize_t SysSendmsg(int fd, const msghdr* msg, int flags) {
  return syscall(SYS_sendmsg, fd, msg, flags);
}
int SysShutdown(int fd, int how) { return static_cast<int>(syscall(SYS_shutdown, fd, how)); }
int SysClose(int fd) { return static_cast<int>(syscall(SYS_close, fd)); }

// gRPC hands its buffers from thread to thread with synchronisation ThreadSanitizer cannot see
// (Debian builds gRPC uninstrumented; TSan ignores what gRPC itself does through its wrappers):
// a read here of bytes another thread serialised into a gRPC slice, or a write into a slice that
// held other bytes before, would be reported as a race. Inside a stand-in TSan ignores memory
// accesses - this connection's own state is under its mutex, whose ordering TSan still sees.
#if defined(__SANITIZE_THREAD__)
#define FRAMEPIPE_TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define FRAMEPIPE_TSAN 1
#endif
#endif
#ifdef FRAMEPIPE_TSAN
extern "C" void AnnotateIgnoreReadsBegin(const char* file, int line);
extern "C" void AnnotateIgnoreReadsEnd(const char* file, int line);
extern "C" void AnnotateIgnoreWritesBegin(const char* file, int line);
extern "C" void AnnotateIgnoreWritesEnd(const char* file, int line);
struct IgnoreGrpcBuffers {
  IgnoreGrpcBuffers() {
    AnnotateIgnoreReadsBegin(__FILE__, __LINE__);
    AnnotateIgnoreWritesBegin(__FILE__, __LINE__);
  }
  ~IgnoreGrpcBuffers() {
    AnnotateIgnoreWritesEnd(__FILE__, __LINE__);
    AnnotateIgnoreReadsEnd(__FILE__, __LINE__);
  }
};
#else
struct IgnoreGrpcBuffers {
  IgnoreGrpcBuffers() {}  // user-provided: a scope guard, not an unused variable
};
#endif

}  // namespace

// One inline connection. Its guard and queues are used by gRPC's threads (a read and a write
// may run at once), the door's inline thread and close(): under `mu`.
struct InlineConn {
  std::mutex mu;
  int fd = -1;
  FrontDoor::Impl* door = nullptr;  // null once the door stopped (set under g_mu and mu)
  const TimeSource* time = nullptr;
  std::unique_ptr<Http2Guard> guard;
  std::string peer_host;
  Buffer to_grpc;       // the guard's output gRPC has not read yet
  Buffer to_client;     // bytes for the client the socket has not taken yet
  bool failed = false;  // the guard (or a deadline) ended the connection: gRPC reads EOF
  bool in_epoll = false;
  bool armed = false;
  TimePoint deadline{};                // HTTP/2 preface and SETTINGS due
  std::vector<std::string_view> segs;  // scratch: the bytes of one read or write, per iovec
};

namespace {

std::atomic<int> g_count{0};  // registered connections (0: every call goes straight on)
std::atomic<InlineConn*> g_conns[kMaxInlineFd];
// Registration and release, and the doors' use of their connections: whoever holds it knows a
// connection it finds is alive, and so is the door it names.
std::mutex g_mu;

InlineConn* Find(int fd) {
  if (fd < 0 || fd >= kMaxInlineFd || g_count.load(std::memory_order_relaxed) == 0) {
    return nullptr;
  }
  return g_conns[fd].load(std::memory_order_acquire);
}

// The bytes of `parts` are exactly those of `segs`, where they lie (nothing to copy).
bool SameBytes(const std::vector<std::string_view>& parts,
               const std::vector<std::string_view>& segs) {
  size_t si = 0, off = 0;
  for (std::string_view p : parts) {
    while (!p.empty()) {
      while (si < segs.size() && off == segs[si].size()) {
        ++si;
        off = 0;
      }
      if (si == segs.size() || p.data() != segs[si].data() + off) return false;
      const size_t k = std::min(p.size(), segs[si].size() - off);
      p.remove_prefix(k);
      off += k;
    }
  }
  while (si < segs.size() && off == segs[si].size()) {
    ++si;
    off = 0;
  }
  return si == segs.size();
}

// Tells gRPC (TCP_INQ, where it asked for it) that more is waiting, so it reads again at once.
void ReportMoreToRead(msghdr* msg, bool from_kernel) {
  if (msg->msg_control == nullptr) return;
  if (from_kernel) {
    for (cmsghdr* cm = CMSG_FIRSTHDR(msg); cm != nullptr; cm = CMSG_NXTHDR(msg, cm)) {
      if (cm->cmsg_level == SOL_TCP && cm->cmsg_type == TCP_CM_INQ &&
          cm->cmsg_len == CMSG_LEN(sizeof(int))) {
        int v;
        std::memcpy(&v, CMSG_DATA(cm), sizeof(v));
        v = std::max(v, 1);
        std::memcpy(CMSG_DATA(cm), &v, sizeof(v));
      }
    }
    return;
  }
  if (msg->msg_controllen < CMSG_SPACE(sizeof(int))) {
    msg->msg_controllen = 0;
    return;
  }
  cmsghdr* cm = CMSG_FIRSTHDR(msg);
  cm->cmsg_level = SOL_TCP;
  cm->cmsg_type = TCP_CM_INQ;
  cm->cmsg_len = CMSG_LEN(sizeof(int));
  const int v = 1;
  std::memcpy(CMSG_DATA(cm), &v, sizeof(v));
  msg->msg_controllen = CMSG_SPACE(sizeof(int));
}

// Copies what waits for gRPC into its buffer.
ssize_t DeliverToGrpc(InlineConn* c, msghdr* msg, bool from_kernel) {
  size_t done = 0;
  for (size_t i = 0; i < msg->msg_iovlen && c->to_grpc.size() > 0; ++i) {
    const size_t k = std::min(msg->msg_iov[i].iov_len, c->to_grpc.size());
    std::memcpy(msg->msg_iov[i].iov_base, c->to_grpc.begin(), k);
    c->to_grpc.Consume(k);
    done += k;
  }
  msg->msg_flags = 0;
  ReportMoreToRead(msg, from_kernel);
  return static_cast<ssize_t>(done);
}

// Writes the queue for the client. False when the socket failed.
bool FlushLocked(InlineConn* c) {
  while (c->to_client.size() > 0) {
    iovec iov{const_cast<char*>(c->to_client.begin()), c->to_client.size()};
    msghdr msg{};
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    const ssize_t n = SysSendmsg(c->fd, &msg, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (n < 0) {
      if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) return true;
      return false;
    }
    c->to_client.Consume(static_cast<size_t>(n));
  }
  return true;
}

// The door's inline thread writes the queue once the socket has room.
void ArmLocked(InlineConn* c) {
  if (c->armed || c->door == nullptr || c->to_client.size() == 0) return;
  epoll_event ev{};
  ev.events = EPOLLOUT | EPOLLONESHOT;
  ev.data.fd = c->fd;
  epoll_ctl(c->door->inline_epoll, c->in_epoll ? EPOLL_CTL_MOD : EPOLL_CTL_ADD, c->fd, &ev);
  c->in_epoll = true;
  c->armed = true;
}

// Frames of the guard's own for the client: written now when nothing is queued before them.
void ToClientLocked(InlineConn* c, const Http2Out& out) {
  if (out.empty()) return;
  const bool write_now = c->to_client.size() == 0;
  for (std::string_view p : out.parts()) c->to_client.data.append(p);
  if (write_now && !FlushLocked(c)) c->to_client = Buffer{};  // the client is gone
  ArmLocked(c);
}

void FailLocked(InlineConn* c) {
  if (c->failed) return;
  c->failed = true;
  if (c->door) c->door->CountViolation(*c->guard, c->peer_host);
}

ssize_t Recv(InlineConn* c, msghdr* msg, int flags) {
  std::lock_guard<std::mutex> l(c->mu);
  const IgnoreGrpcBuffers ignore;
  if (c->failed) {
    msg->msg_controllen = 0;
    msg->msg_flags = 0;
    return 0;  // gRPC reads the end of the connection
  }
  if (c->to_grpc.size() > 0) return DeliverToGrpc(c, msg, false);
  for (;;) {
    const ssize_t n = SysRecvmsg(c->fd, msg, flags);
    if (n <= 0) return n;
    c->segs.clear();
    Http2Out to_grpc, to_client;
    const TimePoint now = c->time->Now();
    for (size_t i = 0, left = static_cast<size_t>(n); i < msg->msg_iovlen && left > 0; ++i) {
      const size_t k = std::min(left, msg->msg_iov[i].iov_len);
      c->segs.emplace_back(static_cast<const char*>(msg->msg_iov[i].iov_base), k);
      left -= k;
    }
    bool ok = true;
    for (size_t i = 0; i < c->segs.size() && ok; ++i) {
      c->guard->SetReadAhead(c->segs.data() + i + 1, c->segs.size() - i - 1);
      ok = c->guard->FromClient(c->segs[i], now, &to_grpc, &to_client);
    }
    c->guard->SetReadAhead(nullptr, 0);
    if (c->door) c->door->CountRejections(c->guard.get(), c->peer_host);
    ToClientLocked(c, to_client);
    if (!ok) {
      FailLocked(c);
      msg->msg_controllen = 0;
      msg->msg_flags = 0;
      return 0;
    }
    if (c->deadline != TimePoint{} && c->guard->preface_received()) c->deadline = TimePoint{};
    if (SameBytes(to_grpc.parts(), c->segs)) {
      if (c->door) c->door->bytes_inline += static_cast<uint64_t>(n);
      return n;  // gRPC keeps what it read, where it read it
    }
    for (std::string_view p : to_grpc.parts()) c->to_grpc.data.append(p);
    if (c->door) c->door->bytes_copied += static_cast<uint64_t>(n);
    if (c->to_grpc.size() > 0) return DeliverToGrpc(c, msg, true);
    // Nothing for gRPC in what came (a frame still incomplete, data of a stream the guard
    // ended): read on; the socket says EAGAIN when it is empty.
  }
}

ssize_t Send(InlineConn* c, const msghdr* msg, int flags) {
  std::lock_guard<std::mutex> l(c->mu);
  const IgnoreGrpcBuffers ignore;
  if (c->failed) {
    errno = EPIPE;
    return -1;
  }
  if (c->to_client.size() > 0) {
    if (!FlushLocked(c)) return -1;
    if (c->to_client.size() > 0) {
      ArmLocked(c);
      errno = EAGAIN;  // gRPC waits for the socket to have room, as for its own bytes
      return -1;
    }
  }
  c->segs.clear();
  size_t total = 0;
  Http2Out to_grpc, to_client;
  const TimePoint now = c->time->Now();
  bool ok = true;
  for (size_t i = 0; i < msg->msg_iovlen && ok; ++i) {
    if (msg->msg_iov[i].iov_len == 0) continue;
    c->segs.emplace_back(static_cast<const char*>(msg->msg_iov[i].iov_base),
                         msg->msg_iov[i].iov_len);
    total += msg->msg_iov[i].iov_len;
    ok = c->guard->FromServer(c->segs.back(), now, &to_grpc, &to_client);
  }
  for (std::string_view p : to_grpc.parts()) c->to_grpc.data.append(p);  // at gRPC's next read
  if (!ok) {
    // Streams gRPC had to refuse, over the reset budget: the connection ends. A shutdown of the
    // reading side wakes gRPC's reader, which reads the end.
    FailLocked(c);
    SysShutdown(c->fd, SHUT_RD);
    errno = EPIPE;
    return -1;
  }
  if (total == 0) return SysSendmsg(c->fd, msg, flags);
  if (!SameBytes(to_client.parts(), c->segs)) {
    ToClientLocked(c, to_client);
    return static_cast<ssize_t>(total);
  }
  ssize_t w = SysSendmsg(c->fd, msg, flags | MSG_NOSIGNAL | MSG_DONTWAIT);
  if (w < 0) {
    if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) return -1;
    w = 0;
  }
  // The guard has judged all of it: what the socket did not take is queued, not left to gRPC.
  size_t skip = static_cast<size_t>(w);
  for (std::string_view s : c->segs) {
    if (skip >= s.size()) {
      skip -= s.size();
      continue;
    }
    c->to_client.data.append(s.substr(skip));
    skip = 0;
  }
  ArmLocked(c);
  return static_cast<ssize_t>(total);
}

int Shutdown(InlineConn* c, int how) {
  std::lock_guard<std::mutex> l(c->mu);
  // Frames still queued for the client (a GOAWAY saying why): the linger after close() sends
  // them first.
  if (c->failed || c->to_client.size() > 0) return 0;
  return SysShutdown(c->fd, how);
}

int Close(InlineConn* c) {
  std::lock_guard<std::mutex> g(g_mu);
  const int fd = c->fd;
  g_conns[fd].store(nullptr, std::memory_order_release);
  g_count.fetch_sub(1, std::memory_order_relaxed);
  std::unique_ptr<InlineConn> owned(c);
  // gRPC's last read or write of the descriptor is over (it closes only then); taking the lock
  // says so to ThreadSanitizer, which cannot see gRPC's own ordering.
  FrontDoor::Impl* door;
  bool in_epoll, linger;
  std::string rest;
  {
    std::lock_guard<std::mutex> l(c->mu);
    door = c->door;
    in_epoll = c->in_epoll;
    linger = c->failed || c->to_client.size() > 0;
    rest.assign(c->to_client.begin(), c->to_client.size());
  }
  if (door == nullptr) return SysClose(fd);
  door->inline_conns.erase(fd);
  if (in_epoll) epoll_ctl(door->inline_epoll, EPOLL_CTL_DEL, fd, nullptr);
  if (linger) {
    door->Linger(fd, c->peer_host, c->peer_host, std::move(rest), /*counted=*/true);
    return 0;
  }
  const int r = SysClose(fd);
  door->Forget(c->peer_host);
  return r;
}

}  // namespace
}  // namespace front_door

using front_door::g_conns;
using front_door::g_count;
using front_door::g_mu;
using front_door::InlineConn;

bool FrontDoor::Impl::CanInline(int fd) const {
  return options.inline_plaintext && ssl_ctx == nullptr && fd < front_door::kMaxInlineFd &&
         inline_epoll >= 0;
}

void FrontDoor::Impl::RelayInline(int fd, const std::string& peer, const std::string& host,
                                  TimePoint now, std::shared_ptr<StreamQuota> quota) {
  Http2Limits limits = options.http2;
  limits.inline_mode = true;
  auto c = std::make_unique<InlineConn>();
  c->fd = fd;
  c->door = this;
  c->time = time;
  c->guard = std::make_unique<Http2Guard>(std::move(limits), std::move(quota));
  c->peer_host = host;
  c->deadline = now + options.handshake_timeout;
  {
    std::lock_guard<std::mutex> l(mu);
    if (peer_by_fd.size() <= static_cast<size_t>(fd)) peer_by_fd.resize(fd + 1);
    peer_by_fd[fd] = peer;
  }
  {
    std::lock_guard<std::mutex> g(g_mu);
    InlineConn* stale = g_conns[fd].exchange(c.get());
    if (stale != nullptr) {  // closed behind close()'s back: forget it
      g_count.fetch_sub(1);
      if (stale->door) {
        stale->door->inline_conns.erase(fd);
        stale->door->Forget(stale->peer_host);
      }
      delete stale;
    }
    g_count.fetch_add(1);
    inline_conns[fd] = c.release();
  }
  grpc::AddInsecureChannelFromFd(server, fd);  // gRPC owns fd from here
}

void FrontDoor::Impl::InlineLoop() {
  pthread_setname_np(pthread_self(), "fp-door-inline");
  epoll_event events[64];
  TimePoint next_check = time->Now() + front_door::kTick;
  while (!stopping) {
    const int n = epoll_wait(inline_epoll, events, 64, static_cast<int>(front_door::kTick.count()));
    if (n < 0 && errno != EINTR) break;
    std::lock_guard<std::mutex> g(g_mu);
    for (int i = 0; i < n; ++i) {
      if (events[i].data.fd == inline_wake) {
        uint64_t v;
        (void)read(inline_wake, &v, sizeof(v));
        continue;
      }
      auto it = inline_conns.find(events[i].data.fd);
      if (it == inline_conns.end()) continue;
      InlineConn* c = it->second;
      std::lock_guard<std::mutex> l(c->mu);
      c->armed = false;
      if (!front_door::FlushLocked(c)) c->to_client = Buffer{};
      front_door::ArmLocked(c);
    }
    const TimePoint now = time->Now();
    if (now < next_check) continue;
    next_check = now + front_door::kTick;
    for (auto& [fd, c] : inline_conns) {
      std::lock_guard<std::mutex> l(c->mu);
      if (c->failed || c->deadline == TimePoint{} || now < c->deadline) continue;
      c->failed = true;
      ++handshake_timeouts;
      Note(c->peer_host, "closed_handshake_timeout",
           "no TLS handshake or HTTP/2 preface in time (slow or idle client)");
      front_door::SysShutdown(fd, SHUT_RDWR);  // gRPC reads the end and closes it
    }
  }
}

void FrontDoor::Impl::StopInline() {
  {
    std::lock_guard<std::mutex> g(g_mu);
    for (auto& [fd, c] : inline_conns) {
      std::lock_guard<std::mutex> l(c->mu);
      c->door = nullptr;
      c->failed = true;
      front_door::SysShutdown(fd, SHUT_RDWR);  // gRPC reads the end and closes it
    }
    inline_conns.clear();
  }
  if (inline_thread.joinable()) {
    uint64_t one = 1;
    (void)write(inline_wake, &one, sizeof(one));
    inline_thread.join();
  }
  if (inline_epoll >= 0) close(inline_epoll);
  if (inline_wake >= 0) close(inline_wake);
  inline_epoll = inline_wake = -1;
}

void FrontDoor::Impl::CountRejections(Http2Guard* g, const std::string& host) {
  for (int r = 0; r < static_cast<int>(StreamRejection::kCount); ++r) {
    if (uint64_t k = g->TakeRejections(static_cast<StreamRejection>(r))) {
      rejected_streams[r] += k;
      Note(host, absl::StrCat("stream_", StreamRejectionLabel(static_cast<StreamRejection>(r))),
           front_door::RejectionDetail(static_cast<StreamRejection>(r)));
    }
  }
}

void FrontDoor::Impl::CountViolation(const Http2Guard& g, const std::string& host) {
  const Http2Violation v = g.violation();
  ++violations[static_cast<int>(v)];
  Note(host, absl::StrCat("closed_", Http2ViolationLabel(v)), g.violation_detail());
}

}  // namespace framepipe

// The stand-ins (see the top of this file). Signatures as the C library declares them.
extern "C" {

ssize_t recvmsg(int fd, struct msghdr* msg, int flags) {
  if (auto* c = framepipe::front_door::Find(fd); c && !(flags & (MSG_ERRQUEUE | MSG_PEEK))) {
    return framepipe::front_door::Recv(c, msg, flags);
  }
  return framepipe::front_door::SysRecvmsg(fd, msg, flags);
}

ssize_t sendmsg(int fd, const struct msghdr* msg, int flags) {
  if (auto* c = framepipe::front_door::Find(fd)) return framepipe::front_door::Send(c, msg, flags);
  return framepipe::front_door::SysSendmsg(fd, msg, flags);
}

int shutdown(int fd, int how) noexcept {
  if (auto* c = framepipe::front_door::Find(fd)) return framepipe::front_door::Shutdown(c, how);
  return framepipe::front_door::SysShutdown(fd, how);
}

int close(int fd) {
  if (auto* c = framepipe::front_door::Find(fd)) return framepipe::front_door::Close(c);
  return framepipe::front_door::SysClose(fd);
}

}  // extern "C"
