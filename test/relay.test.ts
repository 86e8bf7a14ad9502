// The relay over real sockets: an in-process relay on 127.0.0.1 port 0 (and the real CLI
// process for shutdown), real `ws` clients playing holder and facade, tokens from
// protocol/token.ts signed with real Ed25519 keys.

import { generateKeyPairSync, randomBytes, sign, type KeyObject } from 'node:crypto';
import t, { type Test } from 'tap';
import { WebSocket, type RawData } from 'ws';
import { holderIdFromPublicKey } from '../protocol/relay/identity.js';
import {
  MuxKind,
  decodeMux,
  encodeMux,
  encodeMuxClose,
  parseMuxOpen,
  type MuxFrame,
} from '../protocol/relay/mux.js';
import { encodeToken, type TokenPayload } from '../protocol/token.js';
import { buildRelay, listenRelay, type RelayLimits } from '../server/relay/index.js';
import { runCli, spawnCli, waitForLine } from './support/cli.js';

// ---- helpers ----

interface Identity {
  privateKey: KeyObject;
  hpk: Buffer;
  hid: string;
}

function newIdentity(): Identity {
  const { privateKey, publicKey } = generateKeyPairSync('ed25519');
  const hpk = Buffer.from(publicKey.export({ format: 'jwk' }).x as string, 'base64url');
  return { privateKey, hpk, hid: holderIdFromPublicKey(hpk) };
}

let tidCounter = 0;

/** A full token (with secret) for `id`; `signer` signs it (default: `id` itself). */
function makeToken(id: Identity, over: Partial<TokenPayload> = {}, signer = id): string {
  const now = Math.floor(Date.now() / 1000);
  const payload: TokenPayload = {
    v: 1,
    relay: 'http://127.0.0.1:7878',
    hid: id.hid,
    hpk: id.hpk.toString('base64url'),
    tid: `ktt_${(++tidCounter).toString(16).padStart(16, '0')}`,
    keys: ['0123456789ABCDEF0123456789ABCDEF01234567'],
    ops: ['sign'],
    iat: now - 60,
    exp: now + 3600,
    ...over,
  };
  return encodeToken(payload, (b) => sign(null, b, signer.privateKey), randomBytes(32));
}

const publicPart = (token: string) => token.split('.').slice(0, 3).join('.');

interface Msg {
  data: Buffer;
  isBinary: boolean;
}

/** A client WebSocket whose messages queue up until a test asks for them. */
class Client {
  readonly ws: WebSocket;
  private readonly queue: Msg[] = [];
  private readonly waiters: ((m: Msg) => void)[] = [];
  readonly closed: Promise<{ code: number; reason: string }>;

  constructor(url: string) {
    this.ws = new WebSocket(url);
    this.ws.on('error', () => {});
    this.ws.on('message', (data: RawData, isBinary: boolean) => {
      const m = { data: data as Buffer, isBinary };
      const w = this.waiters.shift();
      if (w) w(m);
      else this.queue.push(m);
    });
    this.closed = new Promise((resolve) =>
      this.ws.once('close', (code, reason) => resolve({ code, reason: reason.toString() })),
    );
  }

  opened(): Promise<void> {
    return new Promise((resolve, reject) => {
      if (this.ws.readyState === WebSocket.OPEN) return resolve();
      this.ws.once('open', () => resolve());
      this.ws.once('close', () => reject(new Error('closed before open')));
    });
  }

  next(): Promise<Msg> {
    const m = this.queue.shift();
    if (m) return Promise.resolve(m);
    return new Promise((resolve) => this.waiters.push(resolve));
  }

  async json(): Promise<Record<string, unknown>> {
    const m = await this.next();
    if (m.isBinary) throw new Error('expected a text message');
    return JSON.parse(m.data.toString()) as Record<string, unknown>;
  }

  async frame(): Promise<MuxFrame> {
    const m = await this.next();
    if (!m.isBinary) throw new Error(`expected a binary message, got ${m.data.toString()}`);
    const f = decodeMux(m.data);
    if ('error' in f) throw new Error(f.error);
    return f;
  }
}

async function startRelay(t: Test, limits: Partial<RelayLimits> = {}) {
  const logs: string[] = [];
  const app = buildRelay({
    logger: { level: 'debug', stream: { write: (s: string) => void logs.push(s) } },
    limits,
  });
  const base = await listenRelay(app, '127.0.0.1', 0);
  t.teardown(() => app.close());
  return { app, base, ws: base.replace(/^http/, 'ws'), logs };
}

/** Connects and authenticates a holder; resolves once the relay said ok. */
async function holder(
  t: Test,
  wsBase: string,
  id: Identity,
  signNonce?: (nonce: string) => string,
) {
  const c = new Client(`${wsBase}/v1/holder`);
  const challenge = await c.json();
  t.equal(challenge.type, 'challenge');
  const nonce = challenge.nonce as string;
  t.equal(Buffer.from(nonce, 'base64url').length, 32, 'nonce is 32 bytes');
  const sig =
    signNonce?.(nonce) ??
    sign(null, Buffer.from(`keytether-relay-auth-v1\n${nonce}`), id.privateKey).toString(
      'base64url',
    );
  c.ws.send(JSON.stringify({ type: 'auth', hpk: id.hpk.toString('base64url'), sig }));
  return c;
}

async function facade(wsBase: string, tokenPublicPart: string) {
  const c = new Client(`${wsBase}/v1/facade`);
  await c.opened();
  c.ws.send(JSON.stringify({ type: 'token', token: tokenPublicPart }));
  return c;
}

async function metricsText(app: ReturnType<typeof buildRelay>): Promise<string> {
  const res = await app.inject({ method: 'GET', url: '/metrics' });
  return res.body;
}

// ---- tests ----

t.test('mux frames', async (t) => {
  const payload = Buffer.from('tunnel bytes');
  const f = encodeMux(MuxKind.Data, 0xfffffffe, payload);
  t.same([...f.subarray(0, 5)], [2, 0xff, 0xff, 0xff, 0xfe], 'kind, then uint32 BE stream id');
  t.same(decodeMux(f), { kind: MuxKind.Data, streamId: 0xfffffffe, payload });
  t.match(decodeMux(Buffer.from([2, 0, 0, 0])), { error: /shorter/ });
  t.match(decodeMux(Buffer.from([4, 0, 0, 0, 1])), { error: /kind 4/ });
  t.match(decodeMux(Buffer.concat([Buffer.from([3, 0, 0, 0, 1]), Buffer.alloc(201)])), {
    error: /close reason/,
  });
  t.match(decodeMux(encodeMux(MuxKind.Data, 1, Buffer.alloc(11)), 10), { error: /longer/ });
  t.throws(() => encodeMux(MuxKind.Data, -1, payload), RangeError);
  const longReason = 'é'.repeat(150); // 300 bytes of UTF-8
  const c = decodeMux(encodeMuxClose(7, longReason)) as MuxFrame;
  t.equal(c.payload.length, 200, 'close reasons are cut to 200 bytes…');
  t.equal(c.payload.toString(), 'é'.repeat(100), '…on a character boundary');
  t.match(parseMuxOpen(Buffer.from('{"token":"kt1.a.b"}')), { error: /token/ });
  t.match(parseMuxOpen(Buffer.from('nope')), { error: /JSON/ });
});

t.test('healthz and metrics', async (t) => {
  const app = buildRelay({ logger: false });
  t.teardown(() => app.close());
  const h = await app.inject({ method: 'GET', url: '/healthz' });
  t.equal(h.statusCode, 200);
  t.same(h.json(), { ok: true });
  const m = await app.inject({ method: 'GET', url: '/metrics' });
  t.equal(m.statusCode, 200);
  t.match(m.headers['content-type'], /text\/plain/);
  t.match(m.body, /keytether_relay_connections\{role="holder"\} 0/);
  t.match(m.body, /keytether_relay_connections\{role="facade"\} 0/);
  t.match(m.body, /# TYPE keytether_relay_refusals_total counter/);
});

t.test('holder authentication', async (t) => {
  const r = await startRelay(t, { authDeadlineMs: 300 });
  const id = newIdentity();

  const good = await holder(t, r.ws, id);
  t.same(await good.json(), { type: 'ok', hid: id.hid }, 'ok carries the holder id');
  t.match(await metricsText(r.app), /keytether_relay_connections\{role="holder"\} 1/);

  const other = newIdentity();
  const bad = await holder(t, r.ws, id, (nonce) =>
    sign(null, Buffer.from(`keytether-relay-auth-v1\n${nonce}`), other.privateKey).toString(
      'base64url',
    ),
  );
  t.same(await bad.closed, { code: 4001, reason: 'auth failed' }, 'bad signature: 4001');

  const wrongNonce = await holder(t, r.ws, id, () =>
    sign(null, Buffer.from('keytether-relay-auth-v1\nsomething-else'), id.privateKey).toString(
      'base64url',
    ),
  );
  t.equal((await wrongNonce.closed).code, 4001, 'signature over another nonce: 4001');

  const silent = new Client(`${r.ws}/v1/holder`);
  t.equal((await silent.json()).type, 'challenge');
  t.same(await silent.closed, { code: 4002, reason: 'auth timeout' }, 'no answer: 4002');

  // The failed attempts with the same id did not disturb the first connection.
  t.equal(good.ws.readyState, WebSocket.OPEN);
  const m = await metricsText(r.app);
  t.match(m, /keytether_relay_refusals_total\{reason="auth_failed"\} 2/);
  t.match(m, /keytether_relay_refusals_total\{reason="auth_timeout"\} 1/);
  const refusals = r.logs.filter((l) => l.includes('"msg":"refused"'));
  t.equal(refusals.length, 3, 'each refusal is a log line');
  for (const l of refusals) t.match(l, /"reason":"auth (failed|timeout)"/);
  good.ws.close();
  await good.closed;
});

t.test('a second holder connection replaces the first only after proving the key', async (t) => {
  const r = await startRelay(t);
  const id = newIdentity();
  const first = await holder(t, r.ws, id);
  t.equal((await first.json()).type, 'ok');

  const impostor = await holder(t, r.ws, id, () => randomBytes(64).toString('base64url'));
  t.equal((await impostor.closed).code, 4001);

  // Still routed to the first: a facade stream arrives there.
  const f1 = await facade(r.ws, publicPart(makeToken(id)));
  t.same(await f1.json(), { type: 'ok' });
  t.equal((await first.frame()).kind, MuxKind.Open, 'the first holder still gets streams');

  const second = await holder(t, r.ws, id);
  t.same(await second.json(), { type: 'ok', hid: id.hid });
  t.same(await first.closed, { code: 4009, reason: 'replaced' });
  t.equal((await f1.closed).code, 4005, "the old holder's streams end");

  const f2 = await facade(r.ws, publicPart(makeToken(id)));
  t.same(await f2.json(), { type: 'ok' });
  t.equal((await second.frame()).kind, MuxKind.Open, 'new streams go to the replacement');
  f2.ws.close();
  second.ws.close();
  await Promise.all([f2.closed, second.closed]);
});

t.test('a facade stream is routed through mux frames both ways', async (t) => {
  const r = await startRelay(t);
  const id = newIdentity();
  const h = await holder(t, r.ws, id);
  t.equal((await h.json()).type, 'ok');

  const token = makeToken(id);
  const pub = publicPart(token);
  const f = await facade(r.ws, pub);
  t.same(await f.json(), { type: 'ok' });

  const open = await h.frame();
  t.equal(open.kind, MuxKind.Open);
  t.same(parseMuxOpen(open.payload), { token: pub, peer: '127.0.0.1' }, 'open: token + peer');
  const sid = open.streamId;

  const up = randomBytes(3000);
  f.ws.send(up);
  const data = await h.frame();
  t.same([data.kind, data.streamId], [MuxKind.Data, sid]);
  t.ok(data.payload.equals(up), 'facade → holder bytes arrive unchanged');

  const down = randomBytes(5000);
  h.ws.send(encodeMux(MuxKind.Data, sid, down));
  const back = await f.next();
  t.ok(back.isBinary, 'facade gets binary');
  t.ok(back.data.equals(down), 'holder → facade bytes arrive unchanged, without a mux header');

  // The holder ends the stream: the facade sees a normal close with the holder's reason.
  h.ws.send(encodeMuxClose(sid, 'done'));
  t.same(await f.closed, { code: 1000, reason: 'done' });

  // The facade ends a second stream: the holder gets a close frame with the facade's reason.
  const f2 = await facade(r.ws, pub);
  t.same(await f2.json(), { type: 'ok' });
  const open2 = await h.frame();
  t.not(open2.streamId, sid, 'each stream has its own id');
  f2.ws.close(1000, 'bye');
  const close2 = await h.frame();
  t.same(
    [close2.kind, close2.streamId, close2.payload.toString()],
    [MuxKind.Close, open2.streamId, 'bye'],
  );
  await f2.closed;

  const m = await metricsText(r.app);
  t.match(m, /keytether_relay_streams_total 2/);
  t.match(m, /keytether_relay_requests_total 1/);
  t.match(m, /keytether_relay_response_seconds_count 1/);

  // Logs name the token id and holder id but never the token, its signature or a nonce.
  const all = r.logs.join('');
  const [, payloadPart, sigPart, secretPart] = token.split('.') as [string, string, string, string];
  t.match(all, /"tid":"ktt_/);
  t.match(all, new RegExp(`"hid":"${id.hid}"`));
  t.notOk(all.includes(payloadPart), 'no token payload in logs');
  t.notOk(all.includes(sigPart), 'no token signature in logs');
  t.notOk(all.includes(secretPart), 'no token secret in logs');
  t.notMatch(all, /nonce/);
  h.ws.close();
  await h.closed;
});

t.test('facade refusals', async (t) => {
  const r = await startRelay(t);
  const id = newIdentity();
  const h = await holder(t, r.ws, id);
  t.equal((await h.json()).type, 'ok');

  const forged = makeToken(id, {}, newIdentity());
  const f1 = await facade(r.ws, publicPart(forged));
  t.same(await f1.closed, { code: 4003, reason: 'token signature invalid' });

  const garbage = await facade(r.ws, 'kt1.not-a-token');
  t.equal((await garbage.closed).code, 4003, 'malformed token: 4003');

  const withSecret = await facade(r.ws, makeToken(id));
  t.equal((await withSecret.closed).code, 4003, 'a token with its secret is refused');

  const now = Math.floor(Date.now() / 1000);
  const expired = makeToken(id, { iat: now - 7200, exp: now - 10 });
  const f2 = await facade(r.ws, publicPart(expired));
  t.same(await f2.closed, { code: 4004, reason: 'token expired' });

  const absent = newIdentity();
  const f3 = await facade(r.ws, publicPart(makeToken(absent)));
  t.same(await f3.closed, { code: 4005, reason: 'holder not connected' });

  const m = await metricsText(r.app);
  t.match(m, /keytether_relay_refusals_total\{reason="token_invalid"\} 3/);
  t.match(m, /keytether_relay_refusals_total\{reason="token_expired"\} 1/);
  t.match(m, /keytether_relay_refusals_total\{reason="holder_not_connected"\} 1/);
  t.notOk(r.logs.join('').includes(publicPart(forged).split('.')[2]!), 'no signature logged');
  h.ws.close();
  await h.closed;
});

t.test(
  'per-token rate limit: new streams are refused, a stream in use is slowed down',
  async (t) => {
    // 5 messages a second, bursts of 3: the stream open takes one, two data messages the rest.
    const r = await startRelay(t, { tokenRatePerSecond: 5, tokenBurst: 3 });
    const id = newIdentity();
    const h = await holder(t, r.ws, id);
    t.equal((await h.json()).type, 'ok');
    const pub = publicPart(makeToken(id));

    const a = await facade(r.ws, pub);
    t.same(await a.json(), { type: 'ok' }, 'the stream opens');
    const open = await h.frame();
    // Eight messages at once: two fit the burst, the others wait for the bucket (200 ms each).
    const sent = performance.now();
    for (let i = 1; i <= 8; i++) a.ws.send(Buffer.from(`m${i}`));
    const got: string[] = [];
    for (let i = 1; i <= 8; i++) {
      const d = await h.frame();
      t.equal(d.streamId, open.streamId);
      got.push(d.payload.toString());
    }
    const ms = performance.now() - sent;
    t.same(
      got,
      ['m1', 'm2', 'm3', 'm4', 'm5', 'm6', 'm7', 'm8'],
      'every message arrives, in order',
    );
    // Six over the burst at 5/s: at least about a second, less than the old cut-off would allow.
    t.ok(ms >= 900, `spread over ${Math.round(ms)} ms by the rate`);
    t.equal(a.ws.readyState, a.ws.OPEN, 'the stream stays open');

    // With the bucket empty, a new stream on the same token is refused.
    const b = await facade(r.ws, pub);
    t.equal((await b.closed).code, 4008, 'a new stream with an empty bucket is refused');
    const other = await facade(r.ws, publicPart(makeToken(id)));
    t.same(await other.json(), { type: 'ok' }, 'another token has its own bucket');
    const m = await metricsText(r.app);
    t.match(m, /keytether_relay_refusals_total\{reason="rate_limited"\} 1/);
    t.match(m, /keytether_relay_throttled_total [1-9]/);
    a.ws.close();
    other.ws.close();
    h.ws.close();
    await Promise.all([a.closed, other.closed, h.closed]);
  },
);

t.test('per-address connection limit', async (t) => {
  const r = await startRelay(t, { maxConnectionsPerAddress: 2 });
  const id = newIdentity();
  const h = await holder(t, r.ws, id);
  t.equal((await h.json()).type, 'ok');
  const f = await facade(r.ws, publicPart(makeToken(id)));
  t.same(await f.json(), { type: 'ok' });

  const third = new Client(`${r.ws}/v1/facade`);
  t.same(await third.closed, { code: 4008, reason: 'too many connections' });

  // A connection that ends frees its place.
  f.ws.close();
  await f.closed;
  await h.frame(); // open
  await h.frame(); // close: the relay has seen the facade go
  const again = await facade(r.ws, publicPart(makeToken(id)));
  t.same(await again.json(), { type: 'ok' });
  again.ws.close();
  h.ws.close();
  await Promise.all([again.closed, h.closed]);
});

t.test('oversize messages are closed with 4010', async (t) => {
  const r = await startRelay(t, { maxMessageBytes: 1024 });
  const id = newIdentity();
  const h = await holder(t, r.ws, id);
  t.equal((await h.json()).type, 'ok');

  const f = await facade(r.ws, publicPart(makeToken(id)));
  t.same(await f.json(), { type: 'ok' });
  const open = await h.frame();
  f.ws.send(Buffer.alloc(1024, 1));
  t.equal((await h.frame()).payload.length, 1024, 'a message at the limit passes');
  f.ws.send(Buffer.alloc(1025, 1));
  t.same(await f.closed, { code: 4010, reason: 'frame too large' });
  const c = await h.frame();
  t.same([c.kind, c.streamId], [MuxKind.Close, open.streamId]);

  // Holder frames may carry a full-size payload plus the mux header, and no more.
  h.ws.send(encodeMux(MuxKind.Data, 12345, Buffer.alloc(1025)));
  t.equal((await h.closed).code, 4010);
  t.match(await metricsText(r.app), /keytether_relay_refusals_total\{reason="frame_too_large"\} 2/);
});

t.test('keytether relay: SIGTERM drains streams, closes with 1001 and exits 0', async (t) => {
  const child = await spawnCli(['relay', '--listen', '127.0.0.1:0']);
  const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)));
  t.teardown(() => {
    if (child.exitCode === null) child.kill('SIGKILL');
  });
  const stderr: string[] = [];
  child.stderr!.on('data', (b: Buffer) => stderr.push(b.toString()));
  const [, base] = await waitForLine(child.stdout!, /^listening: (http:\/\/127\.0\.0\.1:\d+)$/);
  const wsBase = base!.replace(/^http/, 'ws');
  const health = await fetch(`${base}/healthz`);
  t.same(await health.json(), { ok: true });

  const id = newIdentity();
  const h = await holder(t, wsBase, id);
  t.equal((await h.json()).type, 'ok');
  const f = await facade(wsBase, publicPart(makeToken(id)));
  t.same(await f.json(), { type: 'ok' });
  const open = await h.frame();

  const draining = waitForLine(child.stderr!, /"msg":"shutting down"/);
  child.kill('SIGTERM');
  await draining;

  // New connections are turned away; the stream in flight still works.
  const late = new Client(`${wsBase}/v1/facade`);
  t.equal((await late.closed).code, 1001, 'a new connection during the drain gets 1001');
  f.ws.send(Buffer.from('still here'));
  t.equal((await h.frame()).payload.toString(), 'still here');
  h.ws.send(encodeMux(MuxKind.Data, open.streamId, Buffer.from('answer')));
  t.equal((await f.next()).data.toString(), 'answer');

  // Once the last stream ends, everything closes with 1001 and the process exits 0.
  f.ws.close(1000, 'finished');
  t.same(await h.closed, { code: 1001, reason: 'relay shutting down' });
  t.equal(await exited, 0);
  for (const line of stderr.join('').split('\n').filter(Boolean)) {
    t.doesNotThrow(() => JSON.parse(line), 'stderr is JSON log lines');
  }
});

t.test('keytether relay: a bad --listen is a usage error', async (t) => {
  const r = await runCli(['relay', '--listen', 'nonsense']);
  t.equal(r.code, 2);
  t.match(r.stderr, /^keytether relay: --listen 'nonsense' is not HOST:PORT/);
  t.equal(r.stdout, '');
});

t.test('backpressure: a holder that does not read holds back its facade', async (t) => {
  const MiB = 1024 * 1024;
  const limits = {
    maxMessageBytes: 256 * 1024,
    maxBufferedBytes: MiB,
    tokenRatePerSecond: 1e6,
    tokenBurst: 1e6,
  };
  // The relay says (at debug level) when it stops reading a facade; the test waits for that.
  let onPaused: (() => void) | undefined;
  const app = buildRelay({
    logger: {
      level: 'debug',
      stream: {
        write: (s: string) => {
          if (s.includes('facade paused')) onPaused?.();
        },
      },
    },
    limits,
  });
  const base = (await listenRelay(app, '127.0.0.1', 0)).replace(/^http/, 'ws');
  t.teardown(() => app.close());
  // A guard, not a synchronisation: without backpressure the pause never comes.
  const paused = new Promise<void>((resolve, reject) => {
    const guard = setTimeout(() => reject(new Error('the relay never paused the facade')), 30_000);
    onPaused = () => {
      clearTimeout(guard);
      resolve();
    };
  });

  const id = newIdentity();
  const h = await holder(t, base, id);
  t.equal((await h.json()).type, 'ok');
  const f = await facade(base, publicPart(makeToken(id)));
  t.same(await f.json(), { type: 'ok' });
  const sid = (await h.frame()).streamId;

  // The holder stops reading; the facade sends far more than the relay may buffer.
  h.ws.pause();
  const total = 160;
  const chunk = 256 * 1024 - 16;
  for (let i = 0; i < total; i++) f.ws.send(Buffer.alloc(chunk, i & 0xff));
  await paused;

  const buffered = () =>
    metricsText(app).then((m) =>
      Number(/^keytether_relay_buffered_bytes (\d+)/m.exec(m)?.[1] ?? NaN),
    );
  const atPause = await buffered();
  t.ok(
    atPause <= limits.maxBufferedBytes + 2 * limits.maxMessageBytes,
    `the relay holds ${atPause} bytes for the holder, not the ${total * chunk} sent`,
  );
  // Kernel socket buffers take a few MiB at most; the rest waits in the facade's own process.
  t.ok(
    f.ws.bufferedAmount > (total * chunk) / 2,
    `the facade still holds ${f.ws.bufferedAmount} bytes: the relay stopped reading from it`,
  );

  // The holder catches up: everything arrives, in order, and the facade is read again.
  h.ws.resume();
  let received = 0;
  let inOrder = true;
  for (let i = 0; i < total; i++) {
    const fr = await h.frame();
    if (fr.streamId !== sid || fr.payload.length !== chunk || fr.payload[0] !== (i & 0xff)) {
      inOrder = false;
    }
    received += fr.payload.length;
  }
  t.equal(received, total * chunk, 'every byte reached the holder');
  t.ok(inOrder, 'message by message, in order, on the stream');
  t.equal(f.ws.bufferedAmount, 0, 'the facade could send everything once the holder read');
  t.equal(await buffered(), 0, 'nothing is left queued in the relay');
  h.ws.close();
  await h.closed;
});

t.test('backpressure: a facade that does not read loses its stream', async (t) => {
  const MiB = 1024 * 1024;
  const r = await startRelay(t, { maxMessageBytes: 256 * 1024, maxBufferedBytes: MiB });
  const id = newIdentity();
  const h = await holder(t, r.ws, id);
  t.equal((await h.json()).type, 'ok');
  const pub = publicPart(makeToken(id));
  const slow = await facade(r.ws, pub);
  t.same(await slow.json(), { type: 'ok' });
  const slowId = (await h.frame()).streamId;
  const other = await facade(r.ws, pub);
  t.same(await other.json(), { type: 'ok' });
  const otherId = (await h.frame()).streamId;

  slow.ws.pause();
  // The holder answers into the stream that is not read until the relay gives up on it.
  let sent = 0;
  let close: MuxFrame | undefined;
  const closed = (async () => {
    for (;;) {
      const fr = await h.frame();
      if (fr.kind === MuxKind.Close && fr.streamId === slowId) return fr;
    }
  })();
  void closed.then((fr) => (close = fr));
  while (!close && sent < 256 * MiB) {
    h.ws.send(encodeMux(MuxKind.Data, slowId, Buffer.alloc(256 * 1024 - 16)));
    sent += 256 * 1024;
    // Let the relay's reads and our close frame reader run between writes.
    await new Promise((res) => setImmediate(res));
  }
  if (!close) {
    t.fail(`the relay took ${sent / MiB} MiB for a facade that reads nothing`);
    return;
  }
  const fr = close;
  t.equal(fr.payload.toString(), 'facade is not reading');
  t.ok(sent < 128 * MiB, `the relay gave up after ${sent / MiB} MiB`);
  t.match(await metricsText(r.app), /keytether_relay_refusals_total\{reason="slow_reader"\} 1/);

  // The holder's other stream is unaffected.
  const ping = randomBytes(100);
  h.ws.send(encodeMux(MuxKind.Data, otherId, ping));
  const back = await other.next();
  t.ok(back.data.equals(ping), 'another stream of the same holder still works');
  h.ws.close();
  await h.closed;
});
