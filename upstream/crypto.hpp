// Small cryptographic helpers over OpenSSL: SHA-256, constant-time comparison, CSPRNG
// bytes, hex, and AES-256-GCM sealing of secret values.
//
// Thread-safe (OpenSSL 3 is). Failures of OpenSSL itself throw std::runtime_error;
// an authentication failure on open (wrong key, tampered data) returns nullopt.
#pragma once

#include <array>
#include <optional>
#include <string>
#include <string_view>

namespace sproxy::upstream {

std::string random_bytes(std::size_t n);
std::string to_hex(std::string_view bytes);
// nullopt when `hex` is not an even-length hex string.
std::optional<std::string> from_hex(std::string_view hex);
using Sha256Digest = std::array<unsigned char, 32>;
// SHA-256 of `data` (no allocation).
Sha256Digest sha256(std::string_view data);
// Lowercase hex SHA-256 of `data`.
std::string sha256_hex(std::string_view data);
// Compares two strings in time independent of where they differ (length may leak).
bool constant_time_equal(std::string_view a, std::string_view b);

inline constexpr std::size_t kAesKeyBytes = 32;
inline constexpr std::size_t kGcmNonceBytes = 12;
inline constexpr std::size_t kGcmTagBytes = 16;

// nonce || ciphertext || tag, with a fresh random nonce. `aad` is authenticated, not stored.
std::string aes_gcm_seal(std::string_view key, std::string_view plaintext, std::string_view aad);
std::optional<std::string> aes_gcm_open(std::string_view key, std::string_view sealed,
                                        std::string_view aad);

}  // namespace sproxy::upstream
