#!/usr/bin/env bash
# Builds secrets-proxy (Release, build/release) and runs it in the foreground with
# config/secrets-proxy.example.json: 127.0.0.1:8787, embedded store under data/, one
# demo client. Extra arguments are passed on to the binary. Stop it with Ctrl-C.
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo_root"

deploy/install-deps.sh

build_dir=build/release
cmake -S . -B "$build_dir" -G Ninja -DCMAKE_BUILD_TYPE=Release \
  -DSPROXY_BUILD_TESTS=OFF -DSPROXY_BUILD_BENCH=OFF
cmake --build "$build_dir" --target secrets-proxy -j"$(nproc)"

config=config/secrets-proxy.example.json
# The example config keeps the embedded store's database and key file under data/.
mkdir -p data

# Only the demo token from the example config is printed; it is not a real credential.
demo_token=sproxy-demo-token-change-me
demo_account=0123456789abcdef0123456789abcdef
echo
echo "Try it (any 32-hex account id works for the demo client):"
echo "  curl -s -H \"Authorization: Bearer ${demo_token}\" http://127.0.0.1:8787/client/v4/accounts/${demo_account}/secrets_store/stores"
echo

exec "$build_dir/proxy/secrets-proxy" --config "$config" "$@"
