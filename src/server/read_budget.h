// The read budget: bytes that messages being received (and read frames not yet admitted) may
// hold. A stream reserves room for its next message before it reads it, so a client cannot push
// more than the server has room for.
//
// Fair between client addresses: one address may hold at most its share of the budget (granted
// plus queued for the whole budget), and what waits for an address's share waits in that
// address's own queue. So calls that reserve and never send - each holds room for a message that
// never comes - tie up at most their address's share, and other addresses' reads go on. Within
// the share and within the whole budget, requests are granted first come, first served (a large
// one is not starved by a stream of small ones); a request larger than the limit is granted when
// nothing else is held against it.
//
// Not thread-safe: the owner calls it under its lock and runs the grants it returns outside.
#pragma once

#include <cstdint>
#include <deque>
#include <map>
#include <string>
#include <vector>

namespace framepipe {

class ReadBudget {
 public:
  struct Grant {
    void* who;
    uint64_t bytes;
  };

  // `total` 0: no budget (every request granted at once). `per_peer` 0 or >= total: no share.
  ReadBudget(uint64_t total, uint64_t per_peer);

  // Grants `bytes` to `who` from address `peer` now (true), or queues the request (false): a
  // later Release or Forget returns it among its grants. One request per `who` at a time.
  bool Reserve(void* who, const std::string& peer, uint64_t bytes);
  // Returns `bytes` granted to a request of `peer`; returns the requests granted as a result.
  std::vector<Grant> Release(const std::string& peer, uint64_t bytes);
  // Drops `who`'s queued request, if any (its call ended); returns the requests this unblocks.
  std::vector<Grant> Forget(void* who, const std::string& peer);

  uint64_t used() const { return used_; }
  uint64_t held_by(const std::string& peer) const;  // granted + queued for the whole budget
  size_t waiting() const;
  uint64_t per_peer() const { return per_peer_; }

 private:
  struct Waiter {
    void* who;
    uint64_t bytes;
  };
  struct Peer {
    uint64_t held = 0;           // granted, plus queued in global_
    std::deque<Waiter> waiting;  // over the share: waiting for this address's own releases
  };
  struct Queued {
    void* who;
    std::string peer;
    uint64_t bytes;
  };

  static bool Fits(uint64_t used, uint64_t bytes, uint64_t limit) {
    return used == 0 || used + bytes <= limit;
  }
  // Moves `peer`'s waiters that now fit its share to the global queue, then grants what fits.
  void Pump(const std::string& peer, std::vector<Grant>* grants);

  const uint64_t total_;
  const uint64_t per_peer_;
  uint64_t used_ = 0;
  std::map<std::string, Peer> peers_;
  std::deque<Queued> global_;  // within their address's share, waiting for the whole budget
};

}  // namespace framepipe
