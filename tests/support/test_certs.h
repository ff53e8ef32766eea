// Throwaway certificates for tests, made with the openssl command at test time: a CA, a server
// certificate for localhost/127.0.0.1, a client certificate, and a second CA with a client of its
// own (for the "wrong CA" cases).
#pragma once

#include <cstdlib>
#include <filesystem>
#include <string>

namespace framepipe::testing {

struct TestCerts {
  std::string dir, ca, server_cert, server_key, client_cert, client_key, other_client_cert,
      other_client_key, token_file, wrong_token_file;
  bool ok = false;
};

inline TestCerts MakeTestCerts() {
  TestCerts c;
  char tmpl[] = "/tmp/framepipe-certs-XXXXXX";
  if (!mkdtemp(tmpl)) return c;
  c.dir = tmpl;
  const std::string d = c.dir;
  const std::string script =
      "set -e; cd " + d +
      "; exec >log.txt 2>&1\n"
      "key() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:prime256v1 -out $1; }\n"
      "ca() { key $1.key; openssl req -x509 -new -key $1.key -out $1.pem -days 2 -subj \"/CN=$1\"; "
      "}\n"
      "leaf() {  # name ca ext\n"
      "  key $1.key; openssl req -new -key $1.key -out $1.csr -subj \"/CN=$1\"\n"
      "  printf '%s\\n' \"$3\" > $1.ext\n"
      "  openssl x509 -req -in $1.csr -CA $2.pem -CAkey $2.key -CAcreateserial -out $1.pem \\\n"
      "    -days 2 -extfile $1.ext; }\n"
      "ca ca; ca otherca\n"
      "leaf server ca 'subjectAltName=DNS:localhost,IP:127.0.0.1'\n"
      "leaf client ca 'extendedKeyUsage=clientAuth'\n"
      "leaf otherclient otherca 'extendedKeyUsage=clientAuth'\n"
      "echo 'framepipe-test-token-0123456789abcdef' > tokens.txt\n"
      "echo 'framepipe-wrong-token-0123456789abcde' > wrong.txt\n";
  const std::string cmd = "bash -c '" + [&] {
    std::string q;
    for (char ch : script) q += ch == '\'' ? std::string("'\\''") : std::string(1, ch);
    return q;
  }() + "'";
  if (std::system(cmd.c_str()) != 0) return c;
  c.ca = d + "/ca.pem";
  c.server_cert = d + "/server.pem";
  c.server_key = d + "/server.key";
  c.client_cert = d + "/client.pem";
  c.client_key = d + "/client.key";
  c.other_client_cert = d + "/otherclient.pem";
  c.other_client_key = d + "/otherclient.key";
  c.token_file = d + "/tokens.txt";
  c.wrong_token_file = d + "/wrong.txt";
  c.ok = true;
  return c;
}

inline void RemoveTestCerts(const TestCerts& c) {
  if (!c.dir.empty()) std::filesystem::remove_all(c.dir);
}

}  // namespace framepipe::testing
