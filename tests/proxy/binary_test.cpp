// End-to-end tests of the built `secrets-proxy` binary: flags, start-up errors, a real
// run (listening line, requests, SIGTERM, exit code), environment overrides and
// `token new`.
#include "tests/proxy/binary_fixture.hpp"

namespace sproxy::test {
namespace {

using namespace binary_testing;

TEST_F(SecretsProxyBinary, PrintsItsVersion) {
  const auto r = run_binary({"--version"}, dir_.path());
  EXPECT_EQ(r.exit_code, 0);
  EXPECT_EQ(r.out, std::string("secrets-proxy ") + SPROXY_EXPECTED_VERSION + "\n");
}

TEST_F(SecretsProxyBinary, PrintsUsageForHelp) {
  const auto r = run_binary({"--help"}, dir_.path());
  EXPECT_EQ(r.exit_code, 0);
  EXPECT_THAT(r.out, HasSubstr("--check-config"));
}

TEST_F(SecretsProxyBinary, RejectsUnknownFlagsWithOneLine) {
  const auto r = run_binary({"--bogus"}, dir_.path());
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_THAT(r.err, StartsWith("secrets-proxy: unknown argument \"--bogus\""));
  EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1);
}

TEST_F(SecretsProxyBinary, NeedsAConfigWhenTheExampleIsNotThere) {
  const auto r = run_binary({}, dir_.path());
  EXPECT_NE(r.exit_code, 0);
  EXPECT_THAT(r.err, HasSubstr("no --config given"));
}

TEST_F(SecretsProxyBinary, ChecksAValidConfig) {
  const auto path = write_config(valid_config());
  const auto r = run_binary({"--check-config", "--config", path.string()}, dir_.path());
  EXPECT_EQ(r.exit_code, 0);
  EXPECT_EQ(r.out, "config OK\n");
}

TEST_F(SecretsProxyBinary, ListsEveryProblemOfAnInvalidConfigOnePerLine) {
  json j = valid_config();
  j["listen"]["port"] = 70000;
  j["cache"] = {{"shards", 0}};
  const auto path = write_config(j);
  const auto r = run_binary({"--check-config", "--config", path.string()}, dir_.path());
  EXPECT_EQ(r.exit_code, 1);
  // Keys are visited in sorted order (nlohmann::json objects are ordered maps).
  EXPECT_EQ(r.err,
            "$.cache.shards: must be between 1 and 65536\n"
            "$.listen.port: must be between 0 and 65535\n");
}

TEST_F(SecretsProxyBinary, RefusesToStartWithAnInvalidConfigInOneLine) {
  json j = valid_config();
  j["listen"]["threads"] = 0;
  const auto path = write_config(j);
  const auto r = run_binary({"--config", path.string()}, dir_.path());
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_THAT(r.err, HasSubstr("$.listen.threads: must be between 1 and 1024"));
  EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1);
}

TEST_F(SecretsProxyBinary, RefusesToStartOnAPortThatIsTakenInOneLine) {
  boost::asio::io_context ioc;
  boost::asio::ip::tcp::acceptor blocker(ioc, {boost::asio::ip::make_address("127.0.0.1"), 0});
  const auto path = write_config(valid_config(blocker.local_endpoint().port()));
  const auto r = run_binary({"--config", path.string()}, dir_.path());
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_THAT(r.err, HasSubstr("secrets-proxy: cannot listen on 127.0.0.1:"));
  EXPECT_TRUE(r.out.empty());
}

TEST_F(SecretsProxyBinary, ServesRequestsAndExitsCleanlyOnSigterm) {
  const auto path = write_config(valid_config());
  const auto err_path = dir_.path() / "server-stderr.txt";
  Spawned child = spawn_process(SPROXY_BINARY, {"--config", path.string()}, err_path, dir_.path());

  const auto line = read_stdout_line(child.stdout_fd);
  ASSERT_TRUE(line.has_value()) << read_text_file(err_path);
  std::smatch m;
  ASSERT_TRUE(std::regex_match(*line, m,
                               std::regex(R"(secrets-proxy listening on http://127\.0\.0\.1:(\d+) )"
                                          R"(\(upstream: embedded, threads: 2\))")))
      << *line;
  const auto port = static_cast<unsigned short>(std::stoi(m[1].str()));
  ASSERT_NE(port, 0);

  {
    HttpTestClient client({boost::asio::ip::make_address("127.0.0.1"), port});
    EXPECT_EQ(client.get("/healthz").result_int(), 200);
    auto created = client.post(api_base(kAccount) + "/stores", R"({"name":"e2e"})", bearer(kToken));
    EXPECT_EQ(created.result_int(), 200) << created.body();
    auto listed = client.get(api_base(kAccount) + "/stores", bearer(kToken));
    EXPECT_EQ(listed.result_int(), 200);
    EXPECT_EQ(body_json(listed)["result"].size(), 1u);
    EXPECT_EQ(client.get(api_base(kAccount) + "/stores", bearer("wrong")).result_int(), 403);
  }

  ASSERT_EQ(::kill(child.pid, SIGTERM), 0);
  const auto code = wait_for_exit(child.pid);
  ::close(child.stdout_fd);
  const std::string log = read_text_file(log_path());
  EXPECT_EQ(code, 0) << log << read_text_file(err_path);
  EXPECT_THAT(log, HasSubstr("stopped"));
  // Logs never carry credentials.
  EXPECT_THAT(log, ::testing::Not(HasSubstr(kToken)));
  EXPECT_THAT(read_text_file(err_path), ::testing::Not(HasSubstr(kToken)));
  // Every line is one JSON object; each request has an access line.
  std::istringstream lines(log);
  int access = 0;
  for (std::string line; std::getline(lines, line);) {
    json j;
    ASSERT_NO_THROW(j = json::parse(line)) << line;
    EXPECT_TRUE(j.contains("time") && j.contains("level") && j.contains("msg")) << line;
    if (j["msg"] == "access") ++access;
  }
  EXPECT_EQ(access, 4);
}

TEST_F(SecretsProxyBinary, CheckConfigAppliesTheEnvironmentOverrides) {
  const auto path = write_config(valid_config());
  ::setenv("SPROXY_LISTEN_PORT", "70000", 1);
  ::setenv("SPROXY_LOG_FORMAT", "yaml", 1);
  const auto r = run_binary({"--check-config", "--config", path.string()}, dir_.path());
  ::unsetenv("SPROXY_LISTEN_PORT");
  ::unsetenv("SPROXY_LOG_FORMAT");
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_EQ(r.err,
            "env SPROXY_LISTEN_PORT: must be between 0 and 65535\n"
            "env SPROXY_LOG_FORMAT: unknown value \"yaml\" (expected json or text)\n");
}

TEST_F(SecretsProxyBinary, ListensWhereTheEnvironmentSays) {
  boost::asio::io_context ioc;
  boost::asio::ip::tcp::acceptor probe(ioc, {boost::asio::ip::make_address("127.0.0.1"), 0});
  const auto port = probe.local_endpoint().port();
  probe.close();
  const auto path = write_config(valid_config());
  ::setenv("SPROXY_LISTEN_PORT", std::to_string(port).c_str(), 1);
  Spawned child = spawn_process(SPROXY_BINARY, {"--config", path.string()}, dir_.path() / "err.txt",
                                dir_.path());
  ::unsetenv("SPROXY_LISTEN_PORT");
  const auto line = read_stdout_line(child.stdout_fd);
  ::kill(child.pid, SIGTERM);
  EXPECT_EQ(wait_for_exit(child.pid), 0);
  ::close(child.stdout_fd);
  ASSERT_TRUE(line.has_value()) << read_text_file(dir_.path() / "err.txt");
  EXPECT_THAT(*line, HasSubstr("127.0.0.1:" + std::to_string(port) + " "));
}

TEST_F(SecretsProxyBinary, PrintsANewTokenItsHashAndAClientEntryThatWorksInAConfig) {
  const auto r = run_binary({"token", "new", "--name", "billing", "--services", "workers,dex",
                             "--permissions", "read,write"},
                            dir_.path());
  ASSERT_EQ(r.exit_code, 0) << r.err;
  std::smatch m;
  ASSERT_TRUE(std::regex_search(r.out, m, std::regex(R"(token: (sproxy_[A-Za-z0-9_-]{43})\n)")))
      << r.out;
  const std::string token = m[1].str();
  ASSERT_TRUE(std::regex_search(r.out, m, std::regex(R"(token_sha256: ([0-9a-f]{64})\n)")));
  EXPECT_EQ(m[1].str(), upstream::sha256_hex(token));
  const json entry = json::parse(r.out.substr(r.out.find('{')));
  EXPECT_EQ(entry["name"], "billing");
  EXPECT_EQ(entry["token_sha256"], upstream::sha256_hex(token));
  EXPECT_EQ(entry["services"], json({"workers", "dex"}));
  EXPECT_EQ(entry["permissions"], json({"read", "write"}));
  EXPECT_TRUE(r.err.empty()) << r.err;

  // A second run gives another token.
  const auto again = run_binary({"token", "new", "--name", "billing"}, dir_.path());
  ASSERT_EQ(again.exit_code, 0);
  EXPECT_THAT(again.out, ::testing::Not(HasSubstr(token)));

  // The printed entry is a valid client: the token works against the proxy.
  json config = valid_config();
  config["clients"].push_back(entry);
  RunningProxy proxy(write_config(config), dir_.path());
  auto client = proxy.connect();
  EXPECT_EQ(client->get(api_base(kAccount) + "/stores", bearer(token)).result_int(), 200);
  // read+write without admin: creating a store is refused.
  EXPECT_EQ(
      client->post(api_base(kAccount) + "/stores", R"({"name":"x"})", bearer(token)).result_int(),
      403);
  EXPECT_EQ(proxy.stop(), 0);
  EXPECT_THAT(read_text_file(proxy.log_path()), ::testing::Not(HasSubstr(token)));
}

TEST_F(SecretsProxyBinary, RefusesATokenRequestWithAnUnknownServiceInOneLine) {
  const auto r = run_binary({"token", "new", "--name", "x", "--services", "mail"}, dir_.path());
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_THAT(r.err, HasSubstr("--services: \"mail\" is not a service"));
  EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1);
  EXPECT_TRUE(r.out.empty());
}

}  // namespace
}  // namespace sproxy::test
