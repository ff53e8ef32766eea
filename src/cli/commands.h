// framepipe's subcommands. Each adds itself and its flags to the app and sets `run`, which main
// calls if that subcommand was given. serve, stream and health live here, one file each; bench
// lives with the benchmark suite (bench/bench_command.cc) and is linked in when the suite is built
// - the command line depends on the bench, never the reverse.
#pragma once

#include <functional>

namespace CLI {
class App;
}

namespace framepipe {

using CommandRun = std::function<int()>;

void AddServeCommand(CLI::App& app, CommandRun* run);
void AddStreamCommand(CLI::App& app, CommandRun* run);
void AddHealthCommand(CLI::App& app, CommandRun* run);
void AddBenchCommand(CLI::App& app, CommandRun* run);  // bench/bench_command.cc

}  // namespace framepipe
