#include "server/peer_log.h"

#include <algorithm>

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

std::string PeerHost(const std::string& peer) {
  std::string_view p = peer;
  if (p.rfind("ipv4:", 0) == 0) {
    p.remove_prefix(5);
    return std::string(p.substr(0, p.rfind(':')));
  }
  if (p.rfind("ipv6:", 0) == 0) {
    p.remove_prefix(5);
    if (!p.empty() && p[0] == '[') {
      const size_t end = p.find(']');
      return std::string(p.substr(1, end == std::string_view::npos ? p.size() - 1 : end - 1));
    }
    return std::string(p.substr(0, p.rfind(':')));
  }
  return peer;
}

}  // namespace framepipe
