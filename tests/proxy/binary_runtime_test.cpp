// The built `secrets-proxy` binary at run time: the store key checked at start and
// rotated, SIGHUP reloads of identities and certificates, TLS and a Unix socket, the
// audit log, and the warm start from a saved cache.
#include "tests/proxy/binary_fixture.hpp"

namespace sproxy::test {
namespace {

using namespace binary_testing;

// ---------------------------------------------------------------------------------------
// The store key: checked at start, rotated by `store rotate-key`

struct SeededSecret {
  std::string store_id;
  std::string secret_id;
};

// Runs the proxy on `config` once to create a store holding one secret, then stops it.
SeededSecret seed_one_secret(const std::filesystem::path& config,
                             const std::filesystem::path& dir) {
  RunningProxy proxy(config, dir);
  auto c = proxy.connect();
  SeededSecret out;
  auto store = c->post(api_base(kAccount) + "/stores", R"({"name":"keyed"})", bearer(kToken));
  EXPECT_EQ(store.result_int(), 200) << store.body();
  out.store_id = body_json(store)["result"]["id"];
  auto secret = c->post(api_base(kAccount) + "/stores/" + out.store_id + "/secrets",
                        R"([{"name":"db_url","value":"postgres://sealed","scopes":["workers"]}])",
                        bearer(kToken));
  EXPECT_EQ(secret.result_int(), 200) << secret.body();
  out.secret_id = body_json(secret)["result"][0]["id"];
  EXPECT_EQ(proxy.stop(), 0);
  return out;
}

std::string one_line(const std::string& text) {
  return std::count(text.begin(), text.end(), '\n') == 1 ? text : "not one line: " + text;
}

TEST_F(SecretsProxyBinary, RefusesToStartInOneLineWhenTheStoreKeyFileIsMissingOrAnother) {
  const auto config = write_config(valid_config());
  seed_one_secret(config, dir_.path());
  const auto key_file = dir_.path() / "data" / "store.key";
  const std::string key = read_text_file(key_file);

  std::filesystem::remove(key_file);
  auto r = run_binary({"--config", config.string()}, dir_.path());
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_THAT(one_line(r.err),
              StartsWith("secrets-proxy: store key file " + key_file.string() + " is missing"));
  EXPECT_TRUE(r.out.empty());
  EXPECT_FALSE(std::filesystem::exists(key_file));

  std::ofstream(key_file) << upstream::to_hex(upstream::random_bytes(32)) << "\n";
  ::chmod(key_file.c_str(), 0600);
  r = run_binary({"--config", config.string()}, dir_.path());
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_THAT(one_line(r.err), StartsWith("secrets-proxy: store key file " + key_file.string() +
                                          " does not match embedded store"));

  // rotate-key refuses the same key, and changes nothing.
  const std::string other = read_text_file(key_file);
  r = run_binary({"store", "rotate-key", "--config", config.string()}, dir_.path());
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_THAT(one_line(r.err), HasSubstr("does not match"));
  EXPECT_EQ(read_text_file(key_file), other);

  std::ofstream(key_file, std::ios::trunc) << key;
  RunningProxy proxy(config, dir_.path());
  EXPECT_EQ(proxy.stop(), 0);
}

TEST_F(SecretsProxyBinary, RotatesTheStoreKeyAndStillServesTheOldSecrets) {
  const auto config = write_config(valid_config());
  const SeededSecret seeded = seed_one_secret(config, dir_.path());
  const auto key_file = dir_.path() / "data" / "store.key";
  const std::string old_key = read_text_file(key_file);

  const auto r = run_binary({"store", "rotate-key", "--config", config.string()}, dir_.path());
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.out, "re-sealed 1 value under a new key; " + key_file.string() +
                       " now holds it (a backup taken before opens only with the key file backed "
                       "up with it)\n");
  EXPECT_TRUE(r.err.empty()) << r.err;
  const std::string new_key = read_text_file(key_file);
  EXPECT_NE(new_key, old_key);
  EXPECT_THAT(r.out, ::testing::Not(HasSubstr(new_key.substr(0, 16))));
  EXPECT_THAT(r.out, ::testing::Not(HasSubstr(old_key.substr(0, 16))));
  struct stat st {};
  ASSERT_EQ(::stat(key_file.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);

  // The value sealed before the rotation is still there: a server-side copy of it works.
  RunningProxy proxy(config, dir_.path());
  auto c = proxy.connect();
  auto copy = c->post(api_base(kAccount) + "/stores/" + seeded.store_id + "/secrets/" +
                          seeded.secret_id + "/duplicate",
                      R"({"name":"db_url_copy","scopes":["workers"]})", bearer(kToken));
  EXPECT_EQ(copy.result_int(), 200) << copy.body();
  EXPECT_EQ(proxy.stop(), 0);
}

TEST_F(SecretsProxyBinary, ReloadsIdentitiesOnSighupWithoutDroppingConnections) {
  const std::string removed = "reload-removed-token";
  const std::string kept = "reload-kept-token";
  const std::string added = "reload-added-token";
  json config = valid_config();
  config["clients"] = {client_entry("removed", removed, {"read"}),
                       client_entry("kept", kept, {"read"})};
  const auto path = write_config(config);
  RunningProxy proxy(path, dir_.path());
  const std::string stores = api_base(kAccount) + "/stores";

  auto removed_conn = proxy.connect();
  auto kept_conn = proxy.connect();
  ASSERT_EQ(removed_conn->get(stores, bearer(removed)).result_int(), 200);
  ASSERT_EQ(kept_conn->get(stores, bearer(kept)).result_int(), 200);
  const auto kept_port = kept_conn->local_port();

  config["clients"] = {client_entry("kept", kept, {"read"}),
                       client_entry("added", added, {"read"})};
  write_config(config);
  proxy.signal(SIGHUP);
  ASSERT_TRUE(file_gets(proxy.log_path(), "reloaded identities"))
      << read_text_file(proxy.log_path());

  // The removed token stops at once, on its open connection and on new ones.
  EXPECT_EQ(removed_conn->get(stores, bearer(removed)).result_int(), 403);
  EXPECT_EQ(proxy.connect()->get(stores, bearer(removed)).result_int(), 403);
  // The other client's keep-alive connection carries on (the same connection).
  auto kept_res = kept_conn->get(stores, bearer(kept));
  EXPECT_EQ(kept_res.result_int(), 200);
  EXPECT_TRUE(kept_res.keep_alive());
  EXPECT_EQ(kept_conn->local_port(), kept_port);
  EXPECT_EQ(proxy.connect()->get(stores, bearer(added)).result_int(), 200);

  // A broken config is rejected and the current identities stay.
  std::ofstream(path) << R"({"clients": [ {"name": "broken")";
  proxy.signal(SIGHUP);
  ASSERT_TRUE(file_gets(proxy.log_path(), "reload rejected")) << read_text_file(proxy.log_path());
  EXPECT_EQ(kept_conn->get(stores, bearer(kept)).result_int(), 200);
  EXPECT_EQ(proxy.connect()->get(stores, bearer(added)).result_int(), 200);
  EXPECT_EQ(proxy.connect()->get(stores, bearer(removed)).result_int(), 403);

  // So is a config that parses but breaks a rule.
  config["clients"] = {client_entry("only", "only-token", {"read"})};
  config["clients"][0]["permissions"] = {"superuser"};
  write_config(config);
  proxy.signal(SIGHUP);
  ASSERT_TRUE(file_gets(proxy.log_path(), "reload rejected", 2));
  EXPECT_EQ(kept_conn->get(stores, bearer(kept)).result_int(), 200);

  EXPECT_EQ(proxy.stop(), 0);
  const std::string log = read_text_file(proxy.log_path());
  EXPECT_THAT(log, HasSubstr("unknown permission"));
  for (const auto& token : {removed, kept, added})
    EXPECT_THAT(log, ::testing::Not(HasSubstr(token)));
}

TEST_F(SecretsProxyBinary, ServesTlsAndAUnixSocketAndReloadsTheCertificateOnSighup) {
  const TestCa first_ca("first CA");
  const TestCa second_ca("second CA");
  const auto cert = dir_.path() / "server.pem";
  const auto key = dir_.path() / "server.key";
  const IssuedCert first = first_ca.issue(loopback_server());
  write_file(cert, first.cert_pem);
  write_file(key, first.key_pem);
  const auto socket_path = dir_.path() / "proxy.sock";
  json config = valid_config();
  config["listen"]["tls"] = {{"cert_file", cert.string()}, {"key_file", key.string()}};
  config["listen"]["unix_socket"] = {{"path", socket_path.string()}, {"mode", "0600"}};
  RunningProxy proxy(write_config(config), dir_.path());
  const std::string stores = api_base(kAccount) + "/stores";

  TlsTestClient before(tls_client_context(first_ca.cert_pem()));
  ASSERT_FALSE(before.connect(proxy.endpoint()));
  EXPECT_EQ(before.get(stores, bearer(kToken)).result_int(), 200);
  UnixTestClient local;
  ASSERT_FALSE(local.connect(boost::asio::local::stream_protocol::endpoint(socket_path.string())));
  EXPECT_EQ(local.get(stores, bearer(kToken)).result_int(), 200);

  // A key that does not load: an error line, and the current certificate stays.
  write_file(key, "not a key\n");
  proxy.signal(SIGHUP);
  ASSERT_TRUE(file_gets(proxy.log_path(), "TLS reload failed")) << read_text_file(proxy.log_path());
  TlsTestClient still_first(tls_client_context(first_ca.cert_pem()));
  EXPECT_FALSE(still_first.connect(proxy.endpoint()));

  const IssuedCert second = second_ca.issue(loopback_server());
  write_file(cert, second.cert_pem);
  write_file(key, second.key_pem);
  proxy.signal(SIGHUP);
  ASSERT_TRUE(file_gets(proxy.log_path(), "reloaded the TLS certificate"))
      << read_text_file(proxy.log_path());
  TlsTestClient after(tls_client_context(second_ca.cert_pem()));
  ASSERT_FALSE(after.connect(proxy.endpoint()));
  EXPECT_EQ(after.get(stores, bearer(kToken)).result_int(), 200);
  TlsTestClient stale(tls_client_context(first_ca.cert_pem()));
  EXPECT_TRUE(stale.connect(proxy.endpoint()));
  // Connections open before the reload carry on.
  EXPECT_EQ(before.get(stores, bearer(kToken)).result_int(), 200);
  EXPECT_EQ(local.get(stores, bearer(kToken)).result_int(), 200);

  EXPECT_EQ(proxy.stop(), 0);
  EXPECT_FALSE(std::filesystem::exists(socket_path));
}

TEST_F(SecretsProxyBinary, WritesAnAuditLineForEveryWriteAndDenialWithoutValuesOrTokens) {
  const std::string canary_value = "CANARY-VALUE-in-binary-test";
  const std::string unknown_token = "CANARY-UNKNOWN-TOKEN";
  const auto audit_path = dir_.path() / "audit.jsonl";
  json config = valid_config();
  config["audit"] = {{"path", audit_path.string()}};
  RunningProxy proxy(write_config(config), dir_.path());
  auto client = proxy.connect();
  auto store = client->post(api_base(kAccount) + "/stores", R"({"name":"a"})", bearer(kToken));
  ASSERT_EQ(store.result_int(), 200) << store.body();
  const std::string secrets = api_base(kAccount) + "/stores/" +
                              body_json(store)["result"]["id"].get<std::string>() + "/secrets";
  const json item = {{"name", "AUDITED"}, {"value", canary_value}, {"scopes", {"workers"}}};
  ASSERT_EQ(client->post(secrets, json::array({item}).dump(), bearer(kToken)).result_int(), 200);
  EXPECT_EQ(client->get(secrets, bearer(unknown_token)).result_int(), 403);
  EXPECT_EQ(client->get(secrets, bearer(kToken)).result_int(), 200);  // reads: not audited
  EXPECT_EQ(proxy.stop(), 0);

  const std::string audit = read_text_file(audit_path);
  std::vector<json> lines;
  std::istringstream in(audit);
  for (std::string line; std::getline(in, line);) lines.push_back(json::parse(line));
  ASSERT_EQ(lines.size(), 3u) << audit;
  EXPECT_EQ(lines[0]["route"], "/stores");
  EXPECT_EQ(lines[1]["route"], "/stores/{store_id}/secrets");
  EXPECT_EQ(lines[1]["client"], "e2e");
  EXPECT_EQ(lines[1]["decision"], "allow");
  EXPECT_EQ(lines[1]["secrets"][0]["name"], "AUDITED");
  EXPECT_EQ(lines[2]["decision"], "deny");
  EXPECT_EQ(lines[2]["reason"], "unknown_credentials");
  for (const std::string& needle : {canary_value, unknown_token, kToken}) {
    EXPECT_THAT(audit, ::testing::Not(HasSubstr(needle)));
    EXPECT_THAT(read_text_file(proxy.log_path()), ::testing::Not(HasSubstr(needle)));
  }
}

// ---------------------------------------------------------------------------------------
// Warm start (cache.persist): a restarted proxy serves its saved cache with the upstream
// gone. The upstream is a second binary serving the embedded store.

// Creates a store holding one secret (db_url) through `origin`; its ids go to `store_id`
// and `secret_id`.
void seed_warm_secret(RunningProxy& origin, std::string& store_id, std::string& secret_id) {
  auto c = origin.connect();
  auto store = c->post(api_base(kAccount) + "/stores", R"({"name":"warm"})", bearer(kToken));
  ASSERT_EQ(store.result_int(), 200) << store.body();
  store_id = body_json(store)["result"]["id"];
  auto secret = c->post(api_base(kAccount) + "/stores/" + store_id + "/secrets",
                        R"([{"name":"db_url","value":"postgres://hidden","scopes":["workers"]}])",
                        bearer(kToken));
  ASSERT_EQ(secret.result_int(), 200) << secret.body();
  secret_id = body_json(secret)["result"][0]["id"];
}

// The edge proxy's config, from `j` (valid_config()): the origin on `origin_port` as its
// http upstream with the token in edge_dir/upstream.token, and its cache, with the given
// secrets TTL, saved to `snapshot`.
json warm_edge_config(json j, const std::filesystem::path& edge_dir,
                      const std::filesystem::path& snapshot, unsigned short origin_port,
                      long secrets_ttl_ms) {
  j.erase("store");
  j["log"]["file"] = (edge_dir / "proxy.log").string();
  j["upstream"] = {{"kind", "http"},
                   {"base_url", "http://127.0.0.1:" + std::to_string(origin_port) + "/client/v4"},
                   {"token_file", (edge_dir / "upstream.token").string()},
                   {"max_retries", 0}};
  j["cache"] = {
      {"ttl", {{"secrets_ms", secrets_ttl_ms}}},
      {"stale_while_revalidate_ms", 0},
      {"persist", {{"path", snapshot.string()}, {"key_file", (edge_dir / "cache.key").string()}}}};
  return j;
}

TEST_F(SecretsProxyBinary, ServesItsSavedCacheAfterARestartWhileTheUpstreamIsDown) {
  const auto upstream_dir = dir_.path() / "upstream";
  const auto edge_dir = dir_.path() / "edge";
  std::filesystem::create_directories(upstream_dir);
  std::filesystem::create_directories(edge_dir);
  json origin_config = valid_config();
  origin_config["log"]["file"] = (upstream_dir / "proxy.log").string();
  auto origin =
      std::make_unique<RunningProxy>(write_config(origin_config, "upstream.json"), upstream_dir);
  std::string store_id;
  std::string secret_id;
  ASSERT_NO_FATAL_FAILURE(seed_warm_secret(*origin, store_id, secret_id));
  const std::string secret_target =
      api_base(kAccount) + "/stores/" + store_id + "/secrets/" + secret_id;

  std::ofstream(edge_dir / "upstream.token") << kToken;
  const auto snapshot = edge_dir / "state" / "cache.snap";
  const unsigned short origin_port = origin->port();
  auto edge_config = [&](long secrets_ttl_ms) {
    return write_config(
        warm_edge_config(valid_config(), edge_dir, snapshot, origin_port, secrets_ttl_ms),
        "edge.json");
  };

  // First run: the read goes to the upstream; SIGTERM saves the cache.
  {
    RunningProxy edge(edge_config(600'000), edge_dir);
    auto c = edge.connect();
    auto miss = c->get(secret_target, bearer(kToken));
    ASSERT_EQ(miss.result_int(), 200) << miss.body();
    EXPECT_EQ(miss["X-Cache"], "MISS");
    EXPECT_EQ(edge.stop(), 0);
    const std::string log = read_text_file(edge.log_path());
    EXPECT_THAT(log, HasSubstr("no cache snapshot at"));
    EXPECT_THAT(log, HasSubstr("cache snapshot saved to"));
  }
  struct stat st {};
  ASSERT_EQ(::stat(snapshot.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
  EXPECT_FALSE(std::filesystem::exists(snapshot.string() + ".tmp"));
  EXPECT_THAT(read_text_file(snapshot), ::testing::Not(HasSubstr("db_url")));
  EXPECT_THAT(read_text_file(snapshot), ::testing::Not(HasSubstr("postgres://hidden")));

  // The upstream goes away for good.
  EXPECT_EQ(origin->stop(), 0);
  origin.reset();

  // Second run: loaded before serving; still fresh, so a HIT without any upstream.
  {
    RunningProxy edge(edge_config(600'000), edge_dir);
    auto c = edge.connect();
    auto hit = c->get(secret_target, bearer(kToken));
    EXPECT_EQ(hit.result_int(), 200) << hit.body();
    EXPECT_EQ(hit["X-Cache"], "HIT");
    EXPECT_EQ(body_json(hit)["result"]["name"], "db_url");
    EXPECT_EQ(edge.stop(), 0);
    EXPECT_THAT(read_text_file(edge.log_path()), HasSubstr("1 of 1 entries restored"));
  }

  // Third run with a 1 ms TTL: the entry (stored by the first run) has expired, so it is
  // never a HIT; with the upstream unreachable it is served as STALE.
  {
    RunningProxy edge(edge_config(1), edge_dir);
    auto c = edge.connect();
    auto stale = c->get(secret_target, bearer(kToken));
    EXPECT_EQ(stale.result_int(), 200) << stale.body();
    EXPECT_EQ(stale["X-Cache"], "STALE");
    EXPECT_EQ(body_json(stale)["result"]["id"], secret_id);
    EXPECT_EQ(edge.stop(), 0);
  }

  // A damaged file: one log line, an empty cache, and the proxy still serves.
  {
    std::string bytes = read_text_file(snapshot);
    ASSERT_GT(bytes.size(), 40u);
    bytes[40] = static_cast<char>(bytes[40] ^ 0x01);
    std::ofstream(snapshot, std::ios::binary | std::ios::trunc) << bytes;
    RunningProxy edge(edge_config(600'000), edge_dir);
    auto c = edge.connect();
    auto gone = c->get(secret_target, bearer(kToken));
    EXPECT_GE(gone.result_int(), 500);
    EXPECT_EQ(gone["X-Cache"], "MISS");
    EXPECT_EQ(edge.stop(), 0);
    const std::string log = read_text_file(edge.log_path());
    EXPECT_THAT(log, HasSubstr("rejected (does not authenticate"));
  }
}

}  // namespace
}  // namespace sproxy::test
