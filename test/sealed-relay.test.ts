// The sealed relay: a man in the middle in front of the real `keytether relay` records every
// message it forwards and can flip, drop, reorder or replay facade messages. Whatever it does, it
// learns no digest, signature, plaintext, session key or token secret, and every interference is
// refused by both ends with a one-line reason and an audit record at the holder.

import t from 'tap';
import type { ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import type { AddressInfo } from 'node:net';
import path from 'node:path';
import { Duplex } from 'node:stream';
import WebSocket, { WebSocketServer } from 'ws';
import {
  exportSecretKey,
  generateKey,
  makeGnupgHome,
  type TempGnupg,
  clientHome,
} from './support/gnupg.js';
import { runCli, spawnCli, waitForLine } from './support/cli.js';
import { makePinentryScript } from './support/pinentry-script.js';
import { sealFacadeStream } from '../server/seal.js';
import { acceptSealedStream, loadSealCredentials } from '../workstation/relay/seal.js';
import { ALLOW_BLIND_FLAG } from './support/blind-signing.js';

type Action =
  | { kind: 'flip'; index: number }
  | { kind: 'drop'; index: number }
  | { kind: 'swap-records'; index: number }
  | { kind: 'drop-record'; index: number }
  | { kind: 'dup'; index: number }
  | { kind: 'flip-down'; index: number };

interface FacadeConn {
  up: Buffer[];
  down: Buffer[];
  toRelay: WebSocket;
  closed: Promise<void>;
}

/** A WebSocket man in the middle: both endpoints of the relay, every message recorded. */
class Mitm {
  readonly capture: Buffer[] = [];
  readonly facades: FacadeConn[] = [];
  next: Action | undefined;
  private wss: WebSocketServer;
  constructor(private readonly relay: string) {
    this.wss = new WebSocketServer({ host: '127.0.0.1', port: 0 });
    this.wss.on('connection', (client, req) => this.onConnection(client, req.url ?? '/'));
  }
  async listening(): Promise<string> {
    if (this.wss.address() === null) await new Promise((r) => this.wss.once('listening', r));
    return `http://127.0.0.1:${(this.wss.address() as AddressInfo).port}`;
  }
  private onConnection(client: WebSocket, url: string) {
    const upstream = new WebSocket(this.relay.replace(/^http/, 'ws') + url, {
      perMessageDeflate: false,
    });
    const facade = url.endsWith('/v1/facade');
    const action = facade ? this.next : undefined;
    if (facade) this.next = undefined;
    const conn: FacadeConn = {
      up: [],
      down: [],
      toRelay: upstream,
      closed: new Promise((r) => client.once('close', () => r())),
    };
    if (facade) this.facades.push(conn);
    const pendingUp: [Buffer, boolean][] = [];
    let upIndex = 0;
    let downIndex = 0;
    const sendUp = (b: Buffer, binary: boolean) => {
      if (upstream.readyState === WebSocket.OPEN) upstream.send(b, { binary });
      else pendingUp.push([b, binary]);
    };
    upstream.on('open', () => {
      for (const [b, bin] of pendingUp.splice(0)) upstream.send(b, { binary: bin });
    });
    client.on('message', (data: Buffer, binary: boolean) => {
      this.capture.push(Buffer.from(data));
      if (!binary || !facade) return sendUp(data, binary);
      conn.up.push(Buffer.from(data));
      const i = upIndex++;
      if (action?.index === i) {
        if (action.kind === 'flip') {
          const b = Buffer.from(data);
          b[b.length - 1]! ^= 0x01;
          return sendUp(b, true);
        }
        if (action.kind === 'drop') return;
        if (action.kind === 'swap-records' || action.kind === 'drop-record') {
          const recs = tlsRecords(data);
          if (recs.length < 2) throw new Error(`message ${i} holds ${recs.length} TLS record(s)`);
          const last = recs.pop()!;
          const before = recs.pop()!;
          const out = action.kind === 'swap-records' ? [...recs, last, before] : [...recs, last];
          return sendUp(Buffer.concat(out), true);
        }
        if (action.kind === 'dup') {
          sendUp(data, true);
          return sendUp(data, true);
        }
      }
      sendUp(data, true);
    });
    upstream.on('message', (data: Buffer, binary: boolean) => {
      this.capture.push(Buffer.from(data));
      let out = data;
      if (binary && facade) {
        conn.down.push(Buffer.from(data));
        if (action?.kind === 'flip-down' && action.index === downIndex) {
          out = Buffer.from(data);
          out[out.length - 1]! ^= 0x01;
        }
        downIndex++;
      }
      if (client.readyState === WebSocket.OPEN) client.send(out, { binary });
    });
    // Codes like 1005/1006 describe a close but may not be sent in one.
    const sendable = (code: number) =>
      code === 1000 || (code >= 3000 && code < 5000) ? code : 1000;
    client.on('close', (code, reason) => {
      if (upstream.readyState === WebSocket.OPEN) upstream.close(sendable(code), reason);
      else upstream.terminate();
    });
    upstream.on('close', (code, reason) => {
      if (client.readyState === WebSocket.OPEN) client.close(sendable(code), reason);
    });
    client.on('error', () => upstream.terminate());
    upstream.on('error', () => client.terminate());
  }
  /** Every recorded byte, as one buffer and as its hex and base64 forms. */
  haystacks(): { raw: Buffer; text: string } {
    const raw = Buffer.concat(this.capture);
    return { raw, text: raw.toString('latin1') + raw.toString('hex') + raw.toString('base64') };
  }
  close(): Promise<void> {
    for (const c of this.wss.clients) c.terminate();
    return new Promise((r) => this.wss.close(() => r()));
  }
}

/** Splits a message into TLS records (5-byte header: type, version, length). */
function tlsRecords(b: Buffer): Buffer[] {
  const out: Buffer[] = [];
  for (let off = 0; off + 5 <= b.length;) {
    const len = b.readUInt16BE(off + 3);
    out.push(b.subarray(off, off + 5 + len));
    off += 5 + len;
  }
  return out;
}

function track(child: ChildProcess) {
  let err = '';
  child.stderr!.on('data', (b: Buffer) => (err += b.toString()));
  const exited = new Promise<number | null>((resolve) => child.on('exit', (c) => resolve(c)));
  return {
    child,
    stderr: () => err,
    exited,
    async stop(signal: NodeJS.Signals = 'SIGTERM') {
      if (child.exitCode === null && child.signalCode === null) child.kill(signal);
      return exited;
    },
  };
}

async function auditRecords(home: string): Promise<Record<string, unknown>[]> {
  const text = await readFile(path.join(home, 'audit.jsonl'), 'utf8').catch(() => '');
  return text
    .split('\n')
    .filter(Boolean)
    .map((l) => JSON.parse(l) as Record<string, unknown>);
}

const allowedSigns = async (home: string) =>
  (await auditRecords(home)).filter((r) => r.op === 'sign' && r.decision === 'allowed').length;

function occurs(hay: { raw: Buffer; text: string }, needle: Buffer): boolean {
  return (
    hay.raw.includes(needle) ||
    hay.text.includes(needle.toString('hex')) ||
    hay.text.includes(needle.toString('hex').toUpperCase()) ||
    hay.text.includes(needle.toString('base64').slice(0, 40)) ||
    hay.text.includes(needle.toString('base64url').slice(0, 40))
  );
}

t.test('the sealed channel pins the holder key the token names', async (t) => {
  const tmp = await mkdtemp('/tmp/ktseal-');
  t.teardown(() => rm(tmp, { recursive: true, force: true }));
  const real = await loadSealCredentials(path.join(tmp, 'a'));
  const other = await loadSealCredentials(path.join(tmp, 'b'));
  t.not(real.hpk.toString('hex'), other.hpk.toString('hex'));
  const again = await loadSealCredentials(path.join(tmp, 'a'));
  t.equal(again.certPem, real.certPem, 'the certificate is cached in the home');

  // Two ends of an in-memory byte stream, as a relay stream would be.
  const pair = () => {
    const ends: Duplex[] = [];
    for (let k = 0; k < 2; k++) {
      ends.push(
        new Duplex({
          read() {},
          write(c: Buffer, _e, cb) {
            ends[1 - k]!.push(c);
            cb();
          },
          final(cb) {
            ends[1 - k]!.push(null);
            cb();
          },
          destroy(err, cb) {
            ends[1 - k]!.destroy();
            cb(err);
          },
        }),
      );
    }
    return [ends[0]!, ends[1]!] as const;
  };
  const secret = randomBytes(32);
  // An impostor holder (another identity) answers for the token's holder: the facade refuses.
  {
    const [f, h] = pair();
    const held = acceptSealedStream(h, {
      credentials: other,
      checkSecret: async () => ({ ok: true }),
    });
    await t.rejects(
      sealFacadeStream(f, { hpk: real.hpk, secret }),
      /sealed channel: the holder's key is not the one the token names/,
    );
    t.match(await held, { ok: false });
  }
  // The right holder and the right secret: both ends come up.
  {
    const [f, h] = pair();
    let seen = '';
    const held = acceptSealedStream(h, {
      credentials: real,
      checkSecret: async (hash) => ((seen = hash), { ok: true }),
    });
    const sock = await sealFacadeStream(f, { hpk: real.hpk, secret });
    const r = await held;
    t.ok(r.ok, 'holder accepted');
    t.match(seen, /^[0-9a-f]{64}$/, 'the holder saw the secret as its hash');
    t.equal(sock.getProtocol(), 'TLSv1.3');
    sock.destroy();
    if (r.ok) r.socket.destroy();
  }
});

t.test('through a recording, tampering relay', async (t) => {
  const ws = await makeGnupgHome();
  t.teardown(() => ws.cleanup());
  const key = await generateKey(ws, {
    uid: 'Sela Sealed <sela@example.org>',
    algo: 'ed25519',
    usage: 'sign,cert',
    subkeys: [{ algo: 'cv25519', usage: 'encr' }],
  });
  const FPR = key.fingerprint;
  const tmp = await mkdtemp('/tmp/ktsealr-');
  t.teardown(() => rm(tmp, { recursive: true, force: true }));
  const home = path.join(tmp, 'home');
  const env = { KEYTETHER_HOME: home };
  const secretFile = path.join(tmp, 'secret.gpg');
  await writeFile(secretFile, await exportSecretKey(ws, FPR), { mode: 0o600 });
  t.equal((await runCli(['keys', 'import', secretFile], { env })).code, 0);
  await rm(secretFile);
  const verifier = await makeGnupgHome();
  t.teardown(() => verifier.cleanup());
  const pub = (await ws.gpg(['--batch', '--armor', '--export', FPR])).stdout;
  await verifier.gpg(['--batch', '--import'], { input: pub });

  const relay = track(await spawnCli(['relay', '--listen', '127.0.0.1:0']));
  t.teardown(() => relay.stop('SIGKILL'));
  const relayUrl = (await waitForLine(relay.child.stdout!, /^listening: (\S+)$/, 30_000))[1]!;
  const mitm = new Mitm(relayUrl);
  t.teardown(() => mitm.close());
  const url = await mitm.listening();

  const pin = await makePinentryScript({ confirm: Array<'ok'>(50).fill('ok') });
  t.teardown(() => pin.cleanup());
  const holder = track(
    await spawnCli(
      [
        'agent',
        ...ALLOW_BLIND_FLAG,
        '--socket',
        path.join(tmp, 'S.l'),
        '--pinentry-program',
        pin.program,
        '--relay',
        url,
      ],
      { env: { ...env, ...pin.env } },
    ),
  );
  t.teardown(() => holder.stop('SIGKILL'));
  const connected = waitForLine(holder.child.stderr!, /^relay connected: /, 30_000);
  await waitForLine(holder.child.stdout!, /^ready: /, 30_000);
  await connected;

  const mk = await runCli(
    ['token', 'create', '--key', FPR, '--relay', url, '--ops', 'sign,decrypt'],
    { env },
  );
  t.equal(mk.code, 0, mk.stderr);
  const token = mk.stdout.trim();
  const [, , , secretPart] = token.split('.') as [string, string, string, string];
  const keygrip = key.keygrip;

  await t.test('sign and decrypt: nothing secret crosses the relay', async (t) => {
    const sock = path.join(tmp, 'S.cap');
    const facade = track(
      await spawnCli(['connect', '--relay', url, '--token', token, '--socket', sock]),
    );
    t.teardown(() => facade.stop('SIGKILL'));
    await waitForLine(facade.child.stdout!, /^ready: /, 30_000);

    const digest = randomBytes(32);
    const r = await ws.run('gpg-connect-agent', [
      '--hex',
      '-S',
      sock,
      `SIGKEY ${keygrip}`,
      `SETHASH --hash=sha256 ${digest.toString('hex')}`,
      'PKSIGN',
      '/bye',
    ]);
    // --hex prints "D[0000]  28 37 3a ...  (7:..." lines; collect the hex columns.
    const bytes = Buffer.from(
      r.stdout
        .toString('latin1')
        .split('\n')
        .filter((l) => l.startsWith('D['))
        .map((l) => l.slice(9, 9 + 16 * 3).replace(/\s+/g, ''))
        .join(''),
      'hex',
    );
    const text = bytes.toString('latin1');
    const ri = text.indexOf('1:r32:');
    const si = text.indexOf('1:s32:');
    t.ok(ri >= 0 && si >= 0, `PKSIGN answered a signature: ${r.stdout.toString().slice(0, 200)}`);
    const sigR = bytes.subarray(ri + 6, ri + 38);
    const sigS = bytes.subarray(si + 6, si + 38);

    const plaintext = `sealed plaintext ${randomBytes(12).toString('hex')}\n`;
    const enc = await verifier.gpg(['--batch', '-r', FPR, '--encrypt'], { input: plaintext });
    const client = await clientHome(sock, pub);
    t.teardown(() => client.cleanup());
    const dec = await client.gpg(['--batch', '--no-tty', '--show-session-key', '--decrypt'], {
      input: enc.stdout,
    });
    t.equal(dec.code, 0, dec.stderr);
    t.equal(dec.stdout.toString(), plaintext, 'decrypted through the sealed relay');
    const sk = /session key: '\d+:([0-9A-F]+)'/.exec(dec.stderr)?.[1];
    t.ok(sk, 'gpg showed the session key');
    await facade.stop();

    const hay = mitm.haystacks();
    t.ok(hay.raw.length > 1000, `the relay forwarded ${hay.raw.length} bytes`);
    t.ok(
      hay.raw.includes(Buffer.from(token.split('.').slice(0, 3).join('.'))),
      'control: the public part is visible',
    );
    t.notOk(occurs(hay, digest), 'the digest never crosses the relay in clear');
    t.notOk(occurs(hay, sigR), "the signature's R never crosses the relay in clear");
    t.notOk(occurs(hay, sigS), "the signature's S never crosses the relay in clear");
    t.notOk(occurs(hay, Buffer.from(plaintext)), 'the plaintext never crosses the relay');
    t.notOk(occurs(hay, Buffer.from(sk!, 'hex')), 'the session key never crosses the relay');
    t.notOk(occurs(hay, Buffer.from(secretPart, 'base64url')), "the token's secret never crosses");
    t.notOk(hay.text.includes(secretPart), "the token's secret part never crosses as text");
  });

  const signOnce = (extra: string[] = []) =>
    runCli([
      'connect',
      '--relay',
      url,
      '--token',
      token,
      ...extra,
      '--',
      'gpg',
      '--batch',
      '--no-tty',
      '-u',
      FPR,
      '--detach-sign',
      '-o',
      '-',
      path.join(tmp, 'data.txt'),
    ]);
  await writeFile(path.join(tmp, 'data.txt'), 'data\n');

  await t.test('an untouched connection works (and shows the message order)', async (t) => {
    const r = await signOnce();
    t.equal(r.code, 0, r.stderr);
    const c = mitm.facades.at(-1)!;
    t.ok(
      c.up.length >= 4,
      `facade sent ${c.up.length} messages: ${c.up.map((b) => b.length).join(',')}`,
    );
  });

  // Message 0 is the ClientHello; message 1 holds the client Finished and the token proof (two
  // records); message 2 the tunnel hello; later ones tunnel requests.
  const cases: [string, Action][] = [
    ['a flipped bit in the ClientHello', { kind: 'flip', index: 0 }],
    ['a flipped bit in the token proof', { kind: 'flip', index: 1 }],
    ['a flipped bit in the tunnel hello', { kind: 'flip', index: 2 }],
    ['a flipped bit in a tunnel request', { kind: 'flip', index: 3 }],
    ['a flipped bit in the ServerHello flight', { kind: 'flip-down', index: 0 }],
    ['a flipped bit in a record towards the facade', { kind: 'flip-down', index: 1 }],
    ['a dropped client Finished', { kind: 'drop-record', index: 1 }],
    ['a dropped tunnel hello', { kind: 'drop', index: 2 }],
    ['Finished and token proof reordered', { kind: 'swap-records', index: 1 }],
    ['the token proof replayed in the stream', { kind: 'dup', index: 1 }],
    ['the tunnel hello replayed in the stream', { kind: 'dup', index: 2 }],
    ['a tunnel request replayed in the stream', { kind: 'dup', index: 3 }],
  ];
  for (const [name, action] of cases) {
    await t.test(`${name} is refused`, async (t) => {
      const before = (await auditRecords(home)).length;
      const signs = await allowedSigns(home);
      // The holder logs this line after the audit record is written.
      const audited = waitForLine(
        holder.child.stderr!,
        /\(token ktt_\w+\) \w+: sealed channel: /,
        30_000,
      );
      mitm.next = action;
      const r = await signOnce();
      await audited;
      const signed = (await allowedSigns(home)) - signs;
      // A record duplicated after its original may only ever get the original's one signature.
      // Which WebSocket message carries the request depends on how TLS records were coalesced
      // (load); when the duplicate is read only after the original was answered, gpg has its
      // one good signature and the stream dies afterwards. Anything else must fail.
      if (action.kind === 'dup' && r.code === 0) {
        t.equal(signed, 1, "the command got exactly the original request's signature");
      } else {
        t.not(r.code, 0, 'the command failed');
        t.match(
          r.stderr,
          /sealed channel: /,
          `facade said why: ${r.stderr.trim().split('\n').at(-1)}`,
        );
        t.ok(signed <= (action.kind === 'dup' ? 1 : 0), 'no signature for the interference');
      }
      const recs = (await auditRecords(home)).slice(before);
      t.ok(
        recs.some(
          (x) =>
            x.op === 'channel' &&
            x.decision === 'failed' &&
            /^sealed channel: /.test(String(x.reason)),
        ),
        `the holder audited it: ${JSON.stringify(recs.map((x) => x.reason))}`,
      );
    });
  }

  await t.test('a recorded sign request replayed gets no signature', async (t) => {
    const sock = path.join(tmp, 'S.rep');
    const facade = track(
      await spawnCli(['connect', '--relay', url, '--token', token, '--socket', sock]),
    );
    t.teardown(() => facade.stop('SIGKILL'));
    await waitForLine(facade.child.stdout!, /^ready: /, 30_000);
    const conn = mitm.facades.at(-1)!;
    const client = await clientHome(sock, pub);
    t.teardown(() => client.cleanup());
    const signs = await allowedSigns(home);
    const from = conn.up.length;
    const ok = await client.gpg(['--batch', '--no-tty', '-u', FPR, '--detach-sign'], {
      input: 'x',
    });
    t.equal(ok.code, 0, ok.stderr);
    t.equal(await allowedSigns(home), signs + 1, 'one signature for one request');
    const request = conn.up.slice(from);
    t.ok(request.length >= 1, 'the request was recorded');

    // Into a new stream: a fresh handshake, so the recorded records belong to no key it has.
    const before = (await auditRecords(home)).length;
    const refusedFresh = waitForLine(holder.child.stderr!, /refused: sealed channel: /, 30_000);
    const fresh = new WebSocket(relayUrl.replace(/^http/, 'ws') + '/v1/facade', {
      perMessageDeflate: false,
    });
    const closed = new Promise<string>((r) => fresh.on('close', (_c, why) => r(why.toString())));
    await new Promise((r) => fresh.on('open', r));
    fresh.send(JSON.stringify({ type: 'token', token: token.split('.').slice(0, 3).join('.') }));
    await new Promise<void>((r) => fresh.once('message', () => r()));
    for (const m of conn.up) fresh.send(m, { binary: true });
    t.match(await closed, /^sealed channel: /, 'the holder ended the replayed stream');
    await refusedFresh;
    t.equal(await allowedSigns(home), signs + 1, 'no signature for the replay in a new stream');
    const closedLive = waitForLine(holder.child.stderr!, /closed: sealed channel: /, 30_000);

    // Into the live stream: the records are out of sequence.
    for (const m of request) conn.toRelay.send(m, { binary: true });
    const lost = await waitForLine(
      facade.child.stderr!,
      /^.*(lost the holder|sealed channel).*$/,
      30_000,
    );
    await closedLive;
    t.match(lost[0], /sealed channel/, 'the facade reports the broken channel');
    t.equal(await allowedSigns(home), signs + 1, 'no signature for the replay in the same stream');
    const recs = (await auditRecords(home)).slice(before);
    t.ok(recs.filter((x) => x.decision === 'failed').length >= 2, 'both replays audited');
  });

  await t.test(
    "the token's public part with a wrong secret is refused by the holder",
    async (t) => {
      const forged = `${token.split('.').slice(0, 3).join('.')}.${randomBytes(32).toString('base64url')}`;
      const before = (await auditRecords(home)).length;
      const r = await runCli(['connect', '--relay', url, '--token', forged, '--', 'true']);
      t.equal(r.code, 1);
      t.match(
        r.stderr,
        /sealed channel: the holder refused: sealed channel: the facade did not prove the token's secret/,
      );
      const recs = (await auditRecords(home)).slice(before);
      // The facade may also report the refusal back before the stream is gone: a second
      // `failed` record, never anything else.
      t.ok(
        recs.some(
          (x) =>
            x.decision === 'failed' && /did not prove the token's secret/.test(String(x.reason)),
        ),
        `refusal audited: ${JSON.stringify(recs.map((x) => x.reason))}`,
      );
      t.ok(recs.length >= 1 && recs.every((x) => x.decision === 'failed'), 'nothing but failures');
    },
  );
});
