// Integration tests of the listeners: TLS on TCP (protocol floor, client certificates
// mapped to clients, certificate reload) and the Unix domain socket listener, alone and
// next to TCP. The real server over a real embedded store; certificates are generated at
// test time (tests/support/test_certs.hpp).
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <openssl/ssl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <boost/asio/io_context.hpp>
#include <boost/asio/local/stream_protocol.hpp>
#include <boost/asio/ssl/context.hpp>
#include <boost/asio/ssl/host_name_verification.hpp>
#include <boost/beast/core/basic_stream.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/core/tcp_stream.hpp>
#include <boost/beast/http/read.hpp>
#include <boost/beast/http/string_body.hpp>
#include <boost/beast/http/write.hpp>
#include <boost/beast/ssl/ssl_stream.hpp>
#include <chrono>
#include <filesystem>
#include <optional>
#include <string>
#include <thread>
#include <type_traits>

#include "proxy/server.hpp"
#include "tests/support/server_harness.hpp"
#include "tests/support/stream_test_client.hpp"
#include "tests/support/test_certs.hpp"

namespace sproxy::proxy {
namespace {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
namespace ssl = asio::ssl;
namespace errors = upstream::errors;
using nlohmann::json;
using test::api_base;
using test::bearer;
using test::body_json;
using test::CertOptions;
using test::eventually;
using test::HarnessOptions;
using test::Headers;
using test::IssuedCert;
using test::ServerHarness;
using test::TempDir;
using test::TestCa;
using test::TestResponse;
using test::write_file;
using local_stream = asio::local::stream_protocol;

const std::string kAccount = "0123456789abcdef0123456789abcdef";

// Certificate files in a temporary directory: a server certificate for loopback from
// `server_ca`, and the CA that client certificates must chain to.
struct TlsFiles {
  TempDir dir;
  TestCa server_ca{"sproxy test server CA"};
  TestCa client_ca{"sproxy test client CA"};
  std::filesystem::path cert = dir.path() / "server.pem";
  std::filesystem::path key = dir.path() / "server.key";
  std::filesystem::path client_ca_file = dir.path() / "client-ca.pem";

  TlsFiles() {
    install(server_ca.issue(test::loopback_server()));
    write_file(client_ca_file, client_ca.cert_pem());
  }
  void install(const IssuedCert& issued) const {
    write_file(cert, issued.cert_pem);
    write_file(key, issued.key_pem);
  }

  config::TlsListenConfig tls(config::ClientAuth client_auth = config::ClientAuth::off) const {
    config::TlsListenConfig t;
    t.cert_file = cert.string();
    t.key_file = key.string();
    if (client_auth != config::ClientAuth::off) t.client_ca_file = client_ca_file.string();
    t.client_auth = client_auth;
    return t;
  }
};

config::ClientConfig cert_client(std::string name, std::vector<std::string> subjects,
                                 std::vector<std::string> permissions,
                                 std::vector<std::string> services, std::string token = {}) {
  config::ClientConfig c;
  c.name = std::move(name);
  if (!token.empty()) c.token_sha256 = upstream::sha256_hex(token);
  c.cert_subjects = std::move(subjects);
  c.permissions = std::move(permissions);
  c.services = std::move(services);
  c.accounts = {"*"};
  return c;
}

HarnessOptions tls_options(const TlsFiles& files,
                           config::ClientAuth client_auth = config::ClientAuth::off) {
  HarnessOptions o;
  o.listen.tls = files.tls(client_auth);
  o.clients = {
      test::token_client("admin", "t-admin", {"admin"}),
      test::token_client("reader", "t-reader", {"read"}, {"workers"}),
      cert_client("cert-reader", {"CN=reader.internal"}, {"read"}, {"workers"}, "t-cert-reader"),
      cert_client("spiffe-dex", {"URI:spiffe://example.org/ns/dex"}, {"read"}, {"dex"})};
  return o;
}

test::TlsTestClient tls_connect(const ServerHarness& harness, const std::string& ca_pem,
                                const IssuedCert* cert = nullptr) {
  test::TlsTestClient c(test::tls_client_context(ca_pem, cert));
  const auto ec = c.connect(harness.endpoint());
  if (ec) throw std::runtime_error("TLS connect failed: " + ec.message());
  return c;
}

std::vector<std::string> secret_names(const TestResponse& res) {
  std::vector<std::string> names;
  const json body = body_json(res);
  for (const auto& s : body.at("result")) names.push_back(s.at("name").get<std::string>());
  std::sort(names.begin(), names.end());
  return names;
}

void expect_error(const TestResponse& res, const upstream::ApiError& error) {
  EXPECT_EQ(res.result_int(), error.status) << res.body();
  EXPECT_EQ(body_json(res), json::parse(upstream::envelope_error(error))) << res.body();
}

// ---------------------------------------------------------------------------------------
// TLS

TEST(TlsListener, ServesRequestsOverTls) {
  TlsFiles files;
  ServerHarness harness(tls_options(files));
  auto client = tls_connect(harness, files.server_ca.cert_pem());
  EXPECT_EQ(client.get("/healthz").result_int(), 200);
  auto stores = client.get(api_base(kAccount) + "/stores", bearer("t-reader"));
  EXPECT_EQ(stores.result_int(), 200) << stores.body();
  // Keep-alive over the same TLS session.
  EXPECT_EQ(client.get("/healthz").result_int(), 200);
  EXPECT_EQ(harness.server().tls_handshake_failures(), 0u);
}

TEST(TlsListener, DoesNotSpeakPlainHttpOnATlsPort) {
  TlsFiles files;
  ServerHarness harness(tls_options(files));
  auto plain = harness.connect();
  EXPECT_THROW(plain.get("/healthz"), std::runtime_error);
  EXPECT_TRUE(eventually([&] { return harness.server().tls_handshake_failures() == 1; }));
  // The listener is unaffected.
  EXPECT_EQ(tls_connect(harness, files.server_ca.cert_pem()).get("/healthz").result_int(), 200);
}

TEST(TlsListener, ExportsHandshakeFailuresInMetrics) {
  TlsFiles files;
  HarnessOptions o = tls_options(files);
  o.metrics = true;
  ServerHarness harness(o);
  auto plain = harness.connect();
  EXPECT_THROW(plain.get("/healthz"), std::runtime_error);
  EXPECT_TRUE(eventually([&] { return harness.server().tls_handshake_failures() == 1; }));
  auto res = tls_connect(harness, files.server_ca.cert_pem()).get("/metrics");
  EXPECT_EQ(res.result_int(), 200);
  EXPECT_NE(res.body().find("\nsecrets_proxy_tls_handshake_failures_total 1\n"), std::string::npos)
      << res.body();
}

TEST(TlsListener, RefusesATls11Client) {
  TlsFiles files;
  ServerHarness harness(tls_options(files));
  test::TlsTestClient old(
      test::tls_client_context(files.server_ca.cert_pem(), nullptr, TLS1_1_VERSION));
  EXPECT_TRUE(old.connect(harness.endpoint()));
  // Refused by the server (not given up by the client before asking).
  EXPECT_TRUE(eventually([&] { return harness.server().tls_handshake_failures() == 1; }));
  EXPECT_EQ(tls_connect(harness, files.server_ca.cert_pem()).get("/healthz").result_int(), 200);
}

TEST(TlsListener, RefusesToStartWithAKeyThatDoesNotMatchTheCertificate) {
  TlsFiles files;
  write_file(files.key, files.server_ca.issue(test::loopback_server()).key_pem);
  try {
    ServerHarness harness(tls_options(files));
    FAIL() << "started with a mismatched key";
  } catch (const std::runtime_error& e) {
    EXPECT_THAT(e.what(), ::testing::HasSubstr("key_file"));
  }
}

// ---------------------------------------------------------------------------------------
// Client certificates

class MutualTls : public ::testing::Test {
 protected:
  // Two secrets, one per scope, created by the admin client (bearer token, no certificate).
  void create_secrets(ServerHarness& harness) {
    auto admin = tls_connect(harness, files_.server_ca.cert_pem());
    auto store = admin.post(api_base(kAccount) + "/stores", json{{"name", "main"}}.dump(),
                            bearer("t-admin"));
    ASSERT_EQ(store.result_int(), 200) << store.body();
    secrets_ = api_base(kAccount) + "/stores/" +
               body_json(store)["result"]["id"].get<std::string>() + "/secrets";
    auto created = admin.post(secrets_,
                              json::array({{{"name", "W"}, {"value", "1"}, {"scopes", {"workers"}}},
                                           {{"name", "D"}, {"value", "2"}, {"scopes", {"dex"}}}})
                                  .dump(),
                              bearer("t-admin"));
    ASSERT_EQ(created.result_int(), 200) << created.body();
  }

  IssuedCert client_cert(const TestCa& ca, const std::string& cn,
                         std::vector<std::string> uris = {}) const {
    CertOptions o;
    o.common_name = cn;
    o.uris = std::move(uris);
    return ca.issue(o);
  }

  TlsFiles files_;
  std::string secrets_;
};

TEST_F(MutualTls, GivesAMappedCertificateItsClientsScopesWithoutAToken) {
  ServerHarness harness(tls_options(files_, config::ClientAuth::required));
  // In required mode every connection needs a certificate; the admin's maps to nobody.
  const IssuedCert admin_cert = client_cert(files_.client_ca, "admin-tool");
  {
    auto admin = tls_connect(harness, files_.server_ca.cert_pem(), &admin_cert);
    auto store = admin.post(api_base(kAccount) + "/stores", json{{"name", "main"}}.dump(),
                            bearer("t-admin"));
    ASSERT_EQ(store.result_int(), 200) << store.body();
    secrets_ = api_base(kAccount) + "/stores/" +
               body_json(store)["result"]["id"].get<std::string>() + "/secrets";
    ASSERT_EQ(admin
                  .post(secrets_,
                        json::array({{{"name", "W"}, {"value", "1"}, {"scopes", {"workers"}}},
                                     {{"name", "D"}, {"value", "2"}, {"scopes", {"dex"}}}})
                            .dump(),
                        bearer("t-admin"))
                  .result_int(),
              200);
  }

  const IssuedCert reader_cert = client_cert(files_.client_ca, "reader.internal");
  auto reader = tls_connect(harness, files_.server_ca.cert_pem(), &reader_cert);
  auto listed = reader.get(secrets_);
  ASSERT_EQ(listed.result_int(), 200) << listed.body();
  EXPECT_THAT(secret_names(listed), ::testing::ElementsAre("W"));
  // Its client may only read.
  expect_error(reader.post(secrets_, json::array({{{"name", "X"}, {"value", "3"}}}).dump()),
               errors::authentication_error());

  // A URI subject alternative name maps too.
  const IssuedCert spiffe_cert =
      client_cert(files_.client_ca, "some-pod", {"spiffe://example.org/ns/dex"});
  auto dex = tls_connect(harness, files_.server_ca.cert_pem(), &spiffe_cert);
  auto dex_listed = dex.get(secrets_);
  ASSERT_EQ(dex_listed.result_int(), 200) << dex_listed.body();
  EXPECT_THAT(secret_names(dex_listed), ::testing::ElementsAre("D"));
}

TEST_F(MutualTls, RefusesATokenOfAnotherClientOnACertificateConnection) {
  ServerHarness harness(tls_options(files_, config::ClientAuth::optional));
  create_secrets(harness);
  const IssuedCert reader_cert = client_cert(files_.client_ca, "reader.internal");
  auto reader = tls_connect(harness, files_.server_ca.cert_pem(), &reader_cert);
  // The admin's token does not lift the certificate's client to admin.
  expect_error(reader.get(secrets_, bearer("t-admin")), errors::authentication_error());
  expect_error(reader.get(secrets_, bearer("not-a-token")), errors::authentication_error());
  expect_error(reader.get(secrets_, bearer("t-reader")), errors::authentication_error());
  // Its own client's token is fine.
  EXPECT_EQ(reader.get(secrets_, bearer("t-cert-reader")).result_int(), 200);
  EXPECT_EQ(reader.get(secrets_).result_int(), 200);
}

TEST_F(MutualTls, FallsBackToTheBearerTokenWithoutACertificateInOptionalMode) {
  ServerHarness harness(tls_options(files_, config::ClientAuth::optional));
  create_secrets(harness);
  auto anonymous = tls_connect(harness, files_.server_ca.cert_pem());
  expect_error(anonymous.get(secrets_), errors::missing_credentials());
  auto listed = anonymous.get(secrets_, bearer("t-reader"));
  ASSERT_EQ(listed.result_int(), 200) << listed.body();
  EXPECT_THAT(secret_names(listed), ::testing::ElementsAre("W"));

  // A verified certificate that maps to no client counts for nothing.
  const IssuedCert unmapped = client_cert(files_.client_ca, "nobody.internal");
  auto other = tls_connect(harness, files_.server_ca.cert_pem(), &unmapped);
  expect_error(other.get(secrets_), errors::missing_credentials());
  EXPECT_EQ(other.get(secrets_, bearer("t-reader")).result_int(), 200);
}

TEST_F(MutualTls, RefusesACertificateFromAnUnknownCaAtTheHandshakeInRequiredMode) {
  ServerHarness harness(tls_options(files_, config::ClientAuth::required));
  TestCa stranger("somebody else's CA");
  const IssuedCert foreign = client_cert(stranger, "reader.internal");
  test::TlsTestClient client(test::tls_client_context(files_.server_ca.cert_pem(), &foreign));
  // With TLS 1.3 the client may finish its side first; the refusal then ends the first
  // exchange.
  beast::error_code ec = client.connect(harness.endpoint());
  TestResponse res;
  if (!ec) ec = client.try_request(http::verb::get, "/healthz", {}, {}, res);
  EXPECT_TRUE(ec) << "answered " << res.result_int();
  EXPECT_TRUE(eventually([&] { return harness.server().tls_handshake_failures() == 1; }));

  // No certificate at all is refused too.
  test::TlsTestClient bare(test::tls_client_context(files_.server_ca.cert_pem()));
  ec = bare.connect(harness.endpoint());
  if (!ec) ec = bare.try_request(http::verb::get, "/healthz", {}, {}, res);
  EXPECT_TRUE(ec);

  // A certificate from the configured CA gets in.
  const IssuedCert good = client_cert(files_.client_ca, "reader.internal");
  EXPECT_EQ(tls_connect(harness, files_.server_ca.cert_pem(), &good).get("/healthz").result_int(),
            200);
}

// ---------------------------------------------------------------------------------------
// Certificate reload

TEST(TlsReload, NewConnectionsGetTheNewCertificateWhileAnOpenOneKeepsWorking) {
  TlsFiles files;
  ServerHarness harness(tls_options(files));
  auto before = tls_connect(harness, files.server_ca.cert_pem());
  ASSERT_EQ(before.get("/healthz").result_int(), 200);

  TestCa next_ca("sproxy next server CA");
  files.install(next_ca.issue(test::loopback_server()));
  harness.server().reload_tls();

  // New connections present the new certificate: a client trusting only the old CA
  // refuses it, one trusting the new CA gets in.
  test::TlsTestClient stale(test::tls_client_context(files.server_ca.cert_pem()));
  EXPECT_TRUE(stale.connect(harness.endpoint()));
  EXPECT_EQ(tls_connect(harness, next_ca.cert_pem()).get("/healthz").result_int(), 200);
  // The connection opened before the reload still works.
  EXPECT_EQ(before.get("/healthz").result_int(), 200);
}

TEST(TlsReload, KeepsTheCurrentCertificateWhenTheNewFilesDoNotLoad) {
  TlsFiles files;
  ServerHarness harness(tls_options(files));
  write_file(files.key, "not a key\n");
  EXPECT_THROW(harness.server().reload_tls(), std::runtime_error);
  EXPECT_EQ(tls_connect(harness, files.server_ca.cert_pem()).get("/healthz").result_int(), 200);
}

// ---------------------------------------------------------------------------------------
// Unix domain socket

HarnessOptions unix_options(const std::filesystem::path& path, unsigned mode) {
  HarnessOptions o;
  o.listen.unix_socket.path = path.string();
  o.listen.unix_socket.mode = mode;
  o.clients = {test::token_client("reader", "t-reader", {"read"}, {"workers"})};
  return o;
}

test::UnixTestClient unix_connect(const std::filesystem::path& path) {
  test::UnixTestClient c;
  const auto ec = c.connect(local_stream::endpoint(path.string()));
  if (ec) throw std::runtime_error("unix connect failed: " + ec.message());
  return c;
}

unsigned file_mode(const std::filesystem::path& path) {
  struct stat st {};
  if (::lstat(path.c_str(), &st) != 0) return 0;
  return st.st_mode & 07777;
}

bool is_socket_file(const std::filesystem::path& path) {
  struct stat st {};
  return ::lstat(path.c_str(), &st) == 0 && S_ISSOCK(st.st_mode);
}

TEST(UnixSocketListener, ServesRequestsWithTheConfiguredFileMode) {
  TempDir dir;
  const auto path = dir.path() / "proxy.sock";
  {
    ServerHarness harness(unix_options(path, 0660));
    ASSERT_TRUE(is_socket_file(path));
    EXPECT_EQ(file_mode(path), 0660u);
    auto client = unix_connect(path);
    EXPECT_EQ(client.get("/healthz").result_int(), 200);
    auto stores = client.get(api_base(kAccount) + "/stores", bearer("t-reader"));
    EXPECT_EQ(stores.result_int(), 200) << stores.body();
  }
  // Removed on stop.
  EXPECT_FALSE(std::filesystem::exists(path));
}

TEST(UnixSocketListener, AppliesAStricterMode) {
  TempDir dir;
  const auto path = dir.path() / "private.sock";
  ServerHarness harness(unix_options(path, 0600));
  EXPECT_EQ(file_mode(path), 0600u);
  EXPECT_EQ(unix_connect(path).get("/healthz").result_int(), 200);
}

TEST(UnixSocketListener, ServesTcpAndTheUnixSocketAtOnceOnEveryThread) {
  TempDir dir;
  const auto path = dir.path() / "proxy.sock";
  HarnessOptions options = unix_options(path, 0660);
  options.listen.threads = 3;
  ServerHarness harness(options);
  for (int i = 0; i < 6; ++i) {
    EXPECT_EQ(harness.connect().get("/healthz").result_int(), 200);
    EXPECT_EQ(unix_connect(path).get("/healthz").result_int(), 200);
  }
  // Both kinds open at once, counted together.
  auto tcp = harness.connect();
  auto uds = unix_connect(path);
  ASSERT_EQ(tcp.get("/healthz").result_int(), 200);
  ASSERT_EQ(uds.get("/healthz").result_int(), 200);
  EXPECT_TRUE(eventually([&] { return harness.server().connection_count() == 2; }));
}

TEST(UnixSocketListener, ReplacesAStaleSocketFileFromAPreviousRun) {
  TempDir dir;
  const auto path = dir.path() / "proxy.sock";
  {
    // A socket bound and closed without unlinking, as a crashed process leaves it.
    const int fd = ::socket(AF_UNIX, SOCK_STREAM, 0);
    ASSERT_GE(fd, 0);
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    std::snprintf(addr.sun_path, sizeof addr.sun_path, "%s", path.c_str());
    ASSERT_EQ(::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr), 0);
    ::close(fd);
  }
  ASSERT_TRUE(is_socket_file(path));
  ServerHarness harness(unix_options(path, 0660));
  EXPECT_EQ(unix_connect(path).get("/healthz").result_int(), 200);
}

TEST(UnixSocketListener, RefusesToReplaceAFileThatIsNotASocket) {
  TempDir dir;
  const auto path = dir.path() / "proxy.sock";
  write_file(path, "keep me\n");
  try {
    ServerHarness harness(unix_options(path, 0660));
    FAIL() << "started over a regular file";
  } catch (const std::runtime_error& e) {
    EXPECT_THAT(e.what(), ::testing::HasSubstr("not a socket"));
  }
  EXPECT_TRUE(std::filesystem::is_regular_file(path));
}

TEST(UnixSocketListener, RefusesASocketAnotherServerServes) {
  TempDir dir;
  const auto path = dir.path() / "proxy.sock";
  ServerHarness first(unix_options(path, 0660));
  try {
    ServerHarness second(unix_options(path, 0660));
    FAIL() << "took over a live socket";
  } catch (const std::runtime_error& e) {
    EXPECT_THAT(e.what(), ::testing::HasSubstr("another process serves it"));
  }
  // The first server's socket is untouched.
  EXPECT_EQ(unix_connect(path).get("/healthz").result_int(), 200);
}

}  // namespace
}  // namespace sproxy::proxy
