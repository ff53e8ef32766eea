#include "pipeline/internal/batch_queue.h"

#include <algorithm>

namespace framepipe::internal {

namespace {
// A day: longer windows mean nothing here, and keep `time + window` far from overflowing.
constexpr std::chrono::microseconds kMaxWindow = std::chrono::hours(24);
}  // namespace

BatchQueue::BatchQueue(uint32_t max_frames, std::chrono::microseconds window)
    : max_frames_(std::max<uint32_t>(1, max_frames)),
      window_(std::clamp(window, std::chrono::microseconds(0), kMaxWindow)) {}

TimePoint BatchQueue::UrgentFrom(const Item& item) const {
  const TimePoint d = item.deadline;
  if (d == TimePoint::max()) return TimePoint::max();
  return d > TimePoint::min() + window_ ? d - window_ : TimePoint::min();
}

void BatchQueue::Add(const Item& item) {
  by_stream_[item.stream].push_back({item, next_seq_++});
  ++size_;
}

TimePoint BatchQueue::DueAt() const {
  TimePoint due = TimePoint::max();
  for (const auto& [stream, waiting] : by_stream_) {
    // Each stream's frames are in arrival order: its oldest is the front.
    due = std::min(due, waiting.front().item.arrived + window_);
    for (const Waiting& w : waiting) due = std::min(due, UrgentFrom(w.item));
  }
  return due;
}

std::vector<BatchQueue::Item> BatchQueue::Take(TimePoint now) {
  std::vector<Item> out;
  out.reserve(std::min<size_t>(size_, max_frames_));
  // Urgent frames first, nearest deadline first.
  std::vector<std::pair<TimePoint, uint64_t>> urgent;  // (deadline, seq)
  for (const auto& [stream, waiting] : by_stream_) {
    for (const Waiting& w : waiting) {
      if (UrgentFrom(w.item) <= now) urgent.emplace_back(w.item.deadline, w.seq);
    }
  }
  if (!urgent.empty()) {
    std::sort(urgent.begin(), urgent.end());
    if (urgent.size() > max_frames_) urgent.resize(max_frames_);
    std::vector<uint64_t> seqs;
    for (const auto& u : urgent) seqs.push_back(u.second);
    std::sort(seqs.begin(), seqs.end());
    for (auto& [stream, waiting] : by_stream_) {
      for (auto it = waiting.begin(); it != waiting.end();) {
        if (std::binary_search(seqs.begin(), seqs.end(), it->seq)) {
          out.push_back(it->item);
          it = waiting.erase(it);
        } else {
          ++it;
        }
      }
    }
    // The batch's order: nearest deadline first (out was filled stream by stream).
    std::sort(out.begin(), out.end(),
              [](const Item& a, const Item& b) { return a.deadline < b.deadline; });
  }
  // Streams with frames waiting, the one whose oldest frame came first leading.
  std::vector<std::deque<Waiting>*> order;
  order.reserve(by_stream_.size());
  for (auto& [stream, waiting] : by_stream_) {
    if (!waiting.empty()) order.push_back(&waiting);
  }
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
