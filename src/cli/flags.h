// Flags shared by framepipe's subcommands: values parsed at parse time (durations, sizes, the
// memory budget), so a bad value is a usage error naming the flag, and the flag groups more than
// one subcommand takes (client TLS and tokens, log format), defined once.
#pragma once

#include <chrono>
#include <cstdint>
#include <string>

#include "absl/status/statusor.h"
#include "client/credentials.h"
#include "common/log.h"

namespace CLI {
class App;
class Option;
}  // namespace CLI

namespace framepipe {

// "10s", "250ms", "1m30s" (absl::ParseDuration), or a bare number of seconds.
absl::StatusOr<std::chrono::milliseconds> ParseDuration(const std::string& text);
absl::Status ParseSize(const std::string& text, int* width, int* height);

// --max-memory-mb: a number of MiB, 0 (no byte budget: count limits only) or "auto": half of the
// memory this process may use (the cgroup's memory limit, else physical memory), between 256 MiB
// and 16 GiB - so a default server cannot be talked into decoding more than it can hold.
absl::StatusOr<uint64_t> ParseMemoryBudgetMb(const std::string& text);
uint64_t AutoMemoryBudgetMb();

// A duration flag written into `out` when parsed; its default is shown as `default_text`.
CLI::Option* AddDurationFlag(CLI::App* cmd, const std::string& name, std::chrono::milliseconds* out,
                             const std::string& default_text, const std::string& help);

// --tls-ca, --tls-cert, --tls-key, --tls-server-name and (with `token`) --auth-token-file.
void AddClientSecurityFlags(CLI::App* cmd, ClientSecurityOptions* o, bool token);

// --log-format text|json, applied when parsed.
void AddLogFormatFlag(CLI::App* cmd, const std::string& help);

// Prints "framepipe: <what>" to stderr; the exit code of a usage or start-up error.
int Fail(const std::string& what);

}  // namespace framepipe
