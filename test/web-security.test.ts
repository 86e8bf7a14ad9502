// The approval page's guard, over real HTTP against the real server and broker: requests with a
// wrong Host (DNS rebinding), a foreign or missing Origin, no session, a spent or borrowed answer
// token are refused with 403 and change nothing; the one-time secret buys one session only; every
// answer carries the headers that keep it out of caches, frames and inline script.

import t, { type Test } from 'tap';
import http from 'node:http';
import { mkdtemp, rm } from 'node:fs/promises';
import path from 'node:path';
import { ApprovalBroker, type ApprovalAnswer } from '../workstation/approvals/broker.js';
import { Pinentry } from '../workstation/pinentry/pinentry.js';
import { startWebServer } from '../workstation/web/server.js';
import { makePinentryScript } from './support/pinentry-script.js';
import { runCli } from './support/cli.js';

interface Reply {
  status: number;
  headers: http.IncomingHttpHeaders;
  body: string;
}

function send(
  base: URL,
  method: string,
  p: string,
  headers: Record<string, string> = {},
  body?: string,
): Promise<Reply> {
  return new Promise((resolve, reject) => {
    const req = http.request(
      {
        host: base.hostname,
        port: base.port,
        method,
        path: p,
        headers: { host: base.host, ...headers },
      },
      (res) => {
        let data = '';
        res.on('data', (d: Buffer) => (data += d.toString()));
        res.on('end', () => resolve({ status: res.statusCode!, headers: res.headers, body: data }));
      },
    );
    req.on('error', reject);
    if (body !== undefined) req.end(body);
    else req.end();
  });
}

/** The first `pending` event of /api/events for COOKIE. */
function firstPending(base: URL, cookie: string): Promise<{ id: string; token: string }[]> {
  return new Promise((resolve, reject) => {
    const req = http.get(
      {
        host: base.hostname,
        port: base.port,
        path: '/api/events',
        headers: { host: base.host, cookie },
      },
      (res) => {
        let data = '';
        res.on('data', (d: Buffer) => {
          data += d.toString();
          const m = /event: pending\ndata: (.*)\n\n/.exec(data);
          if (m) {
            req.destroy();
            resolve(JSON.parse(m[1]!) as { id: string; token: string }[]);
          }
        });
      },
    );
    req.on('error', (e) => (e.message === 'socket hang up' ? undefined : reject(e)));
  });
}

const VIEW = {
  op: 'sign' as const,
  requester: { front: 'relay' as const, tokenId: 'ktt_0123456789abcdef' },
  key: { fingerprint: 'A'.repeat(40), keygrip: 'B'.repeat(40), algorithm: 'ed25519' },
  verification: 'blind' as const,
};

async function world(t: Test) {
  const pin = await makePinentryScript({ hang: true });
  t.teardown(() => pin.cleanup());
  const home = await mkdtemp('/tmp/kt-websec-');
  t.teardown(() => rm(home, { recursive: true, force: true }));
  const broker = new ApprovalBroker({
    pinentry: new Pinentry({
      program: pin.program,
      env: { ...process.env, ...pin.env },
      timeoutMs: 0,
    }),
  });
  const web = await startWebServer({
    broker,
    home: path.join(home, 'home'),
    host: '127.0.0.1',
    port: 0,
    notify: false,
  });
  t.teardown(() => web.close());
  const base = new URL(web.base);
  const origin = base.origin;
  const session = async (): Promise<string> => {
    const secret = new URL(web.freshUrl()).hash.slice(1);
    const r = await send(
      base,
      'POST',
      '/api/session',
      { origin, 'content-type': 'application/json' },
      JSON.stringify({ secret }),
    );
    const cookie = String(r.headers['set-cookie']?.[0] ?? '').split(';')[0]!;
    return cookie;
  };
  const ask = () => {
    const controller = new AbortController();
    t.teardown(() => controller.abort());
    let settled: ApprovalAnswer | undefined;
    const p = broker.confirm('test', VIEW, controller.signal).then((a) => (settled = a));
    p.catch(() => {});
    return { p, settled: () => settled };
  };
  return { broker, web, base, origin, session, ask };
}

t.test('every answer: no cache, no frames, no inline script, no sniffing', async (t) => {
  const w = await world(t);
  const r = await send(w.base, 'GET', '/');
  t.equal(r.status, 200);
  t.match(r.body, '<script type="module" src="/assets/app.js">');
  const csp = String(r.headers['content-security-policy']);
  t.match(csp, "default-src 'self'");
  t.match(csp, "frame-ancestors 'none'");
  t.notMatch(csp, /unsafe-inline|unsafe-eval/);
  t.equal(r.headers['cache-control'], 'no-store');
  t.equal(r.headers['x-frame-options'], 'DENY');
  t.equal(r.headers['x-content-type-options'], 'nosniff');
  const refused = await send(w.base, 'GET', '/', { host: 'evil.example' });
  t.equal(refused.headers['cache-control'], 'no-store', 'refusals too');
  t.equal((await send(w.base, 'GET', '/assets/../../etc/passwd')).status, 404);
});

t.test('a wrong Host is refused: DNS rebinding reads nothing', async (t) => {
  const w = await world(t);
  for (const host of ['evil.example', `evil.example:${w.base.port}`, `localhost:${w.base.port}`]) {
    t.equal((await send(w.base, 'GET', '/', { host })).status, 403, host);
  }
  const cookie = await w.session();
  t.equal(
    (await send(w.base, 'GET', '/api/tokens', { cookie, host: `evil.example:${w.base.port}` }))
      .status,
    403,
    'with a session too',
  );
});

t.test('the one-time secret buys one session, and only from the own Origin', async (t) => {
  const w = await world(t);
  const secret = new URL(w.web.freshUrl()).hash.slice(1);
  const post = (origin: string | undefined) =>
    send(
      w.base,
      'POST',
      '/api/session',
      { 'content-type': 'application/json', ...(origin ? { origin } : {}) },
      JSON.stringify({ secret }),
    );
  t.equal((await post('http://evil.example')).status, 403, 'foreign Origin');
  t.equal((await post(undefined)).status, 403, 'no Origin');
  const ok = await post(w.origin);
  t.equal(ok.status, 200, 'the secret was not spent by the refused tries');
  const cookie = String(ok.headers['set-cookie']?.[0]);
  t.match(cookie, /^kt_session=[A-Za-z0-9_-]{43}; HttpOnly; SameSite=Strict; Path=\/$/);
  t.equal((await post(w.origin)).status, 403, 'the same secret twice');
  t.equal((await send(w.base, 'GET', '/api/tokens')).status, 403, 'no cookie');
  t.equal(
    (await send(w.base, 'GET', '/api/tokens', { cookie: `kt_session=${'A'.repeat(43)}` })).status,
    403,
    'a made-up cookie',
  );
  t.equal(
    (await send(w.base, 'GET', '/api/tokens', { cookie: cookie.split(';')[0]! })).status,
    200,
  );
});

t.test('answers: forged, borrowed and replayed tokens get 403 and change nothing', async (t) => {
  const w = await world(t);
  const cookie = await w.session();
  const a = w.ask();
  const b = w.ask();
  const listed = await firstPending(w.base, cookie);
  t.equal(listed.length, 2, 'both requests are listed, each with its token');
  const [ra, rb] = listed;
  const answer = (id: string, token: string, headers: Record<string, string> = {}) =>
    send(
      w.base,
      'POST',
      `/api/pending/${id}/answer`,
      { origin: w.origin, cookie, 'content-type': 'application/json', ...headers },
      JSON.stringify({ token, decision: 'approve' }),
    );
  t.equal(
    (await answer(ra!.id, ra!.token, { origin: 'http://evil.example' })).status,
    403,
    'foreign Origin',
  );
  t.equal((await answer(ra!.id, ra!.token, { origin: 'null' })).status, 403, 'opaque Origin');
  t.equal((await answer(ra!.id, ra!.token, { cookie: '' })).status, 403, 'no cookie');
  t.equal(
    (await answer(ra!.id, ra!.token, { host: `evil.example:${w.base.port}` })).status,
    403,
    'wrong Host',
  );
  t.equal((await answer(ra!.id, rb!.token)).status, 403, "another request's token");
  t.equal((await answer(ra!.id, 'x'.repeat(43))).status, 403, 'a made-up token');
  t.equal(w.broker.pending().length, 2, 'nothing was decided');
  t.equal(a.settled(), undefined);
  const ok = await answer(ra!.id, ra!.token);
  t.equal(ok.status, 200, 'the real answer still works: the refusals spent nothing');
  t.match(await a.p, { approved: true, channel: 'web page' });
  t.equal((await answer(ra!.id, ra!.token)).status, 403, 'replayed');
  t.equal((await answer(rb!.id, ra!.token)).status, 403, 'replayed on the other request');
  t.equal(w.broker.pending().length, 1, 'the other request still waits');
  t.equal(b.settled(), undefined);
  const bad = await send(
    w.base,
    'POST',
    `/api/pending/${rb!.id}/answer`,
    { origin: w.origin, cookie, 'content-type': 'application/json' },
    JSON.stringify({ token: rb!.token, decision: 'maybe' }),
  );
  t.equal(bad.status, 400, 'a malformed answer');
  const big = await send(
    w.base,
    'POST',
    `/api/pending/${rb!.id}/answer`,
    { origin: w.origin, cookie, 'content-type': 'application/json' },
    JSON.stringify({ token: 'x'.repeat(20_000) }),
  );
  t.equal(big.status, 413, 'an oversize body');
  const revoke = await send(
    w.base,
    'POST',
    '/api/tokens/ktt_0123456789abcdef/revoke',
    { origin: w.origin, cookie, 'content-type': 'application/json' },
    '{}',
  );
  t.equal(revoke.status, 403, 'a revoke without its single-use token');
  t.equal(w.broker.pending().length, 1);
});

t.test('--web refuses addresses off loopback without TLS, in one line', async (t) => {
  const home = await mkdtemp('/tmp/kt-webflag-');
  t.teardown(() => rm(home, { recursive: true, force: true }));
  const env = { KEYTETHER_HOME: path.join(home, 'home') };
  const r1 = await runCli(['agent', '--web', '0.0.0.0'], { env });
  t.equal(r1.code, 2);
  t.match(
    r1.stderr,
    /--web serves loopback addresses only .* use --web-listen ADDR:PORT with --web-tls-cert and --web-tls-key/,
  );
  const r2 = await runCli(['agent', '--web-listen', '0.0.0.0:0'], { env });
  t.equal(r2.code, 2);
  t.match(r2.stderr, /refusing to serve the approval page on 0\.0\.0\.0 without TLS/);
  t.equal(r2.stderr.trim().split('\n').length, 1);
});
