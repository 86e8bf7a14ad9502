// A gpg 2.4 key whose packets are version 5 (Ed448 signing, X448 encryption), which openpgp.js
// cannot read: its parts as the keystore lists and serves them, its public certificate, and its
// secrets opened on demand. The key file holds the export's own packets, armored.

import * as openpgp from 'openpgp';
import type { KeyUsage } from '../../protocol/keyholder.js';
import { CURVES } from '../../protocol/curves.js';
import { keygrip as computeKeygrip } from '../../protocol/keygrip.js';
import {
  PacketFormatError,
  encodePacket,
  readPackets,
  type RawPacket,
} from '../../protocol/openpgp/packets.js';
import {
  TAG_PUBLIC_KEY,
  TAG_PUBLIC_SUBKEY,
  TAG_SECRET_KEY,
  TAG_SECRET_SUBKEY,
  parseV5KeyPacket,
  type V5KeyPacket,
} from '../../protocol/openpgp/v5-key-packet.js';
import type { SecretKeyMaterial } from '../crypto/unlocked-key.js';
import { fixedLength } from '../crypto/bytes.js';
import { defaultUsage, flagsToUsage, type KeyPart } from './key-part.js';
import { openV5Secret } from './v5-secret.js';
import { armorWithChecksum } from './armor.js';

export const PACKET_LIMITS = { maxPackets: 10_000, maxBodyBytes: 1024 * 1024 };
const TAG_SIGNATURE = 2;
const TAG_TRUST = 12;
const TAG_USER_ID = 13;

export interface V5Key {
  fingerprint: string;
  /** The export's packets, as they came. */
  binary: Buffer;
  uids: string[];
  /** Primary first, then subkeys, with the parts' parsed packets alongside. */
  parts: KeyPart[];
  packets: V5KeyPacket[];
}

/** Key flags and creation time of a v4/v5 signature's hashed area; undefined if unreadable. */
function signatureFlags(body: Uint8Array): { flags?: number; created: number } | undefined {
  if ((body[0] !== 4 && body[0] !== 5) || body.length < 6) return undefined;
  const end = 6 + ((body[4]! << 8) | body[5]!);
  if (end > body.length) return undefined;
  let off = 6;
  let flags: number | undefined;
  let created = 0;
  while (off < end) {
    let len = body[off++]!;
    if (len >= 192 && len < 255) len = ((len - 192) << 8) + (body[off++] ?? 0) + 192;
    else if (len === 255) {
      len = Buffer.from(body.subarray(off, off + 4)).readUInt32BE(0);
      off += 4;
    }
    if (len === 0 || off + len > end) return undefined;
    const type = body[off]! & 0x7f;
    if (type === 27 && len > 1) flags = body[off + 1];
    if (type === 2 && len === 5)
      created = Buffer.from(body.subarray(off + 1, off + 5)).readUInt32BE(0);
    off += len;
  }
  return { flags, created };
}

function describe(packet: V5KeyPacket, primary: string, flags: number | undefined): KeyPart {
  const c = CURVES[packet.curve];
  const q = fixedLength(packet.q, c.pointBytes!);
  const publicKey = q ? { kind: 'ecc' as const, curve: packet.curve, q } : undefined;
  const kind: SecretKeyMaterial['kind'] = packet.algorithm === 18 ? 'ecdh' : 'eddsa';
  const isPrimary = packet.tag === TAG_SECRET_KEY || packet.tag === TAG_PUBLIC_KEY;
  const usage: KeyUsage[] =
    flags === undefined ? defaultUsage(kind, isPrimary) : flagsToUsage(flags);
  return {
    fingerprint: packet.fingerprint,
    primaryFingerprint: primary,
    isPrimary,
    algorithm: packet.curve === 'Ed448' ? 'ed448' : 'cv448',
    keygrip: publicKey ? computeKeygrip(publicKey) : undefined,
    publicKey,
    materialKind: publicKey ? kind : undefined,
    usage,
    secret: packet.secret !== undefined && packet.secret.kind !== 'stub',
    protection: packet.secret?.kind === 'clear' ? 'C' : 'P',
  };
}

/** One transferable key: PACKETS of BINARY from its primary key packet up to the next one. */
function parseV5Key(binary: Uint8Array, packets: RawPacket[]): V5Key {
  const own = Buffer.from(binary.subarray(packets[0]!.start, packets.at(-1)!.end));
  const keys: V5KeyPacket[] = [];
  const uids: string[] = [];
  // The newest self-signature's flags for each key packet (signatures follow what they bind).
  const newest = new Map<V5KeyPacket, { flags?: number; created: number }>();
  let current: V5KeyPacket | undefined;
  for (const p of packets) {
    const body = binary.subarray(p.bodyStart, p.end);
    // The group starts at its primary key packet: every later key packet is a subkey.
    if ([TAG_SECRET_KEY, TAG_PUBLIC_KEY, TAG_SECRET_SUBKEY, TAG_PUBLIC_SUBKEY].includes(p.tag)) {
      current = parseV5KeyPacket(p.tag, body);
      keys.push(current);
    } else if (p.tag === TAG_USER_ID) {
      uids.push(Buffer.from(body).toString('utf8'));
      current = keys[0];
    } else if (p.tag === TAG_SIGNATURE && current) {
      const sig = signatureFlags(body);
      const seen = newest.get(current);
      if (sig?.flags !== undefined && (!seen || sig.created >= seen.created)) {
        newest.set(current, sig);
      }
    }
  }
  const primary = keys[0]!;
  return {
    fingerprint: primary.fingerprint,
    binary: own,
    uids,
    parts: keys.map((k) => describe(k, primary.fingerprint, newest.get(k)?.flags)),
    packets: keys,
  };
}

function isPrimaryTag(tag: number): boolean {
  return tag === TAG_SECRET_KEY || tag === TAG_PUBLIC_KEY;
}

/**
 * Splits a binary key export into its v5 keys and the bytes of every other transferable key,
 * for openpgp.js. A PacketFormatError for malformed framing or v5 packets.
 */
export function splitKeyExport(binary: Uint8Array): { v5: V5Key[]; others: Uint8Array[] } {
  const packets = readPackets(binary, PACKET_LIMITS);
  const groups: RawPacket[][] = [];
  for (const p of packets) {
    if (isPrimaryTag(p.tag) || groups.length === 0) groups.push([p]);
    else groups.at(-1)!.push(p);
  }
  const v5: V5Key[] = [];
  const others: Uint8Array[] = [];
  for (const g of groups) {
    const head = g[0]!;
    if (isPrimaryTag(head.tag) && binary[head.bodyStart] === 5) v5.push(parseV5Key(binary, g));
    else others.push(binary.subarray(head.start, g.at(-1)!.end));
  }
  return { v5, others };
}

/** The key file's text: the export's packets as one armored private key block. */
export function v5KeyFileText(key: V5Key): string {
  return armorWithChecksum(openpgp.enums.armor.privateKey, key.binary);
}

export async function readV5KeyFile(text: string): Promise<V5Key> {
  const { data } = await openpgp.unarmor(text);
  const { v5 } = splitKeyExport(data as Uint8Array);
  if (v5.length !== 1) throw new PacketFormatError('the file does not hold one v5 key');
  return v5[0]!;
}

/** The certificate: every packet but secrets and trust, key packets as their public forms. */
export function v5PublicBinary(key: V5Key): Buffer {
  const packets = readPackets(key.binary, PACKET_LIMITS);
  const out: Buffer[] = [];
  let k = 0;
  for (const p of packets) {
    if (p.tag === TAG_TRUST) continue;
    if ([TAG_SECRET_KEY, TAG_PUBLIC_KEY, TAG_SECRET_SUBKEY, TAG_PUBLIC_SUBKEY].includes(p.tag)) {
      const parsed = key.packets[k++]!;
      const tag = isPrimaryTag(p.tag) ? TAG_PUBLIC_KEY : TAG_PUBLIC_SUBKEY;
      out.push(encodePacket(tag, parsed.publicBody));
    } else {
      out.push(Buffer.from(key.binary.subarray(p.start, p.end)));
    }
  }
  return Buffer.concat(out);
}

/**
 * The secret material of the part with FINGERPRINT, opened with PASSPHRASE (GpgError
 * BAD_PASSPHRASE when wrong). The caller zeroes it.
 */
export function v5SecretMaterial(
  key: V5Key,
  part: KeyPart,
  passphrase: Buffer | null,
): SecretKeyMaterial | undefined {
  const i = key.parts.indexOf(part);
  const packet = key.packets[i];
  const pub = part.publicKey;
  if (!packet?.secret || !pub || pub.kind !== 'ecc') return undefined;
  const plain = openV5Secret(packet.secret, passphrase);
  try {
    // One MPI: Ed448's seed or X448's scalar, both in their native byte order.
    const bits = plain.length >= 2 ? (plain[0]! << 8) | plain[1]! : -1;
    const len = Math.ceil(bits / 8);
    if (bits < 0 || plain.length !== 2 + len) return undefined;
    const value = Buffer.from(plain.subarray(2));
    return part.materialKind === 'eddsa'
      ? { kind: 'eddsa', curve: pub.curve, q: pub.q, seed: value }
      : { kind: 'ecdh', curve: pub.curve, q: pub.q, d: value };
  } finally {
    plain.fill(0);
  }
}
