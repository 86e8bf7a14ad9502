// The tunnel's wire: protocol/tunnel/framing.ts (length-prefixed frames), messages.ts (format byte,
// JSON header checked by zod, raw body) and handshake.ts (hello negotiation).
// Oracle: FrameReader never throws, never holds more than maxFrameBytes + 3 bytes, gives the same
// events however the stream is cut, and stops at the first bad length; decodePayload never throws
// and refuses with a printable reason; encodeFrame∘FrameReader∘decodePayload is the identity for
// well-formed messages; negotiate never throws and agrees with itself from both ends.

import fc from 'fast-check';
import {
  FrameReader,
  FRAME_PREFIX_BYTES,
  type FrameEvent,
} from '../../../protocol/tunnel/framing.js';
import { decodePayload, encodeFrame, type OutHeader } from '../../../protocol/tunnel/messages.js';
import { negotiate, type HelloInfo } from '../../../protocol/tunnel/handshake.js';
import { violation, type FuzzTarget } from '../harness.js';
import { chunk, chunkSizes, mutate, mutations, rawBytes, type Mutation } from '../gen.js';

export interface TunnelCase {
  messages: { header: OutHeader; body: Buffer }[];
  /** Mutations applied to the encoded stream (none: every message must come back intact). */
  m: Mutation[];
  raw: Buffer | null;
  chunks: number[];
  maxFrame: number;
}

const HEX = '0123456789ABCDEF';
const B64 = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/';
const upperHex = (n: number) =>
  fc.string({ unit: fc.constantFrom(...HEX), minLength: n, maxLength: n });
const id = fc.integer({ min: 1, max: 0xffffffff });
const requester = fc.record(
  {
    front: fc.constantFrom('local' as const, 'ssh' as const, 'relay' as const),
    host: fc.string({ maxLength: 20 }),
    pid: fc.integer({ min: 0, max: 0x7fffffff }),
    command: fc.string({ maxLength: 40 }),
    name: fc.string({ maxLength: 20 }),
    parents: fc.array(
      fc.record({ pid: fc.nat({ max: 0x7fffffff }), name: fc.string({ maxLength: 10 }) }),
      { maxLength: 3 },
    ),
  },
  { requiredKeys: ['front'] },
);
const body = (min: number, max: number) =>
  fc.uint8Array({ minLength: min, maxLength: max }).map((a) => Buffer.from(a));
const none = fc.constant(Buffer.alloc(0));

const message: fc.Arbitrary<{ header: OutHeader; body: Buffer }> = fc.oneof(
  fc.record({
    header: fc.record({
      type: fc.constant('hello' as const),
      protocol: fc.integer({ min: 0, max: 8 }),
      minProtocol: fc.integer({ min: 0, max: 8 }),
      software: fc.string({
        unit: fc.integer({ min: 0x20, max: 0x7e }).map((c) => String.fromCharCode(c)),
        maxLength: 30,
      }),
      role: fc.constantFrom('holder' as const, 'facade' as const),
      maxFrameBytes: fc.integer({ min: 64, max: 1 << 24 }),
    }),
    body: none,
  }),
  fc.record({ header: fc.record({ type: fc.constant('ping' as const) }), body: none }),
  fc.record({ header: fc.record({ type: fc.constant('pong' as const) }), body: none }),
  fc.record({ header: fc.record({ type: fc.constant('cancel' as const), id }), body: none }),
  fc.record({
    header: fc.record({
      type: fc.constant('close' as const),
      reason: fc.string({ maxLength: 100 }),
    }),
    body: none,
  }),
  fc.record({
    header: fc.record({
      type: fc.constant('error' as const),
      id,
      code: fc.integer({ min: 1, max: 0xffff }),
      source: fc.integer({ min: 0, max: 127 }),
      message: fc.string({ maxLength: 50 }),
    }),
    body: none,
  }),
  fc.record({
    header: fc.record(
      {
        type: fc.constant('sign' as const),
        id,
        keygrip: upperHex(40),
        hashAlgo: fc.integer({ min: 1, max: 255 }),
        description: fc.string({ maxLength: 60 }),
        requester,
      },
      { requiredKeys: ['type', 'id', 'keygrip', 'hashAlgo', 'requester'] },
    ),
    body: body(1, 64),
  }),
  fc.record({
    header: fc.record({
      type: fc.constant('decrypt' as const),
      id,
      keygrip: upperHex(40),
      requester,
    }),
    body: body(1, 300),
  }),
  fc.record({
    header: fc.record({
      type: fc.constant('content' as const),
      id,
      offset: fc.nat({ max: 1 << 20 }),
      part: fc.constantFrom('data' as const, 'objects' as const),
    }),
    body: body(1, 300),
  }),
  fc.record({
    header: fc.record(
      {
        type: fc.constant('ssh-sign' as const),
        id,
        keygrip: upperHex(40),
        hash: fc.constantFrom('sha1' as const, 'sha256' as const, 'sha512' as const),
        purpose: fc.constantFrom('login' as const, 'sshsig' as const, 'unknown' as const),
        subject: fc.string({ maxLength: 30 }),
        destination: fc
          .string({ unit: fc.constantFrom(...B64), minLength: 43, maxLength: 43 })
          .map((s) => `SHA256:${s}`),
        requester,
      },
      { requiredKeys: ['type', 'id', 'keygrip', 'purpose', 'requester'] },
    ),
    body: body(1, 400),
  }),
  fc.record({
    header: fc.record({ type: fc.constant('ssh-sign-result' as const), id }),
    body: body(1, 200),
  }),
  fc.record({
    header: fc.record({ type: fc.constant('sign-result' as const), id }),
    body: body(1, 200),
  }),
  fc.record({
    header: fc.record({
      type: fc.constant('decrypt-result' as const),
      id,
      padding: fc.constantFrom(0 as const, 1 as const),
    }),
    body: body(1, 200),
  }),
  fc.record({
    header: fc.record({
      type: fc.constant('inventory' as const),
      keys: fc.array(
        fc.record({
          keygrip: upperHex(40),
          fingerprint: upperHex(40),
          primaryFingerprint: upperHex(40),
          algorithm: fc.constantFrom('ed25519', 'cv25519', 'rsa3072'),
          usage: fc.subarray(['certify', 'sign', 'encrypt', 'auth'] as (
            'certify' | 'sign' | 'encrypt' | 'auth'
          )[]),
          publicKey: fc.uint8Array({ maxLength: 60 }).map((a) => Buffer.from(a).toString('base64')),
        }),
        { maxLength: 3 },
      ),
      certificates: fc.constant([] as never[]),
      agentVersion: fc.constantFrom('2.2.40', '2.4.5-beta1'),
    }),
    body: none,
  }),
);

const maxFrameArb = fc.oneof(fc.constant(1 << 20), fc.integer({ min: 5, max: 600 }));

function show(ev: FrameEvent): string {
  return ev.type === 'frame' ? `frame ${ev.payload.toString('hex')}` : `error ${ev.reason}`;
}

function readAll(stream: Buffer, sizes: number[], max: number): string[] {
  const r = new FrameReader(max);
  const out: string[] = [];
  for (const c of chunk(stream, sizes)) {
    for (const ev of r.push(c)) out.push(show(ev));
    if (r.bufferedBytes > max + FRAME_PREFIX_BYTES - 1)
      violation('frame reader holds more than its limit');
  }
  const tail = r.end();
  if (tail) out.push(show(tail));
  return out;
}

// Decoded byte fields (an inventory's publicKey) compare as the base64 they were sent as.
const json = (v: unknown) =>
  JSON.stringify(v, function (this: unknown, key, value: unknown) {
    const raw = (this as Record<string, unknown>)[key];
    return Buffer.isBuffer(raw) ? raw.toString('base64') : value;
  });
const sameish = (a: unknown, b: unknown) => json(a) === json(b);

export const tunnelTarget: FuzzTarget<TunnelCase> = {
  name: 'tunnel',
  oracle:
    'FrameReader and decodePayload never throw, the reader stays within its limit and is cut-independent; ' +
    'well-formed messages round-trip; negotiate never throws and is symmetric',
  generators: [
    {
      name: 'format',
      arb: fc.record({
        messages: fc.array(message, { maxLength: 6 }),
        m: mutations(3),
        raw: fc.constant(null),
        chunks: chunkSizes,
        maxFrame: fc.constant(1 << 20),
      }),
    },
    {
      name: 'bytes',
      arb: fc.record({
        messages: fc.constant([]),
        m: fc.constant([]),
        raw: fc.oneof(
          rawBytes(2048),
          rawBytes(600).map((b) => {
            // A plausible length prefix in front of garbage, so payload decoding gets exercised.
            const p = Buffer.alloc(4);
            p.writeUInt32BE(b.length);
            return Buffer.concat([p, b]);
          }),
          rawBytes(600).map((b) => {
            const p = Buffer.alloc(9);
            p.writeUInt32BE(b.length + 5);
            p[4] = 1;
            p.writeUInt32BE(b.length, 5);
            return Buffer.concat([p, b]);
          }),
        ),
        chunks: chunkSizes,
        maxFrame: maxFrameArb,
      }),
    },
  ],
  check({ messages, m, raw, chunks, maxFrame }) {
    const encoded = Buffer.concat(messages.map((x) => encodeFrame(x.header, x.body)));
    const stream = raw ?? mutate(encoded, m);
    const whole = readAll(stream, [1 << 30], maxFrame);
    const cut = readAll(stream, chunks, maxFrame);
    if (whole.join('\n') !== cut.join('\n'))
      violation('frame events depend on how the stream is cut');
    const errors = whole.filter((e) => e.startsWith('error'));
    if (
      errors.length > 1 ||
      (errors.length === 1 && !whole[whole.length - 1]!.startsWith('error'))
    ) {
      violation('frame reader went on after an error');
    }
    const decoded = whole
      .filter((e) => e.startsWith('frame '))
      .map((e) => decodePayload(Buffer.from(e.slice(6), 'hex')));
    for (const d of decoded) {
      if (!d.ok) {
        if (!/^[\x20-\x7e…]+$/.test(d.reason))
          violation(`unprintable refusal ${JSON.stringify(d.reason)}`);
        continue;
      }
      if (d.message.type === 'hello') {
        const peer: HelloInfo = d.message;
        for (const role of ['holder', 'facade'] as const) {
          const local: HelloInfo = {
            protocol: 4,
            minProtocol: 1,
            software: 'keytether/0.1.0',
            role,
          };
          const a = negotiate(local, peer);
          const b = negotiate(peer, local);
          if (!sameish(a, b)) violation('negotiate is not symmetric');
          if (a.ok && (a.protocol < 1 || a.protocol > 4))
            violation(`negotiated protocol ${a.protocol}`);
        }
      }
    }
    if (raw === null && m.length === 0) {
      if (decoded.length !== messages.length) violation('a well-formed frame was lost');
      decoded.forEach((d, i) => {
        const want = messages[i]!;
        if (!d.ok) violation(`well-formed ${want.header.type} refused: ${d.reason}`);
        const { body: gotBody, ...header } = d.message as { body: Buffer } & Record<
          string,
          unknown
        >;
        if (!gotBody.equals(want.body)) violation('body changed');
        if (!sameish(header, want.header)) violation(`${want.header.type} header changed`);
      });
    }
  },
};
