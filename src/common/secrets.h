// Secrets read at start-up (certificates, keys, bearer tokens) and compared without leaking
// their content through timing. Every problem is a clear error naming the file.
#pragma once

#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace framepipe {

// Reads a whole file; a clear error naming the file (and `what` it is) when it cannot.
absl::StatusOr<std::string> ReadFile(const std::string& path, const char* what);

// The bearer tokens of an auth token file: one per line, '#' comments, at least 16 characters.
absl::StatusOr<std::vector<std::string>> ReadAuthTokens(const std::string& path);

// Equal-length-independent, constant-time comparison of secrets.
bool ConstantTimeEquals(const std::string& a, const std::string& b);

}  // namespace framepipe
