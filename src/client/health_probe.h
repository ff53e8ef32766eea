// A grpc.health.v1 client: `framepipe health` (container HEALTHCHECK, Kubernetes probes).
#pragma once

#include <string>

#include "absl/status/status.h"
#include "client/credentials.h"

namespace framepipe {

// OK if `target` answers SERVING for `service` ("" = the whole server) within `timeout_s`.
absl::Status CheckHealth(const std::string& target, const std::string& service, double timeout_s,
                         const ClientSecurityOptions& security = {});

}  // namespace framepipe
