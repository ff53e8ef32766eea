#include "bench/bench_report.h"

#include <algorithm>
#include <cmath>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace framepipe::bench {
namespace {

std::string Json(const std::string& s) {
  std::string out = "\"";
  for (char c : s) {
    if (c == '"' || c == '\\') out += '\\';
    out += c;
  }
  return out + "\"";
}

std::string Num(double v) {
  if (!std::isfinite(v)) return "null";
  return absl::StrFormat("%.6g", v);
}

}  // namespace

void Report::Add(const std::string& section, const std::string& name, double value,
                 const std::string& unit) {
  figures_.push_back({section, name, value, unit});
}

void Report::AddTarget(Target t) { targets_.push_back(std::move(t)); }

void Report::AddLatencies(const std::string& series, std::vector<double> ms) {
  latencies_.emplace_back(series, std::move(ms));
}

double Report::Get(const std::string& section, const std::string& name) const {
  for (const auto& f : figures_) {
    if (f.section == section && f.name == name) return f.value;
  }
  return 0;
}

std::string Report::Table() const {
  std::string out;
  std::string section;
  for (const auto& f : figures_) {
    if (f.section != section) {
      section = f.section;
      absl::StrAppend(&out, "\n", section, "\n");
    }
    if (f.unit.empty()) {  // a note, not a figure
      absl::StrAppend(&out, "  ", f.name, "\n");
    } else {
      absl::StrAppend(&out, absl::StrFormat("  %-62s %12.2f %s\n", f.name, f.value, f.unit));
    }
  }
  if (!targets_.empty()) {
    absl::StrAppend(&out, "\nTargets (measured / target)\n");
    for (const auto& t : targets_) {
      absl::StrAppend(
          &out, absl::StrFormat("  %-11s %-58s %8.3f / %s%.3f\n", t.pass() ? "PASS" : "FALL SHORT",
                                t.name, t.measured, t.at_most ? "<= " : ">= ", t.target));
      if (!t.detail.empty()) absl::StrAppend(&out, "              ", t.detail, "\n");
    }
  }
  return out;
}

std::string Report::Json(const std::string& machine) const {
  std::string out = absl::StrCat("{\"machine\":", bench::Json(machine), ",\"figures\":[");
  for (size_t i = 0; i < figures_.size(); ++i) {
    const auto& f = figures_[i];
    absl::StrAppend(&out, i ? "," : "", "{\"section\":", bench::Json(f.section),
                    ",\"name\":", bench::Json(f.name), ",\"value\":", Num(f.value),
                    ",\"unit\":", bench::Json(f.unit), "}");
  }
  absl::StrAppend(&out, "],\"targets\":[");
  for (size_t i = 0; i < targets_.size(); ++i) {
    const auto& t = targets_[i];
    absl::StrAppend(
        &out, i ? "," : "", "{\"name\":", bench::Json(t.name), ",\"measured\":", Num(t.measured),
        ",\"target\":", Num(t.target), ",\"at_most\":", t.at_most ? "true" : "false",
        ",\"pass\":", t.pass() ? "true" : "false", ",\"detail\":", bench::Json(t.detail), "}");
  }
  absl::StrAppend(&out, "],\"latencies_ms\":{");
  for (size_t i = 0; i < latencies_.size(); ++i) {
    absl::StrAppend(&out, i ? "," : "", bench::Json(latencies_[i].first), ":[");
    const auto& v = latencies_[i].second;
    for (size_t k = 0; k < v.size(); ++k) absl::StrAppend(&out, k ? "," : "", Num(v[k]));
    absl::StrAppend(&out, "]");
  }
  absl::StrAppend(&out, "}}\n");
  return out;
}

}  // namespace framepipe::bench
