// What gpg hashes for a v4 data signature (RFC 4880 §5.2.4), rebuilt at the holder so that a
// digest the server sends in SETHASH can be checked against bytes the holder has seen: if
// H(data' ‖ header ‖ trailer) equals the digest for a header the holder would accept (a data
// signature, type 0x00 or 0x01, by this key, at about this time), the signature binds that data
// and nothing else. Any other digest — a key certification, a subkey binding, a revocation, or
// data the holder was not shown — finds no header, and the request stays blind.
//
// Header layouts are gpg's (g10/sign.c, build-packet.c at 2.2.40 and 2.4.x): hashed subpackets
// 33 (issuer fingerprint), 2 (creation time), optionally 28 (signer's user id: the mailbox gpg
// matched for `-u MAIL`). Anything else gpg can add (notations, policy URL, key block, expiry)
// is not searched: such a request does not verify and is treated as blind, failing closed.

import crypto, { createHash, type Hash } from 'node:crypto';

/** How gpg canonicalises the data before hashing it (reference/clear-signing.md §1.2). */
export type DataMode = 'binary' | 'text' | 'clearsign';

/** OpenPGP hash ids (as in SETHASH) the holder can recompute; weak ones are never offered. */
const HASH_NAMES: ReadonlyMap<number, string> = new Map([
  [8, 'sha256'],
  [9, 'sha384'],
  [10, 'sha512'],
  [11, 'sha224'],
]);

/** MD5, SHA-1, RIPEMD-160: collisions let a shown payload stand for a certification. */
export function isWeakHash(hashAlgo: number): boolean {
  return hashAlgo === 1 || hashAlgo === 2 || hashAlgo === 3;
}

const CR = 0x0d;
const LF = 0x0a;

function isBlankOrCr(b: number): boolean {
  return b === 0x20 || b === 0x09 || b === CR;
}

/** The bytes gpg feeds to the hash for MODE; the signature type is 0x00 for binary, else 0x01. */
export function canonicalData(data: Uint8Array, mode: DataMode): Buffer {
  const buf = Buffer.from(data.buffer, data.byteOffset, data.byteLength);
  if (mode === 'binary') return buf;
  const lines: { text: Buffer; lf: boolean }[] = [];
  for (let start = 0; ;) {
    const nl = buf.indexOf(LF, start);
    if (nl === -1) {
      lines.push({ text: buf.subarray(start), lf: false });
      break;
    }
    lines.push({ text: buf.subarray(start, nl), lf: true });
    start = nl + 1;
  }
  const crlf = Buffer.from([CR, LF]);
  const out: Buffer[] = [];
  if (mode === 'text') {
    // --textmode: a line that ended in LF loses its trailing CRs and ends in CR LF instead.
    for (const { text, lf } of lines) {
      if (!lf) {
        out.push(text);
        continue;
      }
      let e = text.length;
      while (e > 0 && text[e - 1] === CR) e--;
      out.push(text.subarray(0, e), crlf);
    }
    return Buffer.concat(out);
  }
  // --clearsign: lines lose trailing blanks; CR LF goes between lines, none after the last, and
  // the empty "line" after a final LF is not one.
  if (lines.length > 1 && lines.at(-1)!.text.length === 0) lines.pop();
  lines.forEach(({ text }, i) => {
    let e = text.length;
    while (e > 0 && isBlankOrCr(text[e - 1]!)) e--;
    if (i > 0) out.push(crlf);
    out.push(text.subarray(0, e));
  });
  return Buffer.concat(out);
}

export interface HeaderFields {
  /** 0x00 binary document, 0x01 canonical text. */
  sigType: 0x00 | 0x01;
  /** OpenPGP public-key algorithm id of the signing key (1 RSA, 19 ECDSA, 22 EdDSA…). */
  pubkeyAlgo: number;
  hashAlgo: number;
  /** The signing (sub)key's v4 fingerprint, 20 bytes. */
  issuerFingerprint: Uint8Array;
  /** Creation time, seconds since the epoch. */
  created: number;
  /** Subpacket 28's text, when gpg adds one. */
  signerUid?: string;
  /** gpg writes 33 then 2; kept as a field so a different layout can be searched explicitly. */
  order?: 'fpr-first' | 'time-first';
}

function subpacket(type: number, body: Uint8Array): Buffer {
  const n = body.length + 1;
  let len: Buffer;
  if (n < 192) len = Buffer.from([n]);
  else if (n < 8384) len = Buffer.from([((n - 192) >> 8) + 192, (n - 192) & 0xff]);
  else {
    len = Buffer.alloc(5);
    len[0] = 0xff;
    len.writeUInt32BE(n, 1);
  }
  return Buffer.concat([len, Buffer.from([type]), body]);
}

/** The hashed part of a v4 signature packet plus its trailer: what follows the data in the hash. */
export function v4HashedSuffix(f: HeaderFields): Buffer {
  if (f.issuerFingerprint.length !== 20) throw new RangeError('a v4 fingerprint is 20 bytes');
  const time = Buffer.alloc(4);
  time.writeUInt32BE(f.created >>> 0);
  const fpr = subpacket(33, Buffer.concat([Buffer.from([4]), f.issuerFingerprint]));
  const created = subpacket(2, time);
  const parts = f.order === 'time-first' ? [created, fpr] : [fpr, created];
  if (f.signerUid !== undefined) parts.push(subpacket(28, Buffer.from(f.signerUid, 'utf8')));
  const hashed = Buffer.concat(parts);
  if (hashed.length > 0xffff) throw new RangeError('hashed subpackets too long');
  const head = Buffer.alloc(6);
  head[0] = 4;
  head[1] = f.sigType;
  head[2] = f.pubkeyAlgo;
  head[3] = f.hashAlgo;
  head.writeUInt16BE(hashed.length, 4);
  const trailer = Buffer.alloc(6);
  trailer[0] = 4;
  trailer[1] = 0xff;
  trailer.writeUInt32BE(head.length + hashed.length, 2);
  return Buffer.concat([head, hashed, trailer]);
}

/** The digest gpg would send in SETHASH for DATA signed with header F in MODE. */
export function v4Digest(data: Uint8Array, mode: DataMode, f: HeaderFields): Buffer {
  const name = HASH_NAMES.get(f.hashAlgo);
  if (name === undefined) throw new RangeError(`hash algorithm ${f.hashAlgo} is not searched`);
  return createHash(name).update(canonicalData(data, mode)).update(v4HashedSuffix(f)).digest();
}

export interface DigestSearch {
  data: Uint8Array;
  /** The digest from SETHASH and its algorithm. */
  digest: Uint8Array;
  hashAlgo: number;
  pubkeyAlgo: number;
  issuerFingerprint: Uint8Array;
  /** The mailboxes of the key's user ids (candidates for subpacket 28). */
  mailboxes: readonly string[];
  /** Seconds since the epoch around which gpg made the signature (the request's time). */
  around: number;
  /** Seconds searched before and after `around`. */
  before?: number;
  after?: number;
  /** Modes to try; all three by default. */
  modes?: readonly DataMode[];
}

export interface DigestMatch {
  mode: DataMode;
  sigType: 0x00 | 0x01;
  created: number;
  signerUid?: string;
  /** Headers hashed before the match (for benchmarks and the audit). */
  tried: number;
}

// Small payloads (a commit, a tag) are hashed whole for each candidate with crypto.hash, which
// makes no Hash object: a copied Hash state per candidate left hundreds of native objects per
// search for the garbage collector, and its pauses were the search's p99 (clear-sign bench).
// Above this size hashing the data once and copying its state is cheaper.
const ONE_SHOT_MAX_BYTES = 2048;
const oneShot = typeof crypto.hash === 'function' ? crypto.hash : undefined;

/**
 * The hex digest of DATA' ‖ a header with FIELDS for a given creation time, the time written in
 * place rather than the header rebuilt. STATE is DATA' already hashed (made on first use).
 */
function headerHasher(
  name: string,
  data: Buffer,
  state: () => Hash,
  fields: HeaderFields,
): { fields: HeaderFields; at: (created: number) => string } {
  const probe = 0x01020304;
  const suffix = v4HashedSuffix({ ...fields, created: probe });
  // Subpacket 2's body: after the version/type/algorithms/length (6 bytes), the fingerprint
  // subpacket when it comes first (23), and subpacket 2's own length and type (2).
  const offset = 6 + (fields.order === 'time-first' ? 0 : 23) + 2;
  if (suffix.readUInt32BE(offset) !== probe) {
    const rebuilt = (created: number) => v4HashedSuffix({ ...fields, created });
    return { fields, at: (created) => state().copy().update(rebuilt(created)).digest('hex') };
  }
  if (oneShot && data.length <= ONE_SHOT_MAX_BYTES) {
    const whole = Buffer.concat([data, suffix]);
    const at = data.length + offset;
    return {
      fields,
      at: (created) => {
        whole.writeUInt32BE(created >>> 0, at);
        return oneShot(name, whole, 'hex');
      },
    };
  }
  return {
    fields,
    at: (created) => {
      suffix.writeUInt32BE(created >>> 0, offset);
      return state().copy().update(suffix).digest('hex');
    },
  };
}

// Nearest times first: a signature made a moment before the request is the common case.
function timesAround(around: number, before: number, after: number): number[] {
  const out: number[] = [];
  for (let d = 0; d <= Math.max(before, after); d++) {
    if (d <= before) out.push(around - d);
    if (d > 0 && d <= after) out.push(around + d);
  }
  return out;
}

/**
 * Finds the data-signature header that makes DATA hash to DIGEST, or undefined. Only types 0x00
 * and 0x01 by the given key are searched, so no match can be a certification or a binding.
 * A large payload is hashed once per mode and each header on a copy of that state; a small one
 * is hashed whole per header, which makes no garbage the collector must finalise.
 */
export function findDataSignature(s: DigestSearch): DigestMatch | undefined {
  const name = HASH_NAMES.get(s.hashAlgo);
  if (name === undefined || isWeakHash(s.hashAlgo)) return undefined;
  const want = Buffer.from(s.digest).toString('hex');
  const uids: (string | undefined)[] = [undefined, ...new Set(s.mailboxes)];
  const times = timesAround(s.around, s.before ?? 30, s.after ?? 30);
  let tried = 0;
  for (const mode of s.modes ?? (['binary', 'text', 'clearsign'] as const)) {
    const sigType = mode === 'binary' ? 0x00 : 0x01;
    const data = canonicalData(s.data, mode);
    let hashed: Hash | undefined;
    const state = () => (hashed ??= createHash(name).update(data));
    // One header per user id and layout, its creation time rewritten in place for each second
    // searched: the search is hashing, not building buffers (clear-signing bench: p99 ≤ 2 ms).
    const headers = uids.flatMap((signerUid) =>
      (['fpr-first', 'time-first'] as const).map((order) =>
        headerHasher(name, data, state, {
          sigType,
          pubkeyAlgo: s.pubkeyAlgo,
          hashAlgo: s.hashAlgo,
          issuerFingerprint: s.issuerFingerprint,
          created: 0,
          ...(signerUid !== undefined ? { signerUid } : {}),
          order,
        }),
      ),
    );
    for (const created of times) {
      for (const h of headers) {
        tried++;
        if (h.at(created) === want) {
          return {
            mode,
            sigType,
            created,
            ...(h.fields.signerUid !== undefined ? { signerUid: h.fields.signerUid } : {}),
            tried,
          };
        }
      }
    }
  }
  return undefined;
}
