#include "upstream/crypto.hpp"

#include <gtest/gtest.h>

#include <set>
#include <stdexcept>
#include <string>

namespace sproxy::upstream {
namespace {

std::string unhex(std::string_view hex) {
  auto bytes = from_hex(hex);
  if (!bytes) throw std::invalid_argument("bad hex in test vector");
  return *bytes;
}

const std::string kKey = unhex("000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f");

TEST(Sha256Hex, MatchesTheStandardDigests) {
  EXPECT_EQ(sha256_hex(""), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
  EXPECT_EQ(sha256_hex("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
}

TEST(Hex, RoundTripsEveryByteValueAsLowercase) {
  std::string all;
  for (int b = 0; b < 256; ++b) all.push_back(static_cast<char>(b));
  const std::string hex = to_hex(all);
  EXPECT_EQ(hex.size(), 512u);
  EXPECT_EQ(hex.substr(0, 8), "00010203");
  EXPECT_EQ(hex.substr(504), "fcfdfeff");
  EXPECT_EQ(from_hex(hex), all);
}

TEST(Hex, AcceptsUppercaseDigits) { EXPECT_EQ(from_hex("ABcd"), std::string("\xab\xcd")); }

TEST(Hex, RejectsOddLengthAndNonHexCharacters) {
  EXPECT_EQ(from_hex("abc"), std::nullopt);
  EXPECT_EQ(from_hex("zz"), std::nullopt);
  EXPECT_EQ(from_hex("0g"), std::nullopt);
  EXPECT_EQ(from_hex(""), std::string());
}

TEST(ConstantTimeEqual, IsTrueOnlyForIdenticalStrings) {
  EXPECT_TRUE(constant_time_equal("secret-token", "secret-token"));
  EXPECT_TRUE(constant_time_equal("", ""));
  EXPECT_FALSE(constant_time_equal("secret-token", "secret-tokeN"));
  EXPECT_FALSE(constant_time_equal("Secret-token", "secret-token"));
  EXPECT_FALSE(constant_time_equal("secret-token", "secret-token2"));
  EXPECT_FALSE(constant_time_equal("", "x"));
}

TEST(RandomBytes, ReturnsTheRequestedLengthAndDifferentBytesEachCall) {
  EXPECT_EQ(random_bytes(0).size(), 0u);
  std::set<std::string> seen;
  for (int i = 0; i < 50; ++i) {
    std::string b = random_bytes(16);
    ASSERT_EQ(b.size(), 16u);
    seen.insert(b);
  }
  EXPECT_EQ(seen.size(), 50u);
}

TEST(AesGcm, OpensWhatItSealed) {
  for (const std::string& plaintext :
       {std::string(), std::string("x"), std::string("hunter2"), std::string(65536, 'v')}) {
    const std::string sealed = aes_gcm_seal(kKey, plaintext, "aad-id");
    EXPECT_EQ(sealed.size(), kGcmNonceBytes + plaintext.size() + kGcmTagBytes);
    EXPECT_EQ(aes_gcm_open(kKey, sealed, "aad-id"), plaintext);
  }
}

TEST(AesGcm, UsesAFreshNonceForEverySeal) {
  const std::string a = aes_gcm_seal(kKey, "same plaintext", "id");
  const std::string b = aes_gcm_seal(kKey, "same plaintext", "id");
  EXPECT_NE(a.substr(0, kGcmNonceBytes), b.substr(0, kGcmNonceBytes));
  EXPECT_NE(a, b);
}

TEST(AesGcm, DoesNotContainThePlaintext) {
  const std::string plaintext = "correct horse battery staple";
  const std::string sealed = aes_gcm_seal(kKey, plaintext, "id");
  EXPECT_EQ(sealed.find(plaintext), std::string::npos);
}

TEST(AesGcm, RefusesAnyTamperedByte) {
  const std::string sealed = aes_gcm_seal(kKey, "attack at dawn", "id");
  for (std::size_t i = 0; i < sealed.size(); ++i) {
    std::string tampered = sealed;
    tampered[i] = static_cast<char>(tampered[i] ^ 0x01);
    EXPECT_EQ(aes_gcm_open(kKey, tampered, "id"), std::nullopt) << "byte " << i;
  }
}

TEST(AesGcm, RefusesTheWrongAssociatedDataOrKey) {
  const std::string sealed = aes_gcm_seal(kKey, "attack at dawn", "secret-a");
  EXPECT_EQ(aes_gcm_open(kKey, sealed, "secret-b"), std::nullopt);
  EXPECT_EQ(aes_gcm_open(kKey, sealed, ""), std::nullopt);
  std::string other_key = kKey;
  other_key[31] = static_cast<char>(other_key[31] ^ 0x80);
  EXPECT_EQ(aes_gcm_open(other_key, sealed, "secret-a"), std::nullopt);
}

TEST(AesGcm, RefusesTruncatedInput) {
  const std::string sealed = aes_gcm_seal(kKey, "attack at dawn", "id");
  EXPECT_EQ(aes_gcm_open(kKey, "", "id"), std::nullopt);
  EXPECT_EQ(aes_gcm_open(kKey, sealed.substr(0, kGcmNonceBytes + kGcmTagBytes - 1), "id"),
            std::nullopt);
  EXPECT_EQ(aes_gcm_open(kKey, sealed.substr(0, sealed.size() - 1), "id"), std::nullopt);
}

TEST(AesGcm, OpensTheGcmSpecificationTestVector16) {
  // AES-256, 96-bit IV, with AAD: McGrew & Viega, "The Galois/Counter Mode of Operation".
  const std::string key = unhex("feffe9928665731c6d6a8f9467308308feffe9928665731c6d6a8f9467308308");
  const std::string iv = unhex("cafebabefacedbaddecaf888");
  const std::string aad = unhex("feedfacedeadbeeffeedfacedeadbeefabaddad2");
  const std::string ct = unhex(
      "522dc1f099567d07f47f37a32a84427d643a8cdcbfe5c0c97598a2bd2555d1aa8cb08e48590dbb3da7b08b10"
      "56828838c5f61e6393ba7a0abcc9f662");
  const std::string tag = unhex("76fc6ece0f4e1768cddf8853bb2d551b");
  const std::string plaintext = unhex(
      "d9313225f88406e5a55909c5aff5269a86a7a9531534f7da2e4c303d8a318a721c3c0c95956809532fcf0e24"
      "49a6b525b16aedf5aa0de657ba637b39");
  EXPECT_EQ(aes_gcm_open(key, iv + ct + tag, aad), plaintext);
}

TEST(AesGcm, RejectsAKeyThatIsNot32Bytes) {
  EXPECT_THROW(aes_gcm_seal(std::string(16, 'k'), "x", "id"), std::invalid_argument);
  EXPECT_THROW(aes_gcm_open(std::string(31, 'k'), std::string(40, 'x'), "id"),
               std::invalid_argument);
}

}  // namespace
}  // namespace sproxy::upstream
