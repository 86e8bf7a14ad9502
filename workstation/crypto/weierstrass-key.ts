// ECDSA signing and ECDH on the NIST and Brainpool curves. node:crypto cannot sign a precomputed
// digest with ECDSA (reference §8), so @noble/curves does both, uniformly for all six curves.

import { p256, p384, p521 } from '@noble/curves/nist.js';
import { brainpoolP256r1, brainpoolP384r1, brainpoolP512r1 } from '@noble/curves/misc.js';
import { gpgErr } from '../../protocol/gpg-error.js';
import type { DecryptResult } from '../../protocol/keyholder.js';
import { curveBits, type CurveName } from '../../protocol/keygrip.js';
import { atom, encodeSexp, mpiUsg } from '../../protocol/sexp.js';
import { fixedLength } from './bytes.js';
import { parseEncVal } from './enc-val.js';
import { hashAlgo } from './hash-algo.js';

type Ecdsa = typeof p256;

const CURVE_IMPL: Partial<Record<CurveName, Ecdsa>> = {
  'NIST P-256': p256,
  'NIST P-384': p384,
  'NIST P-521': p521,
  brainpoolP256r1,
  brainpoolP384r1,
  brainpoolP512r1,
};

export class WeierstrassKey {
  readonly keygrip: string;
  readonly algorithm: string;
  private readonly curve: CurveName;
  private readonly impl: Ecdsa;
  private readonly scalarBytes: number;
  private readonly pointBytes: number;
  private d: Buffer | undefined;
  private readonly usage: 'ecdsa' | 'ecdh';

  constructor(
    keygrip: string,
    algorithm: string,
    curve: CurveName,
    q: Uint8Array,
    dMpi: Uint8Array,
    usage: 'ecdsa' | 'ecdh',
  ) {
    this.keygrip = keygrip;
    this.algorithm = algorithm;
    this.curve = curve;
    this.usage = usage;
    const impl = CURVE_IMPL[curve];
    if (!impl) throw gpgErr('UNSUPPORTED_ALGORITHM', `curve ${curve} is not supported`);
    this.impl = impl;
    this.scalarBytes = impl.lengths.secretKey ?? Math.ceil(curveBits(curve) / 8);
    this.pointBytes = 2 * Math.ceil(curveBits(curve) / 8) + 1;
    // d is an STD MPI: it may carry an extra 00 or miss leading zeros (reference §4.5).
    const d = fixedLength(dMpi, this.scalarBytes);
    if (!d) throw gpgErr('INV_DATA', `${curve} secret key is malformed`);
    let pub: Uint8Array;
    try {
      pub = impl.getPublicKey(d, false);
    } catch {
      d.fill(0);
      throw gpgErr('INV_DATA', `${curve} secret key is out of range`);
    }
    if (!Buffer.from(pub).equals(Buffer.from(q))) {
      d.fill(0);
      throw gpgErr('INV_DATA', `${curve} secret key does not match its public key`);
    }
    this.d = d;
  }

  private live(): Buffer {
    if (!this.d) throw gpgErr('NO_SECKEY', 'the unlocked key was destroyed');
    return this.d;
  }

  sign(hashId: number, digest: Uint8Array): Buffer {
    if (this.usage !== 'ecdsa') throw gpgErr('NOT_SUPPORTED', 'an ECDH key cannot sign');
    hashAlgo(hashId, digest);
    // libgcrypt truncates the digest to the curve size, capped at 512 bits, and refuses a shorter
    // one (reference §4.2), so P-521 needs a 64-byte digest.
    const want = Math.min(Math.floor(curveBits(this.curve) / 8), 64);
    if (digest.length < want) {
      throw gpgErr(
        'INV_LENGTH',
        `a ${digest.length * 8} bit hash is not valid for a ${curveBits(this.curve)} bit ${this.curve} key`,
      );
    }
    const sig = this.impl.sign(digest.subarray(0, want), this.live(), {
      prehash: false,
      // libgcrypt does not normalise s; keeping it as computed matches the real agent's output.
      lowS: false,
      format: 'compact',
    });
    const half = sig.length / 2;
    return encodeSexp([
      atom('sig-val'),
      [
        atom('ecdsa'),
        [atom('r'), mpiUsg(sig.subarray(0, half))],
        [atom('s'), mpiUsg(sig.subarray(half))],
      ],
    ]);
  }

  decrypt(encVal: Uint8Array): DecryptResult {
    if (this.usage !== 'ecdh') throw gpgErr('NOT_SUPPORTED', 'an ECDSA key cannot decrypt');
    const ev = parseEncVal(encVal);
    if (ev.algo !== 'ecdh')
      throw gpgErr('INV_DATA', `an ${ev.algo} ciphertext cannot use an ECDH key`);
    if (ev.e.length !== this.pointBytes || ev.e[0] !== 0x04) {
      throw gpgErr('INV_DATA', `ephemeral ${this.curve} point must be uncompressed (04||X||Y)`);
    }
    let shared: Uint8Array;
    try {
      shared = this.impl.getSharedSecret(this.live(), ev.e, false);
    } catch {
      throw gpgErr('INV_DATA', `ephemeral point is not on ${this.curve}`);
    }
    // The full point, as the real agent returns it; gpg takes X from it.
    const value = Buffer.from(shared);
    shared.fill(0);
    return { value };
  }

  destroy(): void {
    this.d?.fill(0);
    this.d = undefined;
  }
}
