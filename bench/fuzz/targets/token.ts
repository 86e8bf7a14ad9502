// Scoped tokens (protocol/token.ts) and the workstation's check of a relayed stream's token
// (workstation/relay/stream.ts openStreamToken: mux-open JSON → parseToken → own hid/hpk → signature).
// Oracle: parseToken, checkTokenSignature and openStreamToken never throw; refusals are one line
// and never repeat the secret part; a token this holder signed over a schema-valid payload is
// accepted with its claims intact; any change to its public part is never accepted.

import fc from 'fast-check';
import {
  checkTokenSignature,
  encodeToken,
  parseToken,
  TOKEN_PREFIX,
  tokenSigningBytes,
  type TokenPayload,
} from '../../../protocol/token.js';
import { encodeMuxOpen, MUX_HEADER_BYTES } from '../../../protocol/relay/mux.js';
import { openStreamToken } from '../../../workstation/relay/stream.js';
import { violation, type FuzzTarget } from '../harness.js';
import { mutateText, mutations, rawText, type Mutation } from '../gen.js';
import { fuzzIdentity } from '../identity.js';

export type TokenCase =
  | {
      kind: 'signed';
      payload: Record<string, unknown>;
      /** Changes to the JSON before it is signed (the payload stays signed, maybe not valid). */
      edit: { key: string; value: unknown } | null;
      secret: Buffer | null;
      textMutations: Mutation[];
      peer: string;
    }
  | { kind: 'raw'; text: string; peer: string };

const lowerHex = (n: number) =>
  fc.string({ unit: fc.constantFrom(...'0123456789abcdef'), minLength: n, maxLength: n });
const upperHex = (n: number) =>
  fc.string({ unit: fc.constantFrom(...'0123456789ABCDEF'), minLength: n, maxLength: n });

const payloadArb = fc
  .record(
    {
      relay: fc.constantFrom(
        'https://relay.example.com',
        'wss://r.example:8443/x',
        'http://127.0.0.1:1',
      ),
      tid: lowerHex(16).map((h) => `ktt_${h}`),
      keys: fc.uniqueArray(upperHex(40), { minLength: 1, maxLength: 4 }),
      ops: fc.constantFrom(['sign'], ['decrypt'], ['sign', 'decrypt']),
      iat: fc.integer({ min: 0, max: 2 ** 39 }),
      ttl: fc.integer({ min: 1, max: 2 ** 30 }),
      max: fc.integer({ min: 1, max: 2 ** 40 }),
      label: fc
        .string({ unit: 'grapheme-ascii', maxLength: 40 })
        .filter((s) => /^[\x20-\x7e]*$/.test(s)),
    },
    { requiredKeys: ['relay', 'tid', 'keys', 'ops', 'iat', 'ttl'] },
  )
  // In the schema's order: parsing returns the claims in that order, and encodeToken signs them so.
  .map(({ ttl, relay, tid, keys, ops, iat, max, label }) => ({
    v: 1,
    relay,
    hid: fuzzIdentity.hid,
    hpk: fuzzIdentity.hpk.toString('base64url'),
    tid,
    keys,
    ops,
    iat,
    exp: iat + ttl,
    ...(max !== undefined ? { max } : {}),
    ...(label !== undefined ? { label } : {}),
  }));

const editArb = fc.oneof(
  { weight: 3, arbitrary: fc.constant(null) },
  {
    weight: 1,
    arbitrary: fc.record({
      key: fc.constantFrom(
        'v',
        'relay',
        'hid',
        'hpk',
        'tid',
        'keys',
        'ops',
        'iat',
        'exp',
        'max',
        'label',
        'extra',
      ),
      value: fc.oneof(
        fc.jsonValue({ maxDepth: 2 }),
        fc.string({ maxLength: 300 }),
        fc.constantFrom('\u202e', 'a\nb', 2 ** 41, -1, 0, [], ['sign', 'sign']),
      ),
    }),
  },
);

// A hand-built token string, for payloads encodeToken would refuse: signed all the same.
function signedText(payload: Record<string, unknown>, secret: Buffer | null) {
  const part = Buffer.from(JSON.stringify(payload), 'utf8').toString('base64url');
  const signed = tokenSigningBytes(part);
  const sig = fuzzIdentity.sign(signed);
  const text = `${TOKEN_PREFIX}.${part}.${sig.toString('base64url')}${secret ? '.' + secret.toString('base64url') : ''}`;
  return { text, signed, sig };
}

const publicPartOf = (text: string) => text.split('.').slice(0, 3).join('.');

export const tokenTarget: FuzzTarget<TokenCase> = {
  name: 'token',
  oracle:
    'parseToken/checkTokenSignature/openStreamToken never throw; refusals are one line without the ' +
    "secret; this holder's valid tokens are accepted intact; a changed public part never verifies",
  generators: [
    {
      name: 'format',
      arb: fc.record({
        kind: fc.constant('signed' as const),
        payload: payloadArb,
        edit: editArb,
        secret: fc.oneof(
          fc.constant(null),
          fc.uint8Array({ minLength: 32, maxLength: 32 }).map((a) => Buffer.from(a)),
          fc.uint8Array({ maxLength: 40 }).map((a) => Buffer.from(a)),
        ),
        textMutations: mutations(2),
        peer: fc.constantFrom('203.0.113.7', '', '::1'),
      }),
    },
    {
      name: 'bytes',
      arb: fc.record({
        kind: fc.constant('raw' as const),
        text: fc.oneof(
          rawText(800),
          rawText(400).map((t) => `kt1.${t}`),
          fc
            .array(
              fc
                .base64String({ maxLength: 120 })
                .map((s) => s.replace(/\+/g, '-').replace(/\//g, '_').replace(/=/g, '')),
              { maxLength: 5 },
            )
            .map((p) => ['kt1', ...p].join('.')),
        ),
        peer: fc.string({ maxLength: 300 }),
      }),
    },
  ],
  check(c) {
    let text: string;
    let original: string | undefined;
    let valid = false;
    if (c.kind === 'raw') text = c.text;
    else {
      const payload = c.edit ? { ...c.payload, [c.edit.key]: c.edit.value } : c.payload;
      const s = signedText(payload, c.secret);
      original = s.text;
      if (!c.edit && (c.secret === null || c.secret.length === 32)) {
        valid = true;
        // The real encoder must produce exactly what this fuzzer signs by hand (Ed25519 is
        // deterministic, so the signature computed above stands in for its signer's).
        if (c.secret) {
          const enc = encodeToken(
            c.payload as TokenPayload,
            (bytes) =>
              bytes.equals(s.signed) ? s.sig : violation('encodeToken signs other bytes'),
            c.secret,
          );
          if (enc !== original) violation('encodeToken differs from the signed layout');
        }
      }
      text = mutateText(original, c.textMutations);
    }
    const secretPart = text.split('.')[3];
    const r = parseToken(text);
    if (!r.ok) {
      if (/[\r\n]/.test(r.error)) violation('refusal is not one line');
      if (secretPart && secretPart.length >= 8 && r.error.includes(secretPart))
        violation('refusal repeats the secret');
    } else {
      const sig = checkTokenSignature(r.token);
      if (original !== undefined && publicPartOf(text) !== publicPartOf(original) && sig.ok) {
        violation('a changed public part verified');
      }
    }
    if (valid && text === original) {
      if (!r.ok) violation(`this holder's valid token refused: ${r.error}`);
      if (!checkTokenSignature(r.token).ok)
        violation("this holder's valid token failed its signature");
      if (
        JSON.stringify(r.token.payload) !== JSON.stringify(c.kind === 'signed' ? c.payload : null)
      ) {
        violation('claims changed in parsing');
      }
    }
    // The workstation's path for a relayed stream, from the relay's mux-open frame.
    const peer = c.peer;
    let open: Buffer | null = null;
    try {
      open = encodeMuxOpen(1, { token: publicPartOf(text), peer }).subarray(MUX_HEADER_BYTES);
    } catch (e) {
      if (!(e instanceof RangeError)) throw e;
    }
    let openRefused = false;
    for (const payload of [open, Buffer.from(text, 'utf8')]) {
      if (!payload) continue;
      const o = openStreamToken(payload, fuzzIdentity);
      if (payload === open) openRefused = 'refusal' in o;
      if ('refusal' in o) {
        if (/[\r\n]/.test(o.refusal)) violation('stream refusal is not one line');
        if (secretPart && secretPart.length >= 8 && o.refusal.includes(secretPart))
          violation('stream refusal repeats the secret');
      } else if (original !== undefined && publicPartOf(text) !== publicPartOf(original)) {
        violation('the holder accepted a changed token');
      } else if (valid && text === original && payload !== open) {
        violation('a bare token was taken for a mux-open frame');
      }
    }
    if (valid && text === original && open && openRefused) {
      violation('the holder refused its own valid token');
    }
  },
};
