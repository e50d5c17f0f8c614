// The `listen` section's TLS and Unix socket settings, and clients' cert_subjects.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "config/config.hpp"
#include "tests/support/config_problems.hpp"

namespace sproxy::config {
namespace {

using nlohmann::json;
using ::testing::ElementsAre;

using test::problems_of;

TEST(ListenConfig, HasNoTlsAndNoUnixSocketByDefault) {
  const Config c = parse_config(json::object());
  EXPECT_TRUE(c.listen.tls.cert_file.empty());
  EXPECT_EQ(c.listen.tls.client_auth, ClientAuth::off);
  EXPECT_TRUE(c.listen.unix_socket.path.empty());
  EXPECT_EQ(c.listen.unix_socket.mode, 0660u);
}

TEST(ListenConfig, ReadsTlsWithClientCertificates) {
  const Config c = parse_config({{"listen",
                                  {{"tls",
                                    {{"cert_file", "/etc/sp/cert.pem"},
                                     {"key_file", "/etc/sp/key.pem"},
                                     {"client_ca_file", "/etc/sp/clients.pem"},
                                     {"client_auth", "required"}}}}}});
  EXPECT_EQ(c.listen.tls.cert_file, "/etc/sp/cert.pem");
  EXPECT_EQ(c.listen.tls.key_file, "/etc/sp/key.pem");
  EXPECT_EQ(c.listen.tls.client_ca_file, "/etc/sp/clients.pem");
  EXPECT_EQ(c.listen.tls.client_auth, ClientAuth::required);
}

TEST(ListenConfig, RejectsIncompleteOrInconsistentTls) {
  EXPECT_THAT(problems_of({{"listen", {{"tls", {{"cert_file", "c.pem"}}}}}}),
              ElementsAre("$.listen.tls: cert_file and key_file go together"));
  EXPECT_THAT(
      problems_of(
          {{"listen",
            {{"tls", {{"cert_file", "c"}, {"key_file", "k"}, {"client_auth", "optional"}}}}}}),
      ElementsAre("$.listen.tls.client_ca_file: required when client_auth is \"optional\""));
  EXPECT_THAT(
      problems_of({{"listen",
                    {{"tls", {{"cert_file", "c"}, {"key_file", "k"}, {"client_ca_file", "ca"}}}}}}),
      ElementsAre("$.listen.tls.client_auth: must be \"optional\" or \"required\" with "
                  "client_ca_file"));
  EXPECT_THAT(
      problems_of({{"listen", {{"tls", {{"client_auth", "sometimes"}, {"verify", true}}}}}}),
      ElementsAre("$.listen.tls.client_auth: unknown mode \"sometimes\" (expected off, optional "
                  "or required)",
                  "$.listen.tls.verify: unknown key"));
  EXPECT_THAT(
      problems_of({{"listen", {{"tls", {{"client_ca_file", "ca"}, {"client_auth", "required"}}}}}}),
      ElementsAre("$.listen.tls: client certificates need TLS: set cert_file and key_file"));
}

TEST(ListenConfig, ReadsTheUnixSocketPathAndOctalMode) {
  const Config c = parse_config(
      {{"listen", {{"unix_socket", {{"path", "/run/sp/proxy.sock"}, {"mode", "0600"}}}}}});
  EXPECT_EQ(c.listen.unix_socket.path, "/run/sp/proxy.sock");
  EXPECT_EQ(c.listen.unix_socket.mode, 0600u);
  EXPECT_EQ(parse_config({{"listen", {{"unix_socket", {{"path", "s"}, {"mode", "660"}}}}}})
                .listen.unix_socket.mode,
            0660u);
}

TEST(ListenConfig, RejectsBadUnixSocketSettings) {
  EXPECT_THAT(problems_of({{"listen", {{"unix_socket", {{"path", ""}, {"mode", 432}}}}}}),
              ElementsAre("$.listen.unix_socket.mode: expected an octal string such as \"0660\"",
                          "$.listen.unix_socket.path: must not be empty"));
  for (const char* mode : {"0868", "1777", "7", "06600", "rw-"}) {
    EXPECT_THAT(problems_of({{"listen", {{"unix_socket", {{"path", "s"}, {"mode", mode}}}}}}),
                ElementsAre("$.listen.unix_socket.mode: expected an octal file mode from \"000\" "
                            "to \"0777\""))
        << mode;
  }
  EXPECT_THAT(problems_of({{"listen", {{"unix_socket", {{"path", std::string(108, 'x')}}}}}}),
              ElementsAre("$.listen.unix_socket.path: longer than 107 bytes"));
}

json cert_client(std::string name, json subjects) {
  return {{"name", std::move(name)},
          {"cert_subjects", std::move(subjects)},
          {"accounts", {"*"}},
          {"permissions", {"read"}}};
}

TEST(ClientCertSubjects, LetACertificateBeAClientsOnlyCredential) {
  const Config c = parse_config(
      {{"clients",
        {cert_client("sidecar", {"CN=sidecar.internal", "URI:spiffe://e.org/a", "DNS:a.b"})}}});
  ASSERT_EQ(c.clients.size(), 1u);
  EXPECT_THAT(c.clients[0].cert_subjects,
              ElementsAre("CN=sidecar.internal", "URI:spiffe://e.org/a", "DNS:a.b"));
}

TEST(ClientCertSubjects, RejectsMalformedAndDuplicateSubjects) {
  EXPECT_THAT(problems_of({{"clients", {cert_client("a", {"sidecar", "CN=", "EMAIL:x@y"})}}}),
              ElementsAre("$.clients[0].cert_subjects[0]: expected \"CN=<name>\", \"DNS:<name>\" "
                          "or \"URI:<uri>\" (printable ASCII)",
                          "$.clients[0].cert_subjects[1]: expected \"CN=<name>\", \"DNS:<name>\" "
                          "or \"URI:<uri>\" (printable ASCII)",
                          "$.clients[0].cert_subjects[2]: expected \"CN=<name>\", \"DNS:<name>\" "
                          "or \"URI:<uri>\" (printable ASCII)",
                          "$.clients[0]: needs token_sha256, email and key_sha256, or "
                          "cert_subjects"));
  EXPECT_THAT(problems_of({{"clients", {cert_client("a", {"CN=x"}), cert_client("b", {"CN=x"})}}}),
              ElementsAre("$.clients[1].cert_subjects[0]: duplicate certificate subject \"CN=x\""));
}

}  // namespace
}  // namespace sproxy::config
