// Sink: one stream's results as a pipeline test sees them, in delivery order (tests of the
// pipeline core: tests/pipeline_test.cc, tests/batch_test.cc). The fake stages mark each result
// (analysis.width and enrichment.keypoints) so a test can tell results apart; credits can be
// held to test back-pressure.
#pragma once

#include <algorithm>
#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <string>
#include <vector>

#include "pipeline/pipeline.h"
#include "test_util.h"

namespace framepipe::testing {

struct Got {
  uint64_t seq;
  FrameStatus status;
  std::string error;
  uint32_t width_mark;
  uint32_t keypoints_mark;
  std::string tag;
  uint64_t total_us;
  uint64_t analyse_us;
};

// Collects one stream's results in the order they are delivered.
class Sink {
 public:
  StreamOptions Options(const std::string& id, uint32_t max_in_flight) {
    StreamOptions o;
    o.id = id;
    o.max_in_flight = max_in_flight;
    o.on_result = [this](Delivery d) {
      std::lock_guard<std::mutex> l(mu_);
      const FrameResult& r = *d.result;
      got_.push_back({r.seq, r.status, r.error, r.analysis.width, r.enrichment.keypoints,
                      r.tags.empty() ? "" : r.tags[0].second, r.timings.total_us,
                      r.timings.analyse_us});
      if (after_cancel_) ++late_callbacks_;
      if (hold_credits_) held_.push_back(std::move(d.credit));
      cv_.notify_all();
    };
    o.on_complete = [this] {
      std::lock_guard<std::mutex> l(mu_);
      ++complete_calls_;
      cv_.notify_all();
    };
    return o;
  }
  bool WaitComplete() {
    std::unique_lock<std::mutex> l(mu_);
    return cv_.wait_for(l, kWaitBound, [&] { return complete_calls_ > 0; });
  }
  bool WaitCount(size_t n) {
    std::unique_lock<std::mutex> l(mu_);
    return cv_.wait_for(l, kWaitBound, [&] { return got_.size() >= n; });
  }
  std::vector<Got> got() {
    std::lock_guard<std::mutex> l(mu_);
    return got_;
  }
  int complete_calls() {
    std::lock_guard<std::mutex> l(mu_);
    return complete_calls_;
  }
  void set_hold_credits(bool v) {
    std::lock_guard<std::mutex> l(mu_);
    hold_credits_ = v;
  }
  void ReleaseHeld(size_t n = SIZE_MAX) {
    std::vector<Credit> take;
    {
      std::lock_guard<std::mutex> l(mu_);
      n = std::min(n, held_.size());
      for (size_t i = 0; i < n; ++i) take.push_back(std::move(held_[i]));
      held_.erase(held_.begin(), held_.begin() + static_cast<long>(n));
    }
  }
  size_t held() {
    std::lock_guard<std::mutex> l(mu_);
    return held_.size();
  }
  void MarkCancelled() {
    std::lock_guard<std::mutex> l(mu_);
    after_cancel_ = true;
  }
  int late_callbacks() {
    std::lock_guard<std::mutex> l(mu_);
    return late_callbacks_;
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  std::vector<Got> got_;
  std::vector<Credit> held_;
  bool hold_credits_ = false;
  bool after_cancel_ = false;
  int late_callbacks_ = 0;
  int complete_calls_ = 0;
};

}  // namespace framepipe::testing
