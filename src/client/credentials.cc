#include "client/credentials.h"

#include "common/secrets.h"

namespace framepipe {

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
