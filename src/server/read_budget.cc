#include "server/read_budget.h"

#include <algorithm>

namespace framepipe {

ReadBudget::ReadBudget(uint64_t total, uint64_t per_peer)
    : total_(total), per_peer_(per_peer == 0 ? total : std::min(per_peer, total)) {}

bool ReadBudget::Reserve(void* who, const std::string& peer, uint64_t bytes) {
  if (total_ == 0 || bytes == 0) return true;
  Peer& p = peers_[peer];
  if (!p.waiting.empty() || !Fits(p.held, bytes, per_peer_)) {
    p.waiting.push_back({who, bytes});
    return false;
  }
  p.held += bytes;
  if (global_.empty() && Fits(used_, bytes, total_)) {
    used_ += bytes;
    return true;
  }
  global_.push_back({who, peer, bytes});
  return false;
}

std::vector<ReadBudget::Grant> ReadBudget::Release(const std::string& peer, uint64_t bytes) {
  std::vector<Grant> grants;
  if (total_ == 0) return grants;
  used_ -= bytes;
  if (auto it = peers_.find(peer); it != peers_.end()) it->second.held -= bytes;
  Pump(peer, &grants);
  return grants;
}

std::vector<ReadBudget::Grant> ReadBudget::Forget(void* who, const std::string& peer) {
  std::vector<Grant> grants;
  if (total_ == 0) return grants;
  auto it = peers_.find(peer);
  if (it == peers_.end()) return grants;  // nothing held or queued by this address
  auto queued =
      std::find_if(global_.begin(), global_.end(), [who](const Queued& q) { return q.who == who; });
  if (queued != global_.end()) {
    it->second.held -= queued->bytes;
    global_.erase(queued);
  }
  auto& waiting = it->second.waiting;
  waiting.erase(std::remove_if(waiting.begin(), waiting.end(),
                               [who](const Waiter& w) { return w.who == who; }),
                waiting.end());
  Pump(peer, &grants);
  return grants;
}

void ReadBudget::Pump(const std::string& peer, std::vector<Grant>* grants) {
  if (auto it = peers_.find(peer); it != peers_.end()) {
    Peer& p = it->second;
    while (!p.waiting.empty() && Fits(p.held, p.waiting.front().bytes, per_peer_)) {
      const Waiter w = p.waiting.front();
      p.waiting.pop_front();
      p.held += w.bytes;
      global_.push_back({w.who, peer, w.bytes});
    }
    if (p.held == 0 && p.waiting.empty()) peers_.erase(it);
  }
  while (!global_.empty() && Fits(used_, global_.front().bytes, total_)) {
    used_ += global_.front().bytes;
    grants->push_back({global_.front().who, global_.front().bytes});
    global_.pop_front();
  }
}

uint64_t ReadBudget::held_by(const std::string& peer) const {
  auto it = peers_.find(peer);
  return it == peers_.end() ? 0 : it->second.held;
}

size_t ReadBudget::waiting() const {
  size_t n = global_.size();
  for (const auto& [peer, p] : peers_) n += p.waiting.size();
  return n;
}

}  // namespace framepipe
