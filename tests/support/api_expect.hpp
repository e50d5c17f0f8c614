// What the integration tests of the API over HTTP share: the account they use and the
// check that an answer is an error's exact envelope. Header-only; link sproxy_upstream.
#pragma once

#include <gtest/gtest.h>

#include <string>

#include "tests/support/http_test_client.hpp"
#include "upstream/model.hpp"

namespace sproxy::test {

inline const std::string kAccount = "0123456789abcdef0123456789abcdef";

// The answer carries `error`'s status and, byte for byte, its envelope.
inline void expect_error(const TestResponse& res, const upstream::ApiError& error) {
  EXPECT_EQ(res.result_int(), error.status) << res.body();
  EXPECT_EQ(res.body(), upstream::envelope_error(error));
}

}  // namespace sproxy::test
