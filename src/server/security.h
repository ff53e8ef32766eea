// The server's transport security and authentication: TLS, mutual TLS and bearer tokens. Keys,
// certificates and tokens are read from files at start-up; every problem is a clear start-up
// error. (TLS ends in the front door by default; these credentials serve --guard off.)
#pragma once

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "grpcpp/security/server_credentials.h"
#include "grpcpp/support/server_interceptor.h"
#include "grpcpp/support/string_ref.h"

namespace framepipe {

struct ServerSecurityOptions {
  std::string tls_cert;         // PEM certificate chain; TLS on when set (with tls_key)
  std::string tls_key;          // PEM private key
  std::string tls_client_ca;    // PEM CA bundle: require and verify client certificates (mTLS)
  std::string auth_token_file;  // bearer tokens, one per line: calls must carry one of them
};

absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> MakeServerCredentials(
    const ServerSecurityOptions& options);

// Checks what MakeServerCredentials would, without building gRPC credentials: TLS needs both
// cert and key, mTLS and tokens need TLS, and every file is readable.
absl::Status ValidateServerSecurity(const ServerSecurityOptions& options);

// A call's "authorization: Bearer <token>" against the accepted tokens: OK, or UNAUTHENTICATED
// saying what is missing. The one check behind gRPC's auth processor (--guard off), the service's
// own methods and the interceptor guarding the rest (TLS in the front door).
// With TLS ending in the front door, gRPC sees plaintext and cannot run an auth processor: the
// service checks tokens on its own methods, and this interceptor covers the others (reflection)
// by cancelling an unauthenticated call at its headers. Health stays exempt.
std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface> MakeTokenGate(
    std::vector<std::string> tokens);

absl::Status CheckBearerToken(const std::multimap<grpc::string_ref, grpc::string_ref>& metadata,
                              const std::vector<std::string>& tokens);

}  // namespace framepipe
