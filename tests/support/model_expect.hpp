// Checks of the API model's failures (upstream/model.hpp) shared by the model's tests: a
// Result that failed, and an ApiError that is exactly one message. Header-only; link
// sproxy_upstream.
#pragma once

#include <gtest/gtest.h>

#include <string>

#include "upstream/model.hpp"

namespace sproxy::test {

template <class T>
upstream::ApiError error_of(const upstream::Result<T>& r) {
  EXPECT_FALSE(r.ok()) << "expected a failure";
  return r.ok() ? upstream::ApiError{} : r.error();
}

inline void expect_error(const upstream::ApiError& e, unsigned status, int code,
                         const std::string& message) {
  EXPECT_EQ(e.status, status);
  ASSERT_EQ(e.errors.size(), 1u);
  EXPECT_EQ(e.errors[0].code, code);
  EXPECT_EQ(e.errors[0].message, message);
  EXPECT_TRUE(e.errors[0].error_chain.empty());
}

// A validation failure: 400, code 1001, `token` as its message.
template <class T>
void expect_token(const upstream::Result<T>& r, const std::string& token) {
  ASSERT_FALSE(r.ok()) << "expected " << token;
  expect_error(r.error(), 400, 1001, token);
}

}  // namespace sproxy::test
