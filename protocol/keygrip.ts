// libgcrypt-compatible keygrips (gcry_pk_get_keygrip) and the public-key S-expressions a real
// gpg-agent returns for READKEY (reference §4.6, §5). Input is what an OpenPGP public key packet
// carries, so the facade can compute grips from exported public keys alone.

import { ECDH, createHash } from 'node:crypto';
import { CURVES, type CurveName } from './curves.js';
import { atom, encodeSexp, mpiStd, mpiUsg, type Sexp } from './sexp.js';

export type { CurveName } from './curves.js';
export { curveBits, curveFromName, curveFromOid, oidToDotted } from './curves.js';

export type PublicKeyParams =
  | { kind: 'rsa'; n: Uint8Array; e: Uint8Array }
  | { kind: 'dsa'; p: Uint8Array; q: Uint8Array; g: Uint8Array; y: Uint8Array }
  | { kind: 'elg'; p: Uint8Array; g: Uint8Array; y: Uint8Array }
  | { kind: 'ecc'; curve: CurveName; q: Uint8Array };

/** The parameters libgcrypt hashes for DSA ("pqgy") and ElGamal ("pgy"), in its order. */
type DiscreteLogParams = Extract<PublicKeyParams, { kind: 'dsa' | 'elg' }>;

function discreteLogParts(pk: DiscreteLogParams): [string, Uint8Array][] {
  if (pk.kind === 'dsa') {
    return [
      ['p', pk.p],
      ['q', pk.q],
      ['g', pk.g],
      ['y', pk.y],
    ];
  }
  return [
    ['p', pk.p],
    ['g', pk.g],
    ['y', pk.y],
  ];
}

export function keygrip(pk: PublicKeyParams): string {
  return keygripBytes(pk).toString('hex').toUpperCase();
}

export function keygripBytes(pk: PublicKeyParams): Buffer {
  const sha1 = createHash('sha1');
  if (pk.kind === 'rsa') {
    // libgcrypt hashes n exactly as gpg printed it with %m, i.e. with the sign byte.
    const n = mpiStd(pk.n);
    if (n.length === 0) throw new Error('RSA modulus is empty');
    return sha1.update(n).digest();
  }
  if (pk.kind === 'dsa' || pk.kind === 'elg') {
    // libgcrypt's generic grip: each element as `(1:<name><len>:<mpi>)`, the MPI as gpg
    // stores it (with the sign byte), like RSA's n.
    for (const [name, raw] of discreteLogParts(pk)) {
      const value = mpiStd(raw);
      if (value.length === 0) throw new Error(`${pk.kind.toUpperCase()} ${name} is empty`);
      sha1.update(`(1:${name}${value.length}:`, 'latin1').update(value).update(')', 'latin1');
    }
    return sha1.digest();
  }
  const c = CURVES[pk.curve];
  if (c === undefined) throw new Error(`unsupported curve ${String(pk.curve)}`);
  const hex = (h: string) => Buffer.from(h, 'hex');
  const g = Buffer.concat([
    Buffer.of(0x04),
    leftPad(hex(c.gx), c.fieldBytes),
    leftPad(hex(c.gy), c.fieldBytes),
  ]);
  const parts: [string, Buffer][] = [
    ['p', mpiUsg(hex(c.p))],
    ['a', mpiUsg(hex(c.a))],
    ['b', mpiUsg(hex(c.b))],
    ['g', g],
    ['n', mpiUsg(hex(c.n))],
    ['q', keygripQ(pk.curve, pk.q)],
  ];
  for (const [name, value] of parts) {
    sha1.update(`(1:${name}${value.length}:`, 'latin1').update(value).update(')', 'latin1');
  }
  return sha1.digest();
}

/**
 * The point in the form libgcrypt hashes: native bytes for the 25519 and 448 curves (the 25519
 * ones arrive 0x40-prefixed, the 448 ones bare), else 04||X||Y.
 */
function keygripQ(curve: CurveName, q: Uint8Array): Buffer {
  const c = CURVES[curve];
  if (c.model !== 'weierstrass') {
    if (c.pointBytes !== undefined) {
      if (q.length === c.pointBytes) return Buffer.from(q);
      throw new Error(`${curve} public point must be ${c.pointBytes} bytes`);
    }
    if (q.length === c.fieldBytes + 1 && q[0] === 0x40) return Buffer.from(q.subarray(1));
    if (q.length === c.fieldBytes) return Buffer.from(q);
    throw new Error(`${curve} public point must be 0x40 followed by ${c.fieldBytes} bytes`);
  }
  if (q.length === 2 * c.fieldBytes + 1 && q[0] === 0x04) return Buffer.from(q);
  if (q.length === c.fieldBytes + 1 && (q[0] === 0x02 || q[0] === 0x03) && c.nodeName) {
    try {
      return ECDH.convertKey(
        Buffer.from(q),
        c.nodeName,
        undefined,
        undefined,
        'uncompressed',
      ) as Buffer;
    } catch {
      throw new Error(`${curve} compressed public point is not on the curve`);
    }
  }
  throw new Error(`${curve} public point must be 04||X||Y with ${c.fieldBytes}-byte coordinates`);
}

function leftPad(v: Buffer, size: number): Buffer {
  const m = mpiUsg(v);
  if (m.length >= size) return m;
  return Buffer.concat([Buffer.alloc(size - m.length), m]);
}

/** The public-key S-expression as tree; `publicKeySexp` is its canonical encoding. */
export function publicKeySexpTree(pk: PublicKeyParams): Sexp[] {
  if (pk.kind === 'rsa') {
    return [
      atom('public-key'),
      [atom('rsa'), [atom('n'), mpiStd(pk.n)], [atom('e'), mpiStd(pk.e)]],
    ];
  }
  if (pk.kind === 'dsa' || pk.kind === 'elg') {
    const parts = discreteLogParts(pk);
    return [
      atom('public-key'),
      [atom(pk.kind), ...parts.map(([n, v]): Sexp => [atom(n), mpiStd(v)])],
    ];
  }
  const ecc: Sexp[] = [atom('ecc'), [atom('curve'), atom(pk.curve)]];
  if (pk.curve === 'Ed25519') ecc.push([atom('flags'), atom('eddsa')]);
  if (pk.curve === 'Curve25519') ecc.push([atom('flags'), atom('djb-tweak')]);
  ecc.push([atom('q'), Buffer.from(pk.q)]);
  return [atom('public-key'), ecc];
}

/** Canonical `(10:public-key…)` byte-identical to a real agent's READKEY reply. */
export function publicKeySexp(pk: PublicKeyParams): Buffer {
  return encodeSexp(publicKeySexpTree(pk));
}
