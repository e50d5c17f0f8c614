// The embedded store's key bookkeeping: the key check a database keeps to recognise the
// key its values are sealed with, the staged key file of a rotation, and the rotation
// itself (`secrets-proxy store rotate-key`).
//
// Key check: a fixed label sealed with the key (AES-256-GCM, fresh nonce). It opens under
// that key only and tells nothing else about it; the store refuses to start under a key
// that does not open it (embedded_store.hpp).
//
// Rotation, in an order where a crash at any point leaves a key that opens the database:
//   1. the new key is written to `<key_file>.new` (mode 0600, fsynced);
//   2. every value and the key check are sealed again under it in one transaction;
//   3. `<key_file>.new` is renamed over the key file (atomic) and the directory fsynced.
// A crash before 2 commits leaves the old key in the key file, matching the database (a
// later rotation replaces the stale `.new`). A crash between 2 and 3 leaves the database
// opening under `.new` only: the proxy refuses to start and names the command, and
// rotate_store_key installs `.new` (nothing else) when run again.
//
// Start-up and command-line code only. Errors throw std::runtime_error with a message fit
// for one line on stderr; no message holds key material or a value.
#pragma once

#include <cstddef>
#include <filesystem>
#include <string>
#include <string_view>

#include "config/config.hpp"

namespace sproxy::upstream {

std::string seal_key_check(std::string_view key);
// True when `check` was sealed by seal_key_check with `key`.
bool key_check_opens(std::string_view key, std::string_view check);

// Where a rotation stages the next key: `<key_file>.new`.
std::filesystem::path staged_key_path(const std::filesystem::path& key_file);

// Writes `key` (32 bytes) to `path` as 64 hex characters and a newline, mode 0600,
// replacing any file there; the file and its directory are fsynced.
void write_staged_key(const std::filesystem::path& path, std::string_view key);

// Renames `staged` over `key_file` (atomic) and fsyncs the directory.
void install_staged_key(const std::filesystem::path& staged, const std::filesystem::path& key_file);

struct KeyRotation {
  std::filesystem::path key_file;
  std::size_t resealed = 0;  // values sealed again under the new key
  // The database already held the staged key of an interrupted rotation: it was installed
  // as the key file, and nothing was sealed again.
  bool finished_interrupted = false;
};

// `secrets-proxy store rotate-key`: re-seals every value of the embedded store `cfg` names
// under a fresh key and replaces the key file, as described above. Refuses (throws,
// changing nothing) when the key comes from the environment, when the database or the key
// file does not exist, when the key does not match the database, when a value does not
// open, or when another process holds the database.
KeyRotation rotate_store_key(const config::EmbeddedStoreConfig& cfg);

}  // namespace sproxy::upstream
