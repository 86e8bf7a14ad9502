// ssh-agent signatures across the tunnel (protocol 6): the data crosses raw and unhashed, the
// holder's signature comes back and verifies, the transport rewrites what the facade claims
// about the requester, an older holder is refused by the facade itself (never a dropped link or
// a hang), and malformed ssh-sign frames get an error reply while the link lives on.

import t, { type Test } from 'tap';
import { randomBytes, verify } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Duplex } from 'node:stream';
import { ErrorCode, GpgError } from '../protocol/gpg-error.js';
import { claimedRequester, type Requester, type SshSignRequest } from '../protocol/keyholder.js';
import { findList, parseSexp } from '../protocol/sexp.js';
import {
  DEFAULT_MAX_FRAME_BYTES,
  FrameReader,
  TUNNEL_PROTOCOL,
  decodePayload,
  encodeFrame,
  serveTunnel,
  tunnelClient,
  type Message,
  type TunnelServerOptions,
} from '../protocol/tunnel/index.js';
import { LIMITS } from '../protocol/tunnel/messages.js';
import { SimpleHolder, SshSimpleHolder } from './support/simple-holder.js';
import { socketPair } from './support/socket-pair.js';

const dir = mkdtempSync(join(tmpdir(), 'kt-tun-ssh-'));
t.teardown(() => rmSync(dir, { recursive: true, force: true }));
let n = 0;

const CLAIM: Requester = {
  front: 'relay',
  host: 'github.com',
  tokenId: 'tok_forged',
  user: 'build',
  pid: 4242,
  name: 'ssh',
  parents: [{ pid: 4000, name: 'git' }],
};

async function pair(
  t: Test,
  holder: SimpleHolder,
  server: Partial<TunnelServerOptions> = {},
): Promise<ReturnType<typeof tunnelClient>> {
  const [serverEnd, clientEnd] = await socketPair(t, dir, `s${n++}`);
  const handle = serveTunnel(holder, serverEnd, { software: 'keytether/test', ...server });
  const client = tunnelClient(clientEnd, { software: 'keytether/test' });
  t.teardown(() => {
    client.close('test over');
    handle.close('test over');
  });
  await client.ready;
  return client;
}

function request(holder: SimpleHolder, data: Buffer): SshSignRequest {
  return {
    keygrip: holder.signKey.entry.keygrip,
    data,
    purpose: 'sshsig',
    subject: 'git',
    requester: CLAIM,
  };
}

function verifies(holder: SimpleHolder, data: Buffer, sigVal: Uint8Array): boolean {
  const parsed = parseSexp(sigVal);
  if (!parsed.ok) return false;
  const r = findList(parsed.value, 'r')?.[1];
  const s = findList(parsed.value, 's')?.[1];
  if (!Buffer.isBuffer(r) || !Buffer.isBuffer(s)) return false;
  return verify(null, data, holder.signKey.publicKey, Buffer.concat([r, s]));
}

t.test(
  'an ssh signature crosses the tunnel and verifies; the transport sets front and host',
  async (t) => {
    const holder = new SshSimpleHolder();
    const client = await pair(t, holder, {
      requester: (claimed) => ({ ...claimedRequester(claimed), front: 'ssh', host: 'ci-7' }),
    });
    const data = randomBytes(LIMITS.sshDataBytes);
    const destination = 'SHA256:' + randomBytes(32).toString('base64').replace(/=+$/, '');
    const sig = await client.sshSign({
      ...request(holder, data),
      purpose: 'login',
      subject: 'git',
      hash: 'sha512',
      destination,
    });
    t.ok(verifies(holder, data, sig), 'the largest data an ssh-agent message holds, signed');
    const got = holder.sshRequests.at(-1)!;
    t.same(got.data, data, 'unhashed, byte for byte');
    t.match(got, { purpose: 'login', subject: 'git', hash: 'sha512', destination });
    t.same(
      got.requester,
      {
        front: 'ssh',
        host: 'ci-7',
        user: 'build',
        pid: 4242,
        name: 'ssh',
        parents: [{ pid: 4000, name: 'git' }],
      },
      'the claimed front, host and token are dropped',
    );
  },
);

t.test('holder errors reach the facade with their gpg code', async (t) => {
  const holder = new SshSimpleHolder();
  const client = await pair(t, holder);
  holder.nextError = new GpgError(ErrorCode.NOT_CONFIRMED, 'policy: ssh-sign to github.com denied');
  await t.rejects(client.sshSign(request(holder, randomBytes(40))), {
    code: ErrorCode.NOT_CONFIRMED,
    message: /denied/,
  });
  t.ok(
    verifies(
      holder,
      Buffer.from('next'),
      await client.sshSign(request(holder, Buffer.from('next'))),
    ),
  );
});

t.test('a holder without ssh signatures refuses them', async (t) => {
  const holder = new SimpleHolder();
  const client = await pair(t, holder);
  await t.rejects(client.sshSign(request(holder, randomBytes(40))), {
    code: ErrorCode.NOT_SUPPORTED,
    message: /makes no ssh signatures/,
  });
});

t.test('an older holder (protocol 5): refused by the facade, the link stays up', async (t) => {
  const holder = new SshSimpleHolder();
  const client = await pair(t, holder, { protocol: 5 });
  t.equal(client.peer?.protocol, 5);
  const started = Date.now();
  await t.rejects(client.sshSign(request(holder, randomBytes(40))), {
    code: ErrorCode.NOT_SUPPORTED,
    message: /no ssh-agent support; upgrade it/,
  });
  t.ok(Date.now() - started < 1000, 'at once, not after a timeout');
  t.equal(holder.sshRequests.length, 0);
  const digest = randomBytes(32);
  const sig = await client.sign({
    keygrip: holder.signKey.entry.keygrip,
    hashAlgo: 8,
    digest,
    requester: { front: 'ssh' },
  });
  t.ok(verifies(holder, digest, sig), 'gpg signatures still work on the same link');
});

t.test('data over 256 KiB is refused before it is sent', async (t) => {
  const holder = new SshSimpleHolder();
  const client = await pair(t, holder);
  await t.rejects(client.sshSign(request(holder, Buffer.alloc(LIMITS.sshDataBytes + 1))), {
    code: ErrorCode.INV_LENGTH,
  });
  t.equal(holder.sshRequests.length, 0);
});

/** A hand-driven facade on the raw stream, for frames a real one never sends. */
class RawFacade {
  readonly messages: Message[] = [];
  private readonly reader = new FrameReader(DEFAULT_MAX_FRAME_BYTES);
  private wake: (() => void) | undefined;
  ended = false;

  constructor(private readonly stream: Duplex) {
    stream.on('data', (chunk: Buffer) => {
      for (const ev of this.reader.push(chunk)) {
        if (ev.type !== 'frame') continue;
        const d = decodePayload(ev.payload);
        if (d.ok) this.messages.push(d.message);
      }
      this.wake?.();
    });
    stream.on('close', () => {
      this.ended = true;
      this.wake?.();
    });
    stream.write(
      encodeFrame({
        type: 'hello',
        protocol: TUNNEL_PROTOCOL,
        minProtocol: 1,
        software: 'keytether/test',
        role: 'facade',
      }),
    );
  }

  send(header: Parameters<typeof encodeFrame>[0], body?: Uint8Array): void {
    this.stream.write(encodeFrame(header, body));
  }

  async answer(id: number): Promise<Message> {
    for (;;) {
      const m = this.messages.find((x) => 'id' in x && x.id === id);
      if (m) return m;
      if (this.ended) throw new Error(`link closed before request ${id} was answered`);
      await new Promise<void>((r) => (this.wake = r));
    }
  }
}

t.test('malformed ssh-sign frames get an error reply and the link stays up', async (t) => {
  const holder = new SshSimpleHolder();
  const [serverEnd, clientEnd] = await socketPair(t, dir, `s${n++}`);
  const handle = serveTunnel(holder, serverEnd, { software: 'keytether/test' });
  t.teardown(() => handle.close('test over'));
  const peer = new RawFacade(clientEnd);
  const good = {
    type: 'ssh-sign' as const,
    keygrip: holder.signKey.entry.keygrip,
    purpose: 'login' as const,
    requester: { front: 'ssh' as const },
  };
  const cases: [string, Record<string, unknown>, Buffer, RegExp][] = [
    [
      'oversize body',
      {},
      Buffer.alloc(LIMITS.sshDataBytes + 1),
      /body is 262145 bytes, expected 1\.\.262144/,
    ],
    ['empty body', {}, Buffer.alloc(0), /body is 0 bytes/],
    ['lowercase keygrip', { keygrip: 'a'.repeat(40) }, randomBytes(8), /keygrip/],
    ['unknown purpose', { purpose: 'launch' }, randomBytes(8), /purpose/],
    ['unknown hash', { hash: 'md5' }, randomBytes(8), /hash/],
    ['bad destination', { destination: 'MD5:aa:bb' }, randomBytes(8), /destination/],
    [
      'long subject',
      { subject: 'x'.repeat(LIMITS.sshSubjectChars + 1) },
      randomBytes(8),
      /subject/,
    ],
    ['unknown field', { keyMaterial: 'x' }, randomBytes(8), /keyMaterial|unrecognized/i],
  ];
  let id = 1;
  for (const [name, change, body, reason] of cases) {
    const mine = id++;
    peer.send({ ...good, id: mine, ...change } as Parameters<typeof encodeFrame>[0], body);
    const reply = await peer.answer(mine);
    t.match(reply, { type: 'error', code: ErrorCode.INV_DATA, message: reason }, name);
  }
  t.equal(holder.sshRequests.length, 0, 'none of them reached the holder');
  const data = randomBytes(64);
  peer.send({ ...good, id }, data);
  const reply = await peer.answer(id);
  t.equal(reply.type, 'ssh-sign-result', 'a valid request on the same link is served');
  t.ok(verifies(holder, data, reply.body));
});
