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

double ProcessCpuSeconds() {
  timespec ts{};
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
  return static_cast<double>(ts.tv_sec) + static_cast<double>(ts.tv_nsec) * 1e-9;
}

void PrimeProcessClocks() { (void)absl::base_internal::NominalCPUFrequency(); }

}  // namespace framepipe
