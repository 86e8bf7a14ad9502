// Opening the secret material of a gpg 2.4 v5 key packet: the passphrase through the packet's
// S2K (RFC 9580 §3.7.1, built on Node's hashes), then AES in OpenPGP's CFB mode (Node's cipher),
// then the SHA-1 or 2-octet check gpg put inside.

import { createDecipheriv, createHash, timingSafeEqual } from 'node:crypto';
import { gpgErr } from '../../protocol/gpg-error.js';
import type { S2kSpec, V5Secret } from '../../protocol/openpgp/v5-key-packet.js';

const HASHES: Readonly<Record<number, string>> = {
  2: 'sha1',
  8: 'sha256',
  9: 'sha384',
  10: 'sha512',
  11: 'sha224',
};

const CIPHERS: Readonly<Record<number, { name: string; keyBytes: number }>> = {
  7: { name: 'aes-128-cfb', keyBytes: 16 },
  8: { name: 'aes-192-cfb', keyBytes: 24 },
  9: { name: 'aes-256-cfb', keyBytes: 32 },
};

// The format's maximum (count octet 255), which gpg 2.4 also uses for its exports: about 0.1 s of
// SHA-1, the most work a crafted file can ask of one unlock.
const MAX_S2K_BYTES = 65_011_712;

/** Why the builtin store cannot open SECRET, or undefined when it can. */
export function unsupportedProtection(secret: V5Secret): string | undefined {
  if (secret.kind !== 'protected') return undefined;
  if (!CIPHERS[secret.cipher]) return `cipher ${secret.cipher}`;
  if (!HASHES[secret.s2k.hash]) return `S2K hash ${secret.s2k.hash}`;
  if (secret.iv.length !== 16) return `a ${secret.iv.length}-byte IV`;
  return undefined;
}

function deriveKey(s2k: S2kSpec, passphrase: Buffer, keyBytes: number): Buffer {
  const hash = HASHES[s2k.hash]!;
  const input = Buffer.concat([s2k.salt, passphrase]);
  const total =
    s2k.type === 3 ? Math.max(Math.min(s2k.count, MAX_S2K_BYTES), input.length) : input.length;
  // One chunk of repeated salt‖passphrase so that millions of octets are a few hundred updates.
  const reps = Math.max(1, Math.floor(65536 / Math.max(1, input.length)));
  const chunk = Buffer.concat(Array.from({ length: reps }, () => input));
  const parts: Buffer[] = [];
  // Longer keys than the hash gives: more contexts, the i-th preloaded with i zero octets.
  for (let i = 0, got = 0; got < keyBytes; i++) {
    const h = createHash(hash).update(Buffer.alloc(i));
    let left = total;
    while (left >= chunk.length) {
      h.update(chunk);
      left -= chunk.length;
    }
    if (left > 0) h.update(chunk.subarray(0, left));
    const digest = h.digest();
    parts.push(digest);
    got += digest.length;
  }
  chunk.fill(0);
  input.fill(0);
  const key = Buffer.concat(parts);
  for (const p of parts) p.fill(0);
  return key.subarray(0, keyBytes);
}

function sum16(b: Uint8Array): number {
  let s = 0;
  for (const x of b) s = (s + x) & 0xffff;
  return s;
}

/**
 * The secret key material (the MPIs, without check) of SECRET, decrypted with PASSPHRASE when it
 * is protected. Wrong passphrase → GpgError BAD_PASSPHRASE. The caller zeroes the result.
 */
export function openV5Secret(secret: V5Secret, passphrase: Buffer | null): Buffer {
  if (secret.kind === 'stub') throw gpgErr('NO_SECKEY', 'the secret key is not in this export');
  if (secret.kind === 'clear') {
    if (sum16(secret.material) !== ((secret.checksum[0]! << 8) | secret.checksum[1]!)) {
      throw gpgErr('INV_DATA', 'the secret key checksum does not match');
    }
    return Buffer.from(secret.material);
  }
  if (passphrase === null) throw gpgErr('BAD_PASSPHRASE', 'the key needs a passphrase');
  const why = unsupportedProtection(secret);
  if (why) throw gpgErr('NOT_SUPPORTED', `the key is protected with ${why}`);
  const cipher = CIPHERS[secret.cipher]!;
  const key = deriveKey(secret.s2k, passphrase, cipher.keyBytes);
  let plain: Buffer;
  try {
    const d = createDecipheriv(cipher.name, key, secret.iv);
    plain = Buffer.concat([d.update(secret.data), d.final()]);
  } finally {
    key.fill(0);
  }
  const checkBytes = secret.usage === 254 ? 20 : 2;
  if (plain.length < checkBytes) {
    plain.fill(0);
    throw gpgErr('BAD_PASSPHRASE');
  }
  const material = plain.subarray(0, plain.length - checkBytes);
  const check = plain.subarray(plain.length - checkBytes);
  const ok =
    secret.usage === 254
      ? timingSafeEqual(createHash('sha1').update(material).digest(), check)
      : sum16(material) === ((check[0]! << 8) | check[1]!);
  if (!ok) {
    plain.fill(0);
    throw gpgErr('BAD_PASSPHRASE');
  }
  const out = Buffer.from(material);
  plain.fill(0);
  return out;
}
