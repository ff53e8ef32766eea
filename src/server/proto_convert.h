// Conversions between the wire types (framepipe.v1) and the internal frame types. Payload bytes
// are moved, not copied.
#pragma once

#include "absl/status/status.h"
#include "common/frame.h"
#include "framepipe/v1/framepipe.pb.h"

namespace framepipe {

namespace pb = ::framepipe::v1;

inline constexpr size_t kMaxTags = 64;
inline constexpr size_t kMaxTagBytes = 256 * 1024;

// Moves `frame`'s payload and tags into a FrameInput. Frame-level problems (tags over the
// limits) are recorded in FrameInput::rejection; the frame is still answered in order.
FrameInput FromProto(pb::Frame* frame);

// Fills `out` from `r`. The thumbnail is sent only when `include_thumbnail` is set.
void ToProto(const FrameResult& r, bool include_thumbnail, pb::FrameResult* out);
// And back (for clients and tests).
FrameResult FromProto(const pb::FrameResult& r);

pb::FrameStatus ToProtoStatus(FrameStatus s);
FrameStatus FromProtoStatus(pb::FrameStatus s);

}  // namespace framepipe
