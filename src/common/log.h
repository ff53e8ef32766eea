// Structured logging: one line per event (stream open/close, server lifecycle), never per frame.
// Text ("ts=... event=stream_closed id=cam1 frames=300 ...") or JSON lines, chosen once at
// start-up with --log-format. Thread-safe.
#pragma once

#include <string>
#include <utility>
#include <vector>

namespace framepipe {

enum class LogFormat { kText, kJson };

class LogLine {
 public:
  explicit LogLine(const char* event);
  LogLine& Add(const char* key, const std::string& value);
  LogLine& Add(const char* key, const char* value) { return Add(key, std::string(value)); }
  LogLine& Add(const char* key, double value);
  LogLine& Add(const char* key, int64_t value);
  LogLine& Add(const char* key, uint64_t value);
  LogLine& Add(const char* key, int value) { return Add(key, static_cast<int64_t>(value)); }
  LogLine& Add(const char* key, uint32_t value) { return Add(key, static_cast<uint64_t>(value)); }
  LogLine& Add(const char* key, bool value);
  // Writes the line to stderr.
  void Emit();

 private:
  struct Field {
    std::string key;
    std::string value;
    bool quoted;
  };
  std::vector<Field> fields_;
};

void SetLogFormat(LogFormat format);
LogFormat GetLogFormat();
// Silences logging (tests that start many servers).
void SetLogEnabled(bool enabled);

}  // namespace framepipe
