// The embedded store as an Upstream: how the proxy reaches its own durable store.
//
// Contract: `call` answers exactly as EmbeddedStore::handle does for the same request
// (routing, body parsing, the API envelope and status), at the wall-clock time read once
// per call; an exception escaping the store becomes the contract's internal error
// envelope, never a transport failure. No call fails at the transport level.
//
// Ownership: shares the store with whoever else holds it (tests, the cache fixture); owns
// one worker thread. The request is taken by value; the response owns its bytes.
//
// Thread safety: `call` may be made concurrently from any io_context thread. The store's
// work runs on the dedicated worker thread, so SQLite fsyncs never stall a network
// thread, and the call resumes on the caller's own executor. The destructor lets queued
// calls finish (delivering their results) before the worker thread ends.
//
// Errors: the constructor throws std::invalid_argument for a null store.
#pragma once

#include <boost/asio/awaitable.hpp>
#include <memory>
#include <string>

#include "upstream/embedded_store.hpp"
#include "upstream/upstream.hpp"

namespace sproxy::upstream {

// Upstream adapter: runs the store's work off the caller's io thread (a dedicated
// worker thread, so SQLite fsyncs never stall a network thread) and resumes the caller
// on its own executor. The clock is read here, once per call.
class EmbeddedUpstream final : public Upstream {
 public:
  explicit EmbeddedUpstream(std::shared_ptr<EmbeddedStore> store);
  ~EmbeddedUpstream() override;
  boost::asio::awaitable<CallResult> call(ApiRequest request) override;
  std::string describe() const override { return "embedded"; }
  std::optional<std::int64_t> activation_delay() const override {
    return store_->activation_delay();
  }
  EmbeddedStore& store() { return *store_; }

 private:
  struct Worker;
  std::shared_ptr<EmbeddedStore> store_;
  std::unique_ptr<Worker> worker_;
};

}  // namespace sproxy::upstream
