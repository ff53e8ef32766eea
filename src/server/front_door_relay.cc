// The relay threads of the front door: each owns its connections, moves bytes between the client
// socket (plain or TLS) and gRPC's end of the socket pair through the connection's Http2Guard,
// applies backpressure (a full buffer stops reading the other side) and closes what the guard or
// a deadline ends.
#include <fcntl.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <pthread.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>

#include "absl/strings/str_cat.h"
#include "server/front_door_impl.h"

namespace framepipe {
namespace front_door {

void Buffer::Consume(size_t n) {
  off += n;
  if (off == data.size()) {
    data.clear();
    off = 0;
  } else if (off > 64 * 1024 && off > data.size() / 2) {
    data.erase(0, off);
    off = 0;
  }
}

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

const char* RejectionDetail(StreamRejection r) {
  switch (r) {
    case StreamRejection::kPeerStreams:
      return "a stream over the address's limit of open HTTP/2 streams was ended";
    case StreamRejection::kTooManyMessages:
      return "a call sent more messages than its method takes (a unary request, a health Watch) "
             "and was ended";
    default:
      return "a stream was ended at a message's length prefix";
  }
}

}  // namespace front_door

using front_door::kLinger;
using front_door::kMaxLingering;
using front_door::kReadChunk;
using front_door::kTick;
using front_door::OpenSslError;

uint64_t FrontDoor::Impl::RelayCpuNanos() const {
  uint64_t ns = 0;
  for (const auto& t : io) {
    std::lock_guard<std::mutex> l(t->mu);
    ns += t->cpu_live ? CpuClockNanos(t->cpu_clock) : t->cpu_ns;
  }
  return ns;
}

void FrontDoor::Impl::IoLoop(IoThread* t) {
  pthread_setname_np(pthread_self(), "fp-relay");
  {
    std::lock_guard<std::mutex> l(t->mu);
    t->cpu_live = pthread_getcpuclockid(pthread_self(), &t->cpu_clock) == 0;
  }
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
  std::lock_guard<std::mutex> l(t->mu);
  if (t->cpu_live) t->cpu_ns = CpuClockNanos(t->cpu_clock);
  t->cpu_live = false;
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

// Judged message body goes from the client's socket into the thread's pipe and on into gRPC's
// socket: the kernel moves the pages, this process never copies them (the relay's cost on large
// raw frames). What gRPC's socket does not take at once is read out of the pipe into the
// connection's buffer, so the pipe is empty again for the next connection.
int FrontDoor::Impl::SpliceFromClient(IoThread* t, Connection* c) {
  const size_t judged = c->guard->PassThroughBytes();
  if (judged < front_door::kMinSplice || c->to_server.size() > 0 || c->server_shut ||
      c->server_fd < 0) {
    return 0;
  }
  const ssize_t in = splice(c->client_fd, nullptr, t->pipe_w, nullptr,
                            std::min(judged, t->pipe_bytes), SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
  if (in < 0) {
    if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) return -1;
    if (errno == EINVAL || errno == ENOSYS) {
      // This socket type cannot be spliced: this thread reads and copies from now on.
      close(t->pipe_r);
      close(t->pipe_w);
      t->pipe_r = t->pipe_w = -1;
      return 0;
    }
    Close(t, c);  // reset by the client
    return -1;
  }
  if (in == 0) {
    c->client_eof = true;
    FlushToServer(c);
    return -1;
  }
  size_t out = 0;
  while (out < static_cast<size_t>(in)) {
    const ssize_t w = splice(t->pipe_r, nullptr, c->server_fd, nullptr, in - out,
                             SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
    if (w > 0) {
      out += static_cast<size_t>(w);
    } else if (w == 0 || errno != EINTR) {
      break;  // gRPC's socket is full (or gone: its EOF closes the connection)
    }
  }
  for (size_t left = in - out; left > 0;) {
    const ssize_t r = read(t->pipe_r, t->scratch.get(), std::min(left, kReadChunk));
    if (r <= 0) break;
    c->to_server.data.append(t->scratch.get(), static_cast<size_t>(r));
    left -= static_cast<size_t>(r);
  }
  bytes_spliced += out;
  bytes_copied += in - out;
  c->bulk = true;
  Http2Out to_server, to_client;
  const bool ok = c->guard->Spliced(static_cast<size_t>(in), &to_server, &to_client);
  Append(&c->to_client, to_client);
  if (ok && !WriteOrQueue(c->server_fd, &c->to_server, to_server)) c->to_server = Buffer{};
  if (!ok) {
    GuardViolation(t, c);
    return -1;
  }
  FlushToServer(c);
  FlushToClient(t, c);
  return 1;
}

void FrontDoor::Impl::ReadClient(IoThread* t, Connection* c) {
  char* const buf = t->scratch.get();
  while (!c->dead && !c->client_eof && !c->closing && c->to_server.size() < options.buffer_bytes) {
    if (!c->ssl && t->pipe_w >= 0) {
      const int spliced = SpliceFromClient(t, c);
      if (spliced < 0) return;
      if (spliced > 0) continue;
    }
    const size_t chunk = !c->ssl && t->pipe_w >= 0
                             ? front_door::ReadSize(c->guard->PassThroughBytes(), c->bulk)
                             : kReadChunk;
    ssize_t n;
    if (c->ssl) {
      ERR_clear_error();
      const int r = SSL_read(c->ssl, buf, static_cast<int>(chunk));
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
      n = read(c->client_fd, buf, chunk);
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
    bytes_copied += static_cast<uint64_t>(n);
    Http2Out to_server, to_client;
    const bool ok = c->guard->FromClient(std::string_view(buf, static_cast<size_t>(n)), time->Now(),
                                         &to_server, &to_client);
    Append(&c->to_client, to_client);
    if (ok && !c->server_shut && !WriteOrQueue(c->server_fd, &c->to_server, to_server)) {
      c->to_server = Buffer{};  // gRPC is gone; its EOF closes the connection
    }
    CountRejections(c->guard.get(), c->peer_host);
    if (!ok) {
      GuardViolation(t, c);
      return;
    }
    if (c->guard->preface_received() && c->deadline != TimePoint{} && !c->closing) {
      c->deadline = TimePoint{};  // the handshake is over
    }
    FlushToServer(c);
    FlushToClient(t, c);
    // A small read at a frame boundary that found no body worth splicing behind the header:
    // small frames follow, read them in chunks.
    if (c->bulk && chunk == front_door::kReadAfterSplice && static_cast<size_t>(n) == chunk &&
        c->guard->PassThroughBytes() < front_door::kMinSplice) {
      c->bulk = false;
    }
    // A short read emptied the socket: another read would only say EAGAIN (epoll reports what
    // comes next).
    if (!c->ssl && static_cast<size_t>(n) < chunk) return;
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
    if (static_cast<size_t>(n) < kReadChunk) return;  // the socket is empty (see ReadClient)
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
  CountViolation(*c->guard, c->peer_host);
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
  if (c->counted) Forget(c->peer_host);
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
