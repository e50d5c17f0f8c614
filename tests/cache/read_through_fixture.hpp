// Shared fixture of the ReadThroughCache tests (read_through_*_test.cpp): the cache
// fixture of cache_fixture.hpp, and an answer's body as JSON.
#pragma once

#include <gtest/gtest.h>

#include <cstdio>
#include <functional>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <tuple>

#include "cache/policy.hpp"
#include "cache/read_through.hpp"
#include "tests/cache/cache_fixture.hpp"

namespace sproxy::cache::testing {

using test::Fault;
using upstream::UpstreamErrc;

inline nlohmann::json json_of(const Answer& a) { return nlohmann::json::parse(*a.body); }

class ReadThroughCacheTest : public CacheFixture {};

}  // namespace sproxy::cache::testing
