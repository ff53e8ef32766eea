// Transport security and authentication: TLS, mutual TLS and bearer tokens, for the server and
// the client. Keys, certificates and tokens are read from files at start-up; every problem is a
// clear start-up error.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "grpcpp/security/credentials.h"
#include "grpcpp/security/server_credentials.h"

namespace framepipe {

struct ServerSecurityOptions {
  std::string tls_cert;         // PEM certificate chain; TLS on when set (with tls_key)
  std::string tls_key;          // PEM private key
  std::string tls_client_ca;    // PEM CA bundle: require and verify client certificates (mTLS)
  std::string auth_token_file;  // bearer tokens, one per line: calls must carry one of them
};

struct ClientSecurityOptions {
  std::string tls_ca;           // PEM roots to verify the server; TLS on when set
  std::string tls_cert;         // client certificate (mTLS)
  std::string tls_key;          // client key (mTLS)
  std::string auth_token_file;  // first line is sent as "authorization: Bearer <token>"
  std::string tls_server_name;  // override the name checked in the server certificate
};

absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> MakeServerCredentials(
    const ServerSecurityOptions& options);

struct ClientCredentials {
  std::shared_ptr<grpc::ChannelCredentials> channel;
  std::string server_name_override;  // set as GRPC_SSL_TARGET_NAME_OVERRIDE_ARG when not empty
};
absl::StatusOr<ClientCredentials> MakeClientCredentials(const ClientSecurityOptions& options);

// The bearer tokens of an auth token file (one per line, '#' comments, at least 16 characters).
absl::StatusOr<std::vector<std::string>> ReadAuthTokens(const std::string& path);

// Checks what MakeServerCredentials would, without building gRPC credentials: TLS needs both
// cert and key, mTLS and tokens need TLS, and every file is readable.
absl::Status ValidateServerSecurity(const ServerSecurityOptions& options);

// Equal-length-independent, constant-time comparison of secrets.
bool ConstantTimeEquals(const std::string& a, const std::string& b);

// Reads a whole file; a clear error naming the file when it cannot.
absl::StatusOr<std::string> ReadFile(const std::string& path, const char* what);

}  // namespace framepipe
