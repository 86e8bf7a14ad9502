// The tunnel between a facade and the workstation holder, over real unix sockets and in-memory
// stream pairs: handshake and version advice, inventory pushes, many signatures at once on one
// link (verified with the holder's public key), gpg error codes, cancellation, a dropped link, a
// silent peer, and hostile byte streams (oversize, garbage, truncated, random).

import t, { type Test } from 'tap';
import fc from 'fast-check';
import {
  createPublicKey,
  diffieHellman,
  generateKeyPairSync,
  randomBytes,
  verify,
} from 'node:crypto';
import { once } from 'node:events';
import { mkdtemp, rm } from 'node:fs/promises';
import { createServer, connect, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Duplex } from 'node:stream';
import { ErrorCode, GpgError, SOURCE_PINENTRY } from '../protocol/gpg-error.js';
import type { Inventory, KeyEntry, Requester } from '../protocol/keyholder.js';
import { atom, encodeSexp, findList, parseSexp } from '../protocol/sexp.js';
import {
  DEFAULT_MAX_FRAME_BYTES,
  DEFAULT_MAX_IN_FLIGHT,
  FrameReader,
  TUNNEL_PROTOCOL,
  decodePayload,
  encodeFrame,
  serveTunnel,
  tunnelClient,
  type Message,
  type TunnelClient,
  type TunnelClientOptions,
  type TunnelServerHandle,
  type TunnelServerOptions,
} from '../protocol/tunnel/index.js';
import { RequesterSchema } from '../protocol/tunnel/messages.js';
import { SimpleHolder } from './support/simple-holder.js';
import { AGENT_VERSION, serveAgent } from '../protocol/agent/index.js';
import { AssuanClient } from '../protocol/assuan/index.js';

const SOFTWARE = 'keytether/0.1.0';
const REQUESTER: Requester = {
  front: 'ssh',
  host: 'ci-runner-7',
  user: 'build',
  pid: 4242,
  uid: 1000,
  command: 'gpg --detach-sign',
};

/** Two connected ends of a real unix socket; both destroyed at teardown. */
async function socketPair(t: Test): Promise<[Socket, Socket]> {
  const dir = await mkdtemp(join(tmpdir(), 'kt-tun-'));
  const path = join(dir, 's');
  const server = createServer();
  server.listen(path);
  await once(server, 'listening');
  const accepted = once(server, 'connection') as Promise<[Socket]>;
  const client = connect(path);
  const [serverEnd] = await accepted;
  await once(client, 'connect');
  t.teardown(async () => {
    client.destroy();
    serverEnd.destroy();
    server.close();
    await rm(dir, { recursive: true, force: true });
  });
  return [serverEnd, client];
}

/** An in-memory byte pipe in both directions (what an SSH channel's stdio looks like). */
function streamPair(): [Duplex, Duplex] {
  let a!: Duplex;
  let b!: Duplex;
  const make = (other: () => Duplex) =>
    new Duplex({
      read() {},
      write(chunk: Buffer, _enc, cb) {
        other().push(Buffer.from(chunk));
        cb();
      },
      final(cb) {
        other().push(null);
        cb();
      },
    });
  a = make(() => b);
  b = make(() => a);
  return [a, b];
}

interface Pair {
  holder: SimpleHolder;
  server: TunnelServerHandle;
  client: TunnelClient;
  serverEnd: Duplex;
  clientEnd: Duplex;
}

async function connected(
  t: Test,
  opts: {
    server?: Partial<TunnelServerOptions>;
    client?: Partial<TunnelClientOptions>;
    holder?: SimpleHolder;
    memory?: boolean;
  } = {},
): Promise<Pair> {
  const [serverEnd, clientEnd] = opts.memory ? streamPair() : await socketPair(t);
  const holder = opts.holder ?? new SimpleHolder();
  const server = serveTunnel(holder, serverEnd, { software: SOFTWARE, ...opts.server });
  const client = tunnelClient(clientEnd, { software: SOFTWARE, ...opts.client });
  t.teardown(() => {
    client.close('test over');
    server.close('test over');
  });
  return { holder, server, client, serverEnd, clientEnd };
}

function signRequest(holder: SimpleHolder, digest: Buffer) {
  return {
    keygrip: holder.signKey.entry.keygrip,
    hashAlgo: 8,
    digest,
    description: 'Please enter the passphrase for "Alice <alice@example.org>"',
    requester: REQUESTER,
  };
}

/** r‖s from an eddsa sig-val, verified against the holder's Ed25519 public key. */
function verifies(holder: SimpleHolder, digest: Buffer, sigVal: Uint8Array): boolean {
  const parsed = parseSexp(sigVal);
  if (!parsed.ok) return false;
  const r = findList(parsed.value, 'r')?.[1];
  const s = findList(parsed.value, 's')?.[1];
  if (!Buffer.isBuffer(r) || !Buffer.isBuffer(s)) return false;
  return verify(null, digest, holder.signKey.publicKey, Buffer.concat([r, s]));
}

/**
 * A hand-driven peer on the raw byte stream: reads frames with the same reader, writes whatever
 * the test wants (including things a real peer would never send).
 */
class RawPeer {
  readonly messages: Message[] = [];
  readonly errors: string[] = [];
  ended = false;
  private readonly reader = new FrameReader(DEFAULT_MAX_FRAME_BYTES);
  private waiters: (() => void)[] = [];

  constructor(readonly stream: Duplex) {
    stream.on('data', (chunk: Buffer) => {
      for (const ev of this.reader.push(chunk)) {
        if (ev.type === 'error') this.errors.push(ev.reason);
        else {
          const d = decodePayload(ev.payload);
          if (d.ok) this.messages.push({ ...d.message, body: Buffer.from(d.message.body) });
          else this.errors.push(d.reason);
        }
      }
      this.wake();
    });
    stream.on('end', () => {
      this.ended = true;
      this.wake();
    });
    stream.on('close', () => {
      this.ended = true;
      this.wake();
    });
    stream.on('error', () => {});
  }

  private wake(): void {
    for (const w of this.waiters.splice(0)) w();
  }

  /** Waits for the first message of this type (already received or still to come). */
  async next<K extends Message['type']>(type: K): Promise<Extract<Message, { type: K }>> {
    for (;;) {
      const m = this.messages.find((x) => x.type === type);
      if (m) {
        this.messages.splice(this.messages.indexOf(m), 1);
        return m as Extract<Message, { type: K }>;
      }
      if (this.ended) throw new Error(`stream ended without a ${type} message`);
      await new Promise<void>((r) => this.waiters.push(r));
    }
  }

  async untilEnded(): Promise<void> {
    while (!this.ended) await new Promise<void>((r) => this.waiters.push(r));
  }

  write(bytes: Uint8Array): void {
    this.stream.write(bytes);
  }

  hello(role: 'holder' | 'facade', extra: Record<string, unknown> = {}): void {
    this.write(
      encodeFrame({
        type: 'hello',
        protocol: TUNNEL_PROTOCOL,
        minProtocol: 1,
        software: 'keytether/0.1.0',
        role,
        ...extra,
      }),
    );
  }
}

async function inventoryHeader(holder: SimpleHolder) {
  const inv = await holder.inventory();
  return {
    type: 'inventory' as const,
    keys: inv.keys.map((k) => ({ ...k, publicKey: Buffer.from(k.publicKey).toString('base64') })),
    certificates: inv.certificates,
  };
}

function assertNoAgent(t: Test, e: unknown): void {
  t.ok(e instanceof GpgError, 'a GpgError');
  t.equal((e as GpgError).code, ErrorCode.NO_AGENT, 'NO_AGENT');
  t.match((e as GpgError).message, /^No agent running/);
}

t.test('handshake over a unix socket: both ends learn the peer, inventory arrives', async (t) => {
  const { holder, server, client } = await connected(t, {
    client: { software: 'keytether/0.1.1' },
  });
  await client.ready;
  const peer = await server.ready;
  t.equal(peer.software, 'keytether/0.1.1', 'holder sees the facade software');
  t.equal(client.peer?.software, SOFTWARE, 'facade sees the holder software');
  t.equal(client.peer?.protocol, TUNNEL_PROTOCOL);
  const inv = await client.inventory();
  const want = await holder.inventory();
  t.same(
    inv.keys.map((k) => [k.keygrip, k.fingerprint, k.algorithm, k.usage, k.protection]),
    want.keys.map((k) => [k.keygrip, k.fingerprint, k.algorithm, k.usage, k.protection]),
  );
  t.ok(Buffer.from(inv.keys[0]!.publicKey).equals(Buffer.from(want.keys[0]!.publicKey)));
});

t.test('a request made before the handshake finishes waits for it', async (t) => {
  const holder = new SimpleHolder();
  const { client } = await connected(t, { holder, memory: true });
  const d = randomBytes(32);
  t.equal(client.peer, undefined, 'not connected yet');
  t.ok(verifies(holder, d, await client.sign(signRequest(holder, d))));
});

t.test('version mismatch: both ends close with the same one-sentence advice', async (t) => {
  const P = TUNNEL_PROTOCOL;
  const sentence = `the workstation speaks tunnel protocol ${P} but the server's keytether speaks ${P + 1}; upgrade keytether on the workstation (it is 0.1.0, the server has 0.3.0)`;
  const { server, client, holder } = await connected(t, {
    client: { software: 'keytether/0.3.0', protocol: P + 1, minProtocol: P + 1 },
  });
  const closeEvent = new Promise<string>((r) => client.on('close', r));
  await t.rejects(client.ready, { message: sentence });
  t.equal(await closeEvent, sentence, 'facade close event');
  t.same(await server.closed, { reason: sentence }, 'holder end');
  await t.rejects(server.ready, { message: sentence });
  await client.sign(signRequest(holder, randomBytes(32))).then(
    () => t.fail('signed over a failed handshake'),
    (e: unknown) => assertNoAgent(t, e),
  );

  const other = await connected(t, {
    server: { software: 'keytether/0.4.0', protocol: P + 2, minProtocol: P + 2 },
    client: { software: 'keytether/0.3.0', protocol: P + 1, minProtocol: 1 },
  });
  const reason = `the server speaks tunnel protocol ${P + 1} but the workstation's keytether speaks ${P + 2}; upgrade keytether on the server (it is 0.3.0, the workstation has 0.4.0)`;
  t.same(await other.client.closed, { reason });
  t.same(await other.server.closed, { reason });
});

t.test('compatible ranges settle on the newest common protocol', async (t) => {
  const { server, client } = await connected(t, {
    memory: true,
    client: { software: 'keytether/0.3.0', protocol: TUNNEL_PROTOCOL + 1, minProtocol: 1 },
  });
  await client.ready;
  t.equal(client.peer?.protocol, TUNNEL_PROTOCOL, 'the newest both speak');
  t.equal((await server.ready).protocol, TUNNEL_PROTOCOL);
});

t.test('two holders refuse each other', async (t) => {
  const [a, b] = streamPair();
  const one = serveTunnel(new SimpleHolder(), a, { software: SOFTWARE });
  const two = serveTunnel(new SimpleHolder(), b, { software: SOFTWARE });
  t.match((await one.closed).reason, /both ends of the tunnel are key holders/);
  t.match((await two.closed).reason, /both ends of the tunnel are key holders/);
});

t.test('inventory is pushed after the handshake and again on every change', async (t) => {
  let notify: (() => void) | undefined;
  let unsubscribed = false;
  const { holder, server, client } = await connected(t, {
    server: {
      onInventoryChange: (changed) => {
        notify = changed;
        return () => (unsubscribed = true);
      },
    },
  });
  const pushes: Inventory[] = [];
  let wake: (() => void) | undefined;
  client.on('inventory', (inv) => {
    pushes.push(inv);
    wake?.();
  });
  const nextPush = async (n: number) => {
    while (pushes.length < n) await new Promise<void>((r) => (wake = r));
    return pushes[n - 1]!;
  };
  t.equal((await nextPush(1)).keys.length, 2, 'first push');

  const card: KeyEntry = {
    keygrip: 'C0FFEEC0FFEEC0FFEEC0FFEEC0FFEEC0FFEEC0FF',
    fingerprint: 'C'.repeat(40),
    primaryFingerprint: 'C'.repeat(40),
    algorithm: 'rsa2048',
    usage: ['sign'],
    publicKey: Buffer.from('(10:public-key(3:rsa(1:n1:\x05)(1:e1:\x03)))', 'latin1'),
    card: { serialNo: 'D2760001240102010006123456780000', idStr: 'OPENPGP.1' },
  };
  holder.extraEntries.push(card);
  server.inventoryChanged();
  const second = await nextPush(2);
  t.equal(second.keys.length, 3, 'handle.inventoryChanged() re-pushes');
  t.same(second.keys[2]!.card, card.card);
  t.equal((await client.inventory()).keys.length, 3, 'inventory() answers from the latest push');

  // A listener that unsubscribed hears nothing more; the others still do.
  let late = 0;
  const off = client.on('inventory', () => late++);
  off();
  holder.extraEntries.pop();
  t.ok(notify, 'subscribed');
  notify!();
  t.equal((await nextPush(3)).keys.length, 2, 'subscription re-pushes');
  t.equal(late, 0, 'a removed listener is not called');
  server.close('done');
  await client.closed;
  t.ok(unsubscribed, 'unsubscribed when the link closed');
});

t.test('inventory() waits for the first push, then times out with NO_AGENT', async (t) => {
  const [serverEnd, clientEnd] = await socketPair(t);
  const peer = new RawPeer(serverEnd);
  const client = tunnelClient(clientEnd, { software: SOFTWARE, inventoryTimeoutMs: 200 });
  t.teardown(() => client.close());
  peer.hello('holder');
  await peer.next('hello');
  const start = Date.now();
  await client.inventory().then(
    () => t.fail('no inventory was sent'),
    (e: unknown) => {
      t.equal((e as GpgError).code, ErrorCode.NO_AGENT);
      t.match((e as GpgError).message, /no key inventory/);
    },
  );
  t.ok(Date.now() - start < 2000);
});

t.test('as many concurrent signatures as one link serves (32) all verify', async (t) => {
  const { holder, client } = await connected(t);
  await client.ready;
  const digests = Array.from({ length: DEFAULT_MAX_IN_FLIGHT }, () => randomBytes(32));
  const sigs = await Promise.all(digests.map((d) => client.sign(signRequest(holder, d))));
  t.equal(sigs.length, DEFAULT_MAX_IN_FLIGHT);
  t.ok(
    sigs.every((s, i) => verifies(holder, digests[i]!, s)),
    'every signature verifies against its own digest',
  );
  t.notOk(verifies(holder, digests[1]!, sigs[0]!), 'and not against another one');
  t.equal(holder.signRequests.length, DEFAULT_MAX_IN_FLIGHT);
  const seen = holder.signRequests[0]!;
  t.same(seen.requester, REQUESTER, 'requester crosses unchanged');
  t.equal(seen.hashAlgo, 8);
  t.equal(seen.description, signRequest(holder, Buffer.alloc(0)).description);
});

t.test('the transport can override what the facade claims about the requester', async (t) => {
  const { holder, client } = await connected(t, {
    memory: true,
    server: { requester: (r) => ({ ...r, front: 'ssh', host: 'verified.example' }) },
  });
  await client.sign({ ...signRequest(holder, randomBytes(32)), requester: { front: 'local' } });
  t.same(holder.signRequests[0]!.requester, { front: 'ssh', host: 'verified.example' });
});

t.test('decrypt returns the holder value and padding', async (t) => {
  const { holder, client } = await connected(t);
  const eph = generateKeyPairSync('x25519');
  const ephRaw = Buffer.from(eph.publicKey.export({ format: 'jwk' }).x!, 'base64url');
  const ciphertext = encodeSexp([
    atom('enc-val'),
    [
      atom('ecdh'),
      [atom('s'), randomBytes(40)],
      [atom('e'), Buffer.concat([Buffer.of(0x40), ephRaw])],
    ],
  ]);
  const r = await client.decrypt({
    keygrip: holder.decryptKey.entry.keygrip,
    ciphertext,
    requester: REQUESTER,
  });
  const shared = diffieHellman({
    privateKey: eph.privateKey,
    publicKey: holder.decryptKey.publicKey,
  });
  t.ok(Buffer.from(r.value).equals(Buffer.concat([Buffer.of(0x40), shared])), 'same shared point');
  t.equal(r.padding, undefined);
  t.ok(Buffer.from(holder.decryptRequests[0]!.ciphertext).equals(ciphertext));
  // A padding flag crosses too.
  const padded = { value: Buffer.from('session key'), padding: 0 as const };
  holder.decrypt = async () => ({ ...padded, value: Buffer.from(padded.value) });
  t.same(
    await client.decrypt({
      keygrip: holder.decryptKey.entry.keygrip,
      ciphertext,
      requester: REQUESTER,
    }),
    {
      value: Buffer.from('session key'),
      padding: 0,
    },
  );
});

t.test('holder errors reach the facade with their gpg code and source', async (t) => {
  const { holder, client } = await connected(t);
  const req = () => signRequest(holder, randomBytes(32));

  holder.nextError = new GpgError(ErrorCode.NOT_CONFIRMED, 'denied at the workstation');
  await client.sign(req()).then(
    () => t.fail('should fail'),
    (e: unknown) => {
      t.ok(e instanceof GpgError);
      const g = e as GpgError;
      t.equal(g.value, 67108978, 'same ERR value a local agent sends for Not confirmed');
      t.equal(g.toAssuan(), 'ERR 67108978 Not confirmed <GPG Agent> - denied at the workstation');
    },
  );

  holder.nextError = new GpgError(ErrorCode.CANCELED, undefined, SOURCE_PINENTRY);
  await t.rejects(client.sign(req()), { code: ErrorCode.CANCELED, source: SOURCE_PINENTRY });

  holder.nextError = new Error('secret key material 0xDEADBEEF');
  await client.sign(req()).then(
    () => t.fail('should fail'),
    (e: unknown) => {
      t.equal((e as GpgError).code, ErrorCode.GENERAL);
      t.notMatch((e as GpgError).message, /DEADBEEF/, 'foreign error text stays on the holder');
    },
  );

  await t.rejects(client.sign({ ...req(), keygrip: '0123456789ABCDEF0123456789ABCDEF01234567' }), {
    code: ErrorCode.NO_SECKEY,
  });
  t.ok(
    verifies(
      holder,
      Buffer.alloc(32, 1),
      await client.sign(signRequest(holder, Buffer.alloc(32, 1))),
    ),
    'link still fine',
  );
});

t.test('an invalid request gets an error reply and the link stays up', async (t) => {
  const [serverEnd, clientEnd] = await socketPair(t);
  const holder = new SimpleHolder();
  const server = serveTunnel(holder, serverEnd, { software: SOFTWARE });
  t.teardown(() => server.close());
  const peer = new RawPeer(clientEnd);
  peer.hello('facade');
  await peer.next('inventory');
  const header = {
    type: 'sign' as const,
    id: 7,
    keygrip: holder.signKey.entry.keygrip,
    hashAlgo: 8,
    requester: REQUESTER,
  };
  peer.write(encodeFrame(header, randomBytes(65)));
  const err = await peer.next('error');
  t.equal(err.id, 7);
  t.equal(err.code, ErrorCode.INV_DATA);
  t.match(err.message, /body is 65 bytes, expected 1\.\.64 bytes/);
  peer.write(encodeFrame({ ...header, id: 8, keygrip: 'lowercase' }, randomBytes(32)));
  t.match((await peer.next('error')).message, /keygrip/);
  const digest = randomBytes(32);
  peer.write(encodeFrame({ ...header, id: 9 }, digest));
  const res = await peer.next('sign-result');
  t.equal(res.id, 9);
  t.ok(verifies(holder, digest, res.body));
  t.equal(holder.signRequests.length, 1, 'invalid requests never reached the holder');
});

t.test("cancel reaches the holder's AbortSignal", async (t) => {
  const frames: string[] = [];
  const { holder, client } = await connected(t, {
    server: { onFrame: (dir, type) => frames.push(`holder ${dir} ${type}`) },
  });
  await client.ready;
  let holderSignal: AbortSignal | undefined;
  const entered = new Promise<void>((entered) => {
    holder.beforeOperation = (signal) =>
      new Promise<void>((resolve) => {
        holderSignal = signal;
        entered();
        signal?.addEventListener('abort', () => resolve());
      });
  });
  const ac = new AbortController();
  const pending = client.sign(signRequest(holder, randomBytes(32)), ac.signal);
  await entered;
  t.equal(holderSignal?.aborted, false);
  const aborted = once(holderSignal!, 'abort');
  ac.abort();
  await t.rejects(pending, { code: ErrorCode.CANCELED });
  await aborted;
  t.equal(holderSignal?.aborted, true, 'holder signal aborted');
  t.ok(frames.includes('holder in cancel'));
  // The cancelled request gets no answer; the link carries on.
  holder.beforeOperation = undefined;
  const d = randomBytes(32);
  t.ok(verifies(holder, d, await client.sign(signRequest(holder, d))));
  t.notOk(frames.includes('holder out error'), 'no reply for the cancelled request');
});

t.test('link dropped mid-request: pending requests fail with NO_AGENT within 2 s', async (t) => {
  const { holder, client, serverEnd } = await connected(t);
  await client.ready;
  let holderSignal: AbortSignal | undefined;
  let entered!: () => void;
  const inHolder = new Promise<void>((r) => (entered = r));
  holder.beforeOperation = (signal) => {
    holderSignal = signal;
    entered();
    return new Promise(() => {});
  };
  const closeReason = new Promise<string>((r) => client.on('close', r));
  const pending = [1, 2, 3].map(() => client.sign(signRequest(holder, randomBytes(32))));
  await inHolder;
  const start = Date.now();
  serverEnd.destroy();
  for (const p of pending) {
    await p.then(
      () => t.fail('signed without a link'),
      (e: unknown) => assertNoAgent(t, e),
    );
  }
  t.ok(Date.now() - start < 2000, `rejected after ${Date.now() - start} ms`);
  t.match(await closeReason, /the workstation closed the connection/);
  await client.sign(signRequest(holder, randomBytes(32))).then(
    () => t.fail('signed after close'),
    (e: unknown) => assertNoAgent(t, e),
  );
  t.equal(holderSignal?.aborted, true, "the holder's operation was aborted too");
});

t.test('dead peer: a holder that stops answering pings closes the facade', async (t) => {
  const [serverEnd, clientEnd] = await socketPair(t);
  const peer = new RawPeer(serverEnd);
  const client = tunnelClient(clientEnd, {
    software: SOFTWARE,
    keepaliveMs: 50,
    deadPeerMs: 300,
  });
  peer.hello('holder');
  peer.write(encodeFrame(await inventoryHeader(new SimpleHolder())));
  await client.ready;
  const holder = new SimpleHolder();
  const pending = client.sign(signRequest(holder, randomBytes(32)));
  await peer.next('ping');
  const reason = await new Promise<string>((r) => client.on('close', r));
  t.equal(reason, 'no answer from the workstation for 300 ms');
  await pending.then(
    () => t.fail('no answer expected'),
    (e: unknown) => assertNoAgent(t, e),
  );
  await peer.untilEnded();
  t.pass('facade hung up on the silent peer');
});

t.test('dead peer: a silent facade closes the holder end', async (t) => {
  const [serverEnd, clientEnd] = await socketPair(t);
  const peer = new RawPeer(clientEnd);
  const server = serveTunnel(new SimpleHolder(), serverEnd, {
    software: SOFTWARE,
    keepaliveMs: 50,
    deadPeerMs: 300,
  });
  peer.hello('facade');
  await peer.next('inventory');
  t.equal((await server.closed).reason, 'no answer from the server for 300 ms');
});

t.test('a peer that never says hello is dropped', async (t) => {
  const [serverEnd, clientEnd] = await socketPair(t);
  const client = tunnelClient(clientEnd, { software: SOFTWARE, deadPeerMs: 200 });
  new RawPeer(serverEnd);
  t.equal(
    (await client.closed).reason,
    'the workstation did not start the tunnel protocol within 200 ms',
  );
  await t.rejects(client.inventory(), { code: ErrorCode.NO_AGENT });
});

t.test('ping is answered with pong, and keeps the link alive past deadPeerMs', async (t) => {
  let pongs = 0;
  let enough!: () => void;
  const twentyPongs = new Promise<void>((r) => (enough = r));
  const { holder, client } = await connected(t, {
    server: { keepaliveMs: 50, deadPeerMs: 600 },
    client: {
      keepaliveMs: 50,
      deadPeerMs: 600,
      onFrame: (dir, type) => {
        if (dir === 'in' && type === 'pong' && ++pongs === 20) enough();
      },
    },
  });
  await client.ready;
  // Twenty pings 50 ms apart span well over deadPeerMs (600 ms).
  await twentyPongs;
  const d = randomBytes(32);
  t.ok(verifies(holder, d, await client.sign(signRequest(holder, d))), 'alive after >900 ms');
});

t.test('frame counter: one request frame and one response frame per signature', async (t) => {
  const clientFrames: string[] = [];
  const serverFrames: string[] = [];
  const { holder, client } = await connected(t, {
    client: { onFrame: (dir, type) => clientFrames.push(`${dir} ${type}`) },
    server: { onFrame: (dir, type) => serverFrames.push(`${dir} ${type}`) },
  });
  await client.ready;
  const ops = (list: string[]) => list.filter((f) => !/ (hello|inventory|ping|pong)$/.test(f));
  t.same(ops(clientFrames), []);
  for (let i = 1; i <= 3; i++) {
    const d = randomBytes(32);
    t.ok(verifies(holder, d, await client.sign(signRequest(holder, d))));
    t.same(ops(clientFrames).slice(-2), ['out sign', 'in sign-result']);
    t.equal(ops(clientFrames).length, 2 * i);
    t.equal(ops(serverFrames).length, 2 * i);
  }
  t.same(ops(serverFrames).slice(0, 2), ['in sign', 'out sign-result']);
});

t.test('an oversize frame closes the link before its payload is buffered', async (t) => {
  const [serverEnd, clientEnd] = await socketPair(t);
  const peer = new RawPeer(serverEnd);
  const client = tunnelClient(clientEnd, { software: SOFTWARE, maxFrameBytes: 4096 });
  peer.hello('holder');
  peer.write(encodeFrame(await inventoryHeader(new SimpleHolder())));
  await client.ready;
  const prefix = Buffer.alloc(4);
  prefix.writeUInt32BE(50 * 1024 * 1024);
  peer.write(Buffer.concat([prefix, Buffer.alloc(1000)]));
  const want =
    'bad data from the workstation: received a frame of 52428800 bytes, more than the 4096 allowed';
  t.equal((await client.closed).reason, want, 'facade reason');
  const bye = await peer.next('close');
  t.equal(bye.reason, want, 'the peer is told why');

  const reader = new FrameReader(4096);
  const events = reader.push(Buffer.concat([prefix, Buffer.alloc(1000)]));
  t.same(
    events.map((e) => e.type),
    ['error'],
  );
  t.equal(reader.bufferedBytes, 0, 'nothing of the payload was kept');
  t.same(reader.push(Buffer.alloc(100)), [], 'input after the error is ignored');
});

t.test('the holder refuses an oversize frame from the facade the same way', async (t) => {
  const [serverEnd, clientEnd] = await socketPair(t);
  const peer = new RawPeer(clientEnd);
  const server = serveTunnel(new SimpleHolder(), serverEnd, { software: SOFTWARE });
  peer.hello('facade');
  await server.ready;
  const prefix = Buffer.alloc(4);
  prefix.writeUInt32BE(DEFAULT_MAX_FRAME_BYTES + 1);
  peer.write(Buffer.concat([prefix, Buffer.alloc(1000)]));
  const { reason } = await server.closed;
  t.equal(
    reason,
    `bad data from the server: received a frame of ${DEFAULT_MAX_FRAME_BYTES + 1} bytes, more than the ${DEFAULT_MAX_FRAME_BYTES} allowed`,
  );
  t.equal((await peer.next('close')).reason, reason, 'the facade is told why');
});

t.test('a holder never sends a frame the facade would refuse', async (t) => {
  const holder = new SimpleHolder();
  holder.inventory = async () => ({
    keys: [],
    certificates: [{ fingerprint: 'A'.repeat(40), userIds: ['x'], armored: 'y'.repeat(5000) }],
  });
  const { server, client } = await connected(t, { holder, client: { maxFrameBytes: 2048 } });
  const { reason } = await server.closed;
  t.match(reason, /larger than the server accepts in one frame; raise maxFrameBytes/);
  t.equal((await client.closed).reason, `the workstation closed the tunnel: ${reason}`);
});

t.test('text instead of frames (a login banner) gets a helpful reason', async (t) => {
  const [serverEnd, clientEnd] = await socketPair(t);
  const peer = new RawPeer(serverEnd);
  const client = tunnelClient(clientEnd, { software: SOFTWARE });
  peer.write(Buffer.from('Welcome to Ubuntu 22.04.4 LTS (GNU/Linux)\n\n * Documentation: ...\n'));
  const { reason } = await client.closed;
  t.match(
    reason,
    /^the workstation sent text instead of the keytether tunnel protocol \("Welcome to Ubuntu/,
  );
  t.match(reason, /login script/);
});

t.test('malformed frames close the link with a reason', async (t) => {
  const cases: [string, Buffer, RegExp][] = [
    ['zero-length frame', Buffer.alloc(4), /malformed frame of 0 bytes/],
    ['unknown format byte', Buffer.from([0, 0, 0, 6, 9, 0, 0, 0, 0, 0]), /unknown frame format 9/],
    ['header longer than frame', Buffer.from([0, 0, 0, 5, 1, 0, 0, 0, 9]), /header longer/],
    [
      'not JSON',
      (() => {
        const b = Buffer.from([0, 0, 0, 8, 1, 0, 0, 0, 3, 0x7b, 0x7b, 0x7b]);
        return b;
      })(),
      /not valid JSON/,
    ],
    ['unknown type', encodeFrame({ type: 'launch' } as never), /unknown message type "launch"/],
    [
      'result before hello',
      encodeFrame({ type: 'sign-result', id: 1 }, Buffer.alloc(3)),
      /before the handshake/,
    ],
  ];
  for (const [name, bytes, want] of cases) {
    const [a, b] = streamPair();
    const peer = new RawPeer(a);
    const client = tunnelClient(b, { software: SOFTWARE });
    peer.write(bytes);
    const { reason } = await client.closed;
    t.match(reason, want, name);
    t.match((await peer.next('close')).reason, want, `${name}: peer told`);
  }
  // After the handshake: a facade-bound message sent to the holder is a protocol violation.
  const [a, b] = streamPair();
  const peer = new RawPeer(a);
  const server = serveTunnel(new SimpleHolder(), b, { software: SOFTWARE });
  peer.hello('facade');
  await peer.next('inventory');
  peer.write(encodeFrame(await inventoryHeader(new SimpleHolder())));
  t.match((await server.closed).reason, /unexpected inventory message/);
});

t.test('a frame cut short by EOF fails pending requests promptly', async (t) => {
  const [serverEnd, clientEnd] = await socketPair(t);
  const peer = new RawPeer(serverEnd);
  const client = tunnelClient(clientEnd, { software: SOFTWARE });
  peer.hello('holder');
  peer.write(encodeFrame(await inventoryHeader(new SimpleHolder())));
  await client.ready;
  const holder = new SimpleHolder();
  const pending = client.sign(signRequest(holder, randomBytes(32)));
  const req = await peer.next('sign');
  const answer = encodeFrame({ type: 'sign-result', id: req.id }, Buffer.alloc(80, 1));
  peer.write(answer.subarray(0, 30));
  serverEnd.end();
  await pending.then(
    () => t.fail('a half frame is no answer'),
    (e: unknown) => assertNoAgent(t, e),
  );
  t.equal((await client.closed).reason, 'the connection to the workstation ended inside a frame');
});

t.test('random byte streams never throw or hang (property)', async (t) => {
  await fc.assert(
    fc.asyncProperty(
      fc.boolean(),
      fc.boolean(),
      fc.array(fc.uint8Array({ maxLength: 300 }), { maxLength: 8 }),
      async (asHolder, sayHello, chunks) => {
        const [a, b] = streamPair();
        const closed = asHolder
          ? serveTunnel(new SimpleHolder(), b, { software: SOFTWARE, maxFrameBytes: 512 }).closed
          : tunnelClient(b, { software: SOFTWARE, maxFrameBytes: 512 }).closed;
        a.on('data', () => {});
        if (sayHello)
          a.write(
            encodeFrame({
              type: 'hello',
              protocol: 1,
              minProtocol: 1,
              software: 'x',
              role: asHolder ? 'facade' : 'holder',
            }),
          );
        for (const c of chunks) a.write(Buffer.from(c));
        a.end();
        const { reason } = await closed;
        return typeof reason === 'string' && reason.length > 0;
      },
    ),
    { numRuns: 300 },
  );
  t.pass('every random stream ended in a clean close');
});

t.test('decodePayload and FrameReader never throw (property)', async (t) => {
  fc.assert(
    fc.property(fc.array(fc.uint8Array({ maxLength: 200 }), { maxLength: 10 }), (chunks) => {
      const r = new FrameReader(256);
      for (const c of chunks) {
        for (const ev of r.push(c)) {
          if (ev.type === 'frame') decodePayload(ev.payload);
        }
      }
      r.end();
      return r.bufferedBytes <= 260;
    }),
    { numRuns: 2000 },
  );
  fc.assert(
    fc.property(fc.jsonValue(), fc.uint8Array({ maxLength: 100 }), (v, body) => {
      const json = Buffer.from(JSON.stringify(v) ?? 'null');
      const head = Buffer.alloc(5);
      head[0] = 1;
      head.writeUInt32BE(json.length, 1);
      const d = decodePayload(Buffer.concat([head, json, body]));
      return typeof d.ok === 'boolean';
    }),
    { numRuns: 2000 },
  );
  t.pass();
});

t.test('a sign request carries its payload in content frames (protocol 2)', async (t) => {
  const { holder, client } = await connected(t);
  await client.ready;
  const data = randomBytes(700 * 1024 + 3); // three frames
  const digest = randomBytes(32);
  const content = { kind: 'file' as const, mode: 'binary' as const, time: 1_733_500_000, data };
  const sig = await client.sign({ ...signRequest(holder, digest), content });
  t.ok(verifies(holder, digest, sig), 'signed as usual');
  const got = holder.signRequests.at(-1)?.content;
  t.ok(got && Buffer.from(got.data).equals(data), 'the holder got the same bytes');
  t.match(got, { kind: 'file', mode: 'binary', time: 1_733_500_000 });
  await client.sign(signRequest(holder, randomBytes(32)));
  t.equal(holder.signRequests.at(-1)?.content, undefined, 'nothing left over for the next one');
});

t.test("a commit's git objects cross in their own content part", async (t) => {
  const { holder, client } = await connected(t);
  await client.ready;
  const data = Buffer.from('tree 4b825dc642cb6eb9a060e54bf8d69288fbee4904\n\nmsg\n');
  const objects = randomBytes(300 * 1024 + 5); // two frames
  const digest = randomBytes(32);
  const content = { kind: 'git-commit' as const, mode: 'binary' as const, time: 1, data, objects };
  t.ok(verifies(holder, digest, await client.sign({ ...signRequest(holder, digest), content })));
  const got = holder.signRequests.at(-1)?.content;
  t.ok(got && Buffer.from(got.data).equals(data), 'the payload as sent');
  t.ok(got?.objects && Buffer.from(got.objects).equals(objects), 'the objects as sent');

  // A protocol-3 holder's strict schema knows no objects: they are left out, the payload is not.
  const old = await connected(t, { server: { protocol: 3 } });
  await old.client.ready;
  const d2 = randomBytes(32);
  t.ok(
    verifies(old.holder, d2, await old.client.sign({ ...signRequest(old.holder, d2), content })),
  );
  const got3 = old.holder.signRequests.at(-1)?.content;
  t.ok(got3 && Buffer.from(got3.data).equals(data), 'payload still there');
  t.equal(got3?.objects, undefined, 'objects not sent');
});

t.test('a protocol-1 holder gets the request without the payload', async (t) => {
  const { holder, client } = await connected(t, { server: { protocol: 1 } });
  await client.ready;
  const digest = randomBytes(32);
  const content = { kind: 'file' as const, mode: 'binary' as const, time: 1, data: randomBytes(9) };
  t.ok(verifies(holder, digest, await client.sign({ ...signRequest(holder, digest), content })));
  t.equal(holder.signRequests.at(-1)?.content, undefined, 'signed blind, as protocol 1 does');
});

const PROCESS = {
  pid: 4242,
  name: 'gpg',
  command: 'gpg -bsau K',
  parents: [
    { pid: 4241, name: 'git', command: 'git commit -S' },
    { pid: 4000, name: 'bash' },
  ],
};

t.test('the requester process and its parents cross protocol 4', async (t) => {
  const { holder, client } = await connected(t);
  await client.ready;
  const req = signRequest(holder, randomBytes(32));
  await client.sign({ ...req, requester: { ...req.requester, ...PROCESS } });
  t.match(holder.signRequests.at(-1)?.requester, PROCESS);
});

t.test('a protocol-3 holder gets the requester without name and parents', async (t) => {
  const { holder, client } = await connected(t, { server: { protocol: 3 } });
  await client.ready;
  const req = signRequest(holder, randomBytes(32));
  await client.sign({ ...req, requester: { ...req.requester, ...PROCESS } });
  const got = holder.signRequests.at(-1)?.requester;
  t.equal(got?.pid, 4242, 'the fields protocol 3 knows are kept');
  t.equal(got?.name, undefined);
  t.equal(got?.parents, undefined, 'its strict schema would have refused them');
});

t.test('more than 8 parents are refused by the schema', async (t) => {
  const parents = Array.from({ length: 9 }, (_, i) => ({ pid: i + 2, name: 'sh' }));
  t.notOk(RequesterSchema.safeParse({ front: 'ssh', parents }).success);
  t.ok(RequesterSchema.safeParse({ front: 'ssh', parents: parents.slice(1) }).success);
  t.notOk(
    RequesterSchema.safeParse({ front: 'ssh', parents: [{ pid: 2, name: 'x'.repeat(65) }] })
      .success,
  );
});

t.test('content frames out of order are refused, and the link lives on', async (t) => {
  const [serverEnd, clientEnd] = streamPair();
  const holder = new SimpleHolder();
  const server = serveTunnel(holder, serverEnd, { software: SOFTWARE });
  t.teardown(() => server.close('test over'));
  const reader = new FrameReader(DEFAULT_MAX_FRAME_BYTES);
  const replies: Message[] = [];
  let sixAnswered!: () => void;
  const six = new Promise<void>((r) => (sixAnswered = r));
  clientEnd.on('data', (b: Buffer) => {
    for (const ev of reader.push(b)) {
      if (ev.type !== 'frame') continue;
      const d = decodePayload(ev.payload);
      if (!d.ok) continue;
      replies.push(d.message);
      if (d.message.type === 'sign-result' && d.message.id === 6) sixAnswered();
    }
  });
  const send = (h: Parameters<typeof encodeFrame>[0], body?: Buffer) =>
    clientEnd.write(encodeFrame(h, body));
  send({
    type: 'hello',
    protocol: TUNNEL_PROTOCOL,
    minProtocol: 1,
    software: SOFTWARE,
    role: 'facade',
  });
  send({ type: 'content', id: 5, offset: 10 }, Buffer.from('late piece'));
  send(
    {
      type: 'sign',
      id: 5,
      keygrip: holder.signKey.entry.keygrip,
      hashAlgo: 8,
      requester: REQUESTER,
      content: { kind: 'file', mode: 'binary', time: 1, bytes: 10 },
    },
    randomBytes(32),
  );
  send(
    {
      type: 'sign',
      id: 6,
      keygrip: holder.signKey.entry.keygrip,
      hashAlgo: 8,
      requester: REQUESTER,
    },
    randomBytes(32),
  );
  await six;
  const err = replies.find((m) => m.type === 'error' && m.id === 5);
  t.match(err, { type: 'error', message: /out of order/ }, 'request 5 was refused with a reason');
  t.equal(replies.filter((m) => 'id' in m && m.id === 5).length, 1, 'and answered once');
  t.equal(holder.signRequests.length, 1, 'only request 6 reached the holder');
});

t.test("the holder's gpg-agent version reaches gpg through a protocol-3 facade only", async (t) => {
  // What a Holder with a gpg-agent back end lists: the real agent's version with its keys.
  class AgentBacked extends SimpleHolder {
    override async inventory(): Promise<Inventory> {
      return { ...(await super.inventory()), agentVersion: '2.7.1' };
    }
  }
  const version = async (c: TunnelClient) => {
    const [agentEnd, gpgEnd] = streamPair();
    void serveAgent(agentEnd, { holder: c, requester: REQUESTER });
    const gpg = await AssuanClient.connect(gpgEnd, { timeoutMs: 10_000 });
    t.teardown(() => gpg.close());
    return (await gpg.transact('GETINFO version')).data.toString('latin1');
  };

  const now = await connected(t, { memory: true, holder: new AgentBacked() });
  await now.client.ready;
  t.equal((await now.client.inventory()).agentVersion, '2.7.1', 'carried in the inventory');
  t.equal(await version(now.client), '2.7.1', 'newer than keytether floor: reported as is');

  // A facade from before protocol 3 has a strict inventory schema: the field is left out.
  const old = await connected(t, {
    memory: true,
    holder: new AgentBacked(),
    client: { protocol: 2 },
  });
  await old.client.ready;
  const inv = await old.client.inventory();
  t.equal(inv.agentVersion, undefined, 'not sent to a protocol-2 facade');
  t.ok(inv.keys.length > 0, 'the keys are still served');
  t.equal(await version(old.client), AGENT_VERSION, "keytether's own floor");
});

t.test("an SSH key's comment reaches a protocol-8 facade only", async (t) => {
  const withComment = () => {
    const holder = new SimpleHolder();
    holder.extraEntries.push({
      ...holder.signKey.entry,
      keygrip: 'AB'.repeat(20),
      comment: 'me@ws',
    });
    return holder;
  };
  const now = await connected(t, { memory: true, holder: withComment() });
  await now.client.ready;
  const listed = (await now.client.inventory()).keys.find((k) => k.keygrip === 'AB'.repeat(20));
  t.equal(listed?.comment, 'me@ws', 'carried in the inventory');

  // A protocol-7 facade's strict schema knows no comment: it is left out, the key is not.
  const old = await connected(t, { memory: true, holder: withComment(), client: { protocol: 7 } });
  await old.client.ready;
  const oldKey = (await old.client.inventory()).keys.find((k) => k.keygrip === 'AB'.repeat(20));
  t.ok(oldKey, 'the key is still served');
  t.equal(oldKey?.comment, undefined, 'without its comment');
});
