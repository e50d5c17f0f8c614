// Shared helpers of the identity and access tests (identity_test.cpp,
// access_check_test.cpp): accounts, stores, request headers and routes.
#pragma once

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <atomic>
#include <filesystem>
#include <fstream>
#include <string>
#include <thread>

#include "proxy/identity.hpp"
#include "proxy/reload.hpp"
#include "proxy/request_handler.hpp"
#include "tests/support/server_harness.hpp"
#include "upstream/crypto.hpp"

namespace sproxy::proxy::identity_testing {

namespace http = boost::beast::http;
namespace errors = upstream::errors;
using test::key_pair_client;
using test::token_client;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using upstream::RouteKind;

const std::string kAccount = "0123456789abcdef0123456789abcdef";
const std::string kOtherAccount = "fedcba9876543210fedcba9876543210";
const std::string kStore = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
const std::string kOtherStore = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";

inline http::fields headers(std::initializer_list<std::pair<std::string, std::string>> items) {
  http::fields f;
  for (const auto& [name, value] : items) f.insert(name, value);
  return f;
}

inline upstream::Route route(RouteKind kind, std::string account, std::string store = {}) {
  upstream::Route r;
  r.kind = kind;
  r.account_id = std::move(account);
  r.store_id = std::move(store);
  return r;
}

}  // namespace sproxy::proxy::identity_testing
