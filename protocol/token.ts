// Scoped tokens: `kt1.<payload>.<sig>.<secret>`, each part base64url without padding. The holder
// signs the claims (which keys, which operations, until when, how often); the relay checks the
// signed public part, and the holder checks everything again against its own registry. The
// secret part never goes to the relay, so it is never echoed in any error.

import { isDisplaySafeLine } from './display-text.js';
import { createHash } from 'node:crypto';
import { z } from 'zod';
import {
  ED25519_PUBLIC_KEY_BYTES,
  ED25519_SIGNATURE_BYTES,
  HOLDER_ID_RE,
  holderIdFromPublicKey,
  verifyEd25519,
} from './relay/identity.js';

export const TOKEN_PREFIX = 'kt1';
export const TOKEN_SIGNING_CONTEXT = 'keytether-token-v1\n';
export const MAX_TOKEN_CHARS = 4096;
export const MAX_PART_CHARS = 3072;
export const MAX_PAYLOAD_BYTES = 2048;
export const MAX_TOKEN_KEYS = 64;
export const MAX_LABEL_CHARS = 200;
export const TOKEN_SECRET_BYTES = 32;
export const TOKEN_ID_RE = /^ktt_[0-9a-f]{16}$/;

const B64URL_RE = /^[A-Za-z0-9_-]+$/;
/** An OpenPGP v4 (40 hex digits) or v5 (64: gpg 2.4's Ed448/X448 keys) fingerprint, or an
 * SSH-only key's `SHA256:` fingerprint (ssh-sign only). */
const TOKEN_KEY_RE = /^[0-9A-F]{40}$|^[0-9A-F]{64}$|^SHA256:[A-Za-z0-9+/]{43}$/;

/** `ssh-sign`: ssh-agent signatures (logins, `ssh-keygen -Y sign`) with an authentication key. */
export type TokenOp = 'sign' | 'decrypt' | 'ssh-sign';

const unique = (a: readonly string[]) => new Set(a).size === a.length;

export const TokenPayloadSchema = z
  .strictObject({
    v: z.literal(1),
    relay: z
      .string()
      .max(1024)
      .regex(/^(https?|wss?):\/\/[^\s]+$/, 'must be an http(s):// or ws(s):// URL'),
    hid: z.string().regex(HOLDER_ID_RE, 'must be kth_ and 32 lowercase hex digits'),
    hpk: z.string().regex(/^[A-Za-z0-9_-]{43}$/, 'must be 32 bytes in base64url'),
    tid: z.string().regex(TOKEN_ID_RE, 'must be ktt_ and 16 lowercase hex digits'),
    keys: z
      .array(
        z
          .string()
          .regex(
            TOKEN_KEY_RE,
            'must be 40 or 64 uppercase hex digits or an SSH SHA256: fingerprint',
          ),
      )
      .min(1)
      .max(MAX_TOKEN_KEYS)
      .refine(unique, 'must not repeat a fingerprint'),
    ops: z
      .array(z.enum(['sign', 'decrypt', 'ssh-sign']))
      .min(1)
      .max(3)
      .refine(unique, 'must not repeat an operation'),
    iat: z
      .number()
      .int()
      .min(0)
      .max(2 ** 40),
    exp: z
      .number()
      .int()
      .min(1)
      .max(2 ** 40),
    max: z
      .number()
      .int()
      .min(1)
      .max(2 ** 40)
      .optional(),
    label: z
      .string()
      .max(MAX_LABEL_CHARS)
      .refine(isDisplaySafeLine, 'must not contain control or format characters')
      .optional(),
  })
  .refine((p) => p.exp > p.iat, { message: 'must be later than iat', path: ['exp'] });

export type TokenPayload = z.infer<typeof TokenPayloadSchema>;

export interface ParsedToken {
  /** `kt1.<payload>.<sig>`: what a facade shows the relay. */
  publicPart: string;
  payload: TokenPayload;
  /** The payload part exactly as it appeared (the signed text). */
  payloadPart: string;
  sig: Buffer;
  /** The holder public key from the payload, decoded (32 bytes). */
  hpk: Buffer;
  /** Present only when the full token was parsed. */
  secret?: Buffer;
}

export type ParseTokenResult = { ok: true; token: ParsedToken } | { ok: false; error: string };

/** Strict base64url: no padding, and the text must be the one canonical encoding of its bytes. */
function decodePart(part: string): Buffer | undefined {
  if (!B64URL_RE.test(part)) return undefined;
  const bytes = Buffer.from(part, 'base64url');
  // Unused trailing bits or an impossible length would let many strings stand for one value.
  return bytes.toString('base64url') === part ? bytes : undefined;
}

const fail = (error: string): ParseTokenResult => ({ ok: false, error });

function describeIssue(issue: z.core.$ZodIssue): string {
  if (issue.code === 'unrecognized_keys') {
    return `the token payload has unknown fields (${issue.keys.slice(0, 4).join(', ').slice(0, 80)})`;
  }
  const where = issue.path.length ? `field '${issue.path.map(String).join('.')}'` : 'payload';
  return `the token's ${where} is invalid: ${issue.message.slice(0, 120)}`;
}

/**
 * Parses a full token or its public part. Never throws; errors are one sentence that names the
 * part at fault but never repeats the secret.
 */
export function parseToken(text: unknown): ParseTokenResult {
  if (typeof text !== 'string') return fail('the token is not text');
  if (text.length === 0) return fail('the token is empty');
  if (text.length > MAX_TOKEN_CHARS) {
    return fail(`the token is longer than ${MAX_TOKEN_CHARS} characters`);
  }
  const parts = text.split('.');
  if (parts[0] !== TOKEN_PREFIX) {
    return fail(`the token does not start with '${TOKEN_PREFIX}.'; it is not a keytether token`);
  }
  if (parts.length !== 3 && parts.length !== 4) {
    return fail(
      `the token has ${parts.length} dot-separated parts instead of 4 (kt1.payload.sig.secret) or 3 (its public part)`,
    );
  }
  const [, payloadPart, sigPart, secretPart] = parts as [string, string, string, string?];
  for (const [name, p] of [
    ['payload', payloadPart],
    ['signature', sigPart],
    ['secret', secretPart],
  ] as const) {
    if (p === undefined) continue;
    if (p.length === 0) return fail(`the token's ${name} part is empty`);
    if (p.length > MAX_PART_CHARS) {
      return fail(`the token's ${name} part is longer than ${MAX_PART_CHARS} characters`);
    }
  }

  const payloadBytes = decodePart(payloadPart);
  if (!payloadBytes) return fail("the token's payload part is not canonical base64url");
  if (payloadBytes.length > MAX_PAYLOAD_BYTES) {
    return fail(`the token's payload is larger than ${MAX_PAYLOAD_BYTES} bytes`);
  }
  const sig = decodePart(sigPart);
  if (!sig) return fail("the token's signature part is not canonical base64url");
  if (sig.length !== ED25519_SIGNATURE_BYTES) {
    return fail(`the token's signature is not ${ED25519_SIGNATURE_BYTES} bytes long`);
  }
  let secret: Buffer | undefined;
  if (secretPart !== undefined) {
    secret = decodePart(secretPart);
    if (!secret || secret.length !== TOKEN_SECRET_BYTES) {
      secret?.fill(0);
      return fail(`the token's secret part is not ${TOKEN_SECRET_BYTES} bytes of base64url`);
    }
  }

  let json: unknown;
  try {
    json = JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(payloadBytes));
  } catch {
    secret?.fill(0);
    return fail("the token's payload is not UTF-8 JSON");
  }
  const parsed = TokenPayloadSchema.safeParse(json);
  if (!parsed.success) {
    secret?.fill(0);
    return fail(describeIssue(parsed.error.issues[0]!));
  }
  const hpk = decodePart(parsed.data.hpk);
  if (!hpk || hpk.length !== ED25519_PUBLIC_KEY_BYTES) {
    secret?.fill(0);
    return fail("the token's field 'hpk' is not a 32-byte public key");
  }
  const token: ParsedToken = {
    publicPart: `${TOKEN_PREFIX}.${payloadPart}.${sigPart}`,
    payload: parsed.data,
    payloadPart,
    sig,
    hpk,
  };
  if (secret) token.secret = secret;
  return { ok: true, token };
}

/** The exact bytes the holder signs for a payload part. */
export function tokenSigningBytes(payloadPart: string): Buffer {
  return Buffer.from(TOKEN_SIGNING_CONTEXT + payloadPart, 'ascii');
}

export type TokenSignatureCheck = { ok: true } | { ok: false; reason: 'holder' | 'signature' };

/** Whether `hid` names `hpk`, and `sig` is `hpk`'s signature over the payload part. */
export function checkTokenSignature(token: ParsedToken): TokenSignatureCheck {
  if (holderIdFromPublicKey(token.hpk) !== token.payload.hid)
    return { ok: false, reason: 'holder' };
  if (!verifyEd25519(token.hpk, tokenSigningBytes(token.payloadPart), token.sig)) {
    return { ok: false, reason: 'signature' };
  }
  return { ok: true };
}

export function verifyTokenSignature(token: ParsedToken): boolean {
  return checkTokenSignature(token).ok;
}

/**
 * Builds the full token string. PAYLOAD must satisfy the schema (a programming error otherwise,
 * so this throws); SIGN is the holder identity's Ed25519 signer.
 */
export function encodeToken(
  payload: TokenPayload,
  sign: (bytes: Buffer) => Uint8Array,
  secret: Uint8Array,
): string {
  const checked = TokenPayloadSchema.parse(payload);
  if (secret.length !== TOKEN_SECRET_BYTES) {
    throw new Error(`a token secret must be ${TOKEN_SECRET_BYTES} bytes`);
  }
  const payloadPart = Buffer.from(JSON.stringify(checked), 'utf8').toString('base64url');
  if (
    payloadPart.length > MAX_PART_CHARS ||
    Buffer.byteLength(JSON.stringify(checked)) > MAX_PAYLOAD_BYTES
  ) {
    throw new Error(`the token payload is larger than ${MAX_PAYLOAD_BYTES} bytes`);
  }
  const sig = Buffer.from(sign(tokenSigningBytes(payloadPart))).toString('base64url');
  return `${TOKEN_PREFIX}.${payloadPart}.${sig}.${Buffer.from(secret).toString('base64url')}`;
}

/** SHA-256 of the secret part in lowercase hex: what the holder stores instead of the secret. */
export function tokenSecretHash(secret: Uint8Array): string {
  return createHash('sha256').update(secret).digest('hex');
}
