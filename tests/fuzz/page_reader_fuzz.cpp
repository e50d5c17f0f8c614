// The upstream list page parsers (cache/snapshot.cpp): whatever the body, parsing never
// crashes; a secrets page that parses builds a snapshot that answers a list query and
// every secret's GET with valid JSON, and a stores page that parses builds a snapshot
// whose list answer is valid JSON.
#include <cstddef>
#include <cstdint>
#include <string>

#include "cache/snapshot.hpp"
#include "tests/fuzz/fuzz_check.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using namespace sproxy;
  const std::string_view body = fuzz::as_text(data, size);
  if (auto page = cache::parse_secrets_page(body)) {
    const std::size_t listed = page->items.size();
    const cache::SecretsSnapshot snapshot(1, std::move(page->items));
    fuzz::check(snapshot.size() <= listed, "a snapshot holds more secrets than were listed");
    for (std::size_t i = 0; i < snapshot.size(); ++i) {
      fuzz::check(snapshot.find(snapshot.secret(i).id) == i, "a secret is not found by its id");
      fuzz::check(nlohmann::json::accept(snapshot.secret_json(i)), "a secret's JSON is invalid");
    }
    cache::Viewer everyone;
    everyone.all = true;
    fuzz::check(nlohmann::json::accept(snapshot.list(upstream::SecretListQuery{}, everyone)),
                "a list answer is not JSON");
  }
  if (auto stores = cache::parse_stores_page(body)) {
    const cache::StoresSnapshot snapshot(1, std::move(stores->items));
    cache::Viewer everyone;
    everyone.all = true;
    fuzz::check(nlohmann::json::accept(snapshot.list(upstream::StoreListQuery{}, everyone)),
                "a stores list answer is not JSON");
  }
  return 0;
}
