// A holder's identity on a relay: an Ed25519 public key and the short id derived from it. The id
// is what facades name (inside tokens) and what the relay routes by, so it must be a pure
// function of the key: anyone can recompute it and nobody can claim an id without the key.

import { createHash, createPublicKey, verify, type KeyObject } from 'node:crypto';

export const HOLDER_ID_RE = /^kth_[0-9a-f]{32}$/;
export const ED25519_PUBLIC_KEY_BYTES = 32;
export const ED25519_SIGNATURE_BYTES = 64;

/** `kth_` + the first 16 bytes of SHA-256(hpk) in lowercase hex. */
export function holderIdFromPublicKey(hpk: Uint8Array): string {
  return 'kth_' + createHash('sha256').update(hpk).digest().subarray(0, 16).toString('hex');
}

/** A node:crypto public key from 32 raw bytes, or undefined when they are not a valid key. */
export function ed25519PublicKey(hpk: Uint8Array): KeyObject | undefined {
  if (hpk.length !== ED25519_PUBLIC_KEY_BYTES) return undefined;
  try {
    return createPublicKey({
      key: { kty: 'OKP', crv: 'Ed25519', x: Buffer.from(hpk).toString('base64url') },
      format: 'jwk',
    });
  } catch {
    return undefined;
  }
}

/** Ed25519 verification that answers false (never throws) for malformed keys or signatures. */
export function verifyEd25519(hpk: Uint8Array, message: Uint8Array, sig: Uint8Array): boolean {
  if (sig.length !== ED25519_SIGNATURE_BYTES) return false;
  const key = ed25519PublicKey(hpk);
  if (!key) return false;
  try {
    return verify(null, message, key, sig);
  } catch {
    return false;
  }
}

/** Domain separation for the relay's login challenge, so such a signature is never a token's. */
export const RELAY_AUTH_CONTEXT = 'keytether-relay-auth-v1\n';

/** The bytes a holder signs to answer the relay's challenge NONCE (the base64url text). */
export function relayAuthMessage(nonce: string): Buffer {
  return Buffer.from(RELAY_AUTH_CONTEXT + nonce, 'utf8');
}
