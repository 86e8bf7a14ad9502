// Whether one token record allows one relayed request: the checks in the order a refusal names
// them (proof of the secret, revoked, expired, key, operation, uses). Values only; the registry
// (tokens.ts) reads the records and reserves the use.

import { timingSafeEqual } from 'node:crypto';
import type { ParsedToken, TokenOp } from '../../protocol/token.js';
import type { TokenRecord } from './token-file.js';

/** `registry`: tokens.json cannot be read or is damaged, so nothing can be allowed. */
export type DenyReason =
  'unknown' | 'revoked' | 'expired' | 'key' | 'op' | 'uses' | 'signature' | 'holder' | 'registry';

export interface Refusal {
  ok: false;
  reason: DenyReason;
  message: string;
}

export interface AuthorizeRequest {
  token: ParsedToken;
  /** SHA-256 (hex) of the secret part the facade proved, once the sealed channel provides it. */
  secretHash?: string | undefined;
  fingerprint: string;
  primaryFingerprint: string;
  op: TokenOp;
}

export const deny = (reason: DenyReason, message: string): Refusal => ({
  ok: false,
  reason,
  message,
});

export /** Constant-time equality of two hex digests (a secret's hash). */
function sameHex(a: string, b: string): boolean {
  const x = Buffer.from(a, 'utf8');
  const y = Buffer.from(b, 'utf8');
  return x.length === y.length && timingSafeEqual(x, y);
}

/**
 * Why record R does not allow REQ with USED uses counted at time NOW (ms), or undefined when it
 * does. Judged by the claims the registry recorded, not the ones presented: they match when the
 * signature does, but the registry is the authority.
 */
export function judgeToken(
  r: TokenRecord,
  req: AuthorizeRequest,
  used: number,
  now: number,
): Refusal | undefined {
  if (req.secretHash !== undefined && !sameHex(req.secretHash, r.secretHash)) {
    return deny('signature', `the request does not prove the secret of token ${r.id}`);
  }
  const c = r.claims;
  if (r.revoked) return deny('revoked', `token ${r.id} has been revoked`);
  if (now >= c.exp * 1000) {
    return deny('expired', `token ${r.id} expired at ${new Date(c.exp * 1000).toISOString()}`);
  }
  // An SSH-only key's base64 `SHA256:` fingerprint is case-sensitive; hex ones are not.
  const norm = (f: string) => (f.startsWith('SHA256:') ? f : f.toUpperCase());
  const fpr = norm(req.fingerprint);
  const primary = norm(req.primaryFingerprint);
  if (!c.keys.includes(fpr) && !c.keys.includes(primary)) {
    return deny('key', `token ${r.id} does not allow key ${fpr}`);
  }
  if (!c.ops.includes(req.op)) {
    return deny('op', `token ${r.id} does not allow ${req.op} operations`);
  }
  if (c.max !== undefined && used >= c.max) {
    return deny('uses', `token ${r.id} has used all of its ${c.max} operations`);
  }
  return undefined;
}
