// HttpUpstream: forwarding, answers passed through, transport failures, base URLs and the
// credential headers.
#include "tests/upstream/http_upstream_fixture.hpp"

namespace sproxy::upstream {
namespace {

using namespace http_testing;

// ---------------------------------------------------------------------------------------
// Forwarding

TEST(HttpUpstream, ForwardsMethodTargetAndBodyWithTheProxysOwnCredential) {
  ScriptedUpstream s([](const ReceivedRequest&) {
    return ScriptedReply::json(
        200, R"({"success":true,"errors":[],"messages":[],"result":[{"id":"x"}]})");
  });
  ApiRequest req;
  req.method = Method::post;
  req.target = std::string(kStoresTarget) + "/s1/secrets";
  req.body = R"([{"name":"A","value":"v","scopes":["workers"]}])";

  auto result = s.call(req);

  ASSERT_TRUE(result.has_value()) << result.error().message();
  EXPECT_EQ(result->status, 200u);
  EXPECT_EQ(result->body, R"({"success":true,"errors":[],"messages":[],"result":[{"id":"x"}]})");
  auto seen = s.server.requests();
  ASSERT_EQ(seen.size(), 1u);
  EXPECT_EQ(seen[0].method, "POST");
  EXPECT_EQ(seen[0].target, req.target);
  EXPECT_EQ(seen[0].body, req.body);
  EXPECT_EQ(seen[0].header("Authorization"), std::string("Bearer ") + kToken);
  EXPECT_EQ(seen[0].header("Host"), "127.0.0.1:" + std::to_string(s.server.port()));
  EXPECT_EQ(seen[0].header("User-Agent"), "secrets-proxy");
  EXPECT_EQ(seen[0].header("Accept"), "application/json");
  EXPECT_EQ(seen[0].header("Content-Type"), "application/json");
  EXPECT_EQ(seen[0].header("Content-Length"), std::to_string(req.body.size()));
}

TEST(HttpUpstream, SendsNoContentTypeWhenTheRequestHasNoBody) {
  ScriptedUpstream s(ok_script());
  ApiRequest req = get();
  req.method = Method::del;
  req.target += "/s1?force=true";

  auto result = s.call(req);

  ASSERT_TRUE(result.has_value()) << result.error().message();
  auto seen = s.server.requests();
  ASSERT_EQ(seen.size(), 1u);
  EXPECT_EQ(seen[0].method, "DELETE");
  EXPECT_EQ(seen[0].target, req.target);
  EXPECT_EQ(seen[0].header("Content-Type"), std::nullopt);
  EXPECT_EQ(seen[0].header("Authorization"), std::string("Bearer ") + kToken);
}

TEST(HttpUpstream, ForwardsUnderTheBaseUrlPathPrefix) {
  ScriptedUpstream s(ok_script(), nullptr, [](const ScriptedHttpServer& server) {
    return options_for(server, "/edge/tenant-1/client/v4");
  });

  auto result = s.call(get(std::string(kStoresTarget) + "?page=2&per_page=5"));

  ASSERT_TRUE(result.has_value()) << result.error().message();
  auto seen = s.server.requests();
  ASSERT_EQ(seen.size(), 1u);
  EXPECT_EQ(seen[0].target,
            "/edge/tenant-1/client/v4/accounts/0123456789abcdef0123456789abcdef/secrets_store/"
            "stores?page=2&per_page=5");
}

TEST(HttpUpstream, RefusesATargetOutsideClientV4WithoutContactingTheUpstream) {
  ScriptedUpstream s(ok_script());

  auto outside = s.call(get("/admin/purge"));
  auto lookalike = s.call(get("/client/v4x/accounts"));
  auto injected = s.call(get("/client/v4/accounts HTTP/1.1\r\nX-Evil: 1"));
  ApiRequest other = get();
  other.method = Method::other;
  auto unknown_method = s.call(other);

  EXPECT_EQ(outside.error(), UpstreamErrc::bad_response);
  EXPECT_EQ(lookalike.error(), UpstreamErrc::bad_response);
  EXPECT_EQ(injected.error(), UpstreamErrc::bad_response);
  EXPECT_EQ(unknown_method.error(), UpstreamErrc::bad_response);
  EXPECT_EQ(s.server.accepted_connections(), 0u);
}

TEST(HttpUpstream, DescribesItselfByItsNormalizedBaseUrl) {
  ScriptedUpstream s(ok_script(), nullptr, [](const ScriptedHttpServer& server) {
    return options_for(server, "/edge/client/v4/");
  });
  EXPECT_EQ(s.upstream.describe(),
            "http://127.0.0.1:" + std::to_string(s.server.port()) + "/edge/client/v4");
}

// ---------------------------------------------------------------------------------------
// Status and headers pass through

TEST(HttpUpstream, PassesA429ThroughWithRetryAfterAndRateLimitHeaders) {
  const std::string body =
      R"({"success":false,"errors":[{"code":971,"message":"Please wait and consider throttling your request speed"}],"messages":[],"result":null})";
  ScriptedUpstream s([&](const ReceivedRequest&) {
    return ScriptedReply::json(429, body)
        .with_header("Retry-After", "30")
        .with_header("Ratelimit", "\"default\";r=0;t=30")
        .with_header("Ratelimit-Policy", "\"burst\";q=1200;w=300");
  });

  auto result = s.call();

  ASSERT_TRUE(result.has_value()) << result.error().message();
  EXPECT_EQ(result->status, 429u);
  EXPECT_EQ(result->body, body);
  EXPECT_EQ(result->retry_after, "30");
  EXPECT_EQ(result->ratelimit, "\"default\";r=0;t=30");
  EXPECT_EQ(result->ratelimit_policy, "\"burst\";q=1200;w=300");
}

TEST(HttpUpstream, PassesA5xxThroughAsAnAnswerNotATransportError) {
  ScriptedUpstream s([](const ReceivedRequest&) {
    return ScriptedReply::json(503, R"({"success":false,"errors":[{"code":1002,"message":"x"}]})")
        .with_header("Retry-After", "5");
  });

  auto result = s.call();

  ASSERT_TRUE(result.has_value()) << result.error().message();
  EXPECT_EQ(result->status, 503u);
  EXPECT_EQ(result->retry_after, "5");
  EXPECT_EQ(result->ratelimit, std::nullopt);
}

TEST(HttpUpstream, ReadsAChunkedResponseBody) {
  ScriptedUpstream s([](const ReceivedRequest&) {
    auto r = ScriptedReply::json(200, kOkBody);
    r.chunked = true;
    return r;
  });

  auto first = s.call();
  auto second = s.call();

  ASSERT_TRUE(first.has_value()) << first.error().message();
  ASSERT_TRUE(second.has_value()) << second.error().message();
  EXPECT_EQ(first->body, kOkBody);
  EXPECT_EQ(s.server.accepted_connections(), 1u);
}

// ---------------------------------------------------------------------------------------
// Transport failures

// The error of one call whose response is `raw` (then the connection closes).
boost::system::error_code error_of_a_call_answered_with(std::string raw) {
  ScriptedUpstream s([raw](const ReceivedRequest&) { return ScriptedReply::raw_bytes(raw); });
  auto result = s.call();
  return result.has_value() ? boost::system::error_code{} : result.error();
}

TEST(HttpUpstream, ReportsARefusedConnectionAsUnreachable) {
  HttpUpstream upstream(unreachable_options());
  asio::io_context io;

  auto result = run_call(io, upstream, get());

  EXPECT_EQ(result.error(), UpstreamErrc::unreachable);
}

TEST(HttpUpstream, TimesOutAServerThatNeverAnswers) {
  ScriptedUpstream s([](const ReceivedRequest&) { return ScriptedReply::of(Kind::never_respond); },
                     [](HttpUpstreamOptions& o) { o.request_timeout = 200ms; });

  const auto start = Clock::now();
  auto result = s.call();
  const auto elapsed = Clock::now() - start;

  EXPECT_EQ(result.error(), UpstreamErrc::timeout);
  EXPECT_GE(elapsed, 190ms);
  EXPECT_LT(elapsed, 2s);
  EXPECT_EQ(s.server.request_count(), 1u);
}

TEST(HttpUpstream, TimesOutAConnectThatIsNeverAccepted) {
  // A listener with a full accept queue drops further SYNs, so the connect hangs.
  asio::io_context server_io;
  asio::ip::tcp::acceptor listener(server_io);
  const asio::ip::tcp::endpoint any_port{asio::ip::make_address("127.0.0.1"), 0};
  listener.open(any_port.protocol());
  listener.bind(any_port);
  listener.listen(0);
  const auto port = listener.local_endpoint().port();
  std::vector<std::unique_ptr<asio::ip::tcp::socket>> fillers;
  for (int i = 0; i < 2; ++i) {
    // async_connect issues the non-blocking connect(2) at once; server_io never runs.
    auto s = std::make_unique<asio::ip::tcp::socket>(server_io);
    s->async_connect({asio::ip::make_address("127.0.0.1"), port}, [](boost::system::error_code) {});
    fillers.push_back(std::move(s));
  }
  std::this_thread::sleep_for(50ms);  // let the handshakes of the fillers settle
  HttpUpstreamOptions opts;
  opts.base_url = parse_base_url("http://127.0.0.1:" + std::to_string(port) + "/client/v4");
  opts.token = kToken;
  opts.connect_timeout = 200ms;
  opts.request_timeout = 5s;
  HttpUpstream upstream(opts);
  asio::io_context io;

  const auto start = Clock::now();
  auto result = run_call(io, upstream, get());
  const auto elapsed = Clock::now() - start;

  EXPECT_EQ(result.error(), UpstreamErrc::timeout);
  EXPECT_LT(elapsed, 2s);
}

TEST(HttpUpstream, ReportsAResetMidResponseAsConnectionReset) {
  ScriptedUpstream s([](const ReceivedRequest&) {
    auto r = ScriptedReply::json(200, std::string(2000, 'x'));
    r.kind = Kind::reset_mid_response;
    return r;
  });

  auto result = s.call();

  EXPECT_EQ(result.error(), UpstreamErrc::connection_reset);
  EXPECT_EQ(s.server.accepted_connections(), 1u);
}

TEST(HttpUpstream, ReportsACloseMidBodyAsConnectionReset) {
  EXPECT_EQ(
      error_of_a_call_answered_with("HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{\"success\":"),
      UpstreamErrc::connection_reset);
}

TEST(HttpUpstream, ReportsAPeerThatDoesNotSpeakHttpAsBadResponse) {
  EXPECT_EQ(error_of_a_call_answered_with("SSH-2.0-OpenSSH_9.2\r\n\r\n"),
            UpstreamErrc::bad_response);
}

TEST(HttpUpstream, RejectsAResponseBodyAboveTheCapAsBadResponse) {
  ScriptedUpstream s(
      [](const ReceivedRequest& r) {
        auto reply = ScriptedReply::json(200, std::string(4096, 'x'));
        reply.chunked = r.index % 2 == 1;
        return reply;
      },
      [](HttpUpstreamOptions& o) { o.max_response_bytes = 1024; });

  auto with_length = s.call();
  auto chunked = s.call();

  EXPECT_EQ(with_length.error(), UpstreamErrc::bad_response);
  EXPECT_EQ(chunked.error(), UpstreamErrc::bad_response);
}

TEST(HttpUpstream, RejectsADeclaredBodyAboveTheDefaultSixteenMebibyteCap) {
  EXPECT_EQ(error_of_a_call_answered_with("HTTP/1.1 200 OK\r\nContent-Length: 16777217\r\n\r\n{"),
            UpstreamErrc::bad_response);
}

// ---------------------------------------------------------------------------------------
// Base URLs

TEST(BaseUrl, ParsesHostPortAndPathPrefix) {
  auto url = parse_base_url("http://127.0.0.1:9000/edge/client/v4");
  EXPECT_EQ(url.scheme, BaseUrl::Scheme::http);
  EXPECT_EQ(url.host, "127.0.0.1");
  EXPECT_EQ(url.port, 9000);
  EXPECT_EQ(url.path, "/edge/client/v4");
  EXPECT_EQ(url.host_header(), "127.0.0.1:9000");
}

TEST(BaseUrl, DefaultsThePortByScheme) {
  auto https = parse_base_url("HTTPS://API.Cloudflare.com/client/v4/");
  EXPECT_EQ(https.scheme, BaseUrl::Scheme::https);
  EXPECT_EQ(https.host, "api.cloudflare.com");
  EXPECT_EQ(https.port, 443);
  EXPECT_EQ(https.path, "/client/v4");
  EXPECT_EQ(https.host_header(), "api.cloudflare.com");
  EXPECT_EQ(https.to_string(), "https://api.cloudflare.com/client/v4");
  EXPECT_EQ(parse_base_url("http://localhost/client/v4").port, 80);
}

TEST(BaseUrl, AcceptsBracketedIpv6Literals) {
  auto url = parse_base_url("http://[::1]:8080/client/v4");
  EXPECT_EQ(url.host, "::1");
  EXPECT_EQ(url.host_header(), "[::1]:8080");
  EXPECT_EQ(url.to_string(), "http://[::1]:8080/client/v4");
}

TEST(BaseUrl, RejectsMalformedUrlsWithAClearMessage) {
  const auto message_for = [](std::string_view url) {
    try {
      parse_base_url(url);
    } catch (const std::runtime_error& e) {
      return std::string(e.what());
    }
    return std::string("(accepted)");
  };
  EXPECT_THAT(message_for("127.0.0.1:9000/client/v4"), HasSubstr("upstream.base_url"));
  EXPECT_THAT(message_for("ftp://host/client/v4"), HasSubstr("scheme must be http or https"));
  EXPECT_THAT(message_for("http://host:9000/v4"), HasSubstr("must end with /client/v4"));
  EXPECT_THAT(message_for("http://host:9000"), HasSubstr("must end with /client/v4"));
  EXPECT_THAT(message_for("http://host:9000/myclient/v4"), HasSubstr("must end with /client/v4"));
  EXPECT_THAT(message_for("http://host:0/client/v4"), HasSubstr("port"));
  EXPECT_THAT(message_for("http://host:65536/client/v4"), HasSubstr("port"));
  EXPECT_THAT(message_for("http://host:/client/v4"), HasSubstr("port"));
  EXPECT_THAT(message_for("http://host:9x/client/v4"), HasSubstr("port"));
  EXPECT_THAT(message_for("http:///client/v4"), HasSubstr("missing host"));
  EXPECT_THAT(message_for("http://ho st/client/v4"), HasSubstr("invalid host"));
  EXPECT_THAT(message_for("http://[::1/client/v4"), HasSubstr("IPv6"));
  EXPECT_THAT(message_for("http://host/client/v4?x=1"), HasSubstr("query or fragment"));
  EXPECT_THAT(message_for("http://host/client/v4#top"), HasSubstr("query or fragment"));
}

TEST(BaseUrl, NeverEchoesUserInformationInItsError) {
  std::string message;
  try {
    parse_base_url("http://user:hunter2@host/client/v4");
  } catch (const std::runtime_error& e) {
    message = e.what();
  }
  EXPECT_THAT(message, HasSubstr("user information"));
  EXPECT_THAT(message, Not(HasSubstr("hunter2")));
}

TEST(HttpUpstream, RefusesAnEmptyOrHeaderBreakingToken) {
  HttpUpstreamOptions opts;
  opts.base_url = parse_base_url("http://127.0.0.1:9/client/v4");
  opts.token = "";
  EXPECT_THROW(HttpUpstream{opts}, std::runtime_error);
  opts.token = "abc\r\nX-Evil: 1";
  try {
    HttpUpstream upstream(opts);
    ADD_FAILURE() << "a token with CR LF was accepted";
  } catch (const std::runtime_error& e) {
    EXPECT_THAT(std::string(e.what()), Not(HasSubstr("abc")));
  }
}

// ---------------------------------------------------------------------------------------
// Email + global API key credential

// The error message of constructing an HttpUpstream with `opts` ("(accepted)" if none).
std::string constructor_error(const HttpUpstreamOptions& opts) {
  try {
    HttpUpstream upstream(opts);
  } catch (const std::runtime_error& e) {
    return e.what();
  }
  return "(accepted)";
}

TEST(HttpUpstream, SendsTheEmailAndGlobalApiKeyHeadersAndNoAuthorization) {
  ScriptedUpstream s(ok_script(), [](HttpUpstreamOptions& o) {
    o.token.clear();
    o.email = kEmail;
    o.api_key = kApiKey;
  });

  auto read = s.call();
  auto write = s.call(post_secret());

  ASSERT_TRUE(read.has_value()) << read.error().message();
  ASSERT_TRUE(write.has_value()) << write.error().message();
  ASSERT_EQ(s.server.request_count(), 2u);
  for (const auto& seen : s.server.requests()) {
    EXPECT_EQ(seen.header("X-Auth-Email"), kEmail);
    EXPECT_EQ(seen.header("X-Auth-Key"), kApiKey);
    EXPECT_EQ(seen.header("Authorization"), std::nullopt);
  }
}

TEST(HttpUpstream, SendsNoKeyHeadersWithAnApiToken) {
  ScriptedUpstream s(ok_script());

  ASSERT_TRUE(s.call().has_value());

  const auto seen = s.server.requests().at(0);
  EXPECT_EQ(seen.header("Authorization"), std::string("Bearer ") + kToken);
  EXPECT_EQ(seen.header("X-Auth-Email"), std::nullopt);
  EXPECT_EQ(seen.header("X-Auth-Key"), std::nullopt);
}

TEST(HttpUpstream, RefusesBothCredentialKindsOrHalfAPairWithoutNamingTheValues) {
  HttpUpstreamOptions opts;
  opts.base_url = parse_base_url("http://127.0.0.1:9/client/v4");
  opts.token = kToken;
  opts.email = kEmail;
  opts.api_key = kApiKey;
  EXPECT_THAT(constructor_error(opts), HasSubstr("not both"));
  opts.token.clear();
  opts.api_key.clear();
  EXPECT_THAT(constructor_error(opts), HasSubstr("the global API key is empty"));
  opts.email.clear();
  opts.api_key = kApiKey;
  EXPECT_THAT(constructor_error(opts), HasSubstr("the account email is empty"));
  opts.email = kEmail;
  opts.api_key = std::string(kApiKey) + "\r\nX-Evil: 1";
  const std::string broken_key = constructor_error(opts);
  EXPECT_THAT(broken_key, HasSubstr("global API key contains characters"));
  opts.api_key = kApiKey;
  opts.email = "ops@example.com\nX-Evil: 1";
  EXPECT_THAT(constructor_error(opts), HasSubstr("account email contains characters"));
  for (const std::string& message : {broken_key, constructor_error(opts)}) {
    EXPECT_THAT(message, Not(HasSubstr(kApiKey)));
    EXPECT_THAT(message, Not(HasSubstr(kEmail)));
  }
}

}  // namespace
}  // namespace sproxy::upstream
