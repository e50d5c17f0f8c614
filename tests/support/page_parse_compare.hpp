// The differential check of the streaming page reader (cache::stream_secrets_page)
// against the JSON tree parse (cache::parse_secrets_page_tree), shared by the unit tests
// (tests/cache/page_parse_test.cpp) and the fuzz target (tests/fuzz/page_reader_fuzz.cpp).
// The streaming reader either gives exactly the tree's page or leaves the body to the
// tree; parse_secrets_page, which combines them, gives the tree's answer for every body.
// Header-only, no GoogleTest, so that a fuzz target can abort on a difference.
#pragma once

#include <optional>
#include <string>
#include <string_view>

#include "cache/snapshot.hpp"
#include "upstream/model.hpp"

namespace sproxy::test {

using SecretsPage = std::optional<cache::ListPage<upstream::Secret>>;

// How two readings of a page differ, or "" when they are the same.
inline std::string page_difference(const SecretsPage& a, const SecretsPage& b) {
  if (a.has_value() != b.has_value()) {
    return a ? "a page where the tree has none" : "no page where the tree has one";
  }
  if (!a) return "";
  if (a->total_pages != b->total_pages) {
    return "total_pages " + std::to_string(a->total_pages) + ", the tree " +
           std::to_string(b->total_pages);
  }
  if (a->items.size() != b->items.size()) {
    return std::to_string(a->items.size()) + " secrets, the tree " +
           std::to_string(b->items.size());
  }
  for (std::size_t i = 0; i < a->items.size(); ++i) {
    if (!(a->items[i] == b->items[i])) {
      return "secret " + std::to_string(i) + " (id '" + a->items[i].id + "', the tree '" +
             b->items[i].id + "') differs";
    }
  }
  return "";
}

struct PageComparison {
  bool taken = false;      // the streaming reader took the body (did not leave it to the tree)
  std::string difference;  // "" when every reading agrees with the tree
};

inline PageComparison compare_page_parsers(std::string_view body) {
  PageComparison out;
  const SecretsPage tree = cache::parse_secrets_page_tree(body);
  const SecretsPage streamed = cache::stream_secrets_page(body);
  out.taken = streamed.has_value();
  if (streamed) out.difference = page_difference(streamed, tree);
  if (out.difference.empty()) {
    const std::string combined = page_difference(cache::parse_secrets_page(body), tree);
    if (!combined.empty()) out.difference = "parse_secrets_page: " + combined;
  } else {
    out.difference = "stream_secrets_page: " + out.difference;
  }
  return out;
}

}  // namespace sproxy::test
