// FakeUpstream: an Upstream for tests with the real API semantics of an EmbeddedStore
// (in a fresh temporary directory, removed on destruction), answering through
// EmbeddedStore::handle at a simulated time the test sets, plus what real upstreams do
// to a proxy:
// - counts calls per route kind and records every request target (never bodies);
// - injects faults: a 5xx, a 429 with Retry-After, or a transport failure (returned as
//   UpstreamErrc: timeout, connection_reset, unreachable, ...), for the next N calls or
//   always, optionally only for one route kind; a fault may be "applied" (the store
//   handles the request first, as a write that succeeded but whose answer was lost);
// - adds latency (a steady_timer on the caller's executor);
// - holds calls on a gate until the test releases them. A held call has ALREADY been
//   answered by the store (its bytes are fixed), as a response in flight would be: this
//   is what lets a test force "the fill read old data, then a write happened".
// Thread safety: call() may run concurrently on any io_context threads; the controls are
// safe from any thread. A held or delayed call resumes on its own executor.
// Header-only; link sproxy_upstream.
#pragma once

#include <stdlib.h>

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <chrono>
#include <filesystem>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include "upstream/crypto.hpp"
#include "upstream/embedded_store.hpp"
#include "upstream/route.hpp"
#include "upstream/upstream.hpp"

namespace sproxy::test {

struct Fault {
  enum class Kind { http_status, rate_limited, transport, raw };
  Kind kind = Kind::http_status;
  unsigned status = 503;
  long retry_after_seconds = 0;
  upstream::UpstreamErrc errc = upstream::UpstreamErrc::timeout;
  std::string body;  // raw: the body answered as it is (garbage, HTML, cut short)
  // The store handles the request before the fault is returned (a write that was
  // applied though its answer never arrived).
  bool applied = false;

  static Fault http(unsigned status) { return Fault{Kind::http_status, status}; }
  static Fault too_many_requests(long retry_after_seconds) {
    return Fault{Kind::rate_limited, 429, retry_after_seconds};
  }
  // An answer with this status and exactly this body (not necessarily an envelope).
  static Fault raw_answer(unsigned status, std::string body) {
    Fault f;
    f.kind = Kind::raw;
    f.status = status;
    f.body = std::move(body);
    return f;
  }
  static Fault transport(upstream::UpstreamErrc e) {
    Fault f;
    f.kind = Kind::transport;
    f.errc = e;
    return f;
  }
  Fault& after_apply() {
    applied = true;
    return *this;
  }
};

class FakeUpstream final : public upstream::Upstream {
 public:
  struct Options {
    long max_stores_per_account = 1;
    long max_secrets_per_account = 100;
    upstream::Micros activation_delay = 0;
  };

  FakeUpstream() : FakeUpstream(Options{}) {}
  explicit FakeUpstream(Options o) : dir_(make_temp_dir()) {
    upstream::EmbeddedStoreOptions eo;
    eo.data_path = dir_ / "store.db";
    eo.key = upstream::random_bytes(upstream::kAesKeyBytes);
    eo.max_stores_per_account = o.max_stores_per_account;
    eo.max_secrets_per_account = o.max_secrets_per_account;
    eo.activation_delay = o.activation_delay;
    store_ = std::make_unique<upstream::EmbeddedStore>(std::move(eo));
  }

  ~FakeUpstream() override {
    store_.reset();
    std::error_code ec;
    std::filesystem::remove_all(dir_, ec);
  }

  FakeUpstream(const FakeUpstream&) = delete;
  FakeUpstream& operator=(const FakeUpstream&) = delete;

  std::string describe() const override { return "fake"; }
  std::optional<upstream::Micros> activation_delay() const override {
    return store_->activation_delay();
  }

  boost::asio::awaitable<upstream::CallResult> call(upstream::ApiRequest request) override {
    const std::optional<upstream::RouteKind> kind = classify(request);
    std::optional<Fault> fault;
    std::chrono::milliseconds latency{0};
    upstream::Micros now = 0;
    bool hold = false;
    {
      std::lock_guard lock(mu_);
      ++total_calls_;
      ++calls_[kind];
      targets_.push_back(request.target);
      fault = take_fault(kind);
      latency = latency_;
      now = now_;
      hold = holding_ && (!hold_only_ || hold_only_ == kind);
    }

    if (latency.count() > 0) {
      boost::asio::steady_timer t(co_await boost::asio::this_coro::executor, latency);
      (void)co_await t.async_wait(boost::asio::as_tuple(boost::asio::use_awaitable));
    }

    std::optional<upstream::ApiResponse> response;
    if (!fault || fault->applied) response = store_->handle(request, now);

    if (hold) {
      auto held = std::make_shared<Held>(co_await boost::asio::this_coro::executor);
      held->timer.expires_at(boost::asio::steady_timer::time_point::max());
      bool released = false;
      {
        std::lock_guard lock(mu_);
        released = !holding_;
        if (!released) held_.push_back(held);
      }
      if (!released) {
        (void)co_await held->timer.async_wait(boost::asio::as_tuple(boost::asio::use_awaitable));
      }
    }

    if (fault) co_return fault_result(*fault);
    co_return upstream::CallResult(std::move(*response));
  }

  upstream::EmbeddedStore& store() { return *store_; }

  // The simulated time the store answers at.
  void set_now(upstream::Micros now) {
    std::lock_guard lock(mu_);
    now_ = now;
  }

  std::size_t calls() const {
    std::lock_guard lock(mu_);
    return total_calls_;
  }
  std::size_t calls(upstream::RouteKind kind) const {
    std::lock_guard lock(mu_);
    auto it = calls_.find(kind);
    return it == calls_.end() ? 0 : it->second;
  }
  std::vector<std::string> targets() const {
    std::lock_guard lock(mu_);
    return targets_;
  }
  void reset_counts() {
    std::lock_guard lock(mu_);
    total_calls_ = 0;
    calls_.clear();
    targets_.clear();
  }

  // The next `times` matching calls fail with `fault`.
  void fail_next(Fault fault, std::size_t times = 1,
                 std::optional<upstream::RouteKind> only = std::nullopt) {
    std::lock_guard lock(mu_);
    faults_.push_back(Scripted{fault, times, only});
  }
  // Every matching call fails with `fault` until clear_faults().
  void fail_always(Fault fault, std::optional<upstream::RouteKind> only = std::nullopt) {
    std::lock_guard lock(mu_);
    faults_.push_back(Scripted{fault, kForever, only});
  }
  void clear_faults() {
    std::lock_guard lock(mu_);
    faults_.clear();
  }

  void set_latency(std::chrono::milliseconds latency) {
    std::lock_guard lock(mu_);
    latency_ = latency;
  }

  // Holds matching calls (all when `only` is empty) after the store answered them.
  void hold(std::optional<upstream::RouteKind> only = std::nullopt) {
    std::lock_guard lock(mu_);
    holding_ = true;
    hold_only_ = only;
  }
  std::size_t held() const {
    std::lock_guard lock(mu_);
    return held_.size();
  }
  // Stops holding new calls; the held ones stay held until release().
  void stop_holding() {
    std::lock_guard lock(mu_);
    holding_ = false;
    hold_only_.reset();
  }
  // Lets every held call complete (each on its own executor) and stops holding.
  void release() {
    std::vector<std::shared_ptr<Held>> wake;
    {
      std::lock_guard lock(mu_);
      holding_ = false;
      hold_only_.reset();
      wake.swap(held_);
    }
    for (auto& h : wake) {
      boost::asio::post(h->timer.get_executor(),
                        [h] { h->timer.expires_at(boost::asio::steady_timer::time_point{}); });
    }
  }

 private:
  static constexpr std::size_t kForever = static_cast<std::size_t>(-1);

  struct Scripted {
    Fault fault;
    std::size_t remaining;
    std::optional<upstream::RouteKind> only;
  };
  struct Held {
    explicit Held(boost::asio::any_io_executor ex) : timer(std::move(ex)) {}
    boost::asio::steady_timer timer;
  };

  static std::filesystem::path make_temp_dir() {
    std::string tmpl =
        (std::filesystem::temp_directory_path() / "sproxy-fake-upstream-XXXXXX").string();
    if (::mkdtemp(tmpl.data()) == nullptr) throw std::runtime_error("mkdtemp failed");
    return tmpl;
  }

  static std::optional<upstream::RouteKind> classify(const upstream::ApiRequest& request) {
    auto route = upstream::parse_route(request.method, request.target);
    if (!route) return std::nullopt;
    return route->kind;
  }

  std::optional<Fault> take_fault(std::optional<upstream::RouteKind> kind) {
    for (auto it = faults_.begin(); it != faults_.end(); ++it) {
      if (it->only && it->only != kind) continue;
      Fault f = it->fault;
      if (it->remaining != kForever && --it->remaining == 0) faults_.erase(it);
      return f;
    }
    return std::nullopt;
  }

  static upstream::CallResult fault_result(const Fault& f) {
    switch (f.kind) {
      case Fault::Kind::transport:
        return upstream::make_error_code(f.errc);
      case Fault::Kind::rate_limited: {
        upstream::ApiResponse r;
        r.status = 429;
        r.body = upstream::envelope_error(upstream::errors::rate_limited(f.retry_after_seconds));
        r.retry_after = std::to_string(f.retry_after_seconds);
        return r;
      }
      case Fault::Kind::raw: {
        upstream::ApiResponse r;
        r.status = f.status;
        r.body = f.body;
        return r;
      }
      case Fault::Kind::http_status:
        break;
    }
    upstream::ApiResponse r;
    r.status = f.status;
    upstream::ApiError e = upstream::errors::internal_error();
    if (f.status == 503) e = upstream::errors::service_unavailable("fake_fault");
    if (f.status == 400) e = upstream::errors::validation("fake_fault");
    if (f.status == 401 || f.status == 403) e = upstream::errors::authentication_error();
    if (f.status == 404) e = upstream::errors::store_not_found();
    e.status = f.status;
    r.body = upstream::envelope_error(e);
    return r;
  }

  std::filesystem::path dir_;
  std::unique_ptr<upstream::EmbeddedStore> store_;

  mutable std::mutex mu_;
  upstream::Micros now_ = 0;
  std::size_t total_calls_ = 0;
  std::map<std::optional<upstream::RouteKind>, std::size_t> calls_;
  std::vector<std::string> targets_;
  std::vector<Scripted> faults_;
  std::chrono::milliseconds latency_{0};
  bool holding_ = false;
  std::optional<upstream::RouteKind> hold_only_;
  std::vector<std::shared_ptr<Held>> held_;
};

}  // namespace sproxy::test
