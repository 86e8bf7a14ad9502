// The sealed channel inside each relayed facade↔holder stream: TLS 1.3 (node:tls, on the workstation
// and the server sides) whose holder certificate is pinned by the token's `hpk`, followed by one
// proof message in which the facade shows the token's secret part to the holder. This module holds
// only what both sides must agree on; it opens nothing.

import { X509Certificate } from 'node:crypto';

export const SEAL_TLS_VERSION = 'TLSv1.3';
/** How long either side waits for the handshake and the proof before giving up. */
export const SEAL_HANDSHAKE_TIMEOUT_MS = 15_000;
/** Proof message: magic, then the token's 32-byte secret part. */
export const SEAL_PROOF_MAGIC = Buffer.from('KTS1', 'ascii');
export const SEAL_SECRET_BYTES = 32;
export const SEAL_PROOF_BYTES = SEAL_PROOF_MAGIC.length + SEAL_SECRET_BYTES;
/** The holder's one-byte answer once the proof checked out; anything else never arrives. */
export const SEAL_ACCEPTED = 0x01;

/** Builds the proof message. The caller zeroes it once written. */
export function encodeSealProof(secret: Uint8Array): Buffer {
  if (secret.length !== SEAL_SECRET_BYTES) {
    throw new RangeError(`a token secret is ${SEAL_SECRET_BYTES} bytes`);
  }
  return Buffer.concat([SEAL_PROOF_MAGIC, secret]);
}

export type SealProof = { ok: true; secret: Buffer } | { ok: false; error: string };

/** Parses exactly SEAL_PROOF_BYTES bytes; the secret is a copy the caller zeroes. */
export function parseSealProof(msg: Uint8Array): SealProof {
  if (msg.length !== SEAL_PROOF_BYTES) {
    return { ok: false, error: `the proof is ${msg.length} bytes, not ${SEAL_PROOF_BYTES}` };
  }
  const b = Buffer.from(msg.buffer, msg.byteOffset, msg.byteLength);
  if (!b.subarray(0, SEAL_PROOF_MAGIC.length).equals(SEAL_PROOF_MAGIC)) {
    return { ok: false, error: 'the first message is not a token proof' };
  }
  return { ok: true, secret: Buffer.from(b.subarray(SEAL_PROOF_MAGIC.length)) };
}

/**
 * The raw 32-byte Ed25519 public key of a DER certificate, or undefined when it is not one.
 * The certificate's own signature and dates do not matter: what the token pins is the key, and
 * TLS 1.3's CertificateVerify proves the peer holds its private half.
 */
export function certificateEd25519Key(der: Uint8Array): Buffer | undefined {
  try {
    const key = new X509Certificate(der).publicKey;
    if (key.asymmetricKeyType !== 'ed25519') return undefined;
    const x = key.export({ format: 'jwk' }).x;
    return x ? Buffer.from(x, 'base64url') : undefined;
  } catch {
    return undefined;
  }
}

/** One line for a TLS or stream error: OpenSSL's reason text without its file/line noise. */
export function describeSealError(e: unknown): string {
  const err = e as { code?: unknown; reason?: unknown; message?: unknown };
  const reason = typeof err?.reason === 'string' ? err.reason : undefined;
  const message = typeof err?.message === 'string' ? err.message : String(e);
  const text = reason ?? message.replace(/^[0-9A-F]{8,}:error:[0-9A-F]+:[^:]*:[^:]*:/i, '');
  const code = typeof err?.code === 'string' && !text.includes(err.code) ? ` (${err.code})` : '';
  return (
    (text + code)
      .replace(/[\r\n\t]+/g, ' ')
      // eslint-disable-next-line no-control-regex
      .replace(/[\u0000-\u001f\u007f]/g, '')
      .trim()
      .slice(0, 200) || 'unknown error'
  );
}
