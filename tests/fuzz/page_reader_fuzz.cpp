// The upstream list page readers (cache/snapshot.cpp): the streaming secrets page reader
// against the JSON tree parse (it gives the tree's page or leaves the body to the tree;
// parse_secrets_page gives the tree's answer), with the comparison the unit tests use
// (tests/support/page_parse_compare.hpp). A page that reads builds a snapshot that
// answers a list query and every secret's GET; the stores page reader must not crash.
#include <cstddef>
#include <cstdint>
#include <string>

#include "cache/snapshot.hpp"
#include "tests/fuzz/fuzz_check.hpp"
#include "tests/support/page_parse_compare.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using namespace sproxy;
  const std::string_view body = fuzz::as_text(data, size);
  const test::PageComparison c = test::compare_page_parsers(body);
  fuzz::check(c.difference.empty(), c.difference, body);

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
