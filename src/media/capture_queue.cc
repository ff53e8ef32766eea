#include "media/capture_queue.h"

#include <filesystem>

#include "absl/strings/str_cat.h"

namespace framepipe::media_internal {

bool IsLiveInput(const std::string& input) {
  return input.find("://") != std::string::npos || input.rfind("/dev/video", 0) == 0;
}

absl::Status CheckInputExists(const std::string& input) {
  if (IsLiveInput(input) || std::filesystem::exists(input)) return absl::OkStatus();
  return absl::InvalidArgumentError(absl::StrCat("--input '", input, "' does not exist"));
}

FrameSource::Next CaptureQueue::TryNext(SourceFrame* out) {
  std::lock_guard<std::mutex> l(mu_);
  if (!queue_.empty()) {
    *out = std::move(queue_.front());
    queue_.pop_front();
    cv_.notify_all();
    return FrameSource::Next::kFrame;
  }
  if (ended_) return FrameSource::Next::kEnd;
  waiting_ = true;
  return FrameSource::Next::kNotReady;
}

void CaptureQueue::OnReady(std::function<void()> fn) {
  std::lock_guard<std::mutex> l(mu_);
  ready_ = std::move(fn);
}

std::function<void()> CaptureQueue::QueueLocked(SourceFrame f) {
  queue_.push_back(std::move(f));
  if (!waiting_) return nullptr;
  waiting_ = false;
  return ready_;
}

bool CaptureQueue::PushWait(SourceFrame f) {
  std::function<void()> ready;
  {
    std::unique_lock<std::mutex> l(mu_);
    cv_.wait(l, [&] { return exit_ || queue_.size() < ahead_; });
    if (exit_) return false;
    ready = QueueLocked(std::move(f));
  }
  if (ready) ready();
  return true;
}

bool CaptureQueue::PushDropOldest(SourceFrame f, bool* dropped) {
  std::function<void()> ready;
  {
    std::lock_guard<std::mutex> l(mu_);
    if (exit_) return false;
    *dropped = queue_.size() >= ahead_;
    if (*dropped) queue_.pop_front();
    ready = QueueLocked(std::move(f));
  }
  if (ready) ready();
  return true;
}

bool CaptureQueue::PushIfRoom(SourceFrame f, bool* full) {
  std::function<void()> ready;
  {
    std::lock_guard<std::mutex> l(mu_);
    if (exit_) return false;
    *full = queue_.size() >= ahead_;
    if (*full) return true;
    ready = QueueLocked(std::move(f));
  }
  if (ready) ready();
  return true;
}

void CaptureQueue::Finish() {
  std::function<void()> ready;
  {
    std::lock_guard<std::mutex> l(mu_);
    ended_ = true;
    if (waiting_) {
      waiting_ = false;
      ready = ready_;
    }
  }
  if (ready) ready();
}

void CaptureQueue::Exit() {
  {
    std::lock_guard<std::mutex> l(mu_);
    exit_ = true;
  }
  cv_.notify_all();
}

}  // namespace framepipe::media_internal
