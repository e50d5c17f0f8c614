// SharedBytes: immutable bytes kept alive by a shared owner. The body of every answer
// the cache hands out: a view of the bytes plus a reference to whatever holds them
// (a string of its own, a stored answer, or a whole-store snapshot whose envelopes
// share one buffer), so a served answer costs no copy and keeps its owner alive.
//
// Copying costs one reference count increment. Empty (no owner) is "no body", which
// `operator bool` tells apart from an owned empty string. Thread safety: like
// shared_ptr<const T>; the bytes never change.
#pragma once

#include <memory>
#include <string>
#include <string_view>
#include <utility>

namespace sproxy::cache {

class SharedBytes {
 public:
  SharedBytes() = default;
  // Takes `s` into an allocation of its own (string and control block together).
  explicit SharedBytes(std::string s)
      : SharedBytes(std::make_shared<const std::string>(std::move(s))) {}
  // All of `*s`, kept alive by `s`.
  SharedBytes(std::shared_ptr<const std::string> s)  // NOLINT: lossless, implicit on purpose
      : bytes_(s ? std::string_view(*s) : std::string_view()), owner_(std::move(s)) {}
  // `bytes`, which must stay valid and unchanged as long as `owner` lives.
  SharedBytes(std::shared_ptr<const void> owner, std::string_view bytes) noexcept
      : bytes_(bytes), owner_(std::move(owner)) {}

  std::string_view view() const noexcept { return bytes_; }
  std::string_view operator*() const noexcept { return bytes_; }
  const char* data() const noexcept { return bytes_.data(); }
  std::size_t size() const noexcept { return bytes_.size(); }
  bool empty() const noexcept { return bytes_.empty(); }
  explicit operator bool() const noexcept { return owner_ != nullptr; }

 private:
  std::string_view bytes_;  // declared first: built from the owner before it is moved
  std::shared_ptr<const void> owner_;
};

}  // namespace sproxy::cache
