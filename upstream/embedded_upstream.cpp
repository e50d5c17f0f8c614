#include "upstream/embedded_upstream.hpp"

#include <boost/asio/associated_executor.hpp>
#include <boost/asio/async_result.hpp>
#include <boost/asio/execution/outstanding_work.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/prefer.hpp>
#include <boost/asio/thread_pool.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <chrono>
#include <exception>
#include <nlohmann/json.hpp>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "upstream/embedded_store_impl.hpp"
#include "upstream/list_query.hpp"
#include "upstream/model.hpp"
#include "upstream/route.hpp"

namespace sproxy::upstream {

namespace {

ApiResponse error_response(const ApiError& e) {
  ApiResponse r;
  r.status = e.status;
  r.body = envelope_error(e);
  if (e.retry_after_seconds) r.retry_after = std::to_string(*e.retry_after_seconds);
  return r;
}

ApiResponse success_response(unsigned status, const nlohmann::json& result) {
  ApiResponse r;
  r.status = status;
  r.body = envelope_success(result);
  return r;
}

nlohmann::json secrets_json(const std::vector<Secret>& secrets) {
  nlohmann::json arr = nlohmann::json::array();
  for (const auto& s : secrets) arr.push_back(to_json(s));
  return arr;
}

// ---------------------------------------------------------------------------------------
// Request handling

// Routing and body parsing around the typed API. The store is checked before anything
// else under it (contract), then the secret, then the query or body.
ApiResponse dispatch(EmbeddedStore& store, const ApiRequest& request, std::size_t max_value_bytes,
                     Micros now) {
  auto route = parse_route(request.method, request.target);
  if (!route) return error_response(route.error());
  const Route& r = *route;

  const bool under_store = !r.store_id.empty();
  if (under_store) {
    if (auto st = store.get_store(r.account_id, r.store_id); !st) return error_response(st.error());
  }
  // Bodies are parsed only once the secret they address is known to exist.
  if (r.kind == RouteKind::patch_secret || r.kind == RouteKind::duplicate) {
    if (auto s = store.get_secret(r.account_id, r.store_id, r.secret_id, now); !s) {
      return error_response(s.error());
    }
  }

  switch (r.kind) {
    case RouteKind::list_stores: {
      auto q = parse_store_list_query(r.query);
      if (!q) return error_response(q.error());
      auto stores = store.list_stores(r.account_id);
      if (!stores) return error_response(stores.error());
      return ApiResponse{200, list_envelope(query_stores(*stores, *q))};
    }
    case RouteKind::create_store: {
      auto in = parse_store_create(request.body);
      if (!in) return error_response(in.error());
      auto st = store.create_store(r.account_id, *in, now);
      if (!st) return error_response(st.error());
      return success_response(200, to_json(*st));
    }
    case RouteKind::get_store: {
      auto st = store.get_store(r.account_id, r.store_id);
      if (!st) return error_response(st.error());
      return success_response(200, to_json(*st));
    }
    case RouteKind::delete_store: {
      const std::string* force = r.query.find("force");
      auto done =
          store.delete_store(r.account_id, r.store_id, force != nullptr && *force == "true");
      if (!done) return error_response(done.error());
      return success_response(200, nullptr);
    }
    case RouteKind::list_secrets: {
      auto q = parse_secret_list_query(r.query);
      if (!q) return error_response(q.error());
      auto secrets = store.list_secrets(r.account_id, r.store_id, now);
      if (!secrets) return error_response(secrets.error());
      return ApiResponse{200, list_envelope(query_secrets(*secrets, *q))};
    }
    case RouteKind::create_secrets: {
      auto in = parse_secret_create(request.body, max_value_bytes);
      if (!in) return error_response(in.error());
      auto created = store.create_secrets(r.account_id, r.store_id, std::move(*in), now);
      if (!created) return error_response(created.error());
      return success_response(200, secrets_json(*created));
    }
    case RouteKind::bulk_delete: {
      auto in = parse_bulk_delete(request.body);
      if (!in) return error_response(in.error());
      auto done = store.bulk_delete(r.account_id, r.store_id, *in);
      if (!done) return error_response(done.error());
      return success_response(202, nullptr);
    }
    case RouteKind::get_secret: {
      auto s = store.get_secret(r.account_id, r.store_id, r.secret_id, now);
      if (!s) return error_response(s.error());
      return success_response(200, to_json(*s));
    }
    case RouteKind::patch_secret: {
      auto in = parse_secret_patch(request.body, max_value_bytes);
      if (!in) return error_response(in.error());
      auto s = store.patch_secret(r.account_id, r.store_id, r.secret_id, std::move(*in), now);
      if (!s) return error_response(s.error());
      return success_response(200, to_json(*s));
    }
    case RouteKind::delete_secret: {
      auto done = store.delete_secret(r.account_id, r.store_id, r.secret_id);
      if (!done) return error_response(done.error());
      return success_response(202, nullptr);
    }
    case RouteKind::duplicate: {
      auto in = parse_secret_duplicate(request.body);
      if (!in) return error_response(in.error());
      auto s = store.duplicate_secret(r.account_id, r.store_id, r.secret_id, *in, now);
      if (!s) return error_response(s.error());
      return success_response(200, to_json(*s));
    }
    case RouteKind::get_quota: {
      auto q = store.quota(r.account_id);
      if (!q) return error_response(q.error());
      return success_response(200, to_json(*q));
    }
  }
  return error_response(errors::no_route());
}

}  // namespace

ApiResponse EmbeddedStore::handle(const ApiRequest& request, Micros now) {
  try {
    return dispatch(*this, request, impl_->opt.max_value_bytes, now);
  } catch (const std::exception&) {
    // Only OpenSSL/SQLite failures or allocation failure get here; the message is not
    // echoed because nothing guarantees it is free of request data.
    return error_response(errors::internal_error());
  }
}

// =======================================================================================
// EmbeddedUpstream

namespace {

// Runs `fn` on `worker` and completes with its ApiResponse on the completion handler's
// associated executor (for a coroutine: the caller's executor). The caller's executor is
// kept busy (outstanding work) until the result is delivered.
template <class Executor, class Fn, class Token>
auto async_run_on(Executor worker, Fn fn, Token&& token) {
  return boost::asio::async_initiate<Token, void(ApiResponse)>(
      [](auto handler, Executor worker, Fn fn) {
        auto caller = boost::asio::prefer(boost::asio::get_associated_executor(handler),
                                          boost::asio::execution::outstanding_work.tracked);
        boost::asio::post(worker, [handler = std::move(handler), fn = std::move(fn),
                                   caller = std::move(caller)]() mutable {
          ApiResponse response;
          try {
            response = fn();
          } catch (...) {
            response = error_response(errors::internal_error());
          }
          // The tracked executor (the caller's outstanding work) moves into the completion,
          // so it is released on the caller's own thread after the handler ran: once the
          // completion is posted, this worker holds nothing of the caller's context, which
          // may be gone as soon as the handler returns.
          auto target =
              boost::asio::prefer(caller, boost::asio::execution::outstanding_work.untracked);
          boost::asio::post(target, [handler = std::move(handler), response = std::move(response),
                                     work = std::move(caller)]() mutable {
            std::move(handler)(std::move(response));
          });
        });
      },
      token, std::move(worker), std::move(fn));
}

}  // namespace

struct EmbeddedUpstream::Worker {
  boost::asio::thread_pool pool{1};
};

EmbeddedUpstream::EmbeddedUpstream(std::shared_ptr<EmbeddedStore> store)
    : store_(std::move(store)), worker_(std::make_unique<Worker>()) {
  if (!store_) throw std::invalid_argument("EmbeddedUpstream needs a store");
}

EmbeddedUpstream::~EmbeddedUpstream() {
  // Finish queued calls (their results go to the callers' executors) before the thread ends.
  worker_->pool.join();
}

boost::asio::awaitable<CallResult> EmbeddedUpstream::call(ApiRequest request) {
  // A named job rather than a temporary inside the co_await expression: GCC 12 mishandles
  // the lifetime of non-trivially destructible temporaries there.
  auto job = [store = store_, request = std::move(request)]() {
    return store->handle(request, wall_clock_micros());
  };
  ApiResponse response = co_await async_run_on(worker_->pool.get_executor(), std::move(job),
                                               boost::asio::use_awaitable);
  co_return CallResult(std::move(response));
}

}  // namespace sproxy::upstream
