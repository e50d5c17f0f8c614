#include "upstream/crypto.hpp"

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/rand.h>

#include <climits>
#include <memory>
#include <stdexcept>

namespace sproxy::upstream {

namespace {

struct CipherCtxDeleter {
  void operator()(EVP_CIPHER_CTX* ctx) const { EVP_CIPHER_CTX_free(ctx); }
};
using CipherCtx = std::unique_ptr<EVP_CIPHER_CTX, CipherCtxDeleter>;

const unsigned char* bytes_of(std::string_view s) {
  return reinterpret_cast<const unsigned char*>(s.data());
}
unsigned char* bytes_of(std::string& s) { return reinterpret_cast<unsigned char*>(s.data()); }

int checked_int(std::size_t n) {
  if (n > static_cast<std::size_t>(INT_MAX)) {
    throw std::length_error("crypto: input larger than OpenSSL accepts in one call");
  }
  return static_cast<int>(n);
}

void require_key(std::string_view key) {
  if (key.size() != kAesKeyBytes) {
    throw std::invalid_argument("crypto: AES-256-GCM needs a 32-byte key");
  }
}

CipherCtx new_gcm_ctx(bool encrypt, std::string_view key, std::string_view nonce) {
  CipherCtx ctx(EVP_CIPHER_CTX_new());
  if (!ctx) throw std::runtime_error("crypto: EVP_CIPHER_CTX_new failed");
  auto init = encrypt ? EVP_EncryptInit_ex : EVP_DecryptInit_ex;
  if (init(ctx.get(), EVP_aes_256_gcm(), nullptr, nullptr, nullptr) != 1 ||
      EVP_CIPHER_CTX_ctrl(ctx.get(), EVP_CTRL_GCM_SET_IVLEN, static_cast<int>(kGcmNonceBytes),
                          nullptr) != 1 ||
      init(ctx.get(), nullptr, nullptr, bytes_of(key), bytes_of(nonce)) != 1) {
    throw std::runtime_error("crypto: AES-256-GCM initialisation failed");
  }
  return ctx;
}

int hex_digit(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

}  // namespace

std::string random_bytes(std::size_t n) {
  std::string out(n, '\0');
  if (n > 0 && RAND_bytes(bytes_of(out), checked_int(n)) != 1) {
    throw std::runtime_error("crypto: RAND_bytes failed");
  }
  return out;
}

std::string to_hex(std::string_view bytes) {
  static constexpr char kDigits[] = "0123456789abcdef";
  std::string out;
  out.resize(bytes.size() * 2);
  for (std::size_t i = 0; i < bytes.size(); ++i) {
    const auto b = static_cast<unsigned char>(bytes[i]);
    out[2 * i] = kDigits[b >> 4];
    out[2 * i + 1] = kDigits[b & 0x0f];
  }
  return out;
}

std::optional<std::string> from_hex(std::string_view hex) {
  if (hex.size() % 2 != 0) return std::nullopt;
  std::string out(hex.size() / 2, '\0');
  for (std::size_t i = 0; i < out.size(); ++i) {
    const int hi = hex_digit(hex[2 * i]);
    const int lo = hex_digit(hex[2 * i + 1]);
    if (hi < 0 || lo < 0) {
      OPENSSL_cleanse(out.data(), out.size());  // may be key material
      return std::nullopt;
    }
    out[i] = static_cast<char>((hi << 4) | lo);
  }
  return out;
}

Sha256Digest sha256(std::string_view data) {
  // EVP_Digest(EVP_sha256()) fetches the algorithm from the provider store on every call,
  // which costs more than hashing a short token; fetch once, and keep one context per
  // thread.
  static EVP_MD* const md = EVP_MD_fetch(nullptr, "SHA256", nullptr);
  struct MdCtxDeleter {
    void operator()(EVP_MD_CTX* ctx) const { EVP_MD_CTX_free(ctx); }
  };
  thread_local const std::unique_ptr<EVP_MD_CTX, MdCtxDeleter> ctx(EVP_MD_CTX_new());
  Sha256Digest out{};
  unsigned int md_len = 0;
  if (md == nullptr || !ctx || EVP_DigestInit_ex2(ctx.get(), md, nullptr) != 1 ||
      EVP_DigestUpdate(ctx.get(), data.data(), data.size()) != 1 ||
      EVP_DigestFinal_ex(ctx.get(), out.data(), &md_len) != 1 || md_len != out.size()) {
    throw std::runtime_error("crypto: SHA-256 failed");
  }
  return out;
}

std::string sha256_hex(std::string_view data) {
  const Sha256Digest md = sha256(data);
  return to_hex(std::string_view(reinterpret_cast<const char*>(md.data()), md.size()));
}

bool constant_time_equal(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) return false;
  if (a.empty()) return true;
  return CRYPTO_memcmp(a.data(), b.data(), a.size()) == 0;
}

std::string aes_gcm_seal(std::string_view key, std::string_view plaintext, std::string_view aad) {
  require_key(key);
  const int plain_len = checked_int(plaintext.size());
  const int aad_len = checked_int(aad.size());

  std::string out = random_bytes(kGcmNonceBytes);
  const std::size_t header = out.size();
  out.resize(header + plaintext.size() + kGcmTagBytes);

  CipherCtx ctx = new_gcm_ctx(true, key, std::string_view(out.data(), kGcmNonceBytes));
  int len = 0;
  if (aad_len > 0 && EVP_EncryptUpdate(ctx.get(), nullptr, &len, bytes_of(aad), aad_len) != 1) {
    throw std::runtime_error("crypto: AES-256-GCM AAD failed");
  }
  int written = 0;
  if (plain_len > 0) {
    if (EVP_EncryptUpdate(ctx.get(), bytes_of(out) + header, &len, bytes_of(plaintext),
                          plain_len) != 1) {
      throw std::runtime_error("crypto: AES-256-GCM encryption failed");
    }
    written = len;
  }
  if (EVP_EncryptFinal_ex(ctx.get(), bytes_of(out) + header + written, &len) != 1) {
    throw std::runtime_error("crypto: AES-256-GCM finalisation failed");
  }
  written += len;
  if (static_cast<std::size_t>(written) != plaintext.size() ||
      EVP_CIPHER_CTX_ctrl(ctx.get(), EVP_CTRL_GCM_GET_TAG, static_cast<int>(kGcmTagBytes),
                          bytes_of(out) + header + written) != 1) {
    throw std::runtime_error("crypto: AES-256-GCM tag failed");
  }
  return out;
}

std::optional<std::string> aes_gcm_open(std::string_view key, std::string_view sealed,
                                        std::string_view aad) {
  require_key(key);
  if (sealed.size() < kGcmNonceBytes + kGcmTagBytes) return std::nullopt;
  const std::string_view nonce = sealed.substr(0, kGcmNonceBytes);
  const std::string_view body =
      sealed.substr(kGcmNonceBytes, sealed.size() - kGcmNonceBytes - kGcmTagBytes);
  // EVP_CTRL_GCM_SET_TAG takes a non-const pointer; copy the tag.
  std::string tag(sealed.substr(sealed.size() - kGcmTagBytes));
  const int body_len = checked_int(body.size());
  const int aad_len = checked_int(aad.size());

  CipherCtx ctx = new_gcm_ctx(false, key, nonce);
  std::string plain(body.size(), '\0');
  int len = 0;
  if (aad_len > 0 && EVP_DecryptUpdate(ctx.get(), nullptr, &len, bytes_of(aad), aad_len) != 1) {
    throw std::runtime_error("crypto: AES-256-GCM AAD failed");
  }
  int written = 0;
  if (body_len > 0) {
    if (EVP_DecryptUpdate(ctx.get(), bytes_of(plain), &len, bytes_of(body), body_len) != 1) {
      OPENSSL_cleanse(plain.data(), plain.size());
      throw std::runtime_error("crypto: AES-256-GCM decryption failed");
    }
    written = len;
  }
  if (EVP_CIPHER_CTX_ctrl(ctx.get(), EVP_CTRL_GCM_SET_TAG, static_cast<int>(kGcmTagBytes),
                          tag.data()) != 1) {
    OPENSSL_cleanse(plain.data(), plain.size());
    throw std::runtime_error("crypto: AES-256-GCM tag setup failed");
  }
  // Final fails exactly when the tag does not authenticate nonce, AAD and ciphertext:
  // wrong key, wrong AAD or tampered bytes. The unauthenticated output is wiped.
  if (EVP_DecryptFinal_ex(ctx.get(), bytes_of(plain) + written, &len) != 1) {
    OPENSSL_cleanse(plain.data(), plain.size());
    return std::nullopt;
  }
  written += len;
  plain.resize(static_cast<std::size_t>(written));
  return plain;
}

}  // namespace sproxy::upstream
