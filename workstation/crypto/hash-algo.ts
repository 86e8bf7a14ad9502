// Hash ids as gpg sends them in SETHASH (libgcrypt / OpenPGP numbering), with the digest sizes
// and the PKCS#1 DigestInfo prefixes a real agent puts in front of the digest (reference §4.2).

import { gpgErr } from '../../protocol/gpg-error.js';

interface HashAlgo {
  name: string;
  bytes: number;
  digestInfo: Buffer;
}

const hex = (h: string) => Buffer.from(h, 'hex');

const HASHES: ReadonlyMap<number, HashAlgo> = new Map([
  [1, { name: 'md5', bytes: 16, digestInfo: hex('3020300c06082a864886f70d020505000410') }],
  [2, { name: 'sha1', bytes: 20, digestInfo: hex('3021300906052b0e03021a05000414') }],
  [3, { name: 'rmd160', bytes: 20, digestInfo: hex('3021300906052b2403020105000414') }],
  [8, { name: 'sha256', bytes: 32, digestInfo: hex('3031300d060960864801650304020105000420') }],
  [9, { name: 'sha384', bytes: 48, digestInfo: hex('3041300d060960864801650304020205000430') }],
  [10, { name: 'sha512', bytes: 64, digestInfo: hex('3051300d060960864801650304020305000440') }],
  [11, { name: 'sha224', bytes: 28, digestInfo: hex('302d300d06096086480165030402040500041c') }],
]);

/** The hash algorithm for ID, checking that DIGEST has its size. */
export function hashAlgo(id: number, digest: Uint8Array): HashAlgo {
  const h = HASHES.get(id);
  if (h === undefined) throw gpgErr('DIGEST_ALGO', `hash algorithm ${id} is not supported`);
  if (digest.length !== h.bytes) {
    throw gpgErr('INV_LENGTH', `a ${digest.length}-byte digest does not fit ${h.name}`);
  }
  return h;
}
