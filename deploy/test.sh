#!/usr/bin/env bash
# Checks that every C++ file is formatted as .clang-format says, then runs the whole
# test suite twice: a Debug build (build/test) and an
# AddressSanitizer + UndefinedBehaviorSanitizer build (build/asan). Each runs ctest,
# which includes the official-SDK conformance test (tests/sdk, needs `npm ci`).
# Then a ThreadSanitizer build (build/tsan) of the multi-threaded test executables runs
# their tests (ctest label "threads").
# Then the fuzz targets (build/fuzz, Clang + libFuzzer): each replays its seed corpus and
# runs briefly (ctest label "fuzz").
# Benchmarks are built in build/test so they keep compiling, but never run here.
# Exits non-zero on the first failing step.
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo_root"

jobs="$(nproc)"
# Let ccache share objects between checkouts in different folders (CI clones afresh).
export CCACHE_BASEDIR="$repo_root" CCACHE_NOHASHDIR=1
step() { printf '\n==> %s\n' "$*"; }

step "dependencies"
deploy/install-deps.sh

step "formatting (clang-format-14 --dry-run -Werror, .clang-format)"
git ls-files -z '*.cpp' '*.hpp' '*.h' | xargs -0 clang-format-14 --dry-run -Werror

step "npm ci (tests/sdk)"
(cd tests/sdk && npm ci --no-audit --no-fund)

step "Debug build (build/test)"
cmake -S . -B build/test -G Ninja -DCMAKE_BUILD_TYPE=Debug \
  -DSPROXY_BUILD_TESTS=ON -DSPROXY_BUILD_BENCH=ON -DSPROXY_SANITIZE=OFF
cmake --build build/test -j"$jobs"

step "ctest (build/test)"
ctest --test-dir build/test --output-on-failure -j2 --timeout 600

step "ASan/UBSan build (build/asan)"
cmake -S . -B build/asan -G Ninja -DCMAKE_BUILD_TYPE=Debug \
  -DSPROXY_BUILD_TESTS=ON -DSPROXY_BUILD_BENCH=OFF -DSPROXY_SANITIZE=ON
cmake --build build/asan -j"$jobs"

step "ctest (build/asan)"
ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
  ctest --test-dir build/asan --output-on-failure -j2 --timeout 900

step "ThreadSanitizer build of the multi-threaded tests (build/tsan)"
# -O1: TSan's recommended optimisation; Debug keeps assertions and full debug info.
cmake -S . -B build/tsan -G Ninja -DCMAKE_BUILD_TYPE=Debug -DCMAKE_CXX_FLAGS_DEBUG="-O1 -g" \
  -DSPROXY_BUILD_TESTS=ON -DSPROXY_BUILD_BENCH=OFF -DSPROXY_SANITIZE_THREAD=ON
cmake --build build/tsan -j"$jobs" --target sproxy_threaded_tests

step "ctest (build/tsan, label threads)"
TSAN_OPTIONS="halt_on_error=1 second_deadlock_stack=1" \
  ctest --test-dir build/tsan --output-on-failure -j2 --timeout 900 -L threads

step "fuzz targets (build/fuzz, clang-14 + libFuzzer)"
CC=clang-14 CXX=clang++-14 cmake -S . -B build/fuzz -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DSPROXY_BUILD_TESTS=OFF -DSPROXY_BUILD_BENCH=OFF -DSPROXY_FUZZ=ON
cmake --build build/fuzz -j"$jobs"

step "ctest (build/fuzz): corpus replay and a brief run of each target"
ctest --test-dir build/fuzz --output-on-failure -j2 -L fuzz

step "all tests passed"
