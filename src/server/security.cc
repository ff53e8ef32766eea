#include "server/security.h"

#include "absl/strings/str_cat.h"
#include "common/secrets.h"
#include "common/status.h"
#include "grpcpp/security/auth_metadata_processor.h"
#include "grpcpp/server_context.h"
#include "grpcpp/support/server_interceptor.h"

namespace framepipe {

namespace {

// Accepts calls whose "authorization" metadata is "Bearer <token>" for one of the configured
// tokens. The health service is exempt (load balancers and Kubernetes probe it without
// credentials; it reveals nothing but SERVING / NOT_SERVING).
class TokenAuthProcessor : public grpc::AuthMetadataProcessor {
 public:
  explicit TokenAuthProcessor(std::vector<std::string> tokens) : tokens_(std::move(tokens)) {}
  bool IsBlocking() const override { return false; }  // a few comparisons: run inline

  grpc::Status Process(const InputMetadata& md, grpc::AuthContext* /*context*/,
                       OutputMetadata* consumed, OutputMetadata* /*response*/) override {
    auto path = md.find(":path");
    if (path != md.end() &&
        std::string(path->second.data(), path->second.size()).rfind("/grpc.health.v1.Health/", 0) ==
            0) {
      return grpc::Status::OK;
    }
    absl::Status st = CheckBearerToken(md, tokens_);
    if (!st.ok()) return grpc::Status(grpc::StatusCode::UNAUTHENTICATED, std::string(st.message()));
    auto it = md.find("authorization");
    consumed->insert({"authorization", std::string(it->second.data(), it->second.size())});
    return grpc::Status::OK;  // the application never sees the token
  }

 private:
  std::vector<std::string> tokens_;
};

// Cancels an unauthenticated call at its headers, for the methods that do not check tokens
// themselves (reflection): health is exempt, framepipe's own methods answer UNAUTHENTICATED.
class TokenGate final : public grpc::experimental::Interceptor {
 public:
  TokenGate(grpc::experimental::ServerRpcInfo* info, const std::vector<std::string>* tokens)
      : info_(info), tokens_(tokens) {}
  void Intercept(grpc::experimental::InterceptorBatchMethods* methods) override {
    if (methods->QueryInterceptionHookPoint(
            grpc::experimental::InterceptionHookPoints::POST_RECV_INITIAL_METADATA)) {
      const std::string method = info_->method();
      const bool own_check = method.rfind("/grpc.health.v1.Health/", 0) == 0 ||
                             method.rfind("/framepipe.v1.FramePipeline/", 0) == 0;
      if (!own_check && !CheckBearerToken(*methods->GetRecvInitialMetadata(), *tokens_).ok()) {
        info_->server_context()->TryCancel();
      }
    }
    methods->Proceed();
  }

 private:
  grpc::experimental::ServerRpcInfo* info_;
  const std::vector<std::string>* tokens_;
};

class TokenGateFactory final : public grpc::experimental::ServerInterceptorFactoryInterface {
 public:
  explicit TokenGateFactory(std::vector<std::string> tokens) : tokens_(std::move(tokens)) {}
  grpc::experimental::Interceptor* CreateServerInterceptor(
      grpc::experimental::ServerRpcInfo* info) override {
    return new TokenGate(info, &tokens_);
  }

 private:
  std::vector<std::string> tokens_;
};

}  // namespace

std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface> MakeTokenGate(
    std::vector<std::string> tokens) {
  return std::make_unique<TokenGateFactory>(std::move(tokens));
}

absl::Status CheckBearerToken(const std::multimap<grpc::string_ref, grpc::string_ref>& metadata,
                              const std::vector<std::string>& tokens) {
  auto it = metadata.find("authorization");
  if (it == metadata.end()) {
    return absl::UnauthenticatedError(
        "missing credentials: send \"authorization: Bearer <token>\"");
  }
  const std::string value(it->second.data(), it->second.size());
  constexpr std::string_view kPrefix = "Bearer ";
  const std::string token =
      value.rfind(kPrefix, 0) == 0 ? value.substr(kPrefix.size()) : std::string();
  bool ok = false;
  for (const auto& t : tokens) ok |= ConstantTimeEquals(token, t);  // no early exit
  return ok ? absl::OkStatus() : absl::UnauthenticatedError("invalid bearer token");
}

namespace {

// Which security flags go together: TLS needs both a certificate and a key, and client CAs and
// tokens need TLS. No files are read.
absl::Status CheckSecurityFlags(const ServerSecurityOptions& o) {
  if (o.tls_cert.empty() && o.tls_key.empty()) {
    if (!o.tls_client_ca.empty()) {
      return absl::InvalidArgumentError("--tls-client-ca needs --tls-cert and --tls-key");
    }
    if (!o.auth_token_file.empty()) {
      return absl::InvalidArgumentError(
          "--auth-token-file needs TLS (--tls-cert, --tls-key): bearer tokens must not travel "
          "in plaintext");
    }
    return absl::OkStatus();
  }
  if (o.tls_cert.empty() || o.tls_key.empty()) {
    return absl::InvalidArgumentError("TLS needs both --tls-cert and --tls-key");
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status ValidateServerSecurity(const ServerSecurityOptions& o) {
  FP_RETURN_IF_ERROR(CheckSecurityFlags(o));
  if (o.tls_cert.empty()) return absl::OkStatus();  // plaintext
  FP_RETURN_IF_ERROR(ReadFile(o.tls_cert, "TLS certificate").status());
  FP_RETURN_IF_ERROR(ReadFile(o.tls_key, "TLS key").status());
  if (!o.tls_client_ca.empty()) FP_RETURN_IF_ERROR(ReadFile(o.tls_client_ca, "client CA").status());
  if (!o.auth_token_file.empty()) FP_RETURN_IF_ERROR(ReadAuthTokens(o.auth_token_file).status());
  return absl::OkStatus();
}

absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> MakeServerCredentials(
    const ServerSecurityOptions& o) {
  FP_RETURN_IF_ERROR(CheckSecurityFlags(o));
  if (o.tls_cert.empty()) return grpc::InsecureServerCredentials();  // plaintext
  FP_ASSIGN_OR_RETURN(std::string cert, ReadFile(o.tls_cert, "TLS certificate"));
  FP_ASSIGN_OR_RETURN(std::string key, ReadFile(o.tls_key, "TLS key"));
  grpc::SslServerCredentialsOptions ssl(GRPC_SSL_DONT_REQUEST_CLIENT_CERTIFICATE);
  ssl.pem_key_cert_pairs.push_back({key, cert});
  if (!o.tls_client_ca.empty()) {
    FP_ASSIGN_OR_RETURN(ssl.pem_root_certs, ReadFile(o.tls_client_ca, "client CA"));
    ssl.client_certificate_request = GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY;
  }
  std::shared_ptr<grpc::ServerCredentials> creds = grpc::SslServerCredentials(ssl);
  if (!o.auth_token_file.empty()) {
    FP_ASSIGN_OR_RETURN(std::vector<std::string> tokens, ReadAuthTokens(o.auth_token_file));
    creds->SetAuthMetadataProcessor(std::make_shared<TokenAuthProcessor>(std::move(tokens)));
  }
  return creds;
}

}  // namespace framepipe
