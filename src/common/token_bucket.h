// TokenBucket: a rate limit of `rate` events a second with bursts up to `burst`, on an injectable
// clock. The rate and burst are passed at each call (they live in the owner's options). A bucket
// starts with the tokens it is given and refills from its first Take.
#pragma once

#include <algorithm>

#include "common/clock.h"

namespace framepipe {

struct TokenBucket {
  double tokens = 0;
  TimePoint last{};  // of the last Take; unset: nothing to refill yet

  // Refills for the time since the last Take, then spends one token if there is one.
  bool Take(double rate, double burst, TimePoint now) {
    if (last != TimePoint{}) tokens = std::min(burst, Available(rate, now));
    last = now;
    if (tokens < 1) return false;
    tokens -= 1;
    return true;
  }
  // True when the bucket has refilled to its burst by `now`: its owner may forget it.
  bool FullAt(double rate, double burst, TimePoint now) const {
    return Available(rate, now) >= burst;
  }

 private:
  double Available(double rate, TimePoint now) const {
    return tokens + rate * SecondsBetween(last, now);
  }
};

}  // namespace framepipe
