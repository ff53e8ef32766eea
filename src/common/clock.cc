#include "common/clock.h"

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

void PrimeProcessClocks() { (void)absl::base_internal::NominalCPUFrequency(); }

}  // namespace framepipe
