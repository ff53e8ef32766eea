// A stream's StreamConfig message applied to its pipeline StreamOptions, with the server's limits
// checked (an unknown overload policy or a window over the server's limit is INVALID_ARGUMENT).
#pragma once

#include <cstdint>
#include <optional>

#include "absl/status/status.h"
#include "analysis/video_decoder.h"
#include "framepipe/v1/framepipe.pb.h"
#include "pipeline/stream.h"

namespace framepipe {

// Fills `options` (id, max_in_flight, overload, frame_timeout), `include_thumbnail` and `video`
// (set when the stream carries compressed video) from `config`; fields left at zero / empty
// keep what `options` already holds. An unsupported codec is INVALID_ARGUMENT.
absl::Status ApplyStreamConfig(const v1::StreamConfig& config, uint32_t max_stream_in_flight,
                               StreamOptions* options, bool* include_thumbnail,
                               std::optional<VideoFormatSpec>* video);

}  // namespace framepipe
