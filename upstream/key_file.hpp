// The embedded store's key file and where the store key comes from.
//
// A key is 32 raw bytes (AES-256). Outside the process it is written as 64 hex characters
// and an optional newline, in an environment variable or in a key file (mode 0600, owner
// only; a file readable or writable by group or others is refused). The environment
// variable, when the settings name one and it is set, wins over the key file. A key file
// is created (a fresh random key, written whole to a temp file and linked into place) only
// when the caller asks for it: the store does so for a new, empty database only.
// The staged key of a rotation (store_key.hpp) is a key file of the same form.
//
// Ownership: every key is returned by value; the caller wipes it when done. Buffers that
// held key material here are wiped before they are freed.
// Thread safety: the functions keep no state; concurrent first starts on the same path
// agree on one key file (creation never replaces an existing one).
// Errors: start-up and command-line code only; failures throw std::runtime_error with a
// one-line message naming the file or variable, never holding key material.
#pragma once

#include <filesystem>
#include <optional>
#include <string>

#include "config/config.hpp"

namespace sproxy::upstream {

// Overwrites the bytes of `s` (a key, its hex form, a plaintext value) in a way the
// compiler does not optimise away. The size is unchanged.
void wipe(std::string& s);

// The key in `path`; nullopt when the file does not exist.
std::optional<std::string> open_key_file(const std::filesystem::path& path);

// The key in `path`, creating the file (and its directory) with a fresh key when absent.
std::string open_or_create_key_file(const std::filesystem::path& path);

// The key in the environment variable the settings name, when that variable is set.
std::optional<std::string> key_from_env(const config::EmbeddedStoreConfig& cfg);

// Throws when the settings name no key file (and the key did not come from the environment).
void require_key_file_setting(const config::EmbeddedStoreConfig& cfg);

// The 32-byte AES-256 key those settings name (cfg.key_env, then cfg.key_file, created
// with mode 0600 and a fresh random key if absent). Seals the cache's warm-start file when
// it has no key of its own. Throws std::runtime_error.
std::string resolve_store_key(const config::EmbeddedStoreConfig& cfg);

// The staged key of a rotation at `path`; nullopt when there is none, or when what is
// there is not a key (a crash while it was written): it then opens nothing anyway.
std::optional<std::string> read_staged_key(const std::filesystem::path& path);

}  // namespace sproxy::upstream
