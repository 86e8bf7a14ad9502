// Ed25519 signing as gpg-agent does it: PureEdDSA over the digest bytes gpg sends (reference §4.2).

import { createPrivateKey, createPublicKey, sign, type KeyObject } from 'node:crypto';
import { gpgErr } from '../../protocol/gpg-error.js';
import type { DecryptResult } from '../../protocol/keyholder.js';
import { atom, encodeSexp } from '../../protocol/sexp.js';
import { b64url, fixedLength } from './bytes.js';
import { hashAlgo } from './hash-algo.js';

export class Ed25519Key {
  readonly keygrip: string;
  readonly algorithm: string;
  private key: KeyObject | undefined;

  constructor(keygrip: string, algorithm: string, q: Uint8Array, seedMpi: Uint8Array) {
    this.keygrip = keygrip;
    this.algorithm = algorithm;
    if (q.length !== 33 || q[0] !== 0x40)
      throw gpgErr('INV_DATA', 'Ed25519 public key is malformed');
    // The seed is stored as an MPI, so leading zero bytes may be missing.
    const seed = fixedLength(seedMpi, 32);
    if (!seed) throw gpgErr('INV_DATA', 'Ed25519 secret key is malformed');
    try {
      this.key = createPrivateKey({
        format: 'jwk',
        key: { kty: 'OKP', crv: 'Ed25519', d: b64url(seed), x: b64url(q.subarray(1)) },
      });
      const derived = createPublicKey(this.key).export({ format: 'jwk' }).x;
      if (derived !== b64url(q.subarray(1))) throw new Error('mismatch');
    } catch {
      this.key = undefined;
      throw gpgErr('INV_DATA', 'Ed25519 secret key does not match its public key');
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
      [atom('eddsa'), [atom('r'), sig.subarray(0, 32)], [atom('s'), sig.subarray(32, 64)]],
    ]);
  }

  decrypt(_encVal: Uint8Array): DecryptResult {
    throw gpgErr('NOT_SUPPORTED', 'an Ed25519 key cannot decrypt');
  }

  destroy(): void {
    this.key = undefined;
  }
}
