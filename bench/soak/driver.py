#!/usr/bin/env python3
"""Soak driver for bench/soak.sh: mixed load against a running secrets-proxy for a fixed
time, with reloads, connection churn and upstream faults, then a check that nothing an
acknowledged write did was lost.

Load (all on 127.0.0.1, every loop bounded by --duration and a request cap):
  readers   keep-alive connections reading lists (paging, search, scopes filter, order),
            single secrets (known ids and unknown ones), stores, store lists and the
            quota; 2% of reads send `Cache-Control: no-cache`;
  writer    creates, patches (comment, scopes, value), duplicates, deletes and bulk
            deletes secrets, remembering what every acknowledged write changed;
  churn     one connection per request (`Connection: close`), now and then a request
            cut off half-way, a malformed request or an idle connection dropped;
  reloader  SIGHUP to the proxy every --reload-s seconds;
  faults    SIGSTOP/SIGCONT of the stand-in upstream for --fault-pause-s seconds every
            --fault-every-s seconds (timeouts, then stale answers), on top of the
            stand-in's own error rate;
  sampler   the proxy's RSS (VmRSS) and open descriptors every --sample-s seconds.

At the end the cache is purged and every store is read back through the proxy and
directly from the stand-in: every secret an acknowledged create or duplicate made must
be there (with the comment of its last acknowledged patch), every secret an
acknowledged delete removed must be gone. Writes whose answer was lost (a timeout, a
5xx) are uncertain and only have to agree between proxy and stand-in.

Prints one JSON object (the summary); writes the samples as TSV to --samples.
"""
import argparse
import http.client
import json
import os
import random
import signal
import socket
import sys
import threading
import time

SCOPES = ["access", "ai_gateway", "containers", "dex", "websearch", "workers"]


class Stats:
    def __init__(self):
        self.lock = threading.Lock()
        self.requests = {}
        self.statuses = {}
        self.transport_errors = {}
        self.unexpected = []

    def count(self, kind, status):
        with self.lock:
            self.requests[kind] = self.requests.get(kind, 0) + 1
            key = str(status)
            self.statuses[key] = self.statuses.get(key, 0) + 1

    def transport(self, kind, err):
        with self.lock:
            key = f"{kind}: {type(err).__name__}"
            self.transport_errors[key] = self.transport_errors.get(key, 0) + 1

    def odd(self, what):
        with self.lock:
            if len(self.unexpected) < 50:
                self.unexpected.append(what)

    def total(self):
        with self.lock:
            return sum(self.requests.values())


class Client:
    """One keep-alive HTTP/1.1 connection that reconnects after a failure."""

    def __init__(self, port, token, timeout=10.0):
        self.port, self.token, self.timeout = port, token, timeout
        self.conn = None

    def call(self, method, path, body=None, headers=None):
        if self.conn is None:
            self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=self.timeout)
        h = {"Authorization": f"Bearer {self.token}"}
        if body is not None:
            h["Content-Type"] = "application/json"
            body = json.dumps(body)
        h.update(headers or {})
        try:
            self.conn.request(method, path, body=body, headers=h)
            resp = self.conn.getresponse()
            data = resp.read()
        except Exception:
            self.conn.close()
            self.conn = None
            raise
        if resp.getheader("Connection", "").lower() == "close":
            self.conn.close()
            self.conn = None
        try:
            doc = json.loads(data) if data else None
        except ValueError:
            doc = None
        return resp.status, doc


class Model:
    """What acknowledged writes did, per store: id -> (name, comment)."""

    def __init__(self):
        self.lock = threading.Lock()
        self.present = {}    # store -> {id: comment}
        self.deleted = {}    # store -> set(id)
        self.uncertain = {}  # store -> set(id), plus names of creates whose answer was lost

    def add(self, store, sid, comment):
        with self.lock:
            self.present.setdefault(store, {})[sid] = comment

    def remove(self, store, sid):
        with self.lock:
            self.present.get(store, {}).pop(sid, None)
            self.deleted.setdefault(store, set()).add(sid)

    def unsure(self, store, sid):
        with self.lock:
            self.present.get(store, {}).pop(sid, None)
            self.uncertain.setdefault(store, set()).add(sid)

    def acknowledge_delete(self, store, ids, status):
        """Records what a delete's answer says about its ids: 202 removed them all, a 5xx
        leaves each unknown (the write may or may not have happened), anything else (a
        4xx) changed nothing."""
        for sid in ids:
            if status == 202:
                self.remove(store, sid)
            elif status >= 500:
                self.unsure(store, sid)

    def pick(self, store, rng):
        with self.lock:
            ids = list(self.present.get(store, {}))
        return rng.choice(ids) if ids else None


def base(account):
    return f"/client/v4/accounts/{account}/secrets_store"


def reader(args, stats, stores, model, token, stop, seed):
    rng = random.Random(seed)
    client = Client(args.port, token)
    pause = 1.0 / args.read_rate if args.read_rate > 0 else 0
    n = 0
    while not stop.is_set() and n < args.max_requests:
        n += 1
        account, store = rng.choice(stores)
        headers = {"Cache-Control": "no-cache"} if rng.random() < 0.02 else None
        roll = rng.random()
        if roll < 0.45:
            kind = "list_secrets"
            q = [f"page={rng.randint(1, 4)}", f"per_page={rng.choice([10, 20, 50, 100])}"]
            if rng.random() < 0.3:
                q.append(f"search={rng.choice(['soak', 'k1', 'note', 'x'])}")
            if rng.random() < 0.3:
                q.append(f"scopes={rng.choice(SCOPES)}")
            if rng.random() < 0.3:
                q.append(f"order={rng.choice(['name', 'created', 'modified', 'comment'])}")
                q.append(f"direction={rng.choice(['asc', 'desc'])}")
            path = f"{base(account)}/stores/{store}/secrets?" + "&".join(q)
        elif roll < 0.75:
            kind = "get_secret"
            sid = model.pick(store, rng) if rng.random() < 0.9 else None
            sid = sid or "%032x" % rng.getrandbits(128)
            path = f"{base(account)}/stores/{store}/secrets/{sid}"
        elif roll < 0.85:
            kind = "get_store"
            path = f"{base(account)}/stores/{store}"
        elif roll < 0.93:
            kind = "list_stores"
            path = f"{base(account)}/stores"
        else:
            kind = "quota"
            path = f"{base(account)}/quota"
        try:
            status, doc = client.call("GET", path, headers=headers)
            stats.count(kind, status)
            if status >= 500 and status not in (502, 503, 504):
                stats.odd(f"{kind} {status} {doc}")
            if doc is None:
                stats.odd(f"{kind} {status}: body is not JSON")
        except Exception as e:  # noqa: BLE001 - counted, the loop goes on
            stats.transport(kind, e)
        if pause:
            time.sleep(pause * rng.uniform(0.5, 1.5))


def writer(args, stats, stores, model, token, stop, seed):
    rng = random.Random(seed)
    client = Client(args.port, token, timeout=15.0)
    pause = 1.0 / args.write_rate if args.write_rate > 0 else 0
    n = 0
    serial = 0
    while not stop.is_set() and n < args.max_requests:
        n += 1
        account, store = rng.choice(stores)
        root = f"{base(account)}/stores/{store}/secrets"
        roll = rng.random()
        with model.lock:
            size = len(model.present.get(store, {}))
        if size > args.max_secrets_per_store:
            roll = 0.9  # delete more than is made while a store is full
        try:
            if roll < 0.35:
                kind = "create"
                items = []
                for _ in range(rng.randint(1, 3)):
                    serial += 1
                    items.append({"name": f"soak_{seed}_{serial}", "value": f"v{rng.getrandbits(64)}",
                                  "scopes": rng.sample(SCOPES, rng.randint(1, 3)),
                                  "comment": f"note {serial}"})
                status, doc = client.call("POST", root, body=items)
                if status == 200:
                    for s in doc["result"]:
                        model.add(store, s["id"], s["comment"])
                elif status >= 500:
                    pass  # nothing acknowledged; a lost create leaves an unknown id behind
            elif roll < 0.6:
                kind = "patch"
                sid = model.pick(store, rng)
                if sid is None:
                    continue
                serial += 1
                body = {"comment": f"note patched {serial}"}
                if rng.random() < 0.3:
                    body["scopes"] = rng.sample(SCOPES, rng.randint(1, 3))
                if rng.random() < 0.2:
                    body["value"] = f"v{rng.getrandbits(64)}"
                status, doc = client.call("PATCH", f"{root}/{sid}", body=body)
                if status == 200:
                    model.add(store, sid, doc["result"]["comment"])
                elif status >= 500:
                    model.unsure(store, sid)
            elif roll < 0.75:
                kind = "duplicate"
                sid = model.pick(store, rng)
                if sid is None:
                    continue
                serial += 1
                status, doc = client.call("POST", f"{root}/{sid}/duplicate",
                                          body={"name": f"soak_{seed}_{serial}",
                                                "scopes": rng.sample(SCOPES, 2)})
                if status == 200:
                    model.add(store, doc["result"]["id"], doc["result"]["comment"])
            elif roll < 0.92:
                kind = "delete"
                sid = model.pick(store, rng)
                if sid is None:
                    continue
                status, doc = client.call("DELETE", f"{root}/{sid}")
                model.acknowledge_delete(store, [sid], status)
            else:
                kind = "bulk_delete"
                ids = {model.pick(store, rng) for _ in range(rng.randint(1, 3))} - {None}
                if not ids:
                    continue
                status, doc = client.call("DELETE", root, body={"ids": sorted(ids)})
                model.acknowledge_delete(store, ids, status)
            stats.count(kind, status)
            # The stand-in answers 500 on purpose (its error rate); the proxy passes that on.
            injected = status == 500 and doc is not None and doc.get("success") is False
            if status >= 400 and status not in (429, 502, 503, 504) and not injected:
                stats.odd(f"{kind} {status} {doc}")
        except Exception as e:  # noqa: BLE001
            stats.transport("write", e)
        if pause:
            time.sleep(pause * rng.uniform(0.5, 1.5))


def raw_exchange(port, payload, read=True):
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(payload)
        if not read:
            return b""
        chunks = []
        while True:
            try:
                chunk = s.recv(65536)
            except socket.timeout:
                break
            if not chunk:
                break
            chunks.append(chunk)
        return b"".join(chunks)


def churn(args, stats, stores, token, stop, seed):
    rng = random.Random(seed)
    pause = 1.0 / args.churn_rate if args.churn_rate > 0 else 0
    n = 0
    while not stop.is_set() and n < args.max_requests:
        n += 1
        account, store = rng.choice(stores)
        path = f"{base(account)}/stores/{store}/secrets?per_page=5"
        head = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\n"
        roll = rng.random()
        try:
            if roll < 0.85:
                kind = "churn_get"
                answer = raw_exchange(args.port, (head + "Connection: close\r\n\r\n").encode())
                status = int(answer.split(b" ", 2)[1]) if answer.startswith(b"HTTP/1.1 ") else 0
            elif roll < 0.92:
                kind = "churn_cut"  # a request that never finishes, then the client leaves
                raw_exchange(args.port, head.encode()[: rng.randint(1, len(head))], read=False)
                status = "cut"
            elif roll < 0.97:
                kind = "churn_malformed"
                answer = raw_exchange(args.port, b"GET /\x00 HTTP/1.1\r\nHost x\r\n\r\n")
                status = int(answer.split(b" ", 2)[1]) if answer.startswith(b"HTTP/1.1 ") else 0
            else:
                kind = "churn_idle"  # connects, says nothing, leaves
                with socket.create_connection(("127.0.0.1", args.port), timeout=5):
                    time.sleep(0.05)
                status = "idle"
            stats.count(kind, status)
        except Exception as e:  # noqa: BLE001
            stats.transport("churn", e)
        if pause:
            time.sleep(pause * rng.uniform(0.5, 1.5))


def process_sample(pid):
    rss = 0
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1])
    fds = len(os.listdir(f"/proc/{pid}/fd"))
    return rss, fds


def run_timed(args, stop, every_s, action):
    """Calls action() every every_s seconds until stop is set."""
    while not stop.wait(every_s):
        action()


def read_store(port, token, account, store):
    """Every secret of a store as {id: comment}, through all pages."""
    client = Client(port, token, timeout=30.0)
    out, page = {}, 1
    while page < 10000:
        # The stand-in fails some calls on purpose: a page is asked again a few times.
        for _ in range(10):
            status, doc = client.call("GET", f"{base(account)}/stores/{store}/secrets?per_page=100&page={page}",
                                      headers={"Cache-Control": "no-cache"})
            if status < 500:
                break
            time.sleep(0.2)
        if status != 200:
            raise RuntimeError(f"read back {store}: {status} {doc}")
        if not doc["result"]:
            return out
        for s in doc["result"]:
            out[s["id"]] = s["comment"]
        page += 1
    raise RuntimeError("read back: too many pages")


def verify(args, stores, model):
    admin = Client(args.port, args.admin_token, timeout=30.0)
    status, doc = admin.call("POST", "/admin/purge", body={})
    problems = []
    if status != 200:
        problems.append(f"purge answered {status}")
    checked = 0
    for account, store in stores:
        via_proxy = read_store(args.port, args.admin_token, account, store)
        direct = read_store(args.standin_port, args.standin_token, account, store)
        if via_proxy != direct:
            problems.append(f"store {store}: proxy and upstream disagree "
                            f"({len(via_proxy)} vs {len(direct)} secrets)")
        with model.lock:
            present = dict(model.present.get(store, {}))
            deleted = set(model.deleted.get(store, set()))
        for sid, comment in present.items():
            checked += 1
            if sid not in direct:
                problems.append(f"lost: {sid} (acknowledged, missing upstream)")
            elif direct[sid] != comment:
                problems.append(f"lost patch: {sid} has {direct[sid]!r}, acknowledged {comment!r}")
        for sid in deleted:
            checked += 1
            if sid in direct:
                problems.append(f"resurrected: {sid} (acknowledged delete, still upstream)")
    return checked, problems[:50]


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--pid", type=int, required=True)
    p.add_argument("--standin-port", type=int, required=True)
    p.add_argument("--standin-pid", type=int, required=True)
    p.add_argument("--standin-token", required=True)
    p.add_argument("--admin-token", required=True)
    p.add_argument("--reader-tokens", required=True, help="comma-separated")
    p.add_argument("--writer-token", required=True)
    p.add_argument("--stores", required=True, help="file of 'account store' lines")
    p.add_argument("--duration", type=float, default=1800)
    p.add_argument("--max-requests", type=int, default=10_000_000, help="per worker")
    p.add_argument("--read-rate", type=float, default=100, help="per reader thread")
    p.add_argument("--write-rate", type=float, default=10)
    p.add_argument("--churn-rate", type=float, default=30)
    p.add_argument("--max-secrets-per-store", type=int, default=400)
    p.add_argument("--reload-s", type=float, default=15)
    p.add_argument("--fault-every-s", type=float, default=60)
    p.add_argument("--fault-pause-s", type=float, default=3)
    p.add_argument("--sample-s", type=float, default=5)
    p.add_argument("--samples", required=True)
    args = p.parse_args()

    stores = [tuple(line.split()) for line in open(args.stores) if line.strip()]
    stats, model, stop = Stats(), Model(), threading.Event()
    for account, store in stores:  # what the seeding made counts as acknowledged
        for sid, comment in read_store(args.standin_port, args.standin_token, account, store).items():
            model.add(store, sid, comment)

    start = time.monotonic()
    samples = open(args.samples, "w")
    samples.write("seconds\trss_kib\tfds\trequests\n")

    def sample():
        rss, fds = process_sample(args.pid)
        samples.write(f"{time.monotonic() - start:.1f}\t{rss}\t{fds}\t{stats.total()}\n")
        samples.flush()

    reloads = [0]

    def reload():
        os.kill(args.pid, signal.SIGHUP)
        reloads[0] += 1

    faults = [0]

    def fault():
        os.kill(args.standin_pid, signal.SIGSTOP)
        try:
            stop.wait(args.fault_pause_s)
        finally:
            os.kill(args.standin_pid, signal.SIGCONT)
        faults[0] += 1

    sample()
    threads = [threading.Thread(target=reader, args=(args, stats, stores, model, tok, stop, 100 + i))
               for i, tok in enumerate(args.reader_tokens.split(","))]
    threads.append(threading.Thread(target=writer, args=(args, stats, stores, model, args.writer_token, stop, 7)))
    threads.append(threading.Thread(target=churn, args=(args, stats, stores, args.writer_token, stop, 9)))
    threads.append(threading.Thread(target=run_timed, args=(args, stop, args.sample_s, sample)))
    threads.append(threading.Thread(target=run_timed, args=(args, stop, args.reload_s, reload)))
    threads.append(threading.Thread(target=run_timed, args=(args, stop, args.fault_every_s, fault)))
    for t in threads:
        t.start()
    try:
        stop.wait(args.duration)
    finally:
        stop.set()
        for t in threads:
            t.join(60)
    os.kill(args.standin_pid, signal.SIGCONT)
    sample()
    samples.close()

    checked, problems = verify(args, stores, model)
    alive = True
    try:
        os.kill(args.pid, 0)
    except OSError:
        alive = False
    summary = {
        "seconds": round(time.monotonic() - start, 1),
        "requests": stats.requests,
        "statuses": stats.statuses,
        "transport_errors": stats.transport_errors,
        "unexpected": stats.unexpected,
        "reloads": reloads[0],
        "upstream_pauses": faults[0],
        "writes_checked": checked,
        "lost_or_wrong": problems,
        "proxy_alive": alive,
    }
    json.dump(summary, sys.stdout, indent=1)
    print()
    return 0 if alive and not problems else 1


if __name__ == "__main__":
    sys.exit(main())
