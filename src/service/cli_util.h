// Small helpers for the command line: durations ("10s", "250ms", "2m") and sizes ("1280x720").
#pragma once

#include <chrono>
#include <string>

#include "absl/status/statusor.h"

namespace framepipe {

absl::StatusOr<std::chrono::milliseconds> ParseDuration(const std::string& text);
absl::Status ParseSize(const std::string& text, int* width, int* height);

// --max-memory-mb: a number of MiB, 0 (no byte budget: count limits only) or "auto": half of the
// memory this process may use (the cgroup's memory limit, else physical memory), between 256 MiB
// and 16 GiB - so a default server cannot be talked into decoding more than it can hold.
absl::StatusOr<uint64_t> ParseMemoryBudgetMb(const std::string& text);
uint64_t AutoMemoryBudgetMb();

}  // namespace framepipe
