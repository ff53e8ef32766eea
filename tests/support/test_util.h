// Small synchronisation helpers for tests: everything waits on events with a generous bound,
// never on sleeps.
#pragma once

#include <chrono>
#include <condition_variable>
#include <functional>
#include <mutex>

namespace framepipe::testing {

inline constexpr std::chrono::seconds kWaitBound{60};

// A one-shot gate: Wait() blocks until Open().
class Gate {
 public:
  void Open() {
    {
      std::lock_guard<std::mutex> l(mu_);
      open_ = true;
    }
    cv_.notify_all();
  }
  bool Wait(std::chrono::milliseconds bound = kWaitBound) {
    std::unique_lock<std::mutex> l(mu_);
    return cv_.wait_for(l, bound, [&] { return open_; });
  }
  bool is_open() {
    std::lock_guard<std::mutex> l(mu_);
    return open_;
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  bool open_ = false;
};

// A counter others can wait on to reach a value.
class Counter {
 public:
  void Add(int n = 1) {
    {
      std::lock_guard<std::mutex> l(mu_);
      v_ += n;
    }
    cv_.notify_all();
  }
  bool WaitAtLeast(int n, std::chrono::milliseconds bound = kWaitBound) {
    std::unique_lock<std::mutex> l(mu_);
    return cv_.wait_for(l, bound, [&] { return v_ >= n; });
  }
  int value() {
    std::lock_guard<std::mutex> l(mu_);
    return v_;
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  int v_ = 0;
};

}  // namespace framepipe::testing
