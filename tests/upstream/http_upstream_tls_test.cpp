// HttpUpstream over TLS, with a CA and server certificates made at test time: chain, host
// name and validity checks before anything is sent.
#include "tests/upstream/http_upstream_fixture.hpp"

namespace sproxy::upstream {
namespace {

using namespace http_testing;

// ---------------------------------------------------------------------------------------
// TLS, with a CA and server certificates made at test time

using PkeyPtr = std::unique_ptr<EVP_PKEY, decltype(&EVP_PKEY_free)>;
using X509Ptr = std::unique_ptr<X509, decltype(&X509_free)>;

void add_extension(X509* cert, X509* issuer, int nid, const char* value) {
  X509V3_CTX ctx;
  X509V3_set_ctx_nodb(&ctx);
  X509V3_set_ctx(&ctx, issuer, cert, nullptr, nullptr, 0);
  X509_EXTENSION* ext = X509V3_EXT_conf_nid(nullptr, &ctx, nid, value);
  if (!ext) throw std::runtime_error(std::string("bad test certificate extension ") + value);
  X509_add_ext(cert, ext, -1);
  X509_EXTENSION_free(ext);
}

struct KeyAndCert {
  PkeyPtr key{nullptr, EVP_PKEY_free};
  X509Ptr cert{nullptr, X509_free};

  std::string cert_pem() const {
    std::unique_ptr<BIO, decltype(&BIO_free)> bio(BIO_new(BIO_s_mem()), BIO_free);
    PEM_write_bio_X509(bio.get(), cert.get());
    char* data = nullptr;
    const long n = BIO_get_mem_data(bio.get(), &data);
    return std::string(data, static_cast<std::size_t>(n));
  }
  std::string key_pem() const {
    std::unique_ptr<BIO, decltype(&BIO_free)> bio(BIO_new(BIO_s_mem()), BIO_free);
    PEM_write_bio_PrivateKey(bio.get(), key.get(), nullptr, nullptr, 0, nullptr, nullptr);
    char* data = nullptr;
    const long n = BIO_get_mem_data(bio.get(), &data);
    return std::string(data, static_cast<std::size_t>(n));
  }
};

// When a certificate is valid, relative to now.
struct Validity {
  std::chrono::seconds not_before{-3600};
  std::chrono::seconds not_after{24 * 3600};
};

// `issuer` null: a self-signed CA. Otherwise a server certificate with `san`.
KeyAndCert make_certificate(const std::string& common_name, const KeyAndCert* issuer,
                            const char* san, Validity validity = {}) {
  static std::atomic<long> serial{1000};
  KeyAndCert out;
  out.key.reset(EVP_EC_gen("P-256"));
  out.cert.reset(X509_new());
  if (!out.key || !out.cert) throw std::runtime_error("cannot create test key or certificate");
  X509* cert = out.cert.get();
  X509_set_version(cert, 2);
  ASN1_INTEGER_set(X509_get_serialNumber(cert), serial++);
  X509_gmtime_adj(X509_getm_notBefore(cert), static_cast<long>(validity.not_before.count()));
  X509_gmtime_adj(X509_getm_notAfter(cert), static_cast<long>(validity.not_after.count()));
  X509_set_pubkey(cert, out.key.get());
  X509_NAME* name = X509_get_subject_name(cert);
  X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC,
                             reinterpret_cast<const unsigned char*>(common_name.c_str()), -1, -1,
                             0);
  X509* issuer_cert = issuer ? issuer->cert.get() : cert;
  X509_set_issuer_name(cert, X509_get_subject_name(issuer_cert));
  add_extension(cert, issuer_cert, NID_subject_key_identifier, "hash");
  if (!issuer) {
    add_extension(cert, issuer_cert, NID_basic_constraints, "critical,CA:TRUE");
    add_extension(cert, issuer_cert, NID_key_usage, "critical,keyCertSign,cRLSign");
  } else {
    add_extension(cert, issuer_cert, NID_authority_key_identifier, "keyid:always");
    add_extension(cert, issuer_cert, NID_basic_constraints, "critical,CA:FALSE");
    add_extension(cert, issuer_cert, NID_key_usage, "critical,digitalSignature");
    add_extension(cert, issuer_cert, NID_ext_key_usage, "serverAuth");
    add_extension(cert, issuer_cert, NID_subject_alt_name, san);
  }
  EVP_PKEY* signer = issuer ? issuer->key.get() : out.key.get();
  if (X509_sign(cert, signer, EVP_sha256()) == 0) throw std::runtime_error("cannot sign test cert");
  return out;
}

class HttpUpstreamTls : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fresh_temp_dir("tls");
    ca_ = make_certificate("sproxy test CA", nullptr, nullptr);
    other_ca_ = make_certificate("sproxy unrelated CA", nullptr, nullptr);
    write(dir_ / "ca.pem", ca_.cert_pem());
    write(dir_ / "other_ca.pem", other_ca_.cert_pem());
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }

  static void write(const std::filesystem::path& p, const std::string& text) {
    std::ofstream(p, std::ios::binary) << text;
  }

  // A server context whose certificate, for `san`, is signed by the test CA.
  std::shared_ptr<asio::ssl::context> server_context(const char* san, Validity validity = {}) {
    KeyAndCert leaf = make_certificate("sproxy test server", &ca_, san, validity);
    auto ctx = std::make_shared<asio::ssl::context>(asio::ssl::context::tls_server);
    const std::string chain = leaf.cert_pem();
    const std::string key = leaf.key_pem();
    ctx->use_certificate_chain(asio::buffer(chain));
    ctx->use_private_key(asio::buffer(key), asio::ssl::context::pem);
    return ctx;
  }

  HttpUpstreamOptions tls_options(const ScriptedHttpServer& server, std::string host,
                                  const char* ca_file = "ca.pem") {
    HttpUpstreamOptions o;
    o.base_url =
        parse_base_url("https://" + host + ":" + std::to_string(server.port()) + "/client/v4");
    o.token = kToken;
    o.request_timeout = 5s;
    o.tls_ca_file = (dir_ / ca_file).string();
    return o;
  }

  // A TLS server presenting `server_tls`, and an upstream that trusts `ca_file` and
  // calls it by `host`.
  std::unique_ptr<ScriptedUpstream> tls_upstream(Script script,
                                                 std::shared_ptr<asio::ssl::context> server_tls,
                                                 std::string host, const char* ca_file = "ca.pem") {
    return std::make_unique<ScriptedUpstream>(
        std::move(script), std::move(server_tls),
        [&](const ScriptedHttpServer& server) { return tls_options(server, host, ca_file); });
  }

  // Checks a call that verification refused: a TLS error, no request on the wire, and
  // the server saw its handshake fail.
  static void expect_refused_before_any_request(ScriptedUpstream& s) {
    auto result = s.call();
    ASSERT_FALSE(result.has_value()) << "the call succeeded";
    EXPECT_EQ(result.error(), UpstreamErrc::tls_error);
    EXPECT_THAT(result.error().message(), HasSubstr("certificate verification failed"));
    EXPECT_EQ(s.server.request_count(), 0u);
    EXPECT_TRUE(s.server.wait_until([&] { return s.server.tls_handshake_failures() == 1; }));
  }

  std::filesystem::path dir_;
  KeyAndCert ca_;
  KeyAndCert other_ca_;
};

TEST_F(HttpUpstreamTls, TalksToAServerWhoseChainAndIpAddressVerify) {
  auto s = tls_upstream(ok_script(), server_context("IP:127.0.0.1"), "127.0.0.1");

  auto first = s->call();
  auto second = s->call();

  ASSERT_TRUE(first.has_value()) << first.error().message();
  ASSERT_TRUE(second.has_value()) << second.error().message();
  EXPECT_EQ(first->body, kOkBody);
  ASSERT_EQ(s->server.request_count(), 2u);
  EXPECT_EQ(s->server.requests()[0].header("Authorization"), std::string("Bearer ") + kToken);
  EXPECT_EQ(s->server.requests()[0].tls_server_name, "");  // no SNI for an IP literal
  EXPECT_EQ(s->server.accepted_connections(), 1u);         // kept alive over TLS too
}

TEST_F(HttpUpstreamTls, SendsSniAndVerifiesTheHostName) {
  auto s = tls_upstream(ok_script(), server_context("DNS:localhost"), "localhost");

  auto result = s->call();

  ASSERT_TRUE(result.has_value()) << result.error().message();
  ASSERT_EQ(s->server.request_count(), 1u);
  EXPECT_EQ(s->server.requests()[0].tls_server_name, "localhost");
  EXPECT_EQ(s->server.requests()[0].header("Host"),
            "localhost:" + std::to_string(s->server.port()));
}

TEST_F(HttpUpstreamTls, RefusesACertificateFromAnUnknownCaBeforeSendingAnything) {
  auto s = tls_upstream(ok_script(), server_context("IP:127.0.0.1"), "127.0.0.1", "other_ca.pem");
  expect_refused_before_any_request(*s);
}

TEST_F(HttpUpstreamTls, RefusesACertificateForAnotherHostBeforeSendingAnything) {
  auto s = tls_upstream(ok_script(), server_context("DNS:api.example.com"), "127.0.0.1");
  expect_refused_before_any_request(*s);
}

TEST_F(HttpUpstreamTls, RefusesAnExpiredCertificateFromTheTrustedCaBeforeSendingAnything) {
  // Signed by the trusted CA, for the right address, but its validity ended a day ago.
  const Validity expired{-48h, -24h};
  auto s = tls_upstream(ok_script(), server_context("IP:127.0.0.1", expired), "127.0.0.1");
  expect_refused_before_any_request(*s);
}

TEST_F(HttpUpstreamTls, RefusesACertificateThatIsNotYetValidBeforeSendingAnything) {
  const Validity future{24h, 48h};
  auto s = tls_upstream(ok_script(), server_context("IP:127.0.0.1", future), "127.0.0.1");
  expect_refused_before_any_request(*s);
}

TEST_F(HttpUpstreamTls, RetriesAStaleTlsConnectionOnAFreshOne) {
  Script script = [](const ReceivedRequest&) {
    auto r = ScriptedReply::json(200, kOkBody);
    r.kind = Kind::respond_then_close;
    return r;
  };
  auto s = tls_upstream(script, server_context("IP:127.0.0.1"), "127.0.0.1");

  ASSERT_TRUE(s->call().has_value());
  ASSERT_TRUE(s->server.wait_until([&] { return s->server.open_connections() == 0; }));
  auto second = s->call();

  ASSERT_TRUE(second.has_value()) << second.error().message();
  EXPECT_EQ(s->server.accepted_connections(), 2u);
  EXPECT_EQ(s->server.request_count(), 2u);
}

TEST_F(HttpUpstreamTls, RefusesAPlainHttpPeerAsATlsError) {
  auto s = tls_upstream(ok_script(), nullptr, "127.0.0.1");

  auto result = s->call();

  EXPECT_EQ(result.error(), UpstreamErrc::tls_error);
}

TEST_F(HttpUpstreamTls, RefusesAnUnloadableCaFileAtStartUp) {
  HttpUpstreamOptions o;
  o.base_url = parse_base_url("https://127.0.0.1:9/client/v4");
  o.token = kToken;
  o.tls_ca_file = (dir_ / "absent.pem").string();
  EXPECT_THROW(HttpUpstream{o}, std::runtime_error);
}

}  // namespace
}  // namespace sproxy::upstream
