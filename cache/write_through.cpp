// ReadThroughCache's writes and purges (see read_through.hpp).
#include "cache/cache_core.hpp"

namespace sproxy::cache {

using namespace detail;

boost::asio::awaitable<Answer> ReadThroughCache::write(upstream::Route route,
                                                       upstream::ApiRequest request, Micros now) {
  std::shared_ptr<Impl> impl = impl_;
  // Invalidation runs however this coroutine ends (answer, exception, or destruction
  // mid-call): the write may have been applied either way.
  struct InvalidateOnExit {
    Impl& impl;
    const upstream::Route& route;
    const ApiResponse* response = nullptr;
    ~InvalidateOnExit() { impl.invalidate(policy::invalidated_tags(route, response)); }
  };
  CallResult r = boost::system::error_code(upstream::UpstreamErrc::shutting_down);
  std::chrono::nanoseconds spent{0};
  {
    InvalidateOnExit guard{*impl, route};
    r = co_await impl->timed_call(std::move(request), &spent);
    if (r) guard.response = &*r;
  }
  // Checked after the invalidation: a write whose answer is garbage may have been applied.
  std::optional<RateLimitHeaders> headers;
  if (r) headers.emplace().take_from(*r);
  r = impl->checked(route.kind, std::move(r), now);
  Answer answer = answer_from_call(std::move(r), Outcome::bypass);
  if (headers) headers->copy_to(answer);
  answer.upstream_time = spent;
  co_return answer;
}

void ReadThroughCache::purge_all() {
  impl_->gens.bump_all();
  impl_->storage->clear();
  impl_->counters.invalidations.fetch_add(1, std::memory_order_relaxed);
}

void ReadThroughCache::purge_account(const std::string& account_id) {
  impl_->gens.bump_all();
  impl_->storage->erase_tag_prefix(policy::account_prefix(account_id));
  impl_->counters.invalidations.fetch_add(1, std::memory_order_relaxed);
}

void ReadThroughCache::purge_store(const std::string& account_id, const std::string& store_id) {
  impl_->invalidate({policy::store_tag(account_id, store_id)});
}

}  // namespace sproxy::cache
