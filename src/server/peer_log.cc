#include "server/peer_log.h"

#include <arpa/inet.h>
#include <netinet/in.h>

#include <algorithm>
#include <cstring>

#include "common/log.h"

namespace framepipe {

PeerLog::PeerLog(PeerLogOptions options) : options_(options) {
  global_.tokens = options_.global_burst;
}

PeerLog::Counts& PeerLog::PeerLocked(const std::string& peer) {
  auto it = peers_.find(peer);
  if (it != peers_.end()) return it->second;
  if (peers_.size() >= options_.max_peers) return peers_["other"];
  Counts& c = peers_[peer];
  c.bucket.tokens = options_.peer_burst;
  return c;
}

bool PeerLog::AllowStream(const std::string& peer, TimePoint now) {
  std::lock_guard<std::mutex> l(mu_);
  Counts& c = PeerLocked(peer);
  // The peer's bucket first: a peer out of budget does not drain the global one.
  const bool ok = c.bucket.Take(options_.peer_lines_per_second, options_.peer_burst, now) &&
                  global_.Take(options_.global_lines_per_second, options_.global_burst, now);
  ++(ok ? c.logged : c.unlogged);
  c.dirty |= !ok;
  return ok;
}

void PeerLog::CountClosed(const std::string& peer, const std::string& status) {
  std::lock_guard<std::mutex> l(mu_);
  Counts& c = PeerLocked(peer);
  ++c.closed[status];
  c.dirty = true;
}

void PeerLog::CountRefused(const std::string& peer, const std::string& reason) {
  std::lock_guard<std::mutex> l(mu_);
  Counts& c = PeerLocked(peer);
  ++c.refused[reason];
  c.dirty = true;
}

bool PeerLog::AllowEvent(const std::string& peer, const std::string& key, TimePoint now) {
  std::lock_guard<std::mutex> l(mu_);
  Counts& c = PeerLocked(peer);
  if (c.bucket.Take(options_.peer_lines_per_second, options_.peer_burst, now) &&
      global_.Take(options_.global_lines_per_second, options_.global_burst, now)) {
    return true;
  }
  ++c.events[key];
  c.dirty = true;
  return false;
}

void PeerLog::Flush(TimePoint now, bool force) {
  std::map<std::string, Counts> out;
  double seconds;
  {
    std::lock_guard<std::mutex> l(mu_);
    if (last_flush_ == TimePoint{}) last_flush_ = now;
    if (!force && now - last_flush_ < options_.interval) return;
    seconds = SecondsBetween(last_flush_, now);
    last_flush_ = now;
    for (auto it = peers_.begin(); it != peers_.end();) {
      Counts& c = it->second;
      if (c.dirty) {
        out[it->first] = c;
        c.logged = c.unlogged = 0;
        c.closed.clear();
        c.refused.clear();
        c.events.clear();
        c.dirty = false;
      }
      // A peer with a full bucket and nothing to report is forgotten (bounded memory).
      const bool idle = c.bucket.FullAt(options_.peer_lines_per_second, options_.peer_burst, now);
      it = (!c.dirty && idle) ? peers_.erase(it) : std::next(it);
    }
  }
  for (const auto& [peer, c] : out) {
    LogLine line("peer_summary");
    line.Add("peer", peer).Add("interval_s", seconds);
    if (c.logged + c.unlogged > 0) {
      line.Add("streams_logged", c.logged).Add("streams_not_logged", c.unlogged);
    }
    for (const auto& [status, n] : c.closed) line.Add(("closed_" + status).c_str(), n);
    for (const auto& [reason, n] : c.refused) line.Add(("refused_" + reason).c_str(), n);
    for (const auto& [key, n] : c.events) line.Add(key.c_str(), n);
    line.Emit();
  }
}

namespace {

// "2001:db8:1:2:3:4:5:6" with `prefix` 64 -> "2001:db8:1:2::/64"; an IPv4-mapped address as
// IPv4; text that is not an IPv6 address (a zone index, say) as it is.
std::string Ipv6Key(const std::string& addr, int prefix) {
  in6_addr a{};
  if (inet_pton(AF_INET6, addr.c_str(), &a) != 1) return addr;
  char text[INET6_ADDRSTRLEN] = {};
  if (IN6_IS_ADDR_V4MAPPED(&a)) {
    in_addr v4;
    std::memcpy(&v4, a.s6_addr + 12, 4);
    inet_ntop(AF_INET, &v4, text, sizeof(text));
    return text;
  }
  prefix = std::clamp(prefix, 0, 128);
  if (prefix == 128) return addr;
  for (int i = 0; i < 16; ++i) {
    const int keep = std::clamp(prefix - 8 * i, 0, 8);  // bits of this byte inside the prefix
    a.s6_addr[i] &= static_cast<uint8_t>(0xff << (8 - keep));
  }
  inet_ntop(AF_INET6, &a, text, sizeof(text));
  return std::string(text) + "/" + std::to_string(prefix);
}

}  // namespace

std::string PeerHost(const std::string& peer, int ipv6_prefix) {
  std::string_view p = peer;
  if (p.rfind("ipv4:", 0) == 0) {
    p.remove_prefix(5);
    return std::string(p.substr(0, p.rfind(':')));
  }
  if (p.rfind("ipv6:", 0) == 0) {
    p.remove_prefix(5);
    // "[::1]:5678" from the front door, "%5B::1%5D:5678" (URI-escaped) from gRPC's own listener.
    std::string_view close;
    if (!p.empty() && p[0] == '[') {
      p.remove_prefix(1);
      close = "]";
    } else if (p.size() >= 3 && (p.substr(0, 3) == "%5B" || p.substr(0, 3) == "%5b")) {
      p.remove_prefix(3);
      close = p.find("%5D") != std::string_view::npos ? "%5D" : "%5d";
    }
    if (!close.empty()) {
      p = p.substr(0, p.find(close));
    } else {
      p = p.substr(0, p.rfind(':'));
    }
    return Ipv6Key(std::string(p), ipv6_prefix);
  }
  return peer;
}

}  // namespace framepipe
