// BatchQueue: the policy of the batched analyse stage - which waiting frames go together into a
// batch, and when the batch in the making must go. No threads and no clock of its own: the
// caller passes the time, so the policy is tested exactly (tests/batch_test.cc).
//
// A batch goes as soon as one of these holds:
//   - it is full (max_frames frames wait);
//   - its oldest frame has waited one window;
//   - a frame in it has a deadline less than one window away (so a frame with a deadline never
//     waits in the queue past `deadline - window`; its batch still has that window to run).
// Taking a batch: first the frames that are urgent (their deadline less than one window away),
// the nearest deadline first - the frame whose deadline sent the batch is in it; then the rest
// fairly across streams: round-robin over the streams that have frames waiting, the stream with
// the oldest waiting frame first, each stream's frames in arrival order - so a burst from one
// stream cannot fill every batch while another stream's frames wait.
#pragma once

#include <chrono>
#include <cstdint>
#include <deque>
#include <unordered_map>
#include <vector>

#include "common/clock.h"

namespace framepipe::internal {

struct Job;

class BatchQueue {
 public:
  struct Item {
    Job* job = nullptr;
    const void* stream = nullptr;  // frames of one stream share this key
    TimePoint arrived;
    TimePoint deadline = TimePoint::max();  // max: none
  };

  BatchQueue(uint32_t max_frames, std::chrono::microseconds window);

  void Add(const Item& item);
  size_t size() const { return size_; }
  bool empty() const { return size_ == 0; }
  bool full() const { return size_ >= max_frames_; }
  // When the batch in the making must go (see above); TimePoint::max() when nothing waits.
  TimePoint DueAt() const;
  bool Ready(TimePoint now) const { return full() || (!empty() && now >= DueAt()); }
  // Up to max_frames waiting frames: the urgent ones at `now` first, then fair across streams
  // (see above).
  std::vector<Item> Take(TimePoint now);

 private:
  const uint32_t max_frames_;
  const std::chrono::microseconds window_;
  size_t size_ = 0;
  uint64_t next_seq_ = 0;  // arrival order, to break ties between equal times
  struct Waiting {
    Item item;
    uint64_t seq;
  };
  TimePoint UrgentFrom(const Item& item) const;  // deadline - window (max: never urgent)
  std::unordered_map<const void*, std::deque<Waiting>> by_stream_;
};

}  // namespace framepipe::internal
