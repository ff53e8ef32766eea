// framepipe: one binary - `serve` (the service), `stream` (the client), `health` (a gRPC
// health probe for containers and Kubernetes) and `bench` (the benchmark suite).
#include "CLI/CLI.hpp"
#include "absl/synchronization/mutex.h"
#include "cli/commands.h"
#include "common/clock.h"

int main(int argc, char** argv) {
  using namespace framepipe;
  // Debian builds Abseil without NDEBUG, which leaves absl::Mutex's debug-only deadlock detector
  // on: every lock taken while holding another (gRPC's internals, all the time) goes through a
  // process-wide graph under a global lock, ~6x the cost of the lock pair, and a lock-order cycle
  // it believes it saw aborts the process. Abseil's release builds run without it; so do we.
  absl::SetMutexDeadlockDetectionMode(absl::OnDeadlockCycle::kIgnore);
  PrimeProcessClocks();
  CLI::App app{"framepipe: ordered, bounded analysis of live video frames over gRPC"};
  app.set_version_flag("--version", "framepipe " FRAMEPIPE_VERSION);
  app.require_subcommand(1);
  CommandRun run;
  AddServeCommand(app, &run);
  AddStreamCommand(app, &run);
  AddHealthCommand(app, &run);
#ifdef FRAMEPIPE_WITH_BENCH
  AddBenchCommand(app, &run);
#endif
  CLI11_PARSE(app, argc, argv);
  return run();
}
