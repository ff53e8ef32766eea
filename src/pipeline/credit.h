// Credit: the right of one admitted frame to occupy the pipeline. A frame takes a credit at
// admission and gives it back when the Credit handed out with its result is destroyed (or
// Release()d) - i.e. when the consumer has finished with the result (the service: when the
// write to the socket completed). Move-only; safe to release from any thread, also after the
// stream was cancelled or the pipeline stopped.
#pragma once

#include <memory>

#include "common/frame.h"

namespace framepipe {

namespace internal {
class StreamState;
}

class Credit {
 public:
  Credit() = default;
  ~Credit() { Release(); }
  Credit(Credit&& other) noexcept : stream_(std::move(other.stream_)) {}
  Credit& operator=(Credit&& other) noexcept {
    if (this != &other) {
      Release();
      stream_ = std::move(other.stream_);
    }
    return *this;
  }
  Credit(const Credit&) = delete;
  Credit& operator=(const Credit&) = delete;

  void Release();
  bool held() const { return stream_ != nullptr; }

 private:
  friend class internal::StreamState;
  explicit Credit(std::shared_ptr<internal::StreamState> stream) : stream_(std::move(stream)) {}
  // Gives up the credit without returning it (the stream returns it itself, inline).
  std::shared_ptr<internal::StreamState> Take() { return std::move(stream_); }
  std::shared_ptr<internal::StreamState> stream_;
};

// What a stream's output receives for each admitted frame, in order.
struct Delivery {
  std::unique_ptr<FrameResult> result;
  Credit credit;
};

}  // namespace framepipe
