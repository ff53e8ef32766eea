// CreditGroup: a credit limit that several streams share, on top of each stream's own window
// and the pipeline's global limit. The service puts every stream of one client address in one
// group, so that one address - whose streams may stop reading their results and so keep their
// credits as long as they like - can never hold the whole global limit. Thread-safe; a stream
// refused for the group's sake is woken (on_credit) when a credit of the group comes back.
#pragma once

#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>

namespace framepipe {

namespace internal {
class StreamState;
}

class CreditGroup {
 public:
  explicit CreditGroup(uint32_t max_in_flight) : max_(max_in_flight > 0 ? max_in_flight : 1) {}
  CreditGroup(const CreditGroup&) = delete;
  CreditGroup& operator=(const CreditGroup&) = delete;

  uint32_t max_in_flight() const { return max_; }
  uint32_t held() const;       // credits its streams hold now
  uint32_t peak_held() const;  // the most they held at once

 private:
  friend class internal::StreamState;
  // Takes one credit; when none is free, registers `stream` to be woken by a release.
  bool TryAcquire(internal::StreamState* stream);
  // Gives `n` credits back and wakes as many waiting streams.
  void Release(uint32_t n);

  const uint32_t max_;
  mutable std::mutex mu_;
  uint32_t held_ = 0;
  uint32_t peak_ = 0;
  std::deque<std::weak_ptr<internal::StreamState>> waiters_;
};

}  // namespace framepipe
