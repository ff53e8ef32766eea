// FakeClock: a TimeSource tests move by hand. Timeouts (frame deadlines, idle and first-frame
// timeouts, the drain) read it, so a test advances time instead of sleeping, and a waiter wakes
// exactly when the time it waits for has been reached.
#pragma once

#include <algorithm>
#include <condition_variable>
#include <mutex>
#include <utility>
#include <vector>

#include "common/clock.h"

namespace framepipe::testing {

class FakeClock final : public TimeSource {
 public:
  explicit FakeClock(TimePoint start = Clock::now()) : now_(start) {}

  TimePoint Now() const override {
    std::lock_guard<std::mutex> l(mu_);
    return now_;
  }

  void Advance(Clock::duration d) {
    std::vector<std::pair<std::condition_variable*, std::mutex*>> waiters;
    {
      std::lock_guard<std::mutex> l(mu_);
      now_ += d;
      waiters = waiters_;
    }
    // Each waiter's own mutex is taken before notifying: a waiter between checking the time and
    // sleeping cannot miss the wake-up.
    for (auto [cv, m] : waiters) {
      std::lock_guard<std::mutex> l(*m);
      cv->notify_all();
    }
  }

  bool WaitUntil(std::condition_variable& cv, std::unique_lock<std::mutex>& lock,
                 TimePoint deadline, const std::function<bool()>& done) const override {
    {
      std::lock_guard<std::mutex> l(mu_);
      waiters_.emplace_back(&cv, lock.mutex());
    }
    while (!done() && Now() < deadline) cv.wait(lock);
    {
      std::lock_guard<std::mutex> l(mu_);
      auto it = std::find(waiters_.begin(), waiters_.end(), std::make_pair(&cv, lock.mutex()));
      if (it != waiters_.end()) waiters_.erase(it);
    }
    return done();
  }

 private:
  mutable std::mutex mu_;
  TimePoint now_;
  mutable std::vector<std::pair<std::condition_variable*, std::mutex*>> waiters_;
};

}  // namespace framepipe::testing
