// Small helpers for the command line: durations ("10s", "250ms", "2m") and sizes ("1280x720").
#pragma once

#include <chrono>
#include <string>

#include "absl/status/statusor.h"

namespace framepipe {

absl::StatusOr<std::chrono::milliseconds> ParseDuration(const std::string& text);
absl::Status ParseSize(const std::string& text, int* width, int* height);

}  // namespace framepipe
