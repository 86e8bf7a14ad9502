// RSA signing (PKCS#1 v1.5 over DigestInfo‖digest) and decryption as libgcrypt does them for
// gpg-agent (reference §4.2, §4.4), on top of OpenSSL via node:crypto.

import {
  constants,
  createPrivateKey,
  privateDecrypt,
  privateEncrypt,
  type KeyObject,
} from 'node:crypto';
import { gpgErr } from '../../protocol/gpg-error.js';
import type { DecryptResult } from '../../protocol/keyholder.js';
import { atom, encodeSexp, mpiUsg } from '../../protocol/sexp.js';
import { b64url, fixedLength, fromBigInt, toBigInt } from './bytes.js';
import { parseEncVal } from './enc-val.js';
import { hashAlgo } from './hash-algo.js';

export class RsaKey {
  readonly keygrip: string;
  readonly algorithm: string;
  private key: KeyObject | undefined;
  private readonly modulusBytes: number;

  constructor(
    keygrip: string,
    algorithm: string,
    m: { n: Uint8Array; e: Uint8Array; d: Uint8Array; p: Uint8Array; q: Uint8Array; u: Uint8Array },
  ) {
    this.keygrip = keygrip;
    this.algorithm = algorithm;
    const n = mpiUsg(m.n);
    this.modulusBytes = n.length;
    const d = toBigInt(m.d);
    const p = toBigInt(m.p);
    const q = toBigInt(m.q);
    if (p * q !== toBigInt(n))
      throw gpgErr('INV_DATA', 'RSA secret key does not match its modulus');
    // JWK's qi is q⁻¹ mod p, OpenPGP's u is p⁻¹ mod q: naming OpenPGP's q "p" (and vice versa)
    // makes u exactly the JWK qi, so no modular inverse has to be computed here.
    const dp = fromBigInt(d % (q - 1n));
    const dq = fromBigInt(d % (p - 1n));
    const parts = [dp, dq];
    try {
      this.key = createPrivateKey({
        format: 'jwk',
        key: {
          kty: 'RSA',
          n: b64url(n),
          e: b64url(mpiUsg(m.e)),
          d: b64url(mpiUsg(m.d)),
          p: b64url(mpiUsg(m.q)),
          q: b64url(mpiUsg(m.p)),
          dp: b64url(dp),
          dq: b64url(dq),
          qi: b64url(mpiUsg(m.u)),
        },
      });
    } catch {
      throw gpgErr('INV_DATA', 'RSA key parameters are inconsistent');
    } finally {
      for (const b of parts) b.fill(0);
    }
  }

  private live(): KeyObject {
    if (!this.key) throw gpgErr('NO_SECKEY', 'the unlocked key was destroyed');
    return this.key;
  }

  sign(hashId: number, digest: Uint8Array): Buffer {
    const h = hashAlgo(hashId, digest);
    const s = privateEncrypt(
      { key: this.live(), padding: constants.RSA_PKCS1_PADDING },
      Buffer.concat([h.digestInfo, digest]),
    );
    return encodeSexp([atom('sig-val'), [atom('rsa'), [atom('s'), mpiUsg(s)]]]);
  }

  decrypt(encVal: Uint8Array): DecryptResult {
    const ev = parseEncVal(encVal);
    if (ev.algo !== 'rsa')
      throw gpgErr('INV_DATA', `an ${ev.algo} ciphertext cannot use an RSA key`);
    const c = fixedLength(ev.a, this.modulusBytes);
    if (!c) throw gpgErr('INV_DATA', 'RSA ciphertext is longer than the modulus');
    let block: Buffer;
    try {
      block = privateDecrypt({ key: this.live(), padding: constants.RSA_NO_PADDING }, c);
    } catch {
      // OpenSSL refuses c >= n; that is malformed input, not a key problem.
      throw gpgErr('INV_DATA', 'RSA ciphertext is out of range');
    }
    // Without this check the raw private operation is a signing oracle: a "ciphertext" equal to a
    // PKCS#1 signature block (00 01 FF… 00 DigestInfo‖H) would come back as a valid signature.
    // Every malformed block gets the same error so nothing beyond PKCS#1 v1.5's inherent
    // valid/invalid bit leaks.
    if (!isEncryptionBlock(block)) {
      block.fill(0);
      throw gpgErr('INV_DATA', 'RSA decryption failed');
    }
    // Like the real agent: hand back m as an MPI (the 00 02 … block without its leading zero) and
    // leave the unpadding to gpg.
    const value = mpiUsg(block);
    block.fill(0);
    return { value };
  }

  destroy(): void {
    // A KeyObject cannot be wiped; dropping the only reference is the best node:crypto allows.
    this.key = undefined;
  }
}

/** EME-PKCS1-v1_5 shape: 00 02, at least 8 nonzero padding bytes, a 00 separator. */
function isEncryptionBlock(block: Buffer): boolean {
  // Scans the whole block without data-dependent early exits.
  let bad = block.length < 11 ? 1 : 0;
  bad |= block[0] ?? 1;
  bad |= (block[1] ?? 0) ^ 2;
  let sep = 0;
  for (let i = 2; i < block.length; i++) {
    const isZero = block[i] === 0 ? 1 : 0;
    const first = isZero & (sep === 0 ? 1 : 0);
    sep = first ? i : sep;
  }
  bad |= sep === 0 ? 1 : 0;
  bad |= sep < 10 ? 1 : 0;
  return bad === 0;
}
