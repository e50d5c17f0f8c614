#!/usr/bin/env python3
"""Writes the seed corpus of every fuzz target (tests/fuzz/corpus/<target>/).

Seeds are real inputs of each parser: client requests, request targets, write bodies,
configs, upstream list pages, warm-start plaintexts and credential headers, plus a few
odd ones each. Run it from anywhere; it replaces the corpus directories' contents.
"""
import hashlib
import json
import pathlib
import shutil
import struct

ROOT = pathlib.Path(__file__).resolve().parent / "corpus"
ACCOUNT = "0123456789abcdef0123456789abcdef"
STORE = "5c0a4d3e2f1b0a9c8d7e6f5a4b3c2d1e"
SECRET = "9f8e7d6c5b4a39281706f5e4d3c2b1a0"


def write(target, seeds):
    d = ROOT / target
    if d.exists():
        shutil.rmtree(d)
    d.mkdir(parents=True)
    for i, seed in enumerate(seeds):
        data = seed if isinstance(seed, bytes) else seed.encode()
        (d / f"seed-{i:02d}").write_bytes(data)


def simple_get():
    base = f"/client/v4/accounts/{ACCOUNT}/secrets_store/stores"
    return [
        f"GET {base} HTTP/1.1\r\nHost: 127.0.0.1:8787\r\nUser-Agent: curl/7.88.1\r\n"
        "Accept: */*\r\nAuthorization: Bearer t-reader\r\n\r\n",
        "GET /healthz HTTP/1.1\r\nHost: 127.0.0.1:8787\r\n\r\n",
        f"GET {base}/{STORE}/secrets?page=2&per_page=5&order=name HTTP/1.1\r\n"
        "host: 127.0.0.1:8787\r\nconnection: keep-alive\r\nauthorization: Bearer abc.DEF-123_x\r\n"
        "accept: */*\r\naccept-language: *\r\nsec-fetch-mode: cors\r\nuser-agent: node\r\n"
        "accept-encoding: gzip, deflate\r\n\r\n",
        "GET /x HTTP/1.1\r\nHost: h\r\nConnection: close\r\nX-Auth-Email: a@example.com\r\n"
        "X-Auth-Key:  k-1 \r\nCache-Control: no-cache\r\nX-Request-Id: r-1\r\n\r\n",
        "GET /x HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n",
        "GET /x HTTP/1.0\r\n\r\n",
        "GET /x HTTP/1.1\r\nX-Empty:\r\nX-Tabs:\tv\t\r\nX-Many: a, b ,c\r\n\r\n",
        "GET /x HTTP/1.1\r\nConnection: Upgrade, keep-alive\r\nProxy-Connection: close\r\n\r\n",
        "GET /a HTTP/1.1\r\nHost: h\r\n\r\nGET /b HTTP/1.1\r\nHost: h\r\n\r\n",
        "POST /x HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\n\r\n{}",
        "GET /x HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\n\r\n",
        "GET /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        "GET /x HTTP/1.1\r\nHost: h\r\n folded\r\n\r\n",
        "GET /x HTTP/1.1\r\nHost: caf\xc3\xa9\r\n\r\n",
        "GET /x HTTP/1.1\nHost: h\n\n",
        "GET /x?a=b%20c&d HTTP/1.1\r\nHost: h\r\n\r\n",
        b"\xff\x20GET /x HTTP/1.1\r\nHost: h\r\nX-Long: 0123456789\r\n\r\n",
    ]


def route_query():
    get, post, patch, put, delete, head, other = range(7)
    base = f"/client/v4/accounts/{ACCOUNT}/secrets_store"
    seeds = [
        (get, f"{base}/stores"),
        (get, f"{base}/stores?page=1&per_page=100&order=name&direction=desc"),
        (post, f"{base}/stores"),
        (get, f"{base}/stores/{STORE}"),
        (delete, f"{base}/stores/{STORE}?force=true"),
        (get, f"{base}/stores/{STORE}/secrets"),
        (get, f"{base}/stores/{STORE}/secrets?search=api%20key&scopes=workers&scopes=access"
              "&order=status&direction=asc&page=3&per_page=2"),
        (get, f"{base}/stores/{STORE}/secrets?search=a+b&scopes=unknown"),
        (get, f"{base}/stores/{STORE}/secrets?page=1000000000&per_page=100"),
        (get, f"{base}/stores/{STORE}/secrets?page=0&per_page=101&order=size"),
        (post, f"{base}/stores/{STORE}/secrets"),
        (delete, f"{base}/stores/{STORE}/secrets"),
        (get, f"{base}/stores/{STORE}/secrets/{SECRET}"),
        (patch, f"{base}/stores/{STORE}/secrets/{SECRET}"),
        (delete, f"{base}/stores/{STORE}/secrets/{SECRET}"),
        (post, f"{base}/stores/{STORE}/secrets/{SECRET}/duplicate"),
        (put, f"{base}/stores/{STORE}/secrets/{SECRET}"),
        (get, f"{base}/quota"),
        (head, f"{base}/quota?x"),
        (get, f"{base}/stores/a%2Fb/secrets/%2E%2E"),
        (get, f"{base}/stores/%41%42/secrets/x%3Fy/"),
        (get, f"{base}/stores//secrets"),
        (get, "/client/v4/accounts/NOT-AN-ID/secrets_store/stores"),
        (other, "/client/v4/accounts/"),
        (get, "/healthz"),
    ]
    return [bytes([m]) + t.encode() for m, t in seeds]


def request_body():
    # Selector: low nibble % 7 picks the parser (0 store create, 1 create, 2 patch,
    # 3 duplicate, 4 bulk delete, 5 purge, 6 write-body check); 0x10 sets a 16-byte value
    # limit; the top three bits pick the write-body check's route.
    create = [{"name": "api_key", "value": "s3cr3t", "scopes": ["workers", "access"],
               "comment": "rotated quarterly"},
              {"name": "DB_PASSWORD", "value": "p\u00e4ss", "scopes": ["workers"]}]
    seeds = [
        (0, {"name": "production"}),
        (0, {"name": ""}),
        (0, {"name": "bad name!"}),
        (1, create),
        (1 | 0x10, [{"name": "long", "value": "x" * 40, "scopes": ["workers"]}]),
        (1, [{"name": "dup", "value": "a", "scopes": ["dex"]},
             {"name": "dup", "value": "b", "scopes": ["dex"]}]),
        (1, [{"name": "n", "value": "v", "scopes": []}]),
        (1, []),
        (2, {"value": "new", "scopes": ["ai_gateway", "workers", "workers"], "comment": None}),
        (2, {"comment": "c" * 10}),
        (2, {"name": "renamed"}),
        (2, {}),
        (3, {"name": "copy", "scopes": ["containers"], "comment": "a copy"}),
        (3, {"name": "copy"}),
        (4, {"ids": [SECRET, SECRET, "ffffffffffffffffffffffffffffffff"]}),
        (4, {"ids": []}),
        (5, {}),
        (5, {"account_id": ACCOUNT}),
        (5, {"account_id": ACCOUNT, "store_id": STORE}),
        (5, {"store_id": STORE}),
        (6, create),
        (6 | 0x20, {"scopes": ["websearch"]}),
        (6 | 0x40, {"name": "copy", "scopes": ["workers"]}),
        (6 | 0x60, {"ids": [SECRET]}),
    ]
    out = [bytes([sel]) + json.dumps(body).encode() for sel, body in seeds]
    out.append(bytes([1]) + b'[{"name":"a","value":"\\ud800","scopes":["workers"]}]')
    out.append(bytes([5]) + b"  ")
    out.append(bytes([0]) + b'{"name":"x",')
    return out


def config():
    example = (ROOT.parent.parent.parent / "config" / "secrets-proxy.example.json").read_text()
    token = hashlib.sha256(b"t").hexdigest()
    full = {
        "listen": {"address": "::1", "port": 0, "threads": 2, "max_header_bytes": 8192,
                   "tls": {"cert_file": "c.pem", "key_file": "k.pem", "client_auth": "optional",
                           "client_ca_file": "ca.pem"},
                   "unix_socket": {"path": "/run/sproxy.sock", "mode": "0600"}},
        "clients": [{"name": "reader", "token_sha256": token, "services": ["workers"],
                     "accounts": [ACCOUNT], "stores": [STORE], "permissions": ["read"]},
                    {"name": "keyed", "email": "a@example.com", "key_sha256": token,
                     "accounts": ["*"], "permissions": ["read", "write"],
                     "cert_subjects": ["CN=client"]}],
        "upstream": {"kind": "http", "base_url": "https://api.cloudflare.com/client/v4",
                     "token_env": "CF_API_TOKEN", "max_retries": 1, "rate_limit_margin": 0.2},
        "cache": {"max_bytes": 1048576, "shards": 4, "refresh_ahead_ms": 0,
                  "persist": {"path": "data/cache.snap", "interval_s": 30,
                              "key_env": "SPROXY_CACHE_KEY"}},
        "admin": {"token_env": "MY_ADMIN_TOKEN"},
        "audit": {"enabled": True, "path": "-", "reads": True},
        "log": {"level": "debug", "format": "text", "access": False},
    }
    env = "\n".join(["::1", "9090", hashlib.sha256(b"a").hexdigest(), "warn", "text",
                     "/tmp/x.log", "false", "admin-token-value"])
    return [
        example,
        "{}",
        json.dumps(full),
        json.dumps(full) + "\0" + env,
        "{}\0" + "\n".join(["not-an-address", "70000", "XYZ", "loud", "xml", "", "maybe",
                            "has space"]),
        "{}\0\n\n\n\n\n\n\nok-token",
        '{"listen":{"port":"8787","bogus":1},"clients":[{"name":1}],"cache":{"ttl":{"x":2}}}',
        '{"upstream":{"kind":"http","email_env":"E"}}',
        '{"listen":{"port":8787}',
        "[]",
    ]


def page_reader():
    def secret(i, **over):
        s = {"comment": 'rotated "quarterly" \u00e9' if i % 2 == 0 else None,
             "created": "2026-03-01T12:00:00.123456Z", "id": f"0123456789abcdef0123456789abcd{10 + i}",
             "modified": "2026-03-02T08:30:00Z", "name": f"api_key_{10 + i}",
             "scopes": ["workers", "access", "workers"] if i % 3 == 0 else ["workers"],
             "status": "pending" if i % 4 == 0 else "active", "store_id": STORE}
        s.update(over)
        return s

    def page(result, info={"page": 1, "per_page": 100, "count": 3, "total_count": 3,
                           "total_pages": 1}, **extra):
        env = {"success": True, "errors": [], "messages": [], "result": result,
               "result_info": info}
        env.update(extra)
        return json.dumps(env)

    three = [secret(0), secret(1), secret(2)]
    stores = [{"id": STORE, "account_id": ACCOUNT, "name": "production",
               "created": "2026-01-01T00:00:00Z", "modified": "2026-01-02T00:00:00Z"}]
    return [
        page(three),
        page([]),
        page(three, None),
        page(three, {"total_pages": 3.5}),
        page(three, {"total_pages": 9223372036854775807}),
        page(three, success=False),
        page([secret(0, id="ABC"), secret(1, status="deleted")]),
        page([secret(0, scopes=[]), secret(1, comment="")]),
        page([secret(0, created="2026-13-01T00:00:00Z")]),
        page([secret(0, extra={"nested": [1, [2, [3]]]})]),
        page(stores),
        '{"success":true,"result":[]} ',
        '{"success":true,"result":[',
        '{"result":[],"success":"true"}',
        '{"success":true,"result":[{"id":"0123456789abcdef0123456789abcdef","id":"x"}]}',
        "",
    ]


def persist():
    def s(b):
        return struct.pack("<I", len(b)) + b

    def record(kind, key, tag, stored, fresh, keep, payload):
        return (bytes([kind]) + s(key.encode()) + s(tag.encode()) +
                struct.pack("<qqq", stored, fresh, keep) + payload)

    t0 = 1_780_000_000_000_000
    body = json.dumps({"success": True, "errors": [], "messages": [],
                       "result": {"quota": 100, "usage": 3}}).encode()
    secrets = json.dumps([{"id": SECRET, "store_id": STORE, "name": "api_key",
                           "comment": None, "scopes": ["workers"], "status": "active",
                           "created": "2026-03-01T12:00:00Z",
                           "modified": "2026-03-01T12:00:00Z"}]).encode()
    stores = json.dumps([{"id": STORE, "account_id": ACCOUNT, "name": "production",
                          "created": "2026-01-01T00:00:00Z",
                          "modified": "2026-01-01T00:00:00Z"}]).encode()
    recs = [
        record(0, f"{ACCOUNT}/quota", f"{ACCOUNT}/quota", t0, t0 + 10_000_000, t0 + 10_000_000,
               struct.pack("<H", 200) + s(body)),
        record(1, f"{ACCOUNT}/store/{STORE}/secrets", f"{ACCOUNT}/store/{STORE}/", t0,
               t0 + 30_000_000, t0 + 330_000_000, s(secrets)),
        record(2, f"{ACCOUNT}/stores", f"{ACCOUNT}/stores", t0, t0 + 30_000_000,
               t0 + 330_000_000, s(stores)),
        record(0, f"{ACCOUNT}/store/{'a' * 32}/get", f"{ACCOUNT}/store/{'a' * 32}/", t0,
               t0 + 5_000_000, t0 + 5_000_000, struct.pack("<H", 404) + s(b'{"success":false}')),
    ]

    def plain(saved_at, records):
        return struct.pack("<qI", saved_at, len(records)) + b"".join(records)

    out = [plain(t0, recs), plain(t0, recs[:1]), plain(t0, []), plain(t0 + 400_000_000, recs),
           plain(t0, [recs[1], recs[1]])]
    out.append(plain(t0, [record(0, "k#memo", "t", t0, t0 + 1, t0 + 1,
                                 struct.pack("<H", 200) + s(b"{}"))]))
    out.append(plain(t0, [record(7, "k", "t", t0, t0, t0, b"")]))
    out.append(plain(t0, recs)[:-3])
    out.append(b"SPXCACHE" + struct.pack("<I", 1) + b"\0" * 28)
    out.append(b"SPXCACHE" + struct.pack("<I", 2))
    return out


def credentials():
    return [
        "Authorization: Bearer t-reader",
        "X-Auth-Email: a@example.com\nX-Auth-Key: k-1",
        "Authorization: Bearer t-reader\n\nAuthorization: Bearer t-reader",
        "X-Auth-Email: a@example.com\nX-Auth-Key: k-1\n\nX-Auth-Email: a@example.com\nX-Auth-Key: k-1",
        "Authorization: bearer t-reader\nAuthorization: Bearer other",
        "Authorization: Basic dXNlcjpwYXNz",
        "Authorization: Bearer \nX-Auth-Key: k-1",
        "Authorization: Bearer has space",
        "x-auth-email: A@EXAMPLE.COM\nx-auth-key: k-1\nX-Auth-Key: k-2",
        "X-Auth-Email: a@example.com",
        "Authorization: Bearer admin-t\n\nAuthorization: Bearer t-reader",
        "Host: h\nAccept: */*",
    ]


def main():
    write("simple_get_fuzz", simple_get())
    write("route_query_fuzz", route_query())
    write("request_body_fuzz", request_body())
    write("config_fuzz", config())
    write("page_reader_fuzz", page_reader())
    write("persist_fuzz", persist())
    write("credentials_fuzz", credentials())


if __name__ == "__main__":
    main()
