#!/bin/sh
# Runs a command with a fresh test CA and a loopback server certificate it issued, made
# with the openssl CLI in a temporary directory (removed afterwards; no key is ever
# committed). The command sees SPROXY_SDK_TLS_DIR (ca.pem, server.pem, server.key) and
# NODE_EXTRA_CA_CERTS=ca.pem, so Node's TLS clients (fetch included) trust the CA.
# Usage: with_test_ca.sh COMMAND [ARG...]
set -eu
dir=$(mktemp -d "${TMPDIR:-/tmp}/sproxy-sdk-tls-XXXXXX")
trap 'rm -rf "$dir"' EXIT INT TERM

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
  -subj "/CN=sproxy SDK test CA" \
  -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
  -keyout "$dir/ca.key" -out "$dir/ca.pem" 2>/dev/null
openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=localhost" \
  -keyout "$dir/server.key" -out "$dir/server.csr" 2>/dev/null
cat > "$dir/server.ext" <<'EXT'
basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature
extendedKeyUsage=serverAuth
subjectAltName=DNS:localhost,IP:127.0.0.1,IP:::1
EXT
openssl x509 -req -in "$dir/server.csr" -CA "$dir/ca.pem" -CAkey "$dir/ca.key" -set_serial 2 \
  -days 2 -extfile "$dir/server.ext" -out "$dir/server.pem" 2>/dev/null
chmod 600 "$dir/ca.key" "$dir/server.key"

SPROXY_SDK_TLS_DIR=$dir NODE_EXTRA_CA_CERTS=$dir/ca.pem "$@"
