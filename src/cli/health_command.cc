// `framepipe health`: exit 0 when the server's grpc.health.v1 status is SERVING (the containers'
// HEALTHCHECK and any probe that runs a command).
#include <cstdio>
#include <memory>

#include "CLI/CLI.hpp"
#include "cli/commands.h"
#include "cli/flags.h"
#include "client/health_probe.h"

namespace framepipe {
namespace {

struct HealthArgs {
  std::string target = "127.0.0.1:50051";
  std::string service;
  double timeout_s = 3;
  ClientSecurityOptions security;
};

int RunHealth(const HealthArgs& a) {
  auto st = CheckHealth(a.target, a.service, a.timeout_s, a.security);
  if (!st.ok()) {
    std::fprintf(stderr, "%s\n", std::string(st.message()).c_str());
    return 1;
  }
  std::printf("SERVING\n");
  return 0;
}

}  // namespace

void AddHealthCommand(CLI::App& app, CommandRun* run) {
  auto args = std::make_shared<HealthArgs>();
  CLI::App* cmd = app.add_subcommand(
      "health", "Exit 0 if the server's grpc.health.v1 status is SERVING (container probes)");
  cmd->add_option("--target", args->target, "Server address")->capture_default_str();
  cmd->add_option("--service", args->service, "Service name to check ('' = server)");
  cmd->add_option("--timeout", args->timeout_s, "Seconds to wait")->capture_default_str();
  AddClientSecurityFlags(cmd, &args->security, /*token=*/false);
  cmd->callback([run, args] { *run = [args] { return RunHealth(*args); }; });
}

}  // namespace framepipe
