#include "service/cli_util.h"

#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <fstream>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"

namespace framepipe {

absl::StatusOr<std::chrono::milliseconds> ParseDuration(const std::string& text) {
  size_t i = 0;
  while (i < text.size() && (std::isdigit(static_cast<unsigned char>(text[i])) || text[i] == '.')) {
    ++i;
  }
  double v;
  if (i == 0 || !absl::SimpleAtod(text.substr(0, i), &v) || v < 0) {
    return absl::InvalidArgumentError(absl::StrCat("bad duration '", text, "' (e.g. 10s, 500ms)"));
  }
  const std::string unit = text.substr(i);
  double ms;
  if (unit == "ms") {
    ms = v;
  } else if (unit == "s" || unit.empty()) {
    ms = v * 1000;
  } else if (unit == "m") {
    ms = v * 60000;
  } else {
    return absl::InvalidArgumentError(absl::StrCat("bad duration unit in '", text, "' (ms, s, m)"));
  }
  return std::chrono::milliseconds(static_cast<int64_t>(ms));
}

absl::Status ParseSize(const std::string& text, int* width, int* height) {
  const size_t x = text.find('x');
  if (x == std::string::npos || !absl::SimpleAtoi(text.substr(0, x), width) ||
      !absl::SimpleAtoi(text.substr(x + 1), height) || *width <= 0 || *height <= 0) {
    return absl::InvalidArgumentError(absl::StrCat("bad size '", text, "' (e.g. 1280x720)"));
  }
  return absl::OkStatus();
}

uint64_t AutoMemoryBudgetMb() {
  uint64_t limit =
      static_cast<uint64_t>(sysconf(_SC_PHYS_PAGES)) * static_cast<uint64_t>(sysconf(_SC_PAGESIZE));
  // A container's limit (cgroup v2, then v1); "max" or a huge v1 value means none.
  for (const char* path :
       {"/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"}) {
    std::ifstream in(path);
    std::string text;
    uint64_t v = 0;
    if (in >> text && absl::SimpleAtoi(text, &v) && v > 0) limit = std::min(limit, v);
  }
  return std::clamp<uint64_t>((limit >> 20) / 2, 256, 16384);
}

absl::StatusOr<uint64_t> ParseMemoryBudgetMb(const std::string& text) {
  if (text == "auto") return AutoMemoryBudgetMb();
  uint64_t mb = 0;
  if (!absl::SimpleAtoi(text, &mb)) {
    return absl::InvalidArgumentError(
        absl::StrCat("bad --max-memory-mb '", text, "' (a number of MiB, 0, or auto)"));
  }
  return mb;
}

}  // namespace framepipe
