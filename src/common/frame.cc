#include "common/frame.h"

namespace framepipe {

const char* FrameStatusLabel(FrameStatus s) {
  switch (s) {
    case FrameStatus::kOk:
      return "ok";
    case FrameStatus::kInvalidArgument:
      return "invalid_argument";
    case FrameStatus::kDeadlineExceeded:
      return "deadline_exceeded";
    case FrameStatus::kDropped:
      return "dropped";
    case FrameStatus::kInternal:
      return "internal";
    default:
      return "unspecified";
  }
}

FrameStatus FrameStatusFromCode(absl::StatusCode code) {
  switch (code) {
    case absl::StatusCode::kOk:
      return FrameStatus::kOk;
    case absl::StatusCode::kInvalidArgument:
    case absl::StatusCode::kOutOfRange:
      return FrameStatus::kInvalidArgument;
    case absl::StatusCode::kDeadlineExceeded:
      return FrameStatus::kDeadlineExceeded;
    default:
      return FrameStatus::kInternal;
  }
}

}  // namespace framepipe
