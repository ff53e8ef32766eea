// `framepipe bench`: the benchmark suite. Every figure is measured in the same run, and every
// target is a ratio between two of them (absolute times drift on shared machines). Prints a
// table with a PASS / FALL SHORT line per target; --json and --plot write machine-readable
// results and PNG plots (scripts/plot_bench.py).
#pragma once

#include <string>

namespace framepipe::bench {

struct BenchOptions {
  bool quick = false;       // < 2 minutes; the full run < 15
  std::string json_path;    // write results as JSON
  std::string plot_dir;     // write PNG plots there
  int workers = 0;          // 0 = hardware threads
  std::string only;         // run only sections whose name contains this
  std::string self_binary;  // path of the framepipe binary (for server child processes)
  std::string python = "/usr/bin/python3";
  std::string video;  // H.264/HEVC file for the video section ("" = a synthetic 720p clip)
};

int RunBench(const BenchOptions& options);

}  // namespace framepipe::bench
