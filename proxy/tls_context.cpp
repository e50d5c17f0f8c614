#include "proxy/tls_context.hpp"

#include <openssl/x509v3.h>

#include <algorithm>
#include <boost/asio/ssl/error.hpp>
#include <boost/beast/core/error.hpp>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

namespace sproxy::proxy {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace ssl = asio::ssl;

namespace {

// TLS 1.2 suites: forward secrecy and AEAD only (TLS 1.3 keeps OpenSSL's defaults).
constexpr const char* kTls12Ciphers =
    "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:"
    "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:"
    "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305";

// True when `s` may stand in a certificate name (printable ASCII, not empty).
bool is_printable(std::string_view s) {
  return !s.empty() && std::all_of(s.begin(), s.end(), [](char c) {
    return static_cast<unsigned char>(c) >= 0x20 && static_cast<unsigned char>(c) < 0x7f;
  });
}

void add_asn1_name(std::vector<std::string>& names, const char* prefix, const ASN1_STRING* value) {
  if (value == nullptr) return;
  const std::string_view text(reinterpret_cast<const char*>(ASN1_STRING_get0_data(value)),
                              static_cast<std::size_t>(ASN1_STRING_length(value)));
  if (is_printable(text)) names.push_back(std::string(prefix).append(text));
}

std::string openssl_problem(const beast::error_code& ec) {
  return ec.message() + (ec.category() == asio::error::get_ssl_category() ? " (OpenSSL)" : "");
}

}  // namespace

std::shared_ptr<const PeerCertificate> verified_peer_certificate(SSL* ssl) {
  X509* cert = SSL_get0_peer_certificate(ssl);
  if (cert == nullptr || SSL_get_verify_result(ssl) != X509_V_OK) return nullptr;
  auto peer = std::make_shared<PeerCertificate>();
  const X509_NAME* subject = X509_get_subject_name(cert);
  for (int i = X509_NAME_get_index_by_NID(subject, NID_commonName, -1); i >= 0;
       i = X509_NAME_get_index_by_NID(subject, NID_commonName, i)) {
    add_asn1_name(peer->names, "CN=", X509_NAME_ENTRY_get_data(X509_NAME_get_entry(subject, i)));
  }
  auto* sans =
      static_cast<GENERAL_NAMES*>(X509_get_ext_d2i(cert, NID_subject_alt_name, nullptr, nullptr));
  if (sans != nullptr) {
    for (int i = 0; i < sk_GENERAL_NAME_num(sans); ++i) {
      const GENERAL_NAME* name = sk_GENERAL_NAME_value(sans, i);
      if (name->type == GEN_DNS) add_asn1_name(peer->names, "DNS:", name->d.dNSName);
      if (name->type == GEN_URI) {
        add_asn1_name(peer->names, "URI:", name->d.uniformResourceIdentifier);
      }
    }
    GENERAL_NAMES_free(sans);
  }
  return peer;
}

// A TLS server context from the configured files: TLS 1.2 at least, forward-secret AEAD
// suites, and client certificate verification as `tls.client_auth` says.
std::shared_ptr<ssl::context> make_tls_context(const config::TlsListenConfig& tls) {
  auto ctx = std::make_shared<ssl::context>(ssl::context::tls_server);
  SSL_CTX* native = ctx->native_handle();
  const auto fail = [](const std::string& what, const std::string& why) {
    throw std::runtime_error("TLS: " + what + ": " + why);
  };
  if (SSL_CTX_set_min_proto_version(native, TLS1_2_VERSION) != 1) {
    fail("min protocol", "cannot require TLS 1.2");
  }
  SSL_CTX_set_options(
      native, SSL_OP_NO_COMPRESSION | SSL_OP_CIPHER_SERVER_PREFERENCE | SSL_OP_NO_RENEGOTIATION);
  if (SSL_CTX_set_cipher_list(native, kTls12Ciphers) != 1) fail("ciphers", "none available");
  beast::error_code ec;
  ctx->use_certificate_chain_file(tls.cert_file, ec);
  if (ec) fail("cert_file " + tls.cert_file, openssl_problem(ec));
  ctx->use_private_key_file(tls.key_file, ssl::context::pem, ec);
  if (ec) fail("key_file " + tls.key_file, openssl_problem(ec));
  if (SSL_CTX_check_private_key(native) != 1) {
    fail("key_file " + tls.key_file, "does not match the certificate in " + tls.cert_file);
  }
  if (tls.client_auth != config::ClientAuth::off) {
    ctx->load_verify_file(tls.client_ca_file, ec);
    if (ec) fail("client_ca_file " + tls.client_ca_file, openssl_problem(ec));
    // Tells clients which CAs to pick a certificate from.
    STACK_OF(X509_NAME)* names = SSL_load_client_CA_file(tls.client_ca_file.c_str());
    if (names == nullptr) fail("client_ca_file " + tls.client_ca_file, "no CA certificate in it");
    SSL_CTX_set_client_CA_list(native, names);
    ssl::verify_mode mode = ssl::verify_peer;
    if (tls.client_auth == config::ClientAuth::required) mode |= ssl::verify_fail_if_no_peer_cert;
    ctx->set_verify_mode(mode);
    // Session resumption with verified peers needs a context id.
    static constexpr unsigned char kSessionContext[] = "secrets-proxy";
    SSL_CTX_set_session_id_context(native, kSessionContext, sizeof kSessionContext - 1);
  }
  return ctx;
}

}  // namespace sproxy::proxy
