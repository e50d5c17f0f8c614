#!/usr/bin/env bash
# Installs the build, test and run dependencies of secrets-proxy on Debian 12.
#
# Idempotent: every package is checked with dpkg-query first, and apt-get (update and
# install) runs only when something is missing, so a second run is fast and offline.
# Node.js and npm are only installed from Debian when `node` / `npm` are not already on
# PATH (a machine may carry its own Node.js build).
# Must run as root (or with passwordless sudo available).
set -euo pipefail

packages=(
  build-essential cmake ninja-build ccache pkg-config git
  libboost1.81-dev nlohmann-json3-dev libssl-dev libsqlite3-dev sqlite3
  prometheus-cpp-dev libspdlog-dev
  libgtest-dev libgmock-dev libbenchmark-dev
  openssl curl jq yamllint
  clang-14 libclang-rt-14-dev clang-format-14
  redis-server libhiredis-dev
)
command -v node >/dev/null 2>&1 || packages+=(nodejs)
command -v npm >/dev/null 2>&1 || packages+=(npm)

is_installed() {
  [[ "$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null)" == "install ok installed" ]]
}

missing=()
for p in "${packages[@]}"; do
  is_installed "$p" || missing+=("$p")
done

if ((${#missing[@]} == 0)); then
  echo "install-deps: all ${#packages[@]} packages present"
  exit 0
fi

as_root=()
if ((EUID != 0)); then
  if command -v sudo >/dev/null 2>&1; then
    as_root=(sudo)
  else
    echo "install-deps: missing packages (${missing[*]}) and not running as root" >&2
    exit 1
  fi
fi

echo "install-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
"${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -q
"${as_root[@]}" env DEBIAN_FRONTEND=noninteractive \
  apt-get install -y -q --no-install-recommends "${missing[@]}"
