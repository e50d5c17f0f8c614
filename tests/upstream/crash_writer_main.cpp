// Helper process for embedded_store_crash_test: performs an endless-looking stream of
// writes against an embedded store and reports each write on stdout only after the store
// call has returned (that is, after its transaction committed). The test SIGKILLs this
// process at arbitrary points and then checks that every reported write survived.
//
// usage: sproxy_crash_writer <data_path> <key_file> <run_tag> <max_writes>
//
// Output lines, each batch of lines emitted with one write(2) (atomic on a pipe):
//   C <secret_id> <name>   created; its value is "value-" + name
//   P <secret_id> <seq>    comment set to "c" + seq
//   D <secret_id>          deleted
// Names: s_<tag>_<k> (single create), b_<tag>_<k>_<j> (one batch of three, j = 0..2),
// x_<tag>_<k> (created, then deleted by the next call).
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <string>
#include <vector>

#include "config/config.hpp"
#include "upstream/embedded_store.hpp"

namespace {

using namespace sproxy::upstream;

const std::string kAccount = "0123456789abcdef0123456789abcdef";

// Writes all of `text` to stdout; the store call it reports has already returned.
bool acknowledge(const std::string& text) {
  std::size_t put = 0;
  while (put < text.size()) {
    const ssize_t n = ::write(STDOUT_FILENO, text.data() + put, text.size() - put);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return false;
    put += static_cast<std::size_t>(n);
  }
  return true;
}

SecretCreate item(const std::string& name) {
  return SecretCreate{name, "value-" + name, {"workers"}, std::nullopt};
}

int fail(const std::string& what, const ApiError& e) {
  std::fprintf(stderr, "crash_writer: %s failed: %u %s\n", what.c_str(), e.status,
               e.errors.empty() ? "" : e.errors[0].message.c_str());
  return 1;
}

int run(int argc, char** argv) {
  if (argc != 5) {
    std::fprintf(stderr, "usage: %s <data_path> <key_file> <run_tag> <max_writes>\n", argv[0]);
    return 2;
  }
  sproxy::config::EmbeddedStoreConfig cfg;
  cfg.data_path = argv[1];
  cfg.key_file = argv[2];
  cfg.key_env.clear();
  cfg.max_secrets_per_account = 1'000'000;
  const std::string tag = argv[3];
  const long max_writes = std::strtol(argv[4], nullptr, 10);

  EmbeddedStore store(embedded_store_options(cfg));
  Micros now = 1'772'366'400'000'000;

  auto stores = store.list_stores(kAccount);
  std::string store_id;
  if (stores.ok() && !stores->empty()) {
    store_id = stores->front().id;
  } else {
    auto created = store.create_store(kAccount, StoreCreate{"crash"}, now);
    if (!created) return fail("create_store", created.error());
    store_id = created->id;
  }

  std::string last_single;
  for (long k = 0; k < max_writes; ++k) {
    ++now;
    const std::string suffix = tag + "_" + std::to_string(k);
    std::string lines;
    switch (k % 4) {
      case 0: {
        auto r = store.create_secrets(kAccount, store_id, {item("s_" + suffix)}, now);
        if (!r) return fail("create", r.error());
        last_single = r->front().id;
        lines = "C " + last_single + " s_" + suffix + "\n";
        break;
      }
      case 1: {
        std::vector<SecretCreate> batch;
        for (int j = 0; j < 3; ++j) batch.push_back(item("b_" + suffix + "_" + std::to_string(j)));
        auto r = store.create_secrets(kAccount, store_id, std::move(batch), now);
        if (!r) return fail("batch create", r.error());
        for (const auto& s : *r) lines += "C " + s.id + " " + s.name + "\n";
        break;
      }
      case 2: {
        SecretPatch patch;
        patch.comment = std::optional<std::string>("c" + std::to_string(k));
        auto r = store.patch_secret(kAccount, store_id, last_single, std::move(patch), now);
        if (!r) return fail("patch", r.error());
        lines = "P " + last_single + " " + std::to_string(k) + "\n";
        break;
      }
      default: {
        auto r = store.create_secrets(kAccount, store_id, {item("x_" + suffix)}, now);
        if (!r) return fail("scratch create", r.error());
        const std::string id = r->front().id;
        if (!acknowledge("C " + id + " x_" + suffix + "\n")) return 1;
        auto d = store.delete_secret(kAccount, store_id, id);
        if (!d) return fail("delete", d.error());
        lines = "D " + id + "\n";
        break;
      }
    }
    if (!acknowledge(lines)) return 1;
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return run(argc, argv);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "crash_writer: %s\n", e.what());
    return 1;
  }
}
