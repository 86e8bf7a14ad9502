// Version 5 key packets as gpg 2.4 writes them for Ed448 and X448 (LibrePGP, RFC 4880bis draft
// 10 §5.5.2–5.5.3): a 4-octet length before the public key material, a SHA-256 fingerprint, and
// in secret packets a count octet before the protection fields and a 4-octet length before the
// secret material. openpgp.js cannot read them, so this is the keystore's reader. Values in,
// values out: every length is checked against what is left of the body.

import { createHash } from 'node:crypto';
import { oidToDotted, type CurveName } from '../curves.js';
import { PacketFormatError } from './packets.js';

export const TAG_SECRET_KEY = 5;
export const TAG_PUBLIC_KEY = 6;
export const TAG_SECRET_SUBKEY = 7;
export const TAG_PUBLIC_SUBKEY = 14;
export const KEY_TAGS: readonly number[] = [5, 6, 7, 14];

const ECDH = 18;
const EDDSA = 22;

/** Iterated and salted (type 3), salted (1) or simple (0) S2K (RFC 9580 §3.7.1). */
export interface S2kSpec {
  type: 0 | 1 | 3;
  hash: number;
  salt: Uint8Array;
  /** Octets to hash (type 3), decoded from the count octet. */
  count: number;
}

export type V5Secret =
  | { kind: 'clear'; material: Uint8Array; checksum: Uint8Array }
  | {
      kind: 'protected';
      /** 254: SHA-1 check inside the ciphertext; 255: 2-octet sum. */
      usage: 254 | 255;
      cipher: number;
      s2k: S2kSpec;
      iv: Uint8Array;
      data: Uint8Array;
    }
  /** gpg's gnu-dummy S2K: the secret is elsewhere (a smartcard, or left out of the export). */
  | { kind: 'stub' };

export interface V5KeyPacket {
  tag: number;
  created: number;
  /** OpenPGP public-key algorithm id: 22 (EdDSA) or 18 (ECDH). */
  algorithm: number;
  curve: CurveName;
  /** The public point as the MPI holds it (native form for the 448 curves). */
  q: Uint8Array;
  /** Version through the public key material: what a public key packet's body is. */
  publicBody: Uint8Array;
  /** Uppercase hex SHA-256 (v5 fingerprint). */
  fingerprint: string;
  secret: V5Secret | undefined;
}

const SUPPORTED: Readonly<Record<string, { algorithm: number; curve: CurveName }>> = {
  '22:1.3.101.113': { algorithm: EDDSA, curve: 'Ed448' },
  '18:1.3.101.111': { algorithm: ECDH, curve: 'X448' },
};

/** Bytes the count octet of an iterated S2K asks to be hashed. */
export function s2kByteCount(c: number): number {
  return (16 + (c & 15)) * 2 ** ((c >> 4) + 6);
}

class Reader {
  private off = 0;
  constructor(
    private readonly b: Uint8Array,
    private readonly what: string,
  ) {}
  get offset(): number {
    return this.off;
  }
  get left(): number {
    return this.b.length - this.off;
  }
  bytes(n: number, field: string): Uint8Array {
    if (n > this.left) {
      throw new PacketFormatError(`${this.what} ends inside its ${field}`, undefined, 5);
    }
    const v = this.b.subarray(this.off, this.off + n);
    this.off += n;
    return v;
  }
  byte(field: string): number {
    return this.bytes(1, field)[0]!;
  }
  u32(field: string): number {
    const v = this.bytes(4, field);
    return ((v[0]! << 24) >>> 0) + (v[1]! << 16) + (v[2]! << 8) + v[3]!;
  }
  mpi(field: string): Uint8Array {
    const h = this.bytes(2, field);
    return this.bytes(Math.ceil(((h[0]! << 8) + h[1]!) / 8), field);
  }
}

export function v5Fingerprint(publicBody: Uint8Array): string {
  const len = Buffer.alloc(4);
  len.writeUInt32BE(publicBody.length);
  return createHash('sha256')
    .update(Buffer.of(0x9a))
    .update(len)
    .update(publicBody)
    .digest('hex')
    .toUpperCase();
}

function readS2k(r: Reader): S2kSpec | 'stub' {
  const type = r.byte('S2K type');
  const hash = r.byte('S2K hash');
  if (type === 101) return 'stub';
  if (type === 0) return { type, hash, salt: new Uint8Array(0), count: 0 };
  if (type !== 1 && type !== 3) {
    throw new PacketFormatError(`S2K type ${type} is not one gpg writes`, undefined, 5);
  }
  const salt = r.bytes(8, 'S2K salt');
  return { type, hash, salt, count: type === 3 ? s2kByteCount(r.byte('S2K count')) : 0 };
}

function readSecret(r: Reader, what: string): V5Secret {
  const usage = r.byte('S2K usage');
  const fieldCount = r.byte('protection field count');
  const fields = new Reader(r.bytes(fieldCount, 'protection fields'), `${what}'s protection`);
  if (usage === 0) {
    if (fieldCount !== 0) throw new PacketFormatError(`${what} is clear but has protection fields`);
    const material = r.bytes(r.u32('secret length'), 'secret key material');
    const checksum = r.bytes(2, 'checksum');
    return { kind: 'clear', material, checksum };
  }
  if (usage !== 254 && usage !== 255) {
    // 253 is AEAD, which gpg 2.4 does not write into exports; 1–252 predate S2K.
    throw new PacketFormatError(`${what} uses secret key protection ${usage}`, undefined, 5);
  }
  const cipher = fields.byte('cipher');
  const s2k = readS2k(fields);
  if (s2k === 'stub') return { kind: 'stub' };
  const iv = fields.bytes(fields.left, 'IV');
  const data = r.bytes(r.u32('secret length'), 'secret key material');
  return { kind: 'protected', usage, cipher, s2k, iv, data };
}

/** Parses the body of a version 5 key packet with TAG (5, 6, 7 or 14). */
export function parseV5KeyPacket(tag: number, body: Uint8Array): V5KeyPacket {
  const what =
    tag === TAG_SECRET_KEY || tag === TAG_PUBLIC_KEY ? 'v5 key packet' : 'v5 subkey packet';
  const r = new Reader(body, what);
  const version = r.byte('version');
  if (version !== 5) throw new PacketFormatError(`${what} has version ${version}`, tag, version);
  const created = r.u32('creation time');
  const algorithm = r.byte('algorithm');
  const materialLength = r.u32('key material length');
  if (materialLength > r.left) {
    throw new PacketFormatError(
      `${what} announces ${materialLength} bytes of key material, ${r.left} present`,
      tag,
      5,
    );
  }
  const material = new Reader(r.bytes(materialLength, 'key material'), what);
  const publicBody = body.subarray(0, r.offset);
  const oidLength = material.byte('curve OID length');
  if (oidLength === 0 || oidLength === 0xff) {
    throw new PacketFormatError(`${what} (algorithm ${algorithm}) has no curve OID`, tag, 5);
  }
  const oid = oidToDotted(material.bytes(oidLength, 'curve OID'));
  const supported = SUPPORTED[`${algorithm}:${oid}`];
  if (!supported) {
    throw new PacketFormatError(
      `${what} has algorithm ${algorithm} on curve ${oid ?? 'unknown'}; only Ed448 and X448 are read`,
      tag,
      5,
    );
  }
  const q = material.mpi('public point');
  if (algorithm === ECDH) {
    const kdf = material.bytes(material.byte('KDF parameter length'), 'KDF parameters');
    if (kdf.length !== 3 || kdf[0] !== 1) {
      throw new PacketFormatError(`${what} has malformed KDF parameters`, tag, 5);
    }
  }
  if (material.left !== 0) {
    throw new PacketFormatError(
      `${what} has ${material.left} bytes after its key material`,
      tag,
      5,
    );
  }
  const secret =
    tag === TAG_SECRET_KEY || tag === TAG_SECRET_SUBKEY ? readSecret(r, what) : undefined;
  if (r.left !== 0) {
    throw new PacketFormatError(`${what} has ${r.left} bytes after its secret material`, tag, 5);
  }
  return {
    tag,
    created,
    algorithm,
    curve: supported.curve,
    q,
    publicBody,
    fingerprint: v5Fingerprint(publicBody),
    secret,
  };
}
