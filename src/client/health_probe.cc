#include "client/health_probe.h"

#include <chrono>

#include "absl/strings/str_cat.h"
#include "common/status.h"
#include "grpcpp/generic/generic_stub.h"
#include "grpcpp/grpcpp.h"

namespace framepipe {
namespace {

// grpc.health.v1 messages are tiny; encode them by hand so no extra generated code is needed.
// HealthCheckRequest { string service = 1; }  HealthCheckResponse { ServingStatus status = 1; }
std::string EncodeRequest(const std::string& service) {
  std::string out;
  if (!service.empty()) {
    out.push_back(0x0A);
    size_t n = service.size();
    while (n >= 0x80) {
      out.push_back(static_cast<char>((n & 0x7F) | 0x80));
      n >>= 7;
    }
    out.push_back(static_cast<char>(n));
    out += service;
  }
  return out;
}

int DecodeStatus(const std::string& bytes) {
  // Field 1, varint: 0x08 <status>. Empty message = UNKNOWN (0).
  if (bytes.size() >= 2 && bytes[0] == 0x08) return static_cast<unsigned char>(bytes[1]);
  return 0;
}

}  // namespace

absl::Status CheckHealth(const std::string& target, const std::string& service, double timeout_s,
                         const ClientSecurityOptions& security) {
  FP_ASSIGN_OR_RETURN(const ClientCredentials creds, MakeClientCredentials(security));
  grpc::ChannelArguments args;
  if (!creds.server_name_override.empty()) {
    args.SetSslTargetNameOverride(creds.server_name_override);
  }
  auto channel = grpc::CreateCustomChannel(target, creds.channel, args);
  grpc::GenericStub stub(channel);
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() +
                   std::chrono::milliseconds(static_cast<int64_t>(timeout_s * 1000)));
  const std::string req = EncodeRequest(service);
  grpc::Slice slice(req);
  grpc::ByteBuffer request(&slice, 1);
  grpc::ByteBuffer response;
  grpc::Status status;
  // Completion-queue API: the call completes on this thread (no callback thread involved).
  grpc::CompletionQueue cq;
  auto call = stub.PrepareUnaryCall(&ctx, "/grpc.health.v1.Health/Check", request, &cq);
  call->StartCall();
  call->Finish(&response, &status, reinterpret_cast<void*>(1));
  void* tag = nullptr;
  bool ok = false;
  if (!cq.Next(&tag, &ok) || !ok) status = grpc::Status(grpc::StatusCode::UNKNOWN, "no reply");
  cq.Shutdown();
  while (cq.Next(&tag, &ok)) {
  }
  if (!status.ok()) {
    return absl::UnavailableError(absl::StrCat("health check of ", target,
                                               " failed: ", status.error_message(), " (code ",
                                               static_cast<int>(status.error_code()), ")"));
  }
  std::vector<grpc::Slice> slices;
  (void)response.Dump(&slices);
  std::string bytes;
  for (auto& s : slices) bytes.append(reinterpret_cast<const char*>(s.begin()), s.size());
  const int st = DecodeStatus(bytes);
  if (st != 1) {
    static const char* kNames[] = {"UNKNOWN", "SERVING", "NOT_SERVING", "SERVICE_UNKNOWN"};
    return absl::UnavailableError(absl::StrCat(target, " is ", st < 4 ? kNames[st] : "UNKNOWN"));
  }
  return absl::OkStatus();
}

}  // namespace framepipe
