// ECDH on Curve25519 (OpenPGP "cv25519"): gpg sends the ephemeral point and does the KDF and key
// unwrap itself, so the agent's part is just X25519(d, e) (reference §4.3–4.5).

import { createPrivateKey, createPublicKey, diffieHellman, type KeyObject } from 'node:crypto';
import { gpgErr } from '../../protocol/gpg-error.js';
import type { DecryptResult } from '../../protocol/keyholder.js';
import { b64url, fixedLength } from './bytes.js';
import { parseEncVal } from './enc-val.js';

export class X25519Key {
  readonly keygrip: string;
  readonly algorithm: string;
  private key: KeyObject | undefined;

  constructor(keygrip: string, algorithm: string, q: Uint8Array, dMpi: Uint8Array) {
    this.keygrip = keygrip;
    this.algorithm = algorithm;
    if (q.length !== 33 || q[0] !== 0x40)
      throw gpgErr('INV_DATA', 'Curve25519 public key is malformed');
    const d = fixedLength(dMpi, 32);
    if (!d) throw gpgErr('INV_DATA', 'Curve25519 secret key is malformed');
    // OpenPGP stores the scalar big-endian; RFC 7748 (and OpenSSL) want it little-endian.
    d.reverse();
    try {
      this.key = createPrivateKey({
        format: 'jwk',
        key: { kty: 'OKP', crv: 'X25519', d: b64url(d), x: b64url(q.subarray(1)) },
      });
      const derived = createPublicKey(this.key).export({ format: 'jwk' }).x;
      if (derived !== b64url(q.subarray(1))) throw new Error('mismatch');
    } catch {
      this.key = undefined;
      throw gpgErr('INV_DATA', 'Curve25519 secret key does not match its public key');
    } finally {
      d.fill(0);
    }
  }

  sign(_hashAlgo: number, _digest: Uint8Array): Buffer {
    throw gpgErr('NOT_SUPPORTED', 'a Curve25519 encryption key cannot sign');
  }

  decrypt(encVal: Uint8Array): DecryptResult {
    if (!this.key) throw gpgErr('NO_SECKEY', 'the unlocked key was destroyed');
    const ev = parseEncVal(encVal);
    if (ev.algo !== 'ecdh')
      throw gpgErr('INV_DATA', `an ${ev.algo} ciphertext cannot use an ECDH key`);
    const e = ev.e;
    if (e.length !== 33 || e[0] !== 0x40) {
      throw gpgErr('INV_DATA', 'ephemeral Curve25519 point must be 0x40 followed by 32 bytes');
    }
    let shared: Buffer;
    try {
      const publicKey = createPublicKey({
        format: 'jwk',
        key: { kty: 'OKP', crv: 'X25519', x: b64url(e.subarray(1)) },
      });
      shared = diffieHellman({ privateKey: this.key, publicKey });
    } catch {
      // OpenSSL rejects low-order points (all-zero shared secret).
      throw gpgErr('INV_DATA', 'ephemeral Curve25519 point is invalid');
    }
    const value = Buffer.concat([Buffer.of(0x40), shared]);
    shared.fill(0);
    return { value };
  }

  destroy(): void {
    this.key = undefined;
  }
}
