#include "common/clock.h"

#include <ctime>

#include "absl/base/internal/sysinfo.h"

namespace framepipe {

namespace {
class RealTimeSource final : public TimeSource {
 public:
  TimePoint Now() const override { return Clock::now(); }
  bool WaitUntil(std::condition_variable& cv, std::unique_lock<std::mutex>& lock,
                 TimePoint deadline, const std::function<bool()>& done) const override {
    return cv.wait_until(lock, deadline, done);
  }
};
}  // namespace

const TimeSource* TimeSource::Real() {
  static const RealTimeSource* real = new RealTimeSource;  // never destroyed: used at exit
  return real;
}

uint64_t CpuClockNanos(clockid_t clock) {
  timespec ts{};
  if (clock_gettime(clock, &ts) != 0) return 0;
  return static_cast<uint64_t>(ts.tv_sec) * 1000000000u + static_cast<uint64_t>(ts.tv_nsec);
}

double ProcessCpuSeconds() {
  return static_cast<double>(CpuClockNanos(CLOCK_PROCESS_CPUTIME_ID)) * 1e-9;
}

void PrimeProcessClocks() { (void)absl::base_internal::NominalCPUFrequency(); }

}  // namespace framepipe
