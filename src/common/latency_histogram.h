// LatencyHistogram: a fixed-size, log-bucketed histogram (5% wide buckets from 1 us to ~20 min)
// for per-stream percentiles in log lines without keeping every sample. Not thread-safe.
#pragma once

#include <array>
#include <cmath>
#include <cstdint>

namespace framepipe {

class LatencyHistogram {
 public:
  void Add(uint64_t micros) {
    ++buckets_[Index(micros)];
    ++count_;
  }
  uint64_t count() const { return count_; }
  // Upper edge of the bucket holding the p-th percentile (0..100), in milliseconds.
  double PercentileMs(double p) const {
    if (count_ == 0) return 0;
    const uint64_t rank = static_cast<uint64_t>(std::ceil(p / 100.0 * static_cast<double>(count_)));
    uint64_t seen = 0;
    for (int i = 0; i < kBuckets; ++i) {
      seen += buckets_[i];
      if (seen >= rank && buckets_[i] > 0) return std::pow(kGrowth, i + 1) / 1000.0;
    }
    return std::pow(kGrowth, kBuckets) / 1000.0;
  }

 private:
  static constexpr double kGrowth = 1.05;
  static constexpr int kBuckets = 430;  // 1.05^430 us ~ 1.3e9 us
  static int Index(uint64_t micros) {
    if (micros <= 1) return 0;
    const int i = static_cast<int>(std::log(static_cast<double>(micros)) / std::log(kGrowth));
    return i < kBuckets ? i : kBuckets - 1;
  }
  std::array<uint32_t, kBuckets> buckets_{};
  uint64_t count_ = 0;
};

}  // namespace framepipe
