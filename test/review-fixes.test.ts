// Regression tests for review findings: secrets left in memory, unsanitised requester text,
// cache/lease lifetime, half-closed Assuan clients, OPTION putenv bounds.

import t, { type Test } from 'tap';
import net from 'node:net';
import { createHash } from 'node:crypto';
import { mkdtemp, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { AssuanClient } from '../protocol/assuan/index.js';
import { serveAgent } from '../protocol/agent/index.js';
import { applyOption, MAX_SESSION_ENV } from '../protocol/agent/options.js';
import { AgentSession } from '../protocol/agent/session.js';
import type { KeyEntry, KeyHolder, Requester, SignRequest } from '../protocol/keyholder.js';
import { listenAt } from '../system/unix-socket.js';
import { listenUnix } from '../workstation/holder/local-socket.js';
import { describeRequester, requesterPrefixedText } from '../workstation/backends/index.js';
import type { Backend } from '../workstation/backends/backend.js';
import { Holder } from '../workstation/holder/holder.js';
import { AuditLog } from '../workstation/audit/audit.js';
import { ApprovalMemory } from '../workstation/policy/approvals.js';
import { UnlockCache } from '../workstation/holder/unlock-cache.js';
import { Keystore } from '../workstation/keystore/index.js';
import type { UnlockedKey } from '../workstation/crypto/index.js';
import type { PassphraseAsker } from '../workstation/pinentry/pinentry.js';
import { exportSecretKey, generateKey, makeGnupgHome } from './support/gnupg.js';
import { SimpleHolder } from './support/simple-holder.js';

async function tempDir(t: Test, prefix: string): Promise<string> {
  const dir = await mkdtemp(path.join('/tmp', prefix));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  return dir;
}

/** Records the inputs of every Buffer.concat while FN runs. */
async function watchConcat<T>(
  fn: () => Promise<T>,
): Promise<{ result: T; calls: { list: Buffer[]; out: Buffer }[] }> {
  const orig = Buffer.concat;
  const calls: { list: Buffer[]; out: Buffer }[] = [];
  Buffer.concat = function (list: readonly Uint8Array[], total?: number) {
    const out = orig(list, total);
    calls.push({ list: [...list] as Buffer[], out });
    return out;
  } as typeof Buffer.concat;
  try {
    return { result: await fn(), calls };
  } finally {
    Buffer.concat = orig;
  }
}

const allZero = (b: Uint8Array) => b.every((x) => x === 0);

t.test('Assuan client wipes decoded D pieces and the encoded inquiry answer', async (t) => {
  const dir = await tempDir(t, 'kt-rf-');
  const sock = path.join(dir, 'S');
  const server = net.createServer((s) => {
    s.on('error', () => undefined);
    s.write('OK hello\n');
    let buf = '';
    s.on('data', (d) => {
      buf += d.toString('latin1');
      for (let i = buf.indexOf('\n'); i >= 0; i = buf.indexOf('\n')) {
        const line = buf.slice(0, i);
        buf = buf.slice(i + 1);
        if (line === 'GETPIN') s.write('D secret-%25part\nD two\nOK\n');
        else if (line === 'ASK') s.write('INQUIRE PASS\n');
        else if (line === 'END') s.write('OK\n');
      }
    });
  });
  await new Promise<void>((r) => server.listen(sock, r));
  t.teardown(() => new Promise<void>((r) => server.close(() => r())));
  const c = await AssuanClient.connect(net.connect(sock));
  t.teardown(() => c.close());

  const { result, calls } = await watchConcat(() => c.transact('GETPIN'));
  t.equal(result.data.toString(), 'secret-%parttwo');
  const joined = calls.find((x) => x.out === result.data);
  t.ok(joined, 'the reply was joined with Buffer.concat');
  t.equal(joined!.list.length, 2);
  for (const piece of joined!.list) t.ok(allZero(piece), 'decoded piece zeroed');

  const inq = await watchConcat(() =>
    c.transact('ASK', { onInquire: () => Buffer.from('hunter2') }),
  );
  const answer = inq.calls.find((x) => x.list.at(-1)?.toString() === 'END\n');
  t.ok(answer, 'the inquiry answer was framed');
  t.ok(allZero(answer!.list[0]!), 'encoded D lines zeroed');
});

t.test('requester text: control characters stripped, fields capped, claims labelled', async (t) => {
  const forged = 'x\n\nkeytether: request from local gpg\u202e';
  const r: Requester = {
    front: 'ssh',
    host: '127.0.0.1',
    user: forged,
    command: 'gpg\r\n' + 'A'.repeat(200),
    pid: 42,
  };
  const d = describeRequester(r);
  t.notMatch(d, /[\r\n\u202e]/, 'no line breaks or bidi overrides');
  t.match(
    d,
    /^ssh 127\.0\.0\.1 \(claims user=x\ufffd\ufffdkeytether: request from local gpg\ufffd, cmd=gpg/,
  );
  t.match(d, /pid=42\)$/);
  const cmd = /cmd=([^,]*),/.exec(d)?.[1] ?? '';
  t.equal([...cmd].length, 64, 'command capped at 64 characters');
  const header = requesterPrefixedText(r, 'gpg text', 'fallback').split('\n')[0];
  t.equal(header, `keytether: request from ${d}`, 'the whole requester stays on the first line');
  t.equal(
    describeRequester({ front: 'relay', tokenId: 'tok\u2066en', user: 'u' }),
    'relay token tok\ufffden (claims user=u)',
  );
  t.equal(describeRequester({ front: 'local', command: 'gpg', pid: 7 }), 'local gpg (gpg, pid 7)');
});

t.test('OPTION putenv keeps at most MAX_SESSION_ENV entries', async (t) => {
  const s = new AgentSession(false);
  for (let i = 0; i < 1000; i++) applyOption(s, 'putenv', `V${i}=${i}`);
  t.equal(s.env.size, MAX_SESSION_ENV);
  applyOption(s, 'putenv', 'V0=changed');
  t.equal(s.env.get('V0'), 'changed', 'existing entries can still be replaced');
  applyOption(s, 'putenv', 'V1');
  t.equal(s.env.has('V1'), false, 'and removed');
  applyOption(s, 'putenv', 'NEW=1');
  t.equal(s.env.get('NEW'), '1', 'a freed slot is usable again');
});

/** A holder whose sign waits until the server saw the client's EOF, and honours the signal. */
function eofGatedHolder(inner: KeyHolder, eof: Promise<void>): KeyHolder {
  return {
    inventory: () => inner.inventory(),
    decrypt: (r, s) => inner.decrypt(r, s),
    async sign(req: SignRequest, signal?: AbortSignal) {
      await eof;
      if (signal?.aborted) throw signal.reason;
      return inner.sign(req, signal);
    },
  };
}

async function halfCloseExchange(sock: string, grip: string): Promise<string> {
  const c = net.connect(sock);
  const chunks: Buffer[] = [];
  c.on('data', (d: Buffer) => chunks.push(d));
  await new Promise<void>((r) => c.once('connect', r));
  const digest = createHash('sha256').update('half-close').digest('hex');
  c.end(`RESET\nSIGKEY ${grip}\nSETHASH 8 ${digest}\nPKSIGN\n`);
  await new Promise<void>((r) => c.once('close', () => r()));
  return Buffer.concat(chunks).toString('latin1');
}

for (const [name, listen] of [
  ['server agent socket (listenAt)', listenAt],
  ['workstation local socket (listenUnix)', listenUnix],
] as const) {
  t.test(`half-closed client still gets its PKSIGN reply: ${name}`, async (t) => {
    const dir = await tempDir(t, 'kt-rf-');
    const sock = path.join(dir, 'S.gpg-agent');
    const inner = new SimpleHolder();
    const open = new Set<net.Socket>();
    const server = await listen(sock, (s) => {
      open.add(s);
      s.on('close', () => open.delete(s));
      s.on('error', () => s.destroy());
      const eof = new Promise<void>((r) => s.once('end', () => r()));
      void serveAgent(s, { holder: eofGatedHolder(inner, eof), requester: { front: 'local' } });
    });
    t.teardown(async () => {
      for (const s of open) s.destroy();
      await new Promise<void>((r) => server.close(() => r()));
    });
    t.equal((await stat(sock)).mode & 0o777, 0o600, 'socket is owner-only');
    t.ok(server.listenerCount('error') > 0, 'accept errors are handled');
    const out = await halfCloseExchange(sock, inner.signKey.entry.keygrip);
    const lines = out.split('\n').filter((l) => l);
    t.equal(lines.length, 6, out);
    t.match(lines[4], /^D \(7:sig-val\(5:eddsa/);
    t.equal(lines[5], 'OK');
  });
}

// Keys made by real gpg, imported into a keytether keystore.
interface Made {
  home: string;
  ks: Keystore;
  grip: string;
  pass: string;
}

let made: Made | undefined;
async function protectedKey(): Promise<Made> {
  if (made) return made;
  // Shared by several subtests, so cleaned up with the whole file.
  const g = await makeGnupgHome();
  t.teardown(() => g.cleanup());
  const pass = 'review-pass';
  const key = await generateKey(g, {
    uid: 'R <r@example.org>',
    algo: 'ed25519',
    usage: 'sign,cert',
    passphrase: pass,
  });
  const home = await mkdtemp(path.join(tmpdir(), 'kt-rf-ks-'));
  t.teardown(() => rm(home, { recursive: true, force: true }));
  const ks = await Keystore.open(home);
  await ks.importKeys(await exportSecretKey(g, key.fingerprint, pass));
  made = { home, ks, grip: key.keygrip, pass };
  return made;
}

async function auditLog(t: Test): Promise<AuditLog> {
  const dir = await tempDir(t, 'kt-rf-audit-');
  const log = await AuditLog.open(path.join(dir, 'audit.log'));
  t.teardown(() => log.close());
  return log;
}

function asker(pass: string, onConfirm: () => void = () => undefined) {
  const calls = { passphrase: 0, confirm: 0 };
  const a: PassphraseAsker = {
    async getPassphrase() {
      calls.passphrase++;
      return Buffer.from(pass);
    },
    async confirm() {
      calls.confirm++;
      onConfirm();
      return true;
    },
  };
  return { a, calls };
}

const digest = createHash('sha256').update('data').digest();

t.test('default-cache-ttl 0: protected keys still sign (no "No secret key")', async (t) => {
  const m = await protectedKey();
  const cache = new UnlockCache<UnlockedKey>({ defaultTtlMs: 0, maxTtlMs: 0 });
  const { a, calls } = asker(m.pass);
  const holder = new Holder({
    keystore: m.ks,
    policy: [{ action: 'allow' }],
    pinentry: a,
    audit: await auditLog(t),
    cache,
    approvals: new ApprovalMemory(),
  });
  const req = { keygrip: m.grip, hashAlgo: 8, digest, requester: { front: 'local' } as const };
  for (let i = 0; i < 2; i++) {
    const sig = Buffer.from(await holder.sign(req));
    t.match(sig.toString('latin1'), /^\(7:sig-val\(5:eddsa/);
  }
  t.equal(calls.passphrase, 2, 'nothing is cached, so every operation asks');
  t.equal(cache.size, 0);
});

t.test(
  'cache expiry while a confirmation is pending does not destroy the key in use',
  async (t) => {
    const m = await protectedKey();
    let now = 1_000_000;
    const cache = new UnlockCache<UnlockedKey>({
      defaultTtlMs: 60_000,
      maxTtlMs: 120_000,
      now: () => now,
    });
    const { a, calls } = asker(m.pass, () => {
      now += 600_000;
      cache.sweep();
    });
    const holder = new Holder({
      keystore: m.ks,
      policy: [{ action: 'confirm' }],
      pinentry: a,
      audit: await auditLog(t),
      cache,
      approvals: new ApprovalMemory(),
      now: () => now,
    });
    const req = { keygrip: m.grip, hashAlgo: 8, digest, requester: { front: 'local' } as const };
    const sig = Buffer.from(await holder.sign(req));
    t.match(sig.toString('latin1'), /^\(7:sig-val\(5:eddsa/);
    t.equal(calls.confirm, 1);
    t.equal(cache.has(m.grip), false, 'the expired key is gone from the cache afterwards');
    // Second round: cached from a fresh unlock, then expiring during the confirm again.
    const again = Buffer.from(await holder.sign(req));
    t.match(again.toString('latin1'), /^\(7:sig-val\(5:eddsa/);
    t.equal(calls.passphrase, 2);
  },
);

t.test('UnlockCache pins: eviction destroys a pinned value only on the last release', async (t) => {
  let destroyed = 0;
  const v = { destroy: () => void destroyed++ };
  const cache = new UnlockCache<typeof v>({ defaultTtlMs: 0, maxTtlMs: 0 });
  const r1 = cache.pin(v);
  const r2 = cache.pin(v);
  cache.put('AA', v);
  t.equal(destroyed, 0, 'TTL 0 put of a pinned value waits');
  r1();
  r1();
  t.equal(destroyed, 0, 'release is idempotent; another pin remains');
  r2();
  t.equal(destroyed, 1);
  const w = { destroy: () => void destroyed++ };
  cache.put('BB', w);
  t.equal(destroyed, 2, 'an unpinned value is still destroyed at once');
});

t.test('decrypted value is zeroed when the audit write fails', async (t) => {
  const dir = await tempDir(t, 'kt-rf-ks-');
  const entry: KeyEntry = {
    keygrip: 'C'.repeat(40),
    fingerprint: 'D'.repeat(40),
    primaryFingerprint: 'D'.repeat(40),
    algorithm: 'cv25519',
    usage: ['encrypt'],
    publicKey: Buffer.from('(10:public-key)'),
    protection: 'C',
  };
  let handed: Uint8Array | undefined;
  const backend: Backend = {
    name: 'test',
    async inventory() {
      return { keys: [entry], certificates: [] };
    },
    async open() {
      return {
        sign: () => Buffer.alloc(0),
        decrypt: () => {
          handed = Buffer.from('session-key-bytes');
          return { value: handed };
        },
      };
    },
  };
  const audit = await AuditLog.open(path.join(dir, 'audit.log'));
  await audit.close();
  const holder = new Holder({
    keystore: await Keystore.open(dir),
    policy: [{ action: 'allow' }],
    pinentry: asker('').a,
    audit,
    cache: new UnlockCache<UnlockedKey>({ defaultTtlMs: 1000, maxTtlMs: 1000 }),
    approvals: new ApprovalMemory(),
    backends: [backend],
  });
  await t.rejects(
    holder.decrypt({
      keygrip: entry.keygrip,
      ciphertext: Buffer.alloc(1),
      requester: { front: 'local' },
    }),
  );
  t.ok(handed, 'the back end decrypted');
  t.ok(allZero(handed!), 'the dropped result was zeroed');
});
