#include "common/log.h"

#include <atomic>
#include <chrono>
#include <cstdio>
#include <ctime>
#include <mutex>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace framepipe {
namespace {
std::atomic<LogFormat> g_format{LogFormat::kText};
std::atomic<bool> g_enabled{true};
std::mutex g_mu;

std::string JsonEscape(const std::string& s) {
  std::string out;
  for (char c : s) {
    switch (c) {
      case '"':
        out += "\\\"";
        break;
      case '\\':
        out += "\\\\";
        break;
      case '\n':
        out += "\\n";
        break;
      default:
        if (static_cast<unsigned char>(c) < 0x20) {
          out += absl::StrFormat("\\u%04x", static_cast<unsigned char>(c));
        } else {
          out += c;
        }
    }
  }
  return out;
}

std::string Timestamp() {
  auto now = std::chrono::system_clock::now();
  std::time_t t = std::chrono::system_clock::to_time_t(now);
  auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(now.time_since_epoch()) % 1000;
  std::tm tm;
  gmtime_r(&t, &tm);
  char buf[32];
  std::strftime(buf, sizeof(buf), "%Y-%m-%dT%H:%M:%S", &tm);
  return absl::StrFormat("%s.%03dZ", buf, static_cast<int>(ms.count()));
}
}  // namespace

void SetLogFormat(LogFormat format) { g_format = format; }
LogFormat GetLogFormat() { return g_format; }
void SetLogEnabled(bool enabled) { g_enabled = enabled; }

LogLine::LogLine(const char* event) {
  fields_.push_back({"ts", Timestamp(), true});
  fields_.push_back({"event", event, true});
}

LogLine& LogLine::Add(const char* key, const std::string& value) {
  fields_.push_back({key, value, true});
  return *this;
}
LogLine& LogLine::Add(const char* key, double value) {
  fields_.push_back({key, absl::StrFormat("%.6g", value), false});
  return *this;
}
LogLine& LogLine::Add(const char* key, int64_t value) {
  fields_.push_back({key, absl::StrCat(value), false});
  return *this;
}
LogLine& LogLine::Add(const char* key, uint64_t value) {
  fields_.push_back({key, absl::StrCat(value), false});
  return *this;
}
LogLine& LogLine::Add(const char* key, bool value) {
  fields_.push_back({key, value ? "true" : "false", false});
  return *this;
}

void LogLine::Emit() {
  if (!g_enabled) return;
  std::string line;
  if (g_format == LogFormat::kJson) {
    line = "{";
    for (size_t i = 0; i < fields_.size(); ++i) {
      const Field& f = fields_[i];
      absl::StrAppend(&line, i ? "," : "", "\"", f.key,
                      "\":", f.quoted ? absl::StrCat("\"", JsonEscape(f.value), "\"") : f.value);
    }
    line += "}\n";
  } else {
    for (size_t i = 0; i < fields_.size(); ++i) {
      const Field& f = fields_[i];
      const bool needs_quotes =
          f.value.empty() || f.value.find_first_of(" \"=") != std::string::npos;
      absl::StrAppend(&line, i ? " " : "", f.key, "=",
                      needs_quotes ? absl::StrCat("\"", JsonEscape(f.value), "\"") : f.value);
    }
    line += "\n";
  }
  std::lock_guard<std::mutex> l(g_mu);
  std::fputs(line.c_str(), stderr);
  std::fflush(stderr);
}

}  // namespace framepipe
