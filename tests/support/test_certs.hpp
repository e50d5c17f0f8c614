// Test certificates, generated at test time with the OpenSSL C API (no private key is
// ever committed): a self-signed CA, and leaf certificates it issues for servers or
// clients, with a chosen common name, subject alternative names and validity window
// (e.g. an already expired certificate).
//
// Keys are EC P-256, signatures SHA-256. Everything is returned as PEM text; `write_file`
// puts it where a config expects a file. Failures throw std::runtime_error naming the
// OpenSSL step. Header-only; link OpenSSL::SSL and OpenSSL::Crypto. Thread-compatible
// (one TestCa per thread, or shared read-only).
#pragma once

#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include <atomic>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

namespace sproxy::test {

struct CertOptions {
  std::string common_name = "localhost";
  std::vector<std::string> dns_names;     // subjectAltName DNS entries
  std::vector<std::string> ip_addresses;  // subjectAltName IP entries ("127.0.0.1", "::1")
  std::vector<std::string> uris;          // subjectAltName URI entries
  // Validity relative to now, in seconds: both negative for an expired certificate.
  long not_before_s = -3600;
  long not_after_s = 24 * 3600;
};

struct IssuedCert {
  std::string cert_pem;
  std::string key_pem;
};

// The usual loopback server certificate: CN localhost, SAN DNS:localhost, IP:127.0.0.1, IP:::1.
inline CertOptions loopback_server() {
  CertOptions o;
  o.common_name = "localhost";
  o.dns_names = {"localhost"};
  o.ip_addresses = {"127.0.0.1", "::1"};
  return o;
}

inline void write_file(const std::filesystem::path& path, const std::string& content) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << content;
  out.close();
  if (!out) throw std::runtime_error("cannot write " + path.string());
}

namespace certs_detail {

struct KeyFree {
  void operator()(EVP_PKEY* p) const { EVP_PKEY_free(p); }
};
struct CertFree {
  void operator()(X509* p) const { X509_free(p); }
};
struct BioFree {
  void operator()(BIO* p) const { BIO_free(p); }
};
using Key = std::unique_ptr<EVP_PKEY, KeyFree>;
using Cert = std::unique_ptr<X509, CertFree>;
using Bio = std::unique_ptr<BIO, BioFree>;

inline void check(bool ok, const char* step) {
  if (!ok) throw std::runtime_error(std::string("test certificate: ") + step + " failed");
}

inline Key new_key() {
  Key key(EVP_EC_gen("P-256"));
  check(key != nullptr, "EVP_EC_gen");
  return key;
}

inline std::string bio_text(BIO* bio) {
  char* data = nullptr;
  const long n = BIO_get_mem_data(bio, &data);
  return std::string(data, static_cast<std::size_t>(n));
}

inline std::string cert_pem(X509* cert) {
  Bio bio(BIO_new(BIO_s_mem()));
  check(bio && PEM_write_bio_X509(bio.get(), cert) == 1, "PEM_write_bio_X509");
  return bio_text(bio.get());
}

inline std::string key_pem(EVP_PKEY* key) {
  Bio bio(BIO_new(BIO_s_mem()));
  check(bio && PEM_write_bio_PrivateKey(bio.get(), key, nullptr, nullptr, 0, nullptr, nullptr) == 1,
        "PEM_write_bio_PrivateKey");
  return bio_text(bio.get());
}

inline void add_extension(X509* cert, X509* issuer, int nid, const std::string& value) {
  X509V3_CTX ctx;
  X509V3_set_ctx_nodb(&ctx);
  X509V3_set_ctx(&ctx, issuer, cert, nullptr, nullptr, 0);
  X509_EXTENSION* ext = X509V3_EXT_conf_nid(nullptr, &ctx, nid, value.c_str());
  check(ext != nullptr, "X509V3_EXT_conf_nid");
  const int added = X509_add_ext(cert, ext, -1);
  X509_EXTENSION_free(ext);
  check(added == 1, "X509_add_ext");
}

// Serial numbers unique within the process, so a client never sees two certificates
// of one issuer with the same serial.
inline long next_serial() {
  static std::atomic<long> serial{1};
  return serial.fetch_add(1);
}

// An unsigned certificate for `key` named `cn`, issued by `issuer` (null: by itself).
inline Cert make_cert(EVP_PKEY* key, const std::string& cn, X509* issuer, long not_before_s,
                      long not_after_s) {
  Cert cert(X509_new());
  check(cert != nullptr, "X509_new");
  check(X509_set_version(cert.get(), 2) == 1, "X509_set_version");
  check(ASN1_INTEGER_set(X509_get_serialNumber(cert.get()), next_serial()) == 1, "serial");
  check(X509_gmtime_adj(X509_getm_notBefore(cert.get()), not_before_s) != nullptr, "notBefore");
  check(X509_gmtime_adj(X509_getm_notAfter(cert.get()), not_after_s) != nullptr, "notAfter");
  check(X509_set_pubkey(cert.get(), key) == 1, "X509_set_pubkey");
  X509_NAME* name = X509_get_subject_name(cert.get());
  check(X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC,
                                   reinterpret_cast<const unsigned char*>(cn.c_str()), -1, -1,
                                   0) == 1,
        "subject CN");
  X509_NAME* issuer_name = issuer != nullptr ? X509_get_subject_name(issuer) : name;
  check(X509_set_issuer_name(cert.get(), issuer_name) == 1, "X509_set_issuer_name");
  return cert;
}

inline void sign(X509* cert, EVP_PKEY* issuer_key) {
  check(X509_sign(cert, issuer_key, EVP_sha256()) > 0, "X509_sign");
}

}  // namespace certs_detail

// A self-signed certificate authority that issues leaf certificates.
class TestCa {
 public:
  explicit TestCa(std::string name = "sproxy test CA") {
    namespace d = certs_detail;
    key_ = d::new_key();
    cert_ = d::make_cert(key_.get(), name, nullptr, -3600, 30L * 24 * 3600);
    d::add_extension(cert_.get(), cert_.get(), NID_basic_constraints, "critical,CA:TRUE");
    d::add_extension(cert_.get(), cert_.get(), NID_key_usage, "critical,keyCertSign,cRLSign");
    d::add_extension(cert_.get(), cert_.get(), NID_subject_key_identifier, "hash");
    d::sign(cert_.get(), key_.get());
  }

  // The CA certificate (what a peer trusts).
  std::string cert_pem() const { return certs_detail::cert_pem(cert_.get()); }

  // A leaf certificate and its key, usable as a TLS server and as a TLS client.
  IssuedCert issue(const CertOptions& options) const {
    namespace d = certs_detail;
    d::Key key = d::new_key();
    d::Cert cert = d::make_cert(key.get(), options.common_name, cert_.get(), options.not_before_s,
                                options.not_after_s);
    d::add_extension(cert.get(), cert_.get(), NID_basic_constraints, "critical,CA:FALSE");
    d::add_extension(cert.get(), cert_.get(), NID_key_usage,
                     "critical,digitalSignature,keyEncipherment");
    d::add_extension(cert.get(), cert_.get(), NID_ext_key_usage, "serverAuth,clientAuth");
    d::add_extension(cert.get(), cert_.get(), NID_authority_key_identifier, "keyid:always");
    std::string san;
    const auto add = [&](const char* kind, const std::string& value) {
      if (!san.empty()) san += ",";
      san += kind;
      san += value;
    };
    for (const auto& n : options.dns_names) add("DNS:", n);
    for (const auto& n : options.ip_addresses) add("IP:", n);
    for (const auto& n : options.uris) add("URI:", n);
    if (!san.empty()) d::add_extension(cert.get(), cert_.get(), NID_subject_alt_name, san);
    d::sign(cert.get(), key_.get());
    return IssuedCert{d::cert_pem(cert.get()), d::key_pem(key.get())};
  }

 private:
  certs_detail::Key key_;
  certs_detail::Cert cert_;
};

}  // namespace sproxy::test
