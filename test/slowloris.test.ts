// Clients that connect and keep us waiting (idle, or dribbling a byte at a time) are cut after a
// stated bound on every socket keytether listens on: the facade's agent socket, the holder's own
// socket, the control socket and the relay's WebSocket upgrade. Each cut is one log line (and a
// relay metric). A gpg that waits minutes for OUR answer (a confirmation) is never cut: the
// deadlines run only while the peer owes us bytes.

import t, { type Test } from 'tap';
import net from 'node:net';
import { mkdir, mkdtemp, rm } from 'node:fs/promises';
import path from 'node:path';
import { startFacade } from '../server/facade.js';
import { buildRelay, listenRelay } from '../server/relay/index.js';
import { startControlServer, controlSocketPath } from '../workstation/control/control.js';
import { AuditLog } from '../workstation/audit/audit.js';
import { Holder } from '../workstation/holder/holder.js';
import { ApprovalMemory } from '../workstation/policy/approvals.js';
import { UnlockCache } from '../workstation/holder/unlock-cache.js';
import { Keystore } from '../workstation/keystore/index.js';
import type { UnlockedKey } from '../workstation/crypto/index.js';
import type { PassphraseAsker } from '../workstation/pinentry/pinentry.js';
import { clientHome, exportSecretKey, generateKey, makeGnupgHome } from './support/gnupg.js';
import { spawnCli, waitForLine } from './support/cli.js';
import { SimpleHolder } from './support/simple-holder.js';
import { tunnelTo } from './support/socket-pair.js';

async function tempDir(t: Test): Promise<string> {
  const dir = await mkdtemp('/tmp/kt-slow-');
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  return dir;
}

interface Peer {
  sock: net.Socket;
  /** Everything received so far. */
  text(): string;
  /** Resolves with the text once the line matching RE has arrived. */
  line(re: RegExp): Promise<string>;
  /** Resolves at close with performance.now(). */
  closed: Promise<number>;
}

function dial(t: Test, connect: () => net.Socket): Peer {
  const sock = connect();
  t.teardown(() => sock.destroy());
  let got = '';
  const waiters: (() => void)[] = [];
  sock.on('data', (b: Buffer) => {
    got += b.toString('latin1');
    for (const w of waiters.splice(0)) w();
  });
  sock.on('error', () => {});
  const closed = new Promise<number>((r) => sock.once('close', () => r(performance.now())));
  const line = (re: RegExp) =>
    new Promise<string>((resolve, reject) => {
      const check = () => {
        if (re.test(got)) resolve(got);
        else waiters.push(check);
      };
      void closed.then(() => (re.test(got) ? resolve(got) : reject(new Error(`closed: ${got}`))));
      check();
    });
  return { sock, text: () => got, line, closed };
}

/** Writes BYTES one at a time, every INTERVAL ms, until the socket closes. Returns when it began. */
function dribble(sock: net.Socket, bytes: string, intervalMs: number): number {
  let i = 0;
  const timer = setInterval(() => {
    if (sock.destroyed || !sock.writable) return clearInterval(timer);
    sock.write(bytes[i % bytes.length]!);
    i++;
  }, intervalMs);
  sock.once('close', () => clearInterval(timer));
  sock.write(bytes[i++]!);
  return performance.now();
}

t.test('facade agent socket: idle and dribbling clients are cut, with a log line', async (t) => {
  const dir = await tempDir(t);
  const socketPath = path.join(dir, 'S.gpg-agent');
  const logged: string[] = [];
  const facade = await startFacade({
    socketPath,
    holder: new SimpleHolder(),
    peerLookup: false,
    deadlines: { idleMs: 1500, lineMs: 600 },
    log: (l) => logged.push(l),
  });
  t.teardown(() => facade.close());

  t.test('idle: no first command within idleMs', async (t) => {
    const start = performance.now();
    const p = dial(t, () => net.connect(socketPath));
    await p.line(/^OK Pleased/);
    const took = (await p.closed) - start;
    t.match(p.text(), /\nERR 67108926 Timeout <GPG Agent> - no command within 1\.5 s\n$/);
    t.ok(took >= 1400 && took < 4000, `cut after ${Math.round(took)} ms (bound 1500)`);
  });

  t.test('dribbling: a started line must end within lineMs', async (t) => {
    const p = dial(t, () => net.connect(socketPath));
    await p.line(/^OK Pleased/);
    p.sock.write('NOP\n');
    await p.line(/\nOK\n$/);
    // A byte every 100 ms would keep a per-read idle timer happy forever.
    const start = dribble(p.sock, 'GETINFO version', 100);
    const took = (await p.closed) - start;
    t.match(
      p.text(),
      /ERR 67108926 Timeout <GPG Agent> - a command line was not finished within 0\.6 s/,
    );
    t.ok(took >= 550 && took < 3000, `cut ${Math.round(took)} ms after its first byte (bound 600)`);
  });

  t.test('each cut is logged', async (t) => {
    t.equal(logged.length, 2);
    t.match(logged[0], `keytether: cut a client of ${socketPath}: no command within 1.5 s`);
    t.match(logged[1], 'a command line was not finished within 0.6 s');
  });
});

t.test('a gpg waiting long for a confirmation is not cut', async (t) => {
  const ws = await makeGnupgHome();
  t.teardown(() => ws.cleanup());
  const key = await generateKey(ws, {
    uid: 'Slow <s@example.org>',
    algo: 'ed25519',
    usage: 'sign',
  });
  const dir = await tempDir(t);
  const ks = await Keystore.open(path.join(dir, 'home'));
  await ks.importKeys(await exportSecretKey(ws, key.fingerprint));
  const audit = await AuditLog.open(path.join(dir, 'audit.jsonl'));
  t.teardown(() => audit.close());
  // The user takes six times the facade's deadlines to click OK.
  const CONFIRM_MS = 3000;
  let confirms = 0;
  const slowUser: PassphraseAsker = {
    getPassphrase: () => Promise.reject(new Error('not protected')),
    confirm: () =>
      new Promise((r) => {
        confirms++;
        setTimeout(() => r(true), CONFIRM_MS);
      }),
  };
  const holder = new Holder({
    keystore: ks,
    policy: [{ action: 'confirm', clearSign: 'off' }],
    pinentry: slowUser,
    audit,
    cache: new UnlockCache<UnlockedKey>({ defaultTtlMs: 60_000, maxTtlMs: 60_000 }),
    approvals: new ApprovalMemory(),
  });
  const tunnel = await tunnelTo(t, holder, dir);
  await tunnel.ready;
  const socketPath = path.join(dir, 'S.gpg-agent');
  const logged: string[] = [];
  const facade = await startFacade({
    socketPath,
    holder: tunnel,
    peerLookup: false,
    deadlines: { idleMs: 500, lineMs: 500 },
    log: (l) => logged.push(l),
  });
  t.teardown(() => facade.close());
  const g = await clientHome(socketPath, (await ws.gpg(['--batch', '--export'])).stdout);
  t.teardown(() => g.cleanup());
  const start = performance.now();
  const r = await g.gpg(['--batch', '-u', key.fingerprint, '--detach-sign'], { input: 'x\n' });
  const took = performance.now() - start;
  t.equal(r.code, 0, r.stderr.toString());
  t.equal(confirms, 1);
  t.ok(took >= CONFIRM_MS, `gpg waited ${Math.round(took)} ms for the confirmation`);
  t.same(logged, [], 'and nobody was cut');
});

t.test('holder socket (keytether agent): a dribbler is cut after the default 10 s', async (t) => {
  const dir = await tempDir(t);
  const home = path.join(dir, 'home');
  const socket = path.join(dir, 'S.agent');
  const agent = await spawnCli(['agent', '--socket', socket], { env: { KEYTETHER_HOME: home } });
  t.teardown(() => agent.kill('SIGKILL'));
  await waitForLine(agent.stdout!, /^ready: /, 30_000);
  const p = dial(t, () => net.connect(socket));
  await p.line(/^OK Pleased/);
  p.sock.write('NOP\n');
  await p.line(/\nOK\n$/);
  const cutLine = waitForLine(agent.stderr!, /^keytether: cut a client of.*$/, 30_000);
  const start = dribble(p.sock, 'HAVEKEY ', 1000);
  const took = (await p.closed) - start;
  t.ok(took >= 9900 && took < 13_000, `cut ${Math.round(took)} ms after its first byte`);
  t.equal(
    (await cutLine)[0],
    `keytether: cut a client of ${socket}: a command line was not finished within 10 s of its first byte`,
  );
});

t.test('control socket: the request line must arrive within the bound', async (t) => {
  const dir = await tempDir(t);
  const home = path.join(dir, 'home');
  await mkdir(home, { mode: 0o700 });
  const audit = await AuditLog.open(path.join(home, 'audit.jsonl'));
  t.teardown(() => audit.close());
  const logged: string[] = [];
  const control = await startControlServer(
    { holder: new SimpleHolder(), cache: { entries: () => [], delete: () => false }, audit },
    { home, version: '9.9.9', requestTimeoutMs: 1000, log: (l) => logged.push(l) },
  );
  t.teardown(() => control.close());
  for (const how of ['idle', 'dribbling'] as const) {
    const start = performance.now();
    const p = dial(t, () => net.connect(controlSocketPath(home)));
    if (how === 'dribbling') dribble(p.sock, 'status', 150);
    const took = (await p.closed) - start;
    t.equal(p.text(), 'ERR no complete line within 1 s\n', `${how}: told why`);
    t.ok(took >= 950 && took < 3000, `${how}: cut after ${Math.round(took)} ms (bound 1000)`);
  }
  t.equal(logged.length, 2);
  t.match(logged[0], `cut a client of ${controlSocketPath(home)}: no complete line within 1 s`);
});

t.test('relay: an upgrade request not complete in time gets 408 and a metric', async (t) => {
  const app = buildRelay({ logger: false, limits: { headersDeadlineMs: 800 } });
  t.teardown(() => app.close());
  const url = new URL(await listenRelay(app, '127.0.0.1', 0));
  const port = Number(url.port);
  for (const how of ['idle', 'dribbling'] as const) {
    const start = performance.now();
    const p = dial(t, () => net.connect(port, '127.0.0.1'));
    if (how === 'dribbling') {
      dribble(p.sock, 'GET /v1/facade HTTP/1.1\r\nHost: relay\r\nUpgrade: websocket\r\n', 100);
    }
    const took = (await p.closed) - start;
    t.match(p.text(), /^HTTP\/1\.1 408 Request Timeout\r\n/, `${how}: 408`);
    // Node looks every deadline/4 (200 ms here), so the cut is within one interval of the bound.
    t.ok(took >= 750 && took < 2500, `${how}: cut after ${Math.round(took)} ms (bound 800)`);
  }
  const metrics = (await app.inject({ method: 'GET', url: '/metrics' })).body;
  t.match(metrics, /keytether_relay_refusals_total\{reason="headers_timeout"\} 2/);
});
