// EdDSA signing as gpg-agent does it: PureEdDSA over the digest bytes gpg sends (reference §4.2),
// on Ed25519 and on gpg 2.4's Ed448 (empty context, as libgcrypt signs it).

import { createPrivateKey, createPublicKey, sign, type KeyObject } from 'node:crypto';
import { gpgErr } from '../../protocol/gpg-error.js';
import type { DecryptResult } from '../../protocol/keyholder.js';
import { atom, encodeSexp } from '../../protocol/sexp.js';
import { b64url, fixedLength } from './bytes.js';
import { hashAlgo } from './hash-algo.js';

export type EdDsaCurve = 'Ed25519' | 'Ed448';

// OpenPGP carries Ed25519's point 0x40-prefixed and Ed448's bare (libgcrypt's native forms).
const SPECS: Record<EdDsaCurve, { size: number; prefixed: boolean }> = {
  Ed25519: { size: 32, prefixed: true },
  Ed448: { size: 57, prefixed: false },
};

export class EdDsaKey {
  readonly keygrip: string;
  readonly algorithm: string;
  private readonly size: number;
  private key: KeyObject | undefined;

  constructor(
    keygrip: string,
    algorithm: string,
    curve: EdDsaCurve,
    q: Uint8Array,
    seedMpi: Uint8Array,
  ) {
    this.keygrip = keygrip;
    this.algorithm = algorithm;
    const { size, prefixed } = SPECS[curve];
    this.size = size;
    const point = prefixed ? q.subarray(1) : q;
    if (q.length !== size + (prefixed ? 1 : 0) || (prefixed && q[0] !== 0x40))
      throw gpgErr('INV_DATA', `${curve} public key is malformed`);
    // The seed is stored as an MPI, so leading zero bytes may be missing.
    const seed = fixedLength(seedMpi, size);
    if (!seed) throw gpgErr('INV_DATA', `${curve} secret key is malformed`);
    try {
      this.key = createPrivateKey({
        format: 'jwk',
        key: { kty: 'OKP', crv: curve, d: b64url(seed), x: b64url(point) },
      });
      const derived = createPublicKey(this.key).export({ format: 'jwk' }).x;
      if (derived !== b64url(point)) throw new Error('mismatch');
    } catch {
      this.key = undefined;
      throw gpgErr('INV_DATA', `${curve} secret key does not match its public key`);
    } finally {
      seed.fill(0);
    }
  }

  sign(hashId: number, digest: Uint8Array): Buffer {
    hashAlgo(hashId, digest);
    return this.signMessage(digest);
  }

  signMessage(data: Uint8Array): Buffer {
    if (!this.key) throw gpgErr('NO_SECKEY', 'the unlocked key was destroyed');
    const sig = sign(null, data, this.key);
    return encodeSexp([
      atom('sig-val'),
      [
        atom('eddsa'),
        [atom('r'), sig.subarray(0, this.size)],
        [atom('s'), sig.subarray(this.size, 2 * this.size)],
      ],
    ]);
  }

  decrypt(_encVal: Uint8Array): DecryptResult {
    throw gpgErr('NOT_SUPPORTED', 'an EdDSA key cannot decrypt');
  }

  destroy(): void {
    this.key = undefined;
  }
}
