#include "pipeline/internal/batch_queue.h"

#include <algorithm>

namespace framepipe::internal {

BatchQueue::BatchQueue(uint32_t max_frames, std::chrono::microseconds window)
    : max_frames_(std::max<uint32_t>(1, max_frames)),
      window_(std::max(window, std::chrono::microseconds(0))) {}

void BatchQueue::Add(const Item& item) {
  by_stream_[item.stream].push_back({item, next_seq_++});
  ++size_;
}

TimePoint BatchQueue::DueAt() const {
  TimePoint due = TimePoint::max();
  for (const auto& [stream, waiting] : by_stream_) {
    // Each stream's frames are in arrival order: its oldest is the front.
    due = std::min(due, waiting.front().item.arrived + window_);
    for (const Waiting& w : waiting) {
      const TimePoint d = w.item.deadline;
      if (d == TimePoint::max()) continue;
      // deadline - window, without wrapping below the clock's minimum.
      due = std::min(due, d > TimePoint::min() + window_ ? d - window_ : TimePoint::min());
    }
  }
  return due;
}

std::vector<BatchQueue::Item> BatchQueue::Take() {
  std::vector<Item> out;
  out.reserve(std::min<size_t>(size_, max_frames_));
  // Streams with frames waiting, the one whose oldest frame came first leading.
  std::vector<std::deque<Waiting>*> order;
  order.reserve(by_stream_.size());
  for (auto& [stream, waiting] : by_stream_) order.push_back(&waiting);
  std::sort(order.begin(), order.end(),
            [](const std::deque<Waiting>* a, const std::deque<Waiting>* b) {
              return a->front().seq < b->front().seq;
            });
  bool took = true;
  while (out.size() < max_frames_ && took) {
    took = false;
    for (std::deque<Waiting>* waiting : order) {
      if (out.size() >= max_frames_) break;
      if (waiting->empty()) continue;
      out.push_back(waiting->front().item);
      waiting->pop_front();
      took = true;
    }
  }
  for (auto it = by_stream_.begin(); it != by_stream_.end();) {
    it = it->second.empty() ? by_stream_.erase(it) : std::next(it);
  }
  size_ -= out.size();
  return out;
}

}  // namespace framepipe::internal
