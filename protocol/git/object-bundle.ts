// The git objects a server sends along with a commit it wants signed, so the holder can prove
// which files the commit changes (clear-signing.md §2.3). One flat, length-prefixed encoding:
//
//   "KTGO" | u8 version = 1 | u8 hash (1 = SHA-1, 2 = SHA-256) | u8 flags | u8 0
//   then per object: id (20 or 32 bytes) | u32 BE length | `<type> <size>\0<body>`
//
// Every id is a claim; the holder hashes each object itself and rejects the bundle when one does
// not match. Flag bit 0 says the sender stopped at a limit (so missing objects are expected and
// the list is reported as too large rather than as broken); it changes wording, never a verdict.

import { GitObjectError, idBytes, objectId, parseLoose, type GitHash } from './objects.js';
import type { GitObjectType } from './objects.js';

export const GIT_OBJECT_LIMITS = {
  /** All objects of one signature together, headers included. */
  bundleBytes: 16 * 1024 * 1024,
  objects: 20_000,
  /** Directory levels below the root tree a proof descends. */
  treeDepth: 64,
  pathBytes: 4096,
  /** Parent commits sent (octopus merges beyond this are not proven). */
  parents: 16,
  /** Changed paths in one list; also bounds the work a tree shared by many paths can cause. */
  changes: 100_000,
} as const;

const MAGIC = Buffer.from('KTGO', 'latin1');
const VERSION = 1;
const HEAD_BYTES = 8;
const HASH_CODES: Readonly<Record<GitHash, number>> = { sha1: 1, sha256: 2 };
const FLAG_TRUNCATED = 1;

export interface GitObject {
  type: GitObjectType;
  body: Buffer;
}

export interface ObjectBundle {
  hash: GitHash;
  /** The sender stopped at a limit: some objects a proof needs were left out on purpose. */
  truncated: boolean;
  /** By the id the holder computed (equal to the one sent, or the bundle is refused). */
  objects: Map<string, GitObject>;
}

/** The bytes of a bundle; LOOSE is each object in its hashed form. */
export function encodeBundle(
  hash: GitHash,
  loose: Iterable<[id: string, bytes: Uint8Array]>,
  truncated: boolean,
): Buffer {
  const parts: Buffer[] = [
    Buffer.concat([
      MAGIC,
      Buffer.from([VERSION, HASH_CODES[hash], truncated ? FLAG_TRUNCATED : 0, 0]),
    ]),
  ];
  for (const [id, bytes] of loose) {
    const len = Buffer.alloc(4);
    len.writeUInt32BE(bytes.length);
    parts.push(Buffer.from(id, 'hex'), len, Buffer.from(bytes));
  }
  return Buffer.concat(parts);
}

/** How many bytes one object adds to a bundle, for a sender keeping under bundleBytes. */
export function bundleCost(hash: GitHash, loose: Uint8Array): number {
  return idBytes(hash) + 4 + loose.length;
}

export const BUNDLE_HEAD_BYTES = HEAD_BYTES;

/**
 * Reads and checks a bundle: format, limits, and every object's hash against its id. Throws
 * GitObjectError (with a sentence for the user) on anything else.
 */
export function decodeBundle(bytes: Uint8Array): ObjectBundle {
  const buf = Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  if (buf.length > GIT_OBJECT_LIMITS.bundleBytes) throw new GitObjectError('too large');
  if (buf.length < HEAD_BYTES || !buf.subarray(0, 4).equals(MAGIC)) {
    throw new GitObjectError('not a git object bundle');
  }
  if (buf[4] !== VERSION) throw new GitObjectError(`unknown object bundle version ${buf[4]}`);
  const hash = buf[5] === 1 ? 'sha1' : buf[5] === 2 ? 'sha256' : undefined;
  if (!hash) throw new GitObjectError('unknown object format in the bundle');
  const width = idBytes(hash);
  const objects = new Map<string, GitObject>();
  let at = HEAD_BYTES;
  while (at < buf.length) {
    if (objects.size >= GIT_OBJECT_LIMITS.objects) throw new GitObjectError('too large');
    if (at + width + 4 > buf.length) throw new GitObjectError('truncated object bundle');
    const id = buf.toString('hex', at, at + width);
    const len = buf.readUInt32BE(at + width);
    const start = at + width + 4;
    if (len > buf.length - start) throw new GitObjectError('truncated object bundle');
    const loose = buf.subarray(start, start + len);
    if (objectId(hash, loose) !== id) {
      throw new GitObjectError(`object ${id.slice(0, 12)} does not hash to its id`);
    }
    if (!objects.has(id)) objects.set(id, parseLoose(loose));
    at = start + len;
  }
  return { hash, truncated: (buf[6]! & FLAG_TRUNCATED) !== 0, objects };
}
