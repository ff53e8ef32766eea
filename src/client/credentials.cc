#include "client/credentials.h"

#include "common/secrets.h"
#include "common/status.h"

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
  FP_ASSIGN_OR_RETURN(ssl.pem_root_certs, ReadFile(o.tls_ca, "TLS CA"));
  if (!o.tls_cert.empty() || !o.tls_key.empty()) {
    if (o.tls_cert.empty() || o.tls_key.empty()) {
      return absl::InvalidArgumentError("a client certificate needs both --tls-cert and --tls-key");
    }
    FP_ASSIGN_OR_RETURN(ssl.pem_cert_chain, ReadFile(o.tls_cert, "client certificate"));
    FP_ASSIGN_OR_RETURN(ssl.pem_private_key, ReadFile(o.tls_key, "client key"));
  }
  out.channel = grpc::SslCredentials(ssl);
  if (!o.auth_token_file.empty()) {
    FP_ASSIGN_OR_RETURN(std::vector<std::string> tokens, ReadAuthTokens(o.auth_token_file));
    out.channel = grpc::CompositeChannelCredentials(out.channel,
                                                    grpc::AccessTokenCredentials(tokens.front()));
  }
  out.server_name_override = o.tls_server_name;
  return out;
}

}  // namespace framepipe
