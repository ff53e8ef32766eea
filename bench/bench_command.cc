// `framepipe bench`: the subcommand that runs the benchmark suite. It lives here, with the suite,
// so that the command line (src/cli) depends on the bench and never the reverse; src/cli/
// commands.h declares AddBenchCommand.
#include <unistd.h>

#include <memory>

#include "CLI/CLI.hpp"
#include "bench/bench.h"

namespace framepipe {

void AddBenchCommand(CLI::App& app, std::function<int()>* run) {
  auto o = std::make_shared<bench::BenchOptions>();
  CLI::App* cmd = app.add_subcommand(
      "bench", "Benchmark suite: ceilings, pipeline, graph overhead, gRPC end to end, peers");
  cmd->add_flag("--quick", o->quick, "Shorter runs, main frame size only (< 2 minutes)");
  cmd->add_option("--json", o->json_path, "Write the results as JSON");
  cmd->add_option("--plot", o->plot_dir, "Write PNG plots into this directory");
  cmd->add_option("--workers", o->workers, "Workers / threads (0 = hardware threads)");
  cmd->add_option(
      "--only", o->only,
      "Only sections whose name contains this: in-process, overhead, temporal, metrics, "
      "latency, grpc, limits, video, slow, gpu");
  cmd->add_option("--video", o->video,
                  "H.264/HEVC file for the compressed-video section (default: a synthetic 720p "
                  "clip encoded here with libx264)");
  cmd->add_option("--python", o->python, "Interpreter for the Python peer")->capture_default_str();
  cmd->callback([run, o] {
    *run = [o] {
      char self[4096];
      const ssize_t n = readlink("/proc/self/exe", self, sizeof(self) - 1);
      o->self_binary = n > 0 ? std::string(self, static_cast<size_t>(n)) : "framepipe";
      return bench::RunBench(*o);
    };
  });
}

}  // namespace framepipe
