// The warm-start file loader (cache/persist.*). The input is a file's plaintext: it is
// decoded (decode_records), sealed with a fixed key and loaded through load_cache as a
// restarting proxy would; an input that starts with the file magic is also loaded as
// the file itself (unsealed). Properties:
// - load_cache loads exactly the plaintexts decode_records takes (malformed otherwise),
//   and never loads a file it did not seal;
// - decoded records encode and decode again to the same keys, tags, times and kinds;
// - what a cache restored from them exports is a subset of them and encodes, decodes
//   and restores again.
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <limits>
#include <string>
#include <vector>

#include "cache/persist.hpp"
#include "cache/snapshot.hpp"
#include "tests/fuzz/fuzz_check.hpp"

namespace {

using namespace sproxy;

const std::filesystem::path& file_path() {
  static const std::filesystem::path path = [] {
    const std::filesystem::path shm = "/dev/shm";
    const auto dir =
        std::filesystem::is_directory(shm) ? shm : std::filesystem::temp_directory_path();
    return dir / ("sproxy-persist-fuzz-" + std::to_string(::getpid()) + ".snap");
  }();
  return path;
}

struct RemoveAtExit {
  ~RemoveAtExit() {
    std::error_code ec;
    std::filesystem::remove(file_path(), ec);
  }
} remove_at_exit;

const std::string kKey(32, 'k');
constexpr std::size_t kMaxFile = 4 * 1024 * 1024;

void write_file(std::string_view bytes) {
  std::ofstream out(file_path(), std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

std::unique_ptr<cache::ReadThroughCache> empty_cache() {
  config::CacheConfig cfg;
  cfg.max_bytes = 1024 * 1024;  // small enough that eviction is part of a restore
  // Restore and export only: no read ever reaches an upstream.
  return std::make_unique<cache::ReadThroughCache>(cfg, nullptr);
}

cache::CachedValue::Type type_of(const cache::CacheRecord& r) { return r.value->type(); }

bool same_records(const std::vector<cache::CacheRecord>& a,
                  const std::vector<cache::CacheRecord>& b) {
  if (a.size() != b.size()) return false;
  for (std::size_t i = 0; i < a.size(); ++i) {
    if (a[i].key != b[i].key || a[i].tag != b[i].tag || type_of(a[i]) != type_of(b[i]) ||
        a[i].meta.stored_at != b[i].meta.stored_at ||
        a[i].meta.fresh_until != b[i].meta.fresh_until ||
        a[i].meta.keep_until != b[i].meta.keep_until) {
      return false;
    }
  }
  return true;
}

void check_round_trip(const cache::DecodedRecords& decoded) {
  const auto again =
      cache::decode_records(cache::encode_records(decoded.records, decoded.saved_at));
  fuzz::check(again.has_value(), "decoded records do not encode to a valid plaintext");
  fuzz::check(again->saved_at == decoded.saved_at, "saved_at does not round-trip");
  fuzz::check(same_records(again->records, decoded.records), "records do not round-trip");
}

void check_restore(const cache::DecodedRecords& decoded, upstream::Micros now) {
  auto cache = empty_cache();
  const std::size_t restored = cache->restore(decoded.records, now);
  fuzz::check(restored <= decoded.records.size(), "restored more records than decoded");
  const auto exported = cache->export_records(now);
  fuzz::check(exported.size() <= restored, "exported more than was restored");
  for (const auto& e : exported) {
    bool found = false;
    for (const auto& d : decoded.records) found = found || (d.key == e.key && d.tag == e.tag);
    fuzz::check(found, "an exported record that was not in the file", e.key);
  }
  const auto again = cache::decode_records(cache::encode_records(exported, now));
  fuzz::check(again.has_value() && same_records(again->records, exported),
              "an exported cache does not encode and decode");
  fuzz::check(empty_cache()->restore(again->records, now) == exported.size(),
              "an exported cache does not restore whole");
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string_view input = fuzz::as_text(data, size);
  const auto decoded = cache::decode_records(input);
  // One second after the save: fresh entries are restored fresh, others stale or not.
  constexpr upstream::Micros kSecond = 1'000'000;
  const upstream::Micros saved_at = decoded ? decoded->saved_at : 0;
  const upstream::Micros now = saved_at > std::numeric_limits<upstream::Micros>::max() - kSecond
                                   ? std::numeric_limits<upstream::Micros>::max()
                                   : saved_at + kSecond;

  write_file(cache::seal_snapshot_file(kKey, input));
  auto cache = empty_cache();
  const cache::LoadResult loaded = cache::load_cache(*cache, file_path(), kKey, kMaxFile, now);
  fuzz::check(loaded.status == (decoded ? cache::LoadStatus::loaded : cache::LoadStatus::malformed),
              "load_cache disagrees with decode_records", loaded.message);

  if (input.starts_with(cache::kPersistMagic)) {
    write_file(input);
    const cache::LoadResult raw =
        cache::load_cache(*empty_cache(), file_path(), kKey, kMaxFile, now);
    fuzz::check(raw.status != cache::LoadStatus::loaded, "loaded a file nobody sealed");
  }
  if (!decoded) return 0;
  fuzz::check(loaded.entries == decoded->records.size(), "load_cache counts other entries");
  check_round_trip(*decoded);
  check_restore(*decoded, now);
  return 0;
}
