// PeerLog: per-stream log lines that no peer can multiply. A stream's open/close lines are
// written only while its peer (an IP address) and the whole server have log budget left (token
// buckets); every other stream event - refusals always, opens and closes beyond the budget - is
// counted instead and written as one `peer_summary` line per peer per interval. An attacker
// opening and resetting thousands of streams a second costs a few lines, not one per stream.
//
// Thread-safe; the counting paths take one short lock (stream events, never frame events).
#pragma once

#include <cstdint>
#include <map>
#include <mutex>
#include <string>

#include "common/clock.h"
#include "common/token_bucket.h"

namespace framepipe {

struct PeerLogOptions {
  double peer_lines_per_second = 2;  // stream lines one peer may write, sustained
  double peer_burst = 20;
  double global_lines_per_second = 20;  // all peers together
  double global_burst = 100;
  std::chrono::seconds interval{10};  // how often summaries are written
  size_t max_peers = 1024;            // peers tracked at once; more are summed as "other"
};

class PeerLog {
 public:
  explicit PeerLog(PeerLogOptions options = {});

  // A stream of `peer` opened: true if its open and close lines may be written.
  bool AllowStream(const std::string& peer, TimePoint now);
  // A stream of `peer` ended with `status` ("OK", "CANCELLED"...) without its lines written.
  void CountClosed(const std::string& peer, const std::string& status);
  // A stream of `peer` was refused (`reason`: "max_streams", "peer_limit", "draining", ...).
  void CountRefused(const std::string& peer, const std::string& reason);
  // Any other event of `peer` (a connection refused or closed by the front door, say): true if
  // a line of its own may be written now; false: it is counted under `key` in the summary.
  bool AllowEvent(const std::string& peer, const std::string& key, TimePoint now);
  // Writes one summary line per peer with counts since the last one, once per interval.
  void Flush(TimePoint now, bool force = false);

 private:
  struct Counts {
    TokenBucket bucket;
    uint64_t logged = 0;
    uint64_t unlogged = 0;
    std::map<std::string, uint64_t> closed;   // by status
    std::map<std::string, uint64_t> refused;  // by reason
    std::map<std::string, uint64_t> events;   // AllowEvent's, not written, by key
    bool dirty = false;
  };
  Counts& PeerLocked(const std::string& peer);

  const PeerLogOptions options_;
  std::mutex mu_;
  TokenBucket global_;
  std::map<std::string, Counts> peers_;
  TimePoint last_flush_{};
};

// The client address every per-address limit and log line counts by: "ipv4:10.1.2.3:5678" ->
// "10.1.2.3"; an IPv6 address masked to its first `ipv6_prefix` bits,
// "ipv6:[2001:db8::7]:5678" -> "2001:db8::/64" (an IPv6 host is usually given a whole /64, so
// counting single addresses would hand it 2^64 shares; 128: each address on its own, "::1");
// an IPv4-mapped IPv6 address as IPv4; anything else as it is.
std::string PeerHost(const std::string& grpc_peer, int ipv6_prefix);

}  // namespace framepipe
