// Benchmark results: named figures grouped by section, and targets checked as ratios measured
// in the same run. Printed as a table, written as JSON.
#pragma once

#include <string>
#include <vector>

namespace framepipe::bench {

struct Figure {
  std::string section;
  std::string name;
  double value = 0;
  std::string unit;  // "frames/s", "ms", "us/frame", "MiB", ...
};

struct Target {
  std::string name;
  double measured = 0;  // ratio or value
  double target = 0;
  bool at_most = false;  // true: measured <= target passes; false: measured >= target
  std::string detail;    // how it was measured
  bool pass() const { return at_most ? measured <= target : measured >= target; }
};

class Report {
 public:
  void Add(const std::string& section, const std::string& name, double value,
           const std::string& unit);
  void AddTarget(Target t);
  // The value of a figure added earlier (0 if missing).
  double Get(const std::string& section, const std::string& name) const;

  std::string Table() const;
  std::string Json(const std::string& machine) const;
  const std::vector<Figure>& figures() const { return figures_; }
  const std::vector<Target>& targets() const { return targets_; }
  // Latency samples for the CDF plots: series name -> milliseconds.
  void AddLatencies(const std::string& series, std::vector<double> ms);
  const std::vector<std::pair<std::string, std::vector<double>>>& latencies() const {
    return latencies_;
  }

 private:
  std::vector<Figure> figures_;
  std::vector<Target> targets_;
  std::vector<std::pair<std::string, std::vector<double>>> latencies_;
};

}  // namespace framepipe::bench
