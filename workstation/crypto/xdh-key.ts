// ECDH on the Montgomery curves (OpenPGP "cv25519", gpg 2.4's "cv448"): gpg sends the ephemeral
// point and does the KDF and key unwrap itself, so the agent's part is just X25519(d, e) or
// X448(d, e) (reference §4.3–4.5).

import { createPrivateKey, createPublicKey, diffieHellman, type KeyObject } from 'node:crypto';
import { gpgErr } from '../../protocol/gpg-error.js';
import type { DecryptResult } from '../../protocol/keyholder.js';
import { b64url, fixedLength } from './bytes.js';
import { parseEncVal } from './enc-val.js';

export type XdhCurve = 'Curve25519' | 'X448';

// Curve25519 points travel 0x40-prefixed and its secret big-endian (reversed against RFC 7748);
// gpg 2.4 keeps X448's point and secret in the native form, and gpg-agent answers its shared
// point bare, which is what gpg then feeds to the KDF.
const SPECS: Record<XdhCurve, { crv: string; size: number; prefixed: boolean }> = {
  Curve25519: { crv: 'X25519', size: 32, prefixed: true },
  X448: { crv: 'X448', size: 56, prefixed: false },
};

export class XdhKey {
  readonly keygrip: string;
  readonly algorithm: string;
  private readonly curve: XdhCurve;
  private key: KeyObject | undefined;

  constructor(
    keygrip: string,
    algorithm: string,
    curve: XdhCurve,
    q: Uint8Array,
    dMpi: Uint8Array,
  ) {
    this.keygrip = keygrip;
    this.algorithm = algorithm;
    this.curve = curve;
    const { crv, size, prefixed } = SPECS[curve];
    const point = prefixed ? q.subarray(1) : q;
    if (q.length !== size + (prefixed ? 1 : 0) || (prefixed && q[0] !== 0x40))
      throw gpgErr('INV_DATA', `${curve} public key is malformed`);
    const d = fixedLength(dMpi, size);
    if (!d) throw gpgErr('INV_DATA', `${curve} secret key is malformed`);
    if (prefixed) d.reverse();
    try {
      this.key = createPrivateKey({
        format: 'jwk',
        key: { kty: 'OKP', crv, d: b64url(d), x: b64url(point) },
      });
      const derived = createPublicKey(this.key).export({ format: 'jwk' }).x;
      if (derived !== b64url(point)) throw new Error('mismatch');
    } catch {
      this.key = undefined;
      throw gpgErr('INV_DATA', `${curve} secret key does not match its public key`);
    } finally {
      d.fill(0);
    }
  }

  sign(_hashAlgo: number, _digest: Uint8Array): Buffer {
    throw gpgErr('NOT_SUPPORTED', `a ${this.curve} encryption key cannot sign`);
  }

  decrypt(encVal: Uint8Array): DecryptResult {
    if (!this.key) throw gpgErr('NO_SECKEY', 'the unlocked key was destroyed');
    const ev = parseEncVal(encVal);
    if (ev.algo !== 'ecdh')
      throw gpgErr('INV_DATA', `an ${ev.algo} ciphertext cannot use an ECDH key`);
    const { crv, size, prefixed } = SPECS[this.curve];
    const e = ev.e;
    if (prefixed ? e.length !== size + 1 || e[0] !== 0x40 : e.length !== size) {
      throw gpgErr(
        'INV_DATA',
        `ephemeral ${this.curve} point must be ${prefixed ? '0x40 followed by ' : ''}${size} bytes`,
      );
    }
    let shared: Buffer;
    try {
      const publicKey = createPublicKey({
        format: 'jwk',
        key: { kty: 'OKP', crv, x: b64url(prefixed ? e.subarray(1) : e) },
      });
      shared = diffieHellman({ privateKey: this.key, publicKey });
    } catch {
      // OpenSSL rejects low-order points (all-zero shared secret).
      throw gpgErr('INV_DATA', `ephemeral ${this.curve} point is invalid`);
    }
    if (!prefixed) return { value: shared };
    const value = Buffer.concat([Buffer.of(0x40), shared]);
    shared.fill(0);
    return { value };
  }

  destroy(): void {
    this.key = undefined;
  }
}
