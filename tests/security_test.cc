// TLS, mutual TLS and bearer-token authentication against a real server, with certificates
// generated at test time.
#include <gtest/gtest.h>

#include "client/health_probe.h"
#include "client/stream_client.h"
#include "common/secrets.h"
#include "server/security.h"
#include "test_certs.h"
#include "test_server.h"

namespace framepipe {
namespace {

using namespace framepipe::testing;  // NOLINT

class SecurityTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() { certs_ = new TestCerts(MakeTestCerts()); }
  static void TearDownTestSuite() {
    RemoveTestCerts(*certs_);
    delete certs_;
  }
  void SetUp() override { ASSERT_TRUE(certs_->ok) << "openssl could not make test certificates"; }

  // Streams 3 frames with the given client security; the client's report.
  ClientReport Stream(const Server& s, ClientSecurityOptions sec) {
    StreamClientOptions o;
    o.target = "localhost:" + std::to_string(s.port());
    o.frames = 3;
    o.width = 160;
    o.height = 120;
    o.distinct_frames = 2;
    o.rpc_timeout_s = 20;
    o.security = std::move(sec);
    auto r = RunStreamClient(o);
    EXPECT_TRUE(r.ok()) << r.status();
    return r.ok() ? *r : ClientReport{};
  }
  static std::string Status(const ClientReport& r) {
    return r.streams.empty() ? "" : r.streams[0].rpc_status;
  }

  static TestCerts* certs_;
};
TestCerts* SecurityTest::certs_ = nullptr;

TEST_F(SecurityTest, TlsWorksAndPlaintextToATlsServerFails) {
  ServerOptions o;
  o.security.tls_cert = certs_->server_cert;
  o.security.tls_key = certs_->server_key;
  auto server = StartTestServer(o);
  ASSERT_TRUE(server);
  ClientSecurityOptions tls;
  tls.tls_ca = certs_->ca;
  ClientReport r = Stream(*server, tls);
  EXPECT_TRUE(r.ok()) << Status(r);
  ClientReport plain = Stream(*server, {});
  EXPECT_FALSE(plain.ok());
  EXPECT_NE(Status(plain).find("UNAVAILABLE"), std::string::npos) << Status(plain);
  // A client trusting another CA refuses the server.
  ClientSecurityOptions wrong_ca;
  wrong_ca.tls_ca = certs_->dir + "/otherca.pem";
  EXPECT_FALSE(Stream(*server, wrong_ca).ok());
}

TEST_F(SecurityTest, MutualTlsRejectsClientsWithoutAValidCertificate) {
  ServerOptions o;
  o.security.tls_cert = certs_->server_cert;
  o.security.tls_key = certs_->server_key;
  o.security.tls_client_ca = certs_->ca;
  auto server = StartTestServer(o);
  ASSERT_TRUE(server);
  ClientSecurityOptions good;
  good.tls_ca = certs_->ca;
  good.tls_cert = certs_->client_cert;
  good.tls_key = certs_->client_key;
  ClientReport ok = Stream(*server, good);
  EXPECT_TRUE(ok.ok()) << Status(ok);
  ClientSecurityOptions no_cert;
  no_cert.tls_ca = certs_->ca;
  EXPECT_FALSE(Stream(*server, no_cert).ok());
  ClientSecurityOptions other_ca = good;
  other_ca.tls_cert = certs_->other_client_cert;
  other_ca.tls_key = certs_->other_client_key;
  EXPECT_FALSE(Stream(*server, other_ca).ok());
}

TEST_F(SecurityTest, BearerTokensAndUnauthenticatedHealth) {
  ServerOptions o;
  o.security.tls_cert = certs_->server_cert;
  o.security.tls_key = certs_->server_key;
  o.security.auth_token_file = certs_->token_file;
  o.metrics = "0.0.0.0:0";
  o.health_listen = "127.0.0.1:0";
  auto server = StartTestServer(o);
  ASSERT_TRUE(server);
  ClientSecurityOptions tls;
  tls.tls_ca = certs_->ca;
  ClientReport missing = Stream(*server, tls);
  EXPECT_NE(Status(missing).find("UNAUTHENTICATED"), std::string::npos) << Status(missing);
  EXPECT_NE(Status(missing).find("missing credentials"), std::string::npos) << Status(missing);
  ClientSecurityOptions wrong = tls;
  wrong.auth_token_file = certs_->wrong_token_file;
  ClientReport bad = Stream(*server, wrong);
  EXPECT_NE(Status(bad).find("UNAUTHENTICATED: invalid bearer token"), std::string::npos)
      << Status(bad);
  ClientSecurityOptions right = tls;
  right.auth_token_file = certs_->token_file;
  ClientReport good = Stream(*server, right);
  EXPECT_TRUE(good.ok()) << Status(good);
  // Health: on the main port over TLS without a token, and on the plaintext health port.
  ClientSecurityOptions health_tls;
  health_tls.tls_ca = certs_->ca;
  EXPECT_TRUE(CheckHealth("localhost:" + std::to_string(server->port()), "", 10, health_tls).ok());
  EXPECT_TRUE(CheckHealth("127.0.0.1:" + std::to_string(server->health_port()), "", 10).ok());
  // With auth on, a 0.0.0.0 metrics address is narrowed to loopback.
  EXPECT_EQ(server->metrics_address().rfind("127.0.0.1:", 0), 0u) << server->metrics_address();
}

TEST_F(SecurityTest, MisconfigurationIsAClearStartupError) {
  ServerOptions o;
  o.listen = "127.0.0.1:0";
  o.metrics = "";
  o.backend = "cpu";
  o.security.auth_token_file = certs_->token_file;  // no TLS
  auto s = Server::Start(o);
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.status().message().find("needs TLS"), std::string::npos) << s.status();
  o.security = {};
  o.security.tls_cert = certs_->server_cert;  // no key
  s = Server::Start(o);
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.status().message().find("--tls-key"), std::string::npos) << s.status();
  o.security.tls_key = certs_->dir + "/does-not-exist.key";
  s = Server::Start(o);
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.status().message().find("cannot read TLS key"), std::string::npos) << s.status();
  EXPECT_TRUE(ConstantTimeEquals("abc", "abc"));
  EXPECT_FALSE(ConstantTimeEquals("abc", "abd"));
  EXPECT_FALSE(ConstantTimeEquals("abc", "abcd"));
  EXPECT_FALSE(ConstantTimeEquals("", "a"));
}

}  // namespace
}  // namespace framepipe
