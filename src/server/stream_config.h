// A stream's StreamConfig message applied to its pipeline StreamOptions, with the server's limits
// checked (an unknown overload policy or a window over the server's limit is INVALID_ARGUMENT).
#pragma once

#include <cstdint>

#include "absl/status/status.h"
#include "framepipe/v1/framepipe.pb.h"
#include "pipeline/stream.h"

namespace framepipe {

// Fills `options` (id, max_in_flight, overload, frame_timeout) and `include_thumbnail` from
// `config`; fields left at zero / empty keep what `options` already holds.
absl::Status ApplyStreamConfig(const v1::StreamConfig& config, uint32_t max_stream_in_flight,
                               StreamOptions* options, bool* include_thumbnail);

}  // namespace framepipe
