// Conformance of secrets-proxy with the official Cloudflare TypeScript SDK.
//
// Starts the real secrets-proxy binary (env SPROXY_BIN) on 127.0.0.1:0 with a temporary
// config and data directory, points `new Cloudflare({ baseURL })` at it and calls every
// Secrets Store method the SDK has, asserting on the returned data, on the SDK's error
// objects and on the HTTP requests the SDK's auto-pager makes. Finally sends SIGTERM
// and expects exit status 0.
//
// With SPROXY_SDK_CHAIN=1 the same run goes through a chain: the SDK talks to a
// secrets-proxy with its cache on whose upstream is a second secrets-proxy serving the
// embedded store over HTTP (cache off), behind a counting relay. The run then also
// checks how many requests reached that upstream, and that both processes exit 0.
// With SPROXY_SDK_TLS_DIR as well (set by with_test_ca.sh, which also makes Node trust
// its CA), every hop speaks TLS: the SDK to the proxy, the proxy (tls_ca_file) to the
// relay, the relay to the stand-in, each listener with the certificate in that directory.
//
// Run by CTest (tests/sdk/CMakeLists.txt) after `npm ci` in this folder.
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createServer, request as httpRequest } from 'node:http';
import { createServer as createHttpsServer, request as httpsRequest } from 'node:https';
import { createInterface } from 'node:readline';

const kStartTimeoutMs = 30_000;
const kStopTimeoutMs = 20_000;
const kRequestTimeoutMs = 30_000;
const kMaxCapturedOutput = 8 * 1024 * 1024;
const kMaxSecretsPerAccount = 60;
const kMaxStoresPerAccount = 2;
const kAllScopes = ['access', 'ai_gateway', 'containers', 'dex', 'websearch', 'workers'];
const kHex32 = /^[0-9a-f]{32}$/;
const kTimestamp = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}Z$/;

// The SDK is loaded dynamically so that a missing `npm ci` is reported as a failing
// test with a clear message instead of a module resolution stack trace.
let sdk = null;
let sdkLoadError = null;
if (!existsSync(new URL('./node_modules/cloudflare/package.json', import.meta.url))) {
  sdkLoadError = 'tests/sdk/node_modules is missing: run `npm ci` in tests/sdk (deploy/test.sh does)';
} else {
  try {
    sdk = await import('cloudflare');
  } catch (err) {
    sdkLoadError = `cannot load the cloudflare SDK (run \`npm ci\` in tests/sdk): ${err.message}`;
  }
}

const hex32 = () => randomBytes(16).toString('hex');
const sha256Hex = (s) => createHash('sha256').update(s).digest('hex');

// Appends to a bounded buffer; output past the bound is counted, not kept.
class OutputLog {
  constructor() {
    this.text = '';
    this.dropped = 0;
  }
  append(chunk) {
    const room = kMaxCapturedOutput - this.text.length;
    if (room > 0) this.text += chunk.slice(0, room);
    this.dropped += Math.max(0, chunk.length - Math.max(room, 0));
  }
}

// Starts the proxy and resolves once it printed its listening line.
function startProxy(bin, configPath, cwd) {
  const env = { ...process.env };
  // The store key comes from the config's key_file in the temp dir, never the caller's env.
  delete env.SECRETS_PROXY_STORE_KEY;
  const child = spawn(bin, ['--config', configPath], { cwd, env, stdio: ['ignore', 'pipe', 'pipe'] });
  const stdout = new OutputLog();
  const stderr = new OutputLog();
  child.stderr.setEncoding('utf8');
  child.stderr.on('data', (c) => stderr.append(c));
  const exited = new Promise((resolve) => {
    child.on('exit', (code, signal) => resolve({ code, signal }));
  });

  const port = new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      reject(new Error(`secrets-proxy printed no listening line within ${kStartTimeoutMs} ms; ` +
                       `stderr:\n${stderr.text}`));
    }, kStartTimeoutMs);
    child.on('error', (err) => {
      clearTimeout(timer);
      reject(new Error(`cannot start ${bin}: ${err.message}`));
    });
    exited.then(({ code, signal }) => {
      clearTimeout(timer);
      reject(new Error(`secrets-proxy exited early (code ${code}, signal ${signal}); ` +
                       `stderr:\n${stderr.text}`));
    });
    const lines = createInterface({ input: child.stdout });
    lines.on('line', (line) => {
      stdout.append(line + '\n');
      const m = /^secrets-proxy listening on https?:\/\/127\.0\.0\.1:(\d+) /.exec(line);
      if (m) {
        clearTimeout(timer);
        resolve(Number(m[1]));
      }
    });
  });
  return { child, exited, port, stdout, stderr };
}

// Awaits `promise` and returns the error it rejects with; fails if it resolves.
async function rejection(promise) {
  try {
    await promise;
  } catch (err) {
    return err;
  }
  assert.fail('expected the call to fail, but it succeeded');
}

function assertApiError(err, status, code, token) {
  assert.ok(err instanceof sdk.APIError, `expected an APIError, got ${err?.constructor?.name}: ${err}`);
  assert.equal(err.status, status);
  assert.equal(err.error?.success, false);
  assert.equal(err.error?.result, null);
  assert.ok(err.errors.length >= 1, 'error envelope has no errors');
  assert.equal(err.errors[0].code, code);
  const message = err.errors[0].message;
  assert.ok(message === token || message.startsWith(`${token}: `),
            `error message "${message}" is not the token "${token}"`);
}

function assertStore(store, accountId, name) {
  assert.match(store.id, kHex32);
  assert.equal(store.id[12], '4', 'store id is not a version-4 UUID without dashes');
  assert.equal(store.name, name);
  assert.equal(store.account_id, accountId);
  assert.match(store.created, kTimestamp);
  assert.match(store.modified, kTimestamp);
}

function assertSecret(secret, storeId, expected) {
  assert.match(secret.id, kHex32);
  assert.equal(secret.id[12], '4', 'secret id is not a version-4 UUID without dashes');
  assert.equal(secret.store_id, storeId);
  assert.equal(secret.name, expected.name);
  assert.equal(secret.comment, expected.comment ?? null);
  assert.deepEqual(secret.scopes, expected.scopes);
  assert.ok(['pending', 'active'].includes(secret.status), `unexpected status ${secret.status}`);
  assert.match(secret.created, kTimestamp);
  assert.match(secret.modified, kTimestamp);
  assert.ok(!('value' in secret), 'a secret resource carries a value field');
}

const sortedUnique = (scopes) => [...new Set(scopes)].sort();

const kChain = process.env.SPROXY_SDK_CHAIN === '1';
// TLS on every hop: the directory with ca.pem, server.pem and server.key (with_test_ca.sh).
const kTlsDir = process.env.SPROXY_SDK_TLS_DIR || null;
const kScheme = kTlsDir ? 'https' : 'http';
const tlsListen = () => ({ cert_file: join(kTlsDir, 'server.pem'), key_file: join(kTlsDir, 'server.key') });

// A loopback HTTP(S) relay in front of `port` that counts the requests passing through it
// (method and path), so the test can tell how many calls reached the upstream.
function startCountingRelay(port) {
  const seen = [];
  const onRequest = (req, res) => {
    seen.push({ method: req.method, url: req.url, auth: req.headers.authorization });
    const send = kTlsDir ? httpsRequest : httpRequest;
    const forward = send({ host: '127.0.0.1', port, method: req.method, path: req.url,
                           headers: req.headers }, (upstreamRes) => {
      res.writeHead(upstreamRes.statusCode, upstreamRes.headers);
      upstreamRes.pipe(res);
    });
    forward.on('error', () => {
      res.writeHead(502);
      res.end();
    });
    req.pipe(forward);
  };
  const server = kTlsDir
    ? createHttpsServer({ cert: readFileSync(join(kTlsDir, 'server.pem')),
                          key: readFileSync(join(kTlsDir, 'server.key')) }, onRequest)
    : createServer(onRequest);
  const listening = new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => resolve(server.address().port));
  });
  return { server, seen, listening };
}

// Sends SIGTERM and resolves with the exit outcome, or { timedOut: true }.
async function terminate(proc) {
  proc.child.kill('SIGTERM');
  let timer;
  const timeout = new Promise((resolve) => {
    timer = setTimeout(() => resolve({ timedOut: true }), kStopTimeoutMs);
  });
  const outcome = await Promise.race([proc.exited, timeout]);
  clearTimeout(timer);
  return outcome;
}

describe('secrets-proxy with the official Cloudflare SDK', { timeout: 300_000 }, () => {
  if (sdkLoadError !== null) {
    it('has its npm dependencies installed', () => assert.fail(sdkLoadError));
    return;
  }

  const bin = process.env.SPROXY_BIN;
  const token = `sdk-test-${randomBytes(24).toString('hex')}`;
  // A second, read-only client that authenticates with X-Auth-Email + X-Auth-Key.
  const readerEmail = 'sdk-reader@example.com';
  const readerKey = `sdk-key-${randomBytes(24).toString('hex')}`;
  // A third client with read + write (no admin) acting as `workers` and `dex`.
  const writerToken = `sdk-writer-${randomBytes(24).toString('hex')}`;
  const accountId = hex32();
  const otherAccountId = hex32();
  // Secret values used in this run; no response or log line may contain any of them.
  const values = new Set();
  const newValue = () => {
    const v = `value-${randomBytes(18).toString('hex')}`;
    values.add(v);
    return v;
  };
  // Every request the SDK sends, in order: method and URL relative to the base.
  const requests = [];
  const responseBodies = [];

  let workDir;
  let proxy;
  let standin = null;  // chain mode: the upstream secrets-proxy serving the embedded store
  let relay = null;    // chain mode: the counting relay in front of it
  let upstreamToken = null;  // chain mode: the proxy's own credential for the stand-in
  let started = false;     // set once it printed its listening line
  let terminated = false;  // set once the SIGTERM test took over the process
  let client;
  let baseURL;
  let store;
  let spareStore;
  const created = new Map();  // id -> { name, comment, scopes }

  // Records every request and response body of every SDK client in this run.
  let recordingFetch;
  const ss = () => client.secretsStore;

  before(async () => {
    assert.ok(bin, 'SPROXY_BIN must be the path of the secrets-proxy binary (CTest sets it)');
    assert.ok(existsSync(bin), `SPROXY_BIN=${bin} does not exist; build the secrets-proxy target`);
    workDir = mkdtempSync(join(tmpdir(), 'sproxy-sdk-'));
    const config = {
      listen: { address: '127.0.0.1', port: 0, threads: 2 },
      clients: [{
        name: 'sdk-conformance',
        token_sha256: sha256Hex(token),
        services: kAllScopes,
        accounts: ['*'],
        permissions: ['read', 'write', 'admin'],
      }, {
        name: 'sdk-reader',
        email: readerEmail,
        key_sha256: sha256Hex(readerKey),
        services: ['workers'],
        accounts: [accountId],
        permissions: ['read'],
      }, {
        name: 'sdk-writer',
        token_sha256: sha256Hex(writerToken),
        services: ['dex', 'workers'],
        accounts: [accountId],
        permissions: ['read', 'write'],
      }],
      store: {
        data_path: join(workDir, 'data', 'secrets-proxy.db'),
        key_file: join(workDir, 'data', 'store.key'),
        max_stores_per_account: kMaxStoresPerAccount,
        max_secrets_per_account: kMaxSecretsPerAccount,
        activation_delay_ms: 0,
      },
      upstream: { kind: 'embedded' },
      cache: { enabled: true, ttl: { secrets_ms: 30_000 } },
    };
    if (kChain) {
      // The stand-in serves the embedded store with the store settings above and its cache
      // off; the proxy under test reaches it through the relay with its own token.
      upstreamToken = `sdk-upstream-${randomBytes(24).toString('hex')}`;
      const standinConfig = {
        listen: { address: '127.0.0.1', port: 0, threads: 1 },
        clients: [{ name: 'proxy-under-test', token_sha256: sha256Hex(upstreamToken),
                    services: kAllScopes, accounts: ['*'], permissions: ['read', 'write', 'admin'] }],
        store: config.store,
        upstream: { kind: 'embedded' },
        cache: { enabled: false },
      };
      if (kTlsDir) standinConfig.listen.tls = tlsListen();
      const standinPath = join(workDir, 'standin.json');
      writeFileSync(standinPath, JSON.stringify(standinConfig, null, 2));
      standin = startProxy(bin, standinPath, workDir);
      relay = startCountingRelay(await standin.port);
      const relayPort = await relay.listening;
      const tokenPath = join(workDir, 'upstream.token');
      writeFileSync(tokenPath, upstreamToken + '\n', { mode: 0o600 });
      config.store = { data_path: join(workDir, 'unused', 'front.db'),
                       key_file: join(workDir, 'unused', 'front.key') };
      config.upstream = { kind: 'http', base_url: `${kScheme}://127.0.0.1:${relayPort}/client/v4`,
                          token_file: tokenPath, rate_limit_requests: 100000,
                          rate_limit_per_second: 0,
                          // The stand-in activates secrets at once (its activation_delay_ms).
                          activation_delay_ms: 0 };
      if (kTlsDir) config.upstream.tls_ca_file = join(kTlsDir, 'ca.pem');
    }
    if (kTlsDir) config.listen.tls = tlsListen();
    const configPath = join(workDir, 'config.json');
    writeFileSync(configPath, JSON.stringify(config, null, 2));

    proxy = startProxy(bin, configPath, workDir);
    const port = await proxy.port;
    started = true;
    assert.ok(port > 0 && port < 65536, `bad port ${port}`);
    baseURL = `${kScheme}://127.0.0.1:${port}/client/v4`;
    if (kTlsDir) {
      assert.match(proxy.stdout.text, /listening on https:/, 'the proxy does not serve HTTPS');
      if (kChain) assert.match(standin.stdout.text, /listening on https:/, 'the stand-in does not serve HTTPS');
    }

    recordingFetch = async (url, init) => {
      requests.push({ method: init?.method ?? 'GET', url: String(url).slice(baseURL.length) });
      const res = await fetch(url, init);
      responseBodies.push(await res.clone().text());
      return res;
    };
    client = new sdk.Cloudflare({
      apiToken: token,
      apiKey: null,
      apiEmail: null,
      userServiceKey: null,
      baseURL,
      fetch: recordingFetch,
      maxRetries: 0,  // a retried 409 or 5xx would hide what the proxy answered
      timeout: kRequestTimeoutMs,
    });
  });

  const isAlive = (proc) => proc.child.exitCode === null && proc.child.signalCode === null;
  const isRunning = () => isAlive(proxy);
  const stderrTail = () => proxy.stderr.text.slice(-4000);

  after(() => {
    if (proxy && !terminated) {
      if (isRunning()) {
        proxy.child.kill('SIGKILL');
      } else if (started) {  // a start-up failure is already the hook's error
        process.stderr.write(`secrets-proxy died during the test (code ${proxy.child.exitCode}, ` +
                             `signal ${proxy.child.signalCode}); stderr:\n${stderrTail()}\n`);
      }
    }
    if (standin && isAlive(standin)) standin.child.kill('SIGKILL');
    if (relay) relay.server.close();
    if (workDir) rmSync(workDir, { recursive: true, force: true });
  });

  it('creates, gets and limits stores', async () => {
    store = await ss().stores.create({ account_id: accountId, name: 'sdk_store_main' });
    assertStore(store, accountId, 'sdk_store_main');
    assert.deepEqual(await ss().stores.get(store.id, { account_id: accountId }), store);

    spareStore = await ss().stores.create({ account_id: accountId, name: 'sdk_store_spare' });
    assertStore(spareStore, accountId, 'sdk_store_spare');
    assert.notEqual(spareStore.id, store.id);

    const err = await rejection(ss().stores.create({ account_id: accountId, name: 'one_too_many' }));
    assertApiError(err, 400, 1003, 'maximum_stores_exceeded');
  });

  it('lists stores page by page, ordered, per account', async () => {
    const seen = [];
    for await (const s of ss().stores.list({ account_id: accountId, per_page: 1 })) seen.push(s.id);
    assert.deepEqual([...seen].sort(), [store.id, spareStore.id].sort());

    const byNameDesc = [];
    for await (const s of ss().stores.list({ account_id: accountId, order: 'name', direction: 'desc' })) {
      byNameDesc.push(s.name);
    }
    assert.deepEqual(byNameDesc, ['sdk_store_spare', 'sdk_store_main']);

    const others = [];
    for await (const s of ss().stores.list({ account_id: otherAccountId })) others.push(s);
    assert.deepEqual(others, []);
  });

  it('answers 404 store_not_found for an unknown store', async () => {
    assertApiError(await rejection(ss().stores.get(hex32(), { account_id: accountId })),
                   404, 1001, 'store_not_found');
    const err = await rejection(ss().stores.get(hex32(), { account_id: accountId }));
    assert.ok(err instanceof sdk.NotFoundError);
    const list = ss().stores.secrets.list(hex32(), { account_id: accountId });
    assertApiError(await rejection(list), 404, 1001, 'store_not_found');
  });

  it('creates secrets in batches, returned in request order', async () => {
    const scopeSets = [['workers'], ['workers', 'dex', 'workers'], ['ai_gateway', 'access'], kAllScopes];
    for (let batch = 0; batch < 3; ++batch) {
      const body = [];
      for (let i = 0; i < 15; ++i) {
        const n = batch * 15 + i;
        body.push({
          name: `SDK_SECRET_${String(n).padStart(2, '0')}`,
          value: newValue(),
          scopes: [...scopeSets[n % scopeSets.length]].reverse(),
          ...(n % 3 === 0 ? {} : { comment: `comment for secret ${n}` }),
        });
      }
      const page = await ss().stores.secrets.create(store.id, { account_id: accountId, body });
      assert.equal(page.result.length, body.length);
      page.result.forEach((secret, i) => {
        const want = { name: body[i].name, comment: body[i].comment, scopes: sortedUnique(body[i].scopes) };
        assertSecret(secret, store.id, want);
        assert.equal(secret.status, 'pending', 'a new secret is pending right after create');
        assert.ok(!created.has(secret.id), 'duplicate secret id');
        created.set(secret.id, want);
      });
    }
    assert.equal(created.size, 45);
  });

  it('rejects a create batch with a taken name and stores nothing', async () => {
    const body = [
      { name: 'SDK_FRESH_NAME', value: newValue(), scopes: ['workers'] },
      { name: 'SDK_SECRET_07', value: newValue(), scopes: ['workers'] },
    ];
    const err = await rejection(ss().stores.secrets.create(store.id, { account_id: accountId, body }));
    assertApiError(err, 400, 1003, 'secret_name_already_exists');
    const fresh = [];
    for await (const s of ss().stores.secrets.list(store.id, { account_id: accountId, search: 'SDK_FRESH' })) {
      fresh.push(s);
    }
    assert.deepEqual(fresh, []);
  });

  it('auto-pages through every secret exactly once', async () => {
    const from = requests.length;
    const seen = new Map();
    for await (const s of ss().stores.secrets.list(store.id, { account_id: accountId, per_page: 20 })) {
      assert.ok(!seen.has(s.id), `secret ${s.name} was listed twice`);
      seen.set(s.id, s);
    }
    assert.equal(seen.size, created.size);
    for (const [id, want] of created) {
      assert.ok(seen.has(id), `secret ${want.name} was not listed`);
      assertSecret(seen.get(id), store.id, want);
    }
    // The SDK's pager asks for page+1 until a page comes back empty.
    const pages = requests.slice(from).map((r) => new URL(r.url, 'http://x').searchParams.get('page'));
    assert.deepEqual(pages, [null, '2', '3', '4']);
  });

  it('reports result_info on every page', async () => {
    const first = await ss().stores.secrets.list(store.id, { account_id: accountId, per_page: 20 });
    const infos = [];
    for await (const page of first.iterPages()) infos.push({ ...page.result_info, n: page.result.length });
    assert.deepEqual(infos.map((i) => i.n), [20, 20, 5, 0]);
    for (const [i, info] of infos.entries()) {
      assert.equal(info.page, i + 1);
      assert.equal(info.per_page, 20);
      assert.equal(info.count, info.n);
      assert.equal(info.total_count, 45);
      assert.equal(info.total_pages, 3);
    }
  });

  it('orders, searches and filters secrets by scope', async () => {
    const names = [];
    for await (const s of ss().stores.secrets.list(store.id, {
      account_id: accountId, order: 'name', direction: 'desc', per_page: 100,
    })) {
      names.push(s.name);
    }
    const expected = [...created.values()].map((s) => s.name).sort().reverse();
    assert.deepEqual(names, expected);

    const found = [];
    for await (const s of ss().stores.secrets.list(store.id, { account_id: accountId, search: 'sdk_secret_1' })) {
      found.push(s.name);
    }
    assert.deepEqual(found.sort(), Array.from({ length: 10 }, (_, i) => `SDK_SECRET_1${i}`));

    // Arrays go out as repeated keys (?scopes=dex&scopes=workers); a secret must hold all.
    const from = requests.length;
    const both = [];
    for await (const s of ss().stores.secrets.list(store.id, {
      account_id: accountId, scopes: ['dex', 'workers'], per_page: 100,
    })) {
      both.push(s.id);
    }
    const wantBoth = [...created].filter(([, s]) => s.scopes.includes('dex') && s.scopes.includes('workers'));
    assert.deepEqual(both.sort(), wantBoth.map(([id]) => id).sort());
    assert.ok(both.length > 0 && both.length < created.size);
    assert.match(requests[from].url, /[?&]scopes=dex&scopes=workers(&|$)/);

    const err = await rejection(ss().stores.secrets.list(store.id, { account_id: accountId, per_page: 101 }));
    assertApiError(err, 400, 1001, 'invalid_per_page_parameter');
  });

  it('limits an email + key client to reads of its services and account', async () => {
    const reader = new sdk.Cloudflare({
      apiToken: null, apiKey: readerKey, apiEmail: readerEmail, userServiceKey: null,
      baseURL, fetch: recordingFetch, maxRetries: 0, timeout: kRequestTimeoutMs,
    });
    const visible = [];
    for await (const s of reader.secretsStore.stores.secrets.list(store.id, { account_id: accountId })) {
      visible.push(s.id);
    }
    const withWorkers = [...created].filter(([, s]) => s.scopes.includes('workers')).map(([id]) => id);
    assert.ok(withWorkers.length > 0 && withWorkers.length < created.size);
    assert.deepEqual(visible.sort(), withWorkers.sort());

    const write = reader.secretsStore.stores.secrets.create(store.id, {
      account_id: accountId, body: [{ name: 'SDK_READER_WRITE', value: newValue(), scopes: ['workers'] }],
    });
    assertApiError(await rejection(write), 403, 10000, 'Authentication error');
    const elsewhere = reader.secretsStore.stores.list({ account_id: otherAccountId });
    assertApiError(await rejection(elsewhere), 403, 10000, 'Authentication error');
  });

  it('refuses every write of a read-only client with the 403 envelope', async () => {
    const reader = new sdk.Cloudflare({
      apiToken: null, apiKey: readerKey, apiEmail: readerEmail, userServiceKey: null,
      baseURL, fetch: recordingFetch, maxRetries: 0, timeout: kRequestTimeoutMs,
    });
    const [sid] = [...created].find(([, s]) => s.scopes.includes('workers'));
    const where = { account_id: accountId, store_id: store.id };
    const attempts = {
      'stores.create': () => reader.secretsStore.stores.create({ account_id: accountId, name: 'sdk_reader_store' }),
      'stores.delete': () => reader.secretsStore.stores.delete(spareStore.id, { account_id: accountId }),
      'secrets.create': () => reader.secretsStore.stores.secrets.create(store.id, {
        account_id: accountId, body: [{ name: 'SDK_READER_NEW', value: newValue(), scopes: ['workers'] }],
      }),
      'secrets.edit': () => reader.secretsStore.stores.secrets.edit(sid, { ...where, comment: 'reader' }),
      'secrets.delete': () => reader.secretsStore.stores.secrets.delete(sid, where),
      'secrets.duplicate': () => reader.secretsStore.stores.secrets.duplicate(sid, {
        ...where, name: 'SDK_READER_DUP', scopes: ['workers'],
      }),
      'secrets.bulkDelete': () => reader.secretsStore.stores.secrets.bulkDelete(
        store.id, { account_id: accountId }, { body: { ids: [sid] } }),
    };
    for (const [name, attempt] of Object.entries(attempts)) {
      const err = await rejection(attempt());
      assert.ok(err instanceof sdk.PermissionDeniedError, `${name}: ${err}`);
      assertApiError(err, 403, 10000, 'Authentication error');
    }
    // Nothing changed: the secret is still there, unedited.
    const still = await ss().stores.secrets.get(sid, where);
    assert.equal(still.comment, created.get(sid).comment ?? null);
  });

  it('lets a writer change only secrets and scopes within its services', async () => {
    const writer = new sdk.Cloudflare({
      apiToken: writerToken, apiKey: null, apiEmail: null, userServiceKey: null,
      baseURL, fetch: recordingFetch, maxRetries: 0, timeout: kRequestTimeoutMs,
    });
    const w = writer.secretsStore.stores;
    const where = { account_id: accountId, store_id: store.id };

    const [mine] = (await w.secrets.create(store.id, {
      account_id: accountId, body: [{ name: 'SDK_WRITER_OWN', value: newValue(), scopes: ['dex'] }],
    })).result;
    assertSecret(mine, store.id, { name: 'SDK_WRITER_OWN', scopes: ['dex'] });
    const edited = await w.secrets.edit(mine.id, { ...where, comment: 'by writer', scopes: ['dex', 'workers'] });
    assert.equal(edited.comment, 'by writer');
    assert.deepEqual(edited.scopes, ['dex', 'workers']);
    const dup = await w.secrets.duplicate(mine.id, { ...where, name: 'SDK_WRITER_DUP', scopes: ['workers'] });
    assertSecret(dup, store.id, { name: 'SDK_WRITER_DUP', scopes: ['workers'] });

    // Scopes outside its services: 403, nothing stored.
    const outside = await rejection(w.secrets.create(store.id, {
      account_id: accountId, body: [{ name: 'SDK_WRITER_AI', value: newValue(), scopes: ['ai_gateway'] }],
    }));
    assertApiError(outside, 403, 10000, 'Authentication error');
    assertApiError(await rejection(w.secrets.edit(mine.id, { ...where, scopes: ['access'] })),
                   403, 10000, 'Authentication error');
    // A secret it cannot see answers like a missing one, for reads and writes.
    const hidden = [...created].find(([, s]) => !s.scopes.some((x) => x === 'dex' || x === 'workers'));
    assert.ok(hidden, 'the run has no secret outside the writer\'s services');
    assertApiError(await rejection(w.secrets.get(hidden[0], where)), 404, 1001, 'secret_not_found');
    assertApiError(await rejection(w.secrets.edit(hidden[0], { ...where, comment: 'x' })),
                   404, 1001, 'secret_not_found');
    assertApiError(await rejection(w.secrets.delete(hidden[0], where)), 404, 1001, 'secret_not_found');
    assertApiError(await rejection(w.secrets.bulkDelete(store.id, { account_id: accountId },
                                                        { body: { ids: [dup.id, hidden[0]] } })),
                   404, 1001, 'secret_not_found');
    // Store operations need admin.
    assertApiError(await rejection(w.create({ account_id: accountId, name: 'sdk_writer_store' })),
                   403, 10000, 'Authentication error');

    // Its own secrets go away through its own calls; the hidden one is untouched.
    assert.equal(await w.secrets.bulkDelete(store.id, { account_id: accountId }, { body: { ids: [dup.id] } }), null);
    assert.equal(await w.secrets.delete(mine.id, where), null);
    assertApiError(await rejection(ss().stores.secrets.get(mine.id, where)), 404, 1001, 'secret_not_found');
    assert.equal((await ss().stores.secrets.get(hidden[0], where)).id, hidden[0]);
  });

  it('gets a secret, and 404s an unknown one as an APIError', async () => {
    const [id, want] = [...created][4];
    const secret = await ss().stores.secrets.get(id, { account_id: accountId, store_id: store.id });
    assertSecret(secret, store.id, want);
    assert.equal(secret.id, id);
    assert.equal(secret.status, 'active');  // activation_delay_ms is 0

    const err = await rejection(ss().stores.secrets.get(hex32(), { account_id: accountId, store_id: store.id }));
    assert.ok(err instanceof sdk.NotFoundError);
    assertApiError(err, 404, 1001, 'secret_not_found');
  });

  it('edits comment, scopes and value', async () => {
    const [id, want] = [...created][5];
    const before = await ss().stores.secrets.get(id, { account_id: accountId, store_id: store.id });
    const edited = await ss().stores.secrets.edit(id, {
      account_id: accountId, store_id: store.id,
      comment: 'edited by the sdk test', scopes: ['websearch', 'access', 'websearch'],
    });
    const now = { name: want.name, comment: 'edited by the sdk test', scopes: ['access', 'websearch'] };
    assertSecret(edited, store.id, now);
    assert.equal(edited.id, id);
    assert.equal(edited.created, before.created);
    assert.ok(Date.parse(edited.modified) >= Date.parse(before.modified));
    assert.deepEqual(await ss().stores.secrets.get(id, { account_id: accountId, store_id: store.id }), edited);
    created.set(id, now);

    const revalued = await ss().stores.secrets.edit(id, {
      account_id: accountId, store_id: store.id, value: newValue(),
    });
    assertSecret(revalued, store.id, now);
    assert.equal(revalued.status, 'pending', 'a value change makes a secret pending again');
    assert.ok(Date.parse(revalued.modified) >= Date.parse(edited.modified));

    const err = await rejection(ss().stores.secrets.edit(id, {
      account_id: accountId, store_id: store.id, scopes: ['not_a_scope'],
    }));
    assertApiError(err, 400, 1001, 'secret_scope_invalid');
  });

  it('duplicates a secret under a new name', async () => {
    const [id] = [...created][1];
    const dup = await ss().stores.secrets.duplicate(id, {
      account_id: accountId, store_id: store.id,
      name: 'SDK_DUPLICATE', scopes: ['containers', 'access'], comment: 'a copy',
    });
    const want = { name: 'SDK_DUPLICATE', comment: 'a copy', scopes: ['access', 'containers'] };
    assertSecret(dup, store.id, want);
    assert.equal(dup.status, 'pending', 'a duplicate is pending right after it is made');
    assert.notEqual(dup.id, id);
    assert.ok(!created.has(dup.id));
    created.set(dup.id, want);
    // activation_delay_ms is 0: a read after the write sees it active.
    const read = await ss().stores.secrets.get(dup.id, { account_id: accountId, store_id: store.id });
    assert.deepEqual(read, { ...dup, status: 'active' });

    const err = await rejection(ss().stores.secrets.duplicate(id, {
      account_id: accountId, store_id: store.id, name: 'SDK_SECRET_00', scopes: ['workers'],
    }));
    assertApiError(err, 400, 1003, 'secret_name_already_exists');
  });

  it('reports the quota and its usage', async () => {
    const quota = await ss().quota.get({ account_id: accountId });
    assert.deepEqual(quota, { secrets: { quota: kMaxSecretsPerAccount, usage: 46 } });
    const other = await ss().quota.get({ account_id: otherAccountId });
    assert.deepEqual(other, { secrets: { quota: kMaxSecretsPerAccount, usage: 0 } });
  });

  it('deletes one secret', async () => {
    const [id] = [...created][0];
    assert.equal(await ss().stores.secrets.delete(id, { account_id: accountId, store_id: store.id }), null);
    created.delete(id);
    const err = await rejection(ss().stores.secrets.get(id, { account_id: accountId, store_id: store.id }));
    assertApiError(err, 404, 1001, 'secret_not_found');
    const again = await rejection(ss().stores.secrets.delete(id, { account_id: accountId, store_id: store.id }));
    assertApiError(again, 404, 1001, 'secret_not_found');
  });

  it('bulk-deletes secrets all-or-nothing with an {ids} body', async () => {
    const ids = [...created.keys()].slice(0, 10);
    // The SDK's bulkDelete params carry no body; the ids go in as the request body.
    const refused = await rejection(ss().stores.secrets.bulkDelete(
        store.id, { account_id: accountId }, { body: { ids: [...ids, hex32()] } }));
    assertApiError(refused, 404, 1001, 'secret_not_found');
    let listed = 0;
    for await (const _ of ss().stores.secrets.list(store.id, { account_id: accountId, per_page: 50 })) ++listed;
    assert.equal(listed, created.size, 'a refused bulk delete removed secrets');

    const from = requests.length;
    const result = await ss().stores.secrets.bulkDelete(store.id, { account_id: accountId }, { body: { ids } });
    assert.equal(result, null);
    assert.equal(requests[from].method, 'DELETE');
    assert.match(requests[from].url, /\/stores\/[0-9a-f]{32}\/secrets$/);
    for (const id of ids) created.delete(id);

    const remaining = [];
    for await (const s of ss().stores.secrets.list(store.id, { account_id: accountId, per_page: 20 })) {
      remaining.push(s.id);
    }
    assert.deepEqual(remaining.sort(), [...created.keys()].sort());
    const err = await rejection(ss().stores.secrets.get(ids[0], { account_id: accountId, store_id: store.id }));
    assertApiError(err, 404, 1001, 'secret_not_found');
    const quota = await ss().quota.get({ account_id: accountId });
    assert.equal(quota.secrets.usage, created.size);
  });

  it('refuses a client with an unknown token', async () => {
    const stranger = new sdk.Cloudflare({
      apiToken: `unknown-${randomBytes(16).toString('hex')}`, apiKey: null, apiEmail: null,
      userServiceKey: null, baseURL, fetch: recordingFetch, maxRetries: 0, timeout: kRequestTimeoutMs,
    });
    const err = await rejection(stranger.secretsStore.stores.list({ account_id: accountId }));
    assert.ok(err instanceof sdk.PermissionDeniedError);
    assertApiError(err, 403, 10000, 'Authentication error');
  });

  it('deletes stores: 409 while not empty, then with force', async () => {
    const conflict = await rejection(ss().stores.delete(store.id, { account_id: accountId }));
    assert.ok(conflict instanceof sdk.ConflictError);
    assertApiError(conflict, 409, 1003, 'store_not_empty');

    assert.equal(await ss().stores.delete(store.id, { account_id: accountId, force: true }), null);
    assertApiError(await rejection(ss().stores.get(store.id, { account_id: accountId })),
                   404, 1001, 'store_not_found');
    const left = [];
    for await (const s of ss().stores.list({ account_id: accountId })) left.push(s.id);
    assert.deepEqual(left, [spareStore.id]);

    assert.equal(await ss().stores.delete(spareStore.id, { account_id: accountId }), null);
    const none = [];
    for await (const s of ss().stores.list({ account_id: accountId })) none.push(s);
    assert.deepEqual(none, []);
    assert.deepEqual(await ss().quota.get({ account_id: accountId }),
                     { secrets: { quota: kMaxSecretsPerAccount, usage: 0 } });
  });

  it('never returns a secret value in a response', () => {
    assert.ok(responseBodies.length > 50, `only ${responseBodies.length} responses recorded`);
    for (const body of responseBodies) {
      for (const v of values) assert.ok(!body.includes(v), 'a response body contains a secret value');
    }
  });

  it('exits 0 on SIGTERM and never logs a secret value', async () => {
    assert.ok(isRunning(), `secrets-proxy is no longer running (code ${proxy.child.exitCode}, ` +
                           `signal ${proxy.child.signalCode}); stderr:\n${stderrTail()}`);
    terminated = true;
    assert.ok(proxy.child.kill('SIGTERM'), 'could not signal secrets-proxy');
    let timer;
    const timeout = new Promise((resolve) => {
      timer = setTimeout(() => resolve({ timedOut: true }), kStopTimeoutMs);
    });
    const outcome = await Promise.race([proxy.exited, timeout]);
    clearTimeout(timer);
    assert.ok(!outcome.timedOut, `secrets-proxy did not exit within ${kStopTimeoutMs} ms of SIGTERM`);
    assert.deepEqual(outcome, { code: 0, signal: null }, `stderr:\n${stderrTail()}`);
    const output = proxy.stdout.text + proxy.stderr.text;
    for (const v of values) assert.ok(!output.includes(v), 'the proxy logged a secret value');
  });
  if (kChain) {
    it('reached the upstream only for misses and writes, and the stand-in exits 0', async () => {
      const upstreamCalls = relay.seen.length;
      const writes = relay.seen.filter((r) => r.method !== 'GET').length;
      const sdkWrites = requests.filter((r) => r.method !== 'GET').length;
      process.stdout.write(`# chain: ${requests.length} SDK requests, ${upstreamCalls} upstream ` +
                           `requests (${writes} writes)\n`);
      assert.ok(upstreamCalls > 0, 'no request reached the upstream');
      // Every write the proxy accepted was forwarded once; denied writes never left it.
      assert.ok(writes > 0 && writes <= sdkWrites, `${writes} upstream writes, ${sdkWrites} SDK writes`);
      // Reads are answered from whole-store snapshots: fewer upstream reads than SDK reads.
      const sdkReads = requests.length - sdkWrites;
      assert.ok(upstreamCalls - writes < sdkReads,
                `${upstreamCalls - writes} upstream reads for ${sdkReads} SDK reads`);
      // The proxy sends its own token upstream, never a client's.
      for (const r of relay.seen) {
        assert.equal(r.auth, `Bearer ${upstreamToken}`, `${r.method} ${r.url} carried another credential`);
      }
      const outcome = await terminate(standin);
      assert.deepEqual(outcome, { code: 0, signal: null }, `stand-in stderr:\n${standin.stderr.text.slice(-4000)}`);
      const output = standin.stdout.text + standin.stderr.text;
      for (const v of values) assert.ok(!output.includes(v), 'the stand-in logged a secret value');
    });
  }
});
