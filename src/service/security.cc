#include "service/security.h"

#include <fstream>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "common/status.h"
#include "grpcpp/security/auth_metadata_processor.h"

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
    auto it = md.find("authorization");
    if (it == md.end()) {
      return grpc::Status(grpc::StatusCode::UNAUTHENTICATED,
                          "missing credentials: send \"authorization: Bearer <token>\"");
    }
    const std::string value(it->second.data(), it->second.size());
    constexpr char kPrefix[] = "Bearer ";
    const std::string token = value.rfind(kPrefix, 0) == 0 ? value.substr(sizeof(kPrefix) - 1) : "";
    bool ok = false;
    for (const auto& t : tokens_) ok |= ConstantTimeEquals(token, t);  // no early exit
    if (!ok) return grpc::Status(grpc::StatusCode::UNAUTHENTICATED, "invalid bearer token");
    consumed->insert({"authorization", value});  // the application never sees the token
    return grpc::Status::OK;
  }

 private:
  std::vector<std::string> tokens_;
};

}  // namespace

absl::StatusOr<std::vector<std::string>> ReadAuthTokens(const std::string& path) {
  auto text = ReadFile(path, "auth token file");
  if (!text.ok()) return text.status();
  std::vector<std::string> tokens;
  for (absl::string_view line : absl::StrSplit(*text, '\n')) {
    line = absl::StripAsciiWhitespace(line);
    if (!line.empty() && line[0] != '#') tokens.emplace_back(line);
  }
  if (tokens.empty()) {
    return absl::InvalidArgumentError(absl::StrCat("auth token file ", path, " has no token"));
  }
  for (const auto& t : tokens) {
    if (t.size() < 16) {
      return absl::InvalidArgumentError(
          absl::StrCat("auth token file ", path, ": tokens must be at least 16 characters"));
    }
  }
  return tokens;
}

bool ConstantTimeEquals(const std::string& a, const std::string& b) {
  const size_t n = std::max(a.size(), b.size());
  unsigned char diff = static_cast<unsigned char>(a.size() != b.size());
  for (size_t i = 0; i < n; ++i) {
    const unsigned char x = i < a.size() ? static_cast<unsigned char>(a[i]) : 0;
    const unsigned char y = i < b.size() ? static_cast<unsigned char>(b[i]) : 0;
    diff |= static_cast<unsigned char>(x ^ y);
  }
  return diff == 0;
}

absl::StatusOr<std::string> ReadFile(const std::string& path, const char* what) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::InvalidArgumentError(absl::StrCat("cannot read ", what, " ", path));
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

absl::Status ValidateServerSecurity(const ServerSecurityOptions& o) {
  const bool tls = !o.tls_cert.empty() || !o.tls_key.empty();
  if (!tls) {
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
  FP_RETURN_IF_ERROR(ReadFile(o.tls_cert, "TLS certificate").status());
  FP_RETURN_IF_ERROR(ReadFile(o.tls_key, "TLS key").status());
  if (!o.tls_client_ca.empty()) FP_RETURN_IF_ERROR(ReadFile(o.tls_client_ca, "client CA").status());
  if (!o.auth_token_file.empty()) FP_RETURN_IF_ERROR(ReadAuthTokens(o.auth_token_file).status());
  return absl::OkStatus();
}

absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> MakeServerCredentials(
    const ServerSecurityOptions& o) {
  const bool tls = !o.tls_cert.empty() || !o.tls_key.empty();
  if (!tls) {
    if (!o.tls_client_ca.empty()) {
      return absl::InvalidArgumentError("--tls-client-ca needs --tls-cert and --tls-key");
    }
    if (!o.auth_token_file.empty()) {
      return absl::InvalidArgumentError(
          "--auth-token-file needs TLS (--tls-cert, --tls-key): bearer tokens must not travel "
          "in plaintext");
    }
    return grpc::InsecureServerCredentials();
  }
  if (o.tls_cert.empty() || o.tls_key.empty()) {
    return absl::InvalidArgumentError("TLS needs both --tls-cert and --tls-key");
  }
  auto cert = ReadFile(o.tls_cert, "TLS certificate");
  if (!cert.ok()) return cert.status();
  auto key = ReadFile(o.tls_key, "TLS key");
  if (!key.ok()) return key.status();
  grpc::SslServerCredentialsOptions ssl(GRPC_SSL_DONT_REQUEST_CLIENT_CERTIFICATE);
  ssl.pem_key_cert_pairs.push_back({*key, *cert});
  if (!o.tls_client_ca.empty()) {
    auto ca = ReadFile(o.tls_client_ca, "client CA");
    if (!ca.ok()) return ca.status();
    ssl.pem_root_certs = *ca;
    ssl.client_certificate_request = GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY;
  }
  std::shared_ptr<grpc::ServerCredentials> creds = grpc::SslServerCredentials(ssl);
  if (!o.auth_token_file.empty()) {
    auto tokens = ReadAuthTokens(o.auth_token_file);
    if (!tokens.ok()) return tokens.status();
    creds->SetAuthMetadataProcessor(
        std::make_shared<TokenAuthProcessor>(std::move(tokens).value()));
  }
  return creds;
}

absl::StatusOr<ClientCredentials> MakeClientCredentials(const ClientSecurityOptions& o) {
  ClientCredentials out;
  if (o.tls_ca.empty()) {
    if (!o.tls_cert.empty() || !o.tls_key.empty() || !o.auth_token_file.empty()) {
      return absl::InvalidArgumentError(
          "--tls-cert, --tls-key and --auth-token-file need TLS (--tls-ca)");
    }
    out.channel = grpc::InsecureChannelCredentials();
    return out;
  }
  grpc::SslCredentialsOptions ssl;
  auto ca = ReadFile(o.tls_ca, "TLS CA");
  if (!ca.ok()) return ca.status();
  ssl.pem_root_certs = *ca;
  if (!o.tls_cert.empty() || !o.tls_key.empty()) {
    if (o.tls_cert.empty() || o.tls_key.empty()) {
      return absl::InvalidArgumentError("a client certificate needs both --tls-cert and --tls-key");
    }
    auto cert = ReadFile(o.tls_cert, "client certificate");
    if (!cert.ok()) return cert.status();
    auto key = ReadFile(o.tls_key, "client key");
    if (!key.ok()) return key.status();
    ssl.pem_cert_chain = *cert;
    ssl.pem_private_key = *key;
  }
  out.channel = grpc::SslCredentials(ssl);
  if (!o.auth_token_file.empty()) {
    auto tokens = ReadAuthTokens(o.auth_token_file);
    if (!tokens.ok()) return tokens.status();
    out.channel = grpc::CompositeChannelCredentials(out.channel,
                                                    grpc::AccessTokenCredentials(tokens->front()));
  }
  out.server_name_override = o.tls_server_name;
  return out;
}

}  // namespace framepipe
