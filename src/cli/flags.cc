#include "cli/flags.h"

#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <fstream>

#include "CLI/CLI.hpp"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/time/time.h"

namespace framepipe {

absl::StatusOr<std::chrono::milliseconds> ParseDuration(const std::string& text) {
  double seconds = 0;
  absl::Duration d;
  if (absl::SimpleAtod(text, &seconds)) {
    d = absl::Seconds(seconds);
  } else if (!absl::ParseDuration(text, &d)) {
    return absl::InvalidArgumentError(
        absl::StrCat("bad duration '", text, "' (e.g. 10s, 500ms, 1m30s)"));
  }
  if (d < absl::ZeroDuration()) {
    return absl::InvalidArgumentError(absl::StrCat("negative duration '", text, "'"));
  }
  return std::chrono::milliseconds(absl::ToInt64Milliseconds(d));
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

CLI::Option* AddDurationFlag(CLI::App* cmd, const std::string& name, std::chrono::milliseconds* out,
                             const std::string& default_text, const std::string& help) {
  *out = *ParseDuration(default_text);
  return cmd
      ->add_option_function<std::string>(
          name,
          [out, name](const std::string& text) {
            auto d = ParseDuration(text);
            if (!d.ok()) throw CLI::ValidationError(name, std::string(d.status().message()));
            *out = *d;
          },
          help)
      ->default_str(default_text);
}

void AddClientSecurityFlags(CLI::App* cmd, ClientSecurityOptions* o, bool token) {
  cmd->add_option("--tls-ca", o->tls_ca, "PEM roots to verify the server: use TLS");
  cmd->add_option("--tls-cert", o->tls_cert, "Client certificate (mutual TLS)");
  cmd->add_option("--tls-key", o->tls_key, "Client key (mutual TLS)");
  cmd->add_option("--tls-server-name", o->tls_server_name,
                  "Name to check in the server certificate (default: the target host)");
  if (token) {
    cmd->add_option("--auth-token-file", o->auth_token_file,
                    "Send the file's first token as 'authorization: Bearer <token>'");
  }
}

void AddLogFormatFlag(CLI::App* cmd, const std::string& help) {
  cmd->add_option_function<std::string>(
         "--log-format",
         [](const std::string& f) {
           SetLogFormat(f == "json" ? LogFormat::kJson : LogFormat::kText);
         },
         help)
      ->check(CLI::IsMember({"text", "json"}))
      ->default_str("text");
}

int Fail(const std::string& what) {
  std::fprintf(stderr, "framepipe: %s\n", what.c_str());
  return 2;
}

}  // namespace framepipe
