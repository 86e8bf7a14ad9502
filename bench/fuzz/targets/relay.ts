// What the relay parses from a client before it is authenticated (server/relay/*): the holder's
// `auth` answer to the challenge, the facade's `token` message and its checks, the mux frames, and
// X-Forwarded-For behind a trusted proxy; plus the mux codec (protocol/relay/mux.ts) both ends use.
// Oracle: nothing throws except TrustedProxies' constructor, which refuses a bad entry with a
// one-line Error; a genuine auth answer yields the holder's key and any change to it none; a
// facade's valid public part passes and one carrying the secret or altered does not; decodeMux
// inverts encodeMux and refuses with a reason otherwise; the client address is the socket's or one
// of the header's hops.

import fc from 'fast-check';
import { isIP } from 'node:net';
import { relayAuthMessage } from '../../../protocol/relay/identity.js';
import {
  decodeMux,
  encodeMux,
  MAX_CLOSE_REASON_BYTES,
  MAX_OPEN_PAYLOAD_BYTES,
  MuxKind,
  parseMuxOpen,
} from '../../../protocol/relay/mux.js';
import {
  checkTokenSignature,
  parseToken,
  TOKEN_PREFIX,
  tokenSigningBytes,
} from '../../../protocol/token.js';
import { TrustedProxies } from '../../../server/relay/client-address.js';
import { FacadeTokenSchema, holderAuthKey, parseControl } from '../../../server/relay/wire.js';
import { violation, type FuzzTarget } from '../harness.js';
import { mutate, mutations, rawBytes, rawText, type Mutation } from '../gen.js';
import { fuzzIdentity } from '../identity.js';

export interface RelayCase {
  nonce: string;
  /** The auth/token message as sent; `genuine` when it is the unmodified right answer. */
  auth: Buffer;
  /** The right answer to `nonce` (signed once, when the case is made). */
  genuineAuth: Buffer;
  authGenuine: boolean;
  facade: Buffer;
  facadeGenuine: boolean;
  mux: Buffer;
  proxies: string[];
  socketAddr: string;
  forwarded: string | string[] | undefined;
}

const ipv4 = fc.tuple(fc.nat(255), fc.nat(255), fc.nat(255), fc.nat(255)).map((a) => a.join('.'));
const addr = fc.oneof(
  ipv4,
  fc.ipV6(),
  ipv4.map((a) => `::ffff:${a}`),
  fc.constantFrom('10.0.0.1', '127.0.0.1', '::1', 'unknown', '', ' 10.0.0.2 ', '1.2.3'),
  fc.string({ maxLength: 20 }),
);
const proxyEntry = fc.oneof(
  addr,
  fc
    .tuple(
      addr,
      fc.oneof(fc.integer({ min: -1, max: 130 }).map(String), fc.string({ maxLength: 4 })),
    )
    .map(([a, b]) => `${a}/${b}`),
  fc.constantFrom('10.0.0.0/8', '::/0', '0.0.0.0/0', '127.0.0.1/32'),
);

const validPayload = {
  v: 1,
  relay: 'wss://relay.example',
  hid: fuzzIdentity.hid,
  hpk: fuzzIdentity.hpk.toString('base64url'),
  tid: 'ktt_0123456789abcdef',
  keys: ['A'.repeat(40)],
  ops: ['sign'],
  iat: 1,
  exp: 2 ** 40,
};
const payloadPart = Buffer.from(JSON.stringify(validPayload)).toString('base64url');
const PUBLIC_PART = `${TOKEN_PREFIX}.${payloadPart}.${fuzzIdentity.sign(tokenSigningBytes(payloadPart)).toString('base64url')}`;

function authFor(nonce: string): Buffer {
  const sig = fuzzIdentity.sign(relayAuthMessage(nonce)).toString('base64url');
  return Buffer.from(
    JSON.stringify({ type: 'auth', hpk: fuzzIdentity.hpk.toString('base64url'), sig }),
  );
}

const nonceArb = fc.base64String({ minLength: 4, maxLength: 44 });

const formatArb = fc
  .record({
    nonce: nonceArb,
    authM: mutations(2),
    withSecret: fc.boolean(),
    facadeM: mutations(2),
    kind: fc.constantFrom(MuxKind.Open, MuxKind.Data, MuxKind.Close),
    streamId: fc.nat({ max: 0xffffffff }),
    muxPayload: fc.oneof(
      fc.uint8Array({ maxLength: 300 }).map((a) => Buffer.from(a)),
      fc
        .record({ token: fc.string({ maxLength: 50 }), peer: fc.string({ maxLength: 20 }) })
        .map((o) => Buffer.from(JSON.stringify(o))),
    ),
    muxM: mutations(1),
    proxies: fc.array(proxyEntry, { maxLength: 3 }),
    socketAddr: addr,
    forwarded: fc.oneof(
      fc.constant(undefined),
      fc.array(addr, { maxLength: 5 }).map((a) => a.join(', ')),
      fc.array(addr, { maxLength: 3 }),
    ),
  })
  .map((r): RelayCase => {
    const genuineAuth = authFor(r.nonce);
    const auth = mutate(genuineAuth, r.authM);
    const token = r.withSecret
      ? `${PUBLIC_PART}.${Buffer.alloc(32, 7).toString('base64url')}`
      : PUBLIC_PART;
    const facade = mutate(Buffer.from(JSON.stringify({ type: 'token', token })), r.facadeM);
    let mux: Buffer;
    try {
      mux = mutate(encodeMux(r.kind, r.streamId, r.muxPayload), r.muxM);
    } catch {
      mux = Buffer.alloc(0);
    }
    return {
      nonce: r.nonce,
      auth,
      genuineAuth,
      authGenuine: r.authM.length === 0,
      facade,
      facadeGenuine: r.facadeM.length === 0 && !r.withSecret,
      mux,
      proxies: r.proxies,
      socketAddr: r.socketAddr,
      forwarded: r.forwarded,
    };
  });

const bytesArb = fc
  .record({
    nonce: nonceArb,
    auth: rawBytes(600),
    facade: rawBytes(600),
    mux: rawBytes(600),
    proxies: fc.array(rawText(30), { maxLength: 3 }),
    socketAddr: rawText(40),
    forwarded: fc.oneof(
      fc.constant(undefined),
      rawText(300),
      fc.array(rawText(40), { maxLength: 3 }),
    ),
  })
  .map((r): RelayCase => ({
    ...r,
    genuineAuth: Buffer.alloc(0),
    authGenuine: false,
    facadeGenuine: false,
  }));

/** What the relay does with a facade's first message before it looks at holders and limits. */
function facadeVerdict(data: Buffer): 'ok' | string {
  const msg = parseControl(data, FacadeTokenSchema);
  if (!msg) return 'expected a token message';
  const parsed = parseToken(msg.token);
  if (!parsed.ok) return parsed.error;
  if (parsed.token.secret) return 'send only the public part of the token, never its secret';
  const sig = checkTokenSignature(parsed.token);
  return sig.ok ? 'ok' : sig.reason;
}

export const relayTarget: FuzzTarget<RelayCase> = {
  name: 'relay',
  oracle:
    'holder auth, facade token, mux and X-Forwarded-For parsing never throw; genuine answers pass and ' +
    "altered ones fail; decodeMux inverts encodeMux; the client address is the socket's or a header hop",
  generators: [
    { name: 'format', arb: formatArb },
    { name: 'bytes', arb: bytesArb },
  ],
  check(c) {
    const key = holderAuthKey(c.auth, c.nonce);
    if (c.authGenuine && !key?.equals(fuzzIdentity.hpk))
      violation('a genuine auth answer was refused');
    // Mutations may leave the JSON's meaning intact (whitespace, key order); the key must be ours.
    if (key && !key.equals(fuzzIdentity.hpk))
      violation('an auth answer yielded a key it was not signed by');
    // Another challenge must never accept this answer.
    if (key && holderAuthKey(c.auth, c.nonce + 'x'))
      violation('an auth answer passed for another nonce');

    const verdict = facadeVerdict(c.facade);
    if (c.facadeGenuine && verdict !== 'ok')
      violation(`a valid token message was refused: ${verdict}`);
    if (verdict !== 'ok' && /[\r\n]/.test(verdict)) violation('facade refusal is not one line');
    if (verdict === 'ok') {
      const msg = parseControl(c.facade, FacadeTokenSchema);
      if (msg?.token !== PUBLIC_PART) violation('an altered token passed the relay');
    }

    const f = decodeMux(c.mux, 1024);
    if (!('error' in f)) {
      if (f.payload.length !== c.mux.length - 5) violation('mux payload length');
      if (f.kind === MuxKind.Close && f.payload.length > MAX_CLOSE_REASON_BYTES)
        violation('long close reason');
      if (f.kind === MuxKind.Open && f.payload.length > MAX_OPEN_PAYLOAD_BYTES)
        violation('long open payload');
      if (!encodeMux(f.kind, f.streamId, f.payload).equals(c.mux))
        violation('encodeMux does not invert decodeMux');
      if (f.kind === MuxKind.Open) {
        const o = parseMuxOpen(f.payload);
        if (!('error' in o) && (typeof o.token !== 'string' || typeof o.peer !== 'string'))
          violation('open fields');
      }
    } else if (typeof f.error !== 'string') violation('mux refusal without a reason');

    let proxies: TrustedProxies;
    try {
      proxies = new TrustedProxies(c.proxies);
    } catch (e) {
      if (
        !(e instanceof Error) ||
        (/[\r\n]/.test(e.message) && !c.proxies.some((p) => /[\r\n]/.test(p)))
      )
        throw e;
      proxies = new TrustedProxies([]);
    }
    const got = proxies.clientAddress(c.socketAddr, c.forwarded);
    const hops = (Array.isArray(c.forwarded) ? c.forwarded.join(',') : (c.forwarded ?? ''))
      .split(',')
      .map((h) => h.trim());
    const unmapped = (a: string) => (/^::ffff:\d{1,3}(\.\d{1,3}){3}$/i.test(a) ? a.slice(7) : a);
    if (got !== unmapped(c.socketAddr) && !(isIP(got) && hops.map(unmapped).includes(got))) {
      violation(`client address ${JSON.stringify(got)} is neither the socket's nor a hop`);
    }
  },
};
