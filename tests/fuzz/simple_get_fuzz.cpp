// The in-place plain-GET parser (proxy::parse_simple_get) against Beast's request parser:
// whatever it accepts, Beast accepts with the same message and the same bytes used; a
// refusal consumes nothing and leaves the message alone. The header limit comes from the
// first two input bytes, so the limit's edge is explored too.
#include <cstddef>
#include <cstdint>

#include "tests/fuzz/fuzz_check.hpp"
#include "tests/support/simple_get_compare.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using namespace sproxy;
  std::size_t header_limit = test::kCompareHeaderLimit;
  std::string_view wire = fuzz::as_text(data, size);
  if (size >= 2 && data[0] == 0xff) {
    // "\xff<n>": a small limit of n + 16 bytes for the rest.
    header_limit = 16 + data[1];
    wire.remove_prefix(2);
  }
  const std::string difference = test::compare_simple_get(wire, header_limit);
  fuzz::check(difference.empty(), difference, wire);
  return 0;
}
