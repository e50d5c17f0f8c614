// Upstream answers that are not API answers, over real HTTP: an HttpUpstream talking to a
// scripted loopback server that answers what load balancers and broken upstreams send
// (an HTML error page labelled application/json, a 200 cut short), in front of the
// read-through cache. The client always gets the API's envelope.
#include <gtest/gtest.h>

#include <boost/asio/io_context.hpp>
#include <memory>
#include <string>

#include "cache/read_through.hpp"
#include "tests/cache/cache_fixture.hpp"
#include "tests/support/run_awaitable.hpp"
#include "tests/support/scripted_http_server.hpp"
#include "upstream/http_upstream.hpp"

namespace sproxy::cache::testing {
namespace {

using test::ReceivedRequest;
using test::ScriptedReply;

struct HttpCache {
  explicit HttpCache(test::Script script) : server(std::move(script)) {
    upstream::HttpUpstreamOptions o;
    o.base_url = upstream::parse_base_url(server.base_url());
    o.token = "proxy-own-token-for-answer-checks";
    cache = std::make_unique<ReadThroughCache>(config::CacheConfig{},
                                               std::make_shared<upstream::HttpUpstream>(o));
  }
  Answer read(const std::string& path) {
    auto r = upstream::parse_route(upstream::Method::get, base() + path);
    EXPECT_TRUE(r.ok());
    ReadOptions options;
    return test::run_awaitable(ioc, cache->read(r.value(), std::move(options), kT0));
  }

  test::ScriptedHttpServer server;
  boost::asio::io_context ioc;
  std::unique_ptr<ReadThroughCache> cache;
};

TEST(UpstreamAnswersOverHttp, AnHtml502LabelledJsonBecomesThe502Envelope) {
  HttpCache http([](const ReceivedRequest&) {
    return ScriptedReply::json(502, "<html><body><h1>502 Bad Gateway</h1></body></html>");
  });
  const Answer a = http.read("/quota");
  EXPECT_EQ(a.status, 502u);
  ASSERT_TRUE(a.body);
  EXPECT_EQ(std::string(*a.body),
            upstream::envelope_error(upstream::errors::upstream_failure("bad_response")));
  EXPECT_EQ(http.cache->stats().upstream_bad_answers, 1u);
}

TEST(UpstreamAnswersOverHttp, A200CutShortBecomesThe502EnvelopeAndIsNotCached) {
  HttpCache http([](const ReceivedRequest&) {
    return ScriptedReply::json(200, R"({"success":true,"errors":[],"messages":[],"result":{"se)");
  });
  EXPECT_EQ(http.read("/quota").status, 502u);
  EXPECT_EQ(http.read("/quota").status, 502u);
  EXPECT_EQ(http.server.requests().size(), 2u);
}

}  // namespace
}  // namespace sproxy::cache::testing
