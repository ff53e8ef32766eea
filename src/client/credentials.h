// The client's side of transport security: TLS (server verified against given roots), mutual TLS
// (a client certificate) and a bearer token sent with every call. Files are read once; every
// problem is a clear error before anything is sent.
#pragma once

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "grpcpp/security/credentials.h"

namespace framepipe {

struct ClientSecurityOptions {
  std::string tls_ca;           // PEM roots to verify the server; TLS on when set
  std::string tls_cert;         // client certificate (mTLS)
  std::string tls_key;          // client key (mTLS)
  std::string auth_token_file;  // first line is sent as "authorization: Bearer <token>"
  std::string tls_server_name;  // override the name checked in the server certificate
};

struct ClientCredentials {
  std::shared_ptr<grpc::ChannelCredentials> channel;
  std::string server_name_override;  // set as GRPC_SSL_TARGET_NAME_OVERRIDE_ARG when not empty
};
absl::StatusOr<ClientCredentials> MakeClientCredentials(const ClientSecurityOptions& options);

}  // namespace framepipe
