// One monotonic clock for every timing point, so per-frame Timings and the Prometheus
// histograms measure the same intervals.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <ctime>
#include <functional>
#include <mutex>

namespace framepipe {

using Clock = std::chrono::steady_clock;
using TimePoint = Clock::time_point;

inline TimePoint Now() { return Clock::now(); }

// Where timeouts read "now" (first-frame and idle timeouts, drain, frame deadlines): the real
// monotonic clock in production, a fake one in tests, so a test moves time instead of sleeping.
// Implementations are thread-safe.
class TimeSource {
 public:
  virtual ~TimeSource() = default;
  virtual TimePoint Now() const = 0;
  // Waits on `cv` (with `lock` held on entry and return) until `done()` or until Now() reaches
  // `deadline`; true if `done()`. A fake clock wakes its waiters when it moves.
  virtual bool WaitUntil(std::condition_variable& cv, std::unique_lock<std::mutex>& lock,
                         TimePoint deadline, const std::function<bool()>& done) const = 0;
  // The process-wide real clock (never null, never destroyed).
  static const TimeSource* Real();
};

// Microseconds from `from` to `to`, clamped at 0.
inline uint64_t MicrosBetween(TimePoint from, TimePoint to) {
  auto d = std::chrono::duration_cast<std::chrono::microseconds>(to - from).count();
  return d > 0 ? static_cast<uint64_t>(d) : 0;
}

inline double SecondsBetween(TimePoint from, TimePoint to) {
  double s = std::chrono::duration<double>(to - from).count();
  return s > 0 ? s : 0.0;
}

// Computes, once, what Abseil computes lazily on first use: the CPU's cycle-clock frequency (it
// reads /sys files that may not exist, leaving errno = ENOENT). gRPC 1.51's TCP connect reads
// errno after calls that can be the first in the process to need it, so a connect made at that
// moment fails with "No such file or directory". Every framepipe process (server, client, tests)
// calls this before it starts gRPC. Idempotent and thread-safe.
void PrimeProcessClocks();

// A CPU-time clock (CLOCK_PROCESS_CPUTIME_ID, CLOCK_THREAD_CPUTIME_ID, or another thread's from
// pthread_getcpuclockid) in nanoseconds; 0 if it cannot be read.
uint64_t CpuClockNanos(clockid_t clock);

// CPU time this process has used, all threads, in seconds.
double ProcessCpuSeconds();

// Wall clock in microseconds since the Unix epoch (the unit of capture_time_us).
inline int64_t WallMicros() {
  return std::chrono::duration_cast<std::chrono::microseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

}  // namespace framepipe
