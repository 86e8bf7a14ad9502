// One audit record: its fields, its canonical bytes and how a line is checked against the record
// before it (see audit.ts for the chain). Values only: no files here.

import { createHash } from 'node:crypto';

export type AuditDecision = 'allowed' | 'confirmed' | 'denied' | 'canceled' | 'failed';
/** `local`: a signature for the holder's own socket, where the requester is this machine. */
export type AuditVerification = 'blind' | 'verified' | 'holder-built' | 'local';

/**
 * What the holder records about one request. Deliberately has no field that could carry a
 * passphrase, plaintext, session key or ciphertext; only listed fields reach the file.
 */
export interface AuditInput {
  /** Defaults to the time of append. */
  time?: Date;
  front: 'local' | 'ssh' | 'relay';
  /** The connection's far end as the transport sees it (address, relay route). */
  peer?: string;
  host?: string;
  tokenId?: string;
  fingerprint?: string;
  /** Absent for `channel` records: the stream failed before any key was named. */
  keygrip?: string;
  /**
   * `channel`: a relayed stream's sealed channel failed (tampering, wrong secret). `lock`: the
   * user made the holder forget an unlocked key (`keytether lock`, the page's "lock now").
   */
  op: 'sign' | 'decrypt' | 'ssh-sign' | 'channel' | 'lock';
  /** libgcrypt hash id from SETHASH (8 = SHA-256…), or its name; digits are stored as a number. */
  hashAlgo?: number | string;
  /** The digest that was (or would have been) signed; not secret. */
  digest?: Uint8Array | string;
  decision: AuditDecision;
  reason?: string;
  /** The policy rule that decided. */
  rule?: string;
  durationMs?: number;
  /** Defaults to `blind` for remote signatures: the holder saw only a digest. */
  verification?: AuditVerification;
  /** For `verified` signatures: what was signed (the payload itself is never recorded). */
  content?: {
    kind: string;
    bytes: number;
    sha256: string;
    summary: string;
    /** A commit's changed files: proven from git objects, or why not (first paths only). */
    files?: { proven: boolean; count?: number; first?: string[]; why?: string };
  };
  /** For `ssh-sign`: what the signed data says it is (the data itself is not recorded). */
  ssh?: {
    /** `login`, `sshsig` (`ssh-keygen -Y sign`), `unknown`. */
    purpose: string;
    /** The remote user of a login, the namespace of an SSHSIG (`git`). */
    subject?: string;
    /** The proven destination host key (`SHA256:…`) and its known_hosts name. */
    destination?: string;
    destinationName?: string;
    dataSha256: string;
  };
  requester?: {
    pid?: number;
    uid?: number;
    command?: string;
    user?: string;
    /** The requesting process's name and its parent chain, as its machine reported them. */
    name?: string;
    parents?: { pid: number; name: string; command?: string }[];
  };
}

const MAX_AUDITED_PARENTS = 8;

export class AuditError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'AuditError';
  }
}

export const GENESIS_PREV = '0'.repeat(64);
/** No honest record comes near this; a longer line is damage, and verify must not buffer it all. */
export const MAX_RECORD_BYTES = 64 * 1024;
export const NL = 0x0a;

export function sha256Hex(data: Uint8Array | string): string {
  return createHash('sha256').update(data).digest('hex');
}

export type Json = string | number | boolean | null | Json[] | { [k: string]: Json | undefined };

/** Sorted keys, no whitespace, undefined members dropped: one byte string per value. */
export function canonicalJson(value: Json): string {
  if (value === null || typeof value !== 'object') {
    if (typeof value === 'number' && !Number.isFinite(value)) {
      throw new AuditError('audit records hold finite numbers only');
    }
    return JSON.stringify(value);
  }
  if (Array.isArray(value)) return `[${value.map(canonicalJson).join(',')}]`;
  const keys = Object.keys(value)
    .filter((k) => value[k] !== undefined)
    .sort();
  return `{${keys.map((k) => `${JSON.stringify(k)}:${canonicalJson(value[k] as Json)}`).join(',')}}`;
}

function clip(s: string | undefined, max: number): string | undefined {
  if (s === undefined) return undefined;
  return s.length > max ? `${s.slice(0, max)}…` : s;
}

function intOrUndefined(n: number | undefined): number | undefined {
  return n !== undefined && Number.isFinite(n) ? Math.round(n) : undefined;
}

function digestHex(d: Uint8Array | string | undefined): string | undefined {
  if (d === undefined) return undefined;
  if (typeof d === 'string') {
    // Never fail a request over the form of its digest; keep what was given, bounded.
    return /^[0-9a-fA-F]*$/.test(d) ? d.slice(0, 256).toLowerCase() : clip(d, 256);
  }
  return Buffer.from(d.buffer, d.byteOffset, Math.min(d.byteLength, 128)).toString('hex');
}

/** The record's fields before seq/prev/hash are added; picks known fields only. */
export function recordBody(rec: AuditInput): { [k: string]: Json | undefined } {
  const verification =
    rec.verification ?? (rec.front !== 'local' && rec.op === 'sign' ? 'blind' : undefined);
  const r = rec.requester;
  return {
    time: (rec.time ?? new Date()).toISOString(),
    front: rec.front,
    peer: clip(rec.peer, 256),
    host: clip(rec.host, 256),
    tokenId: clip(rec.tokenId, 128),
    fingerprint: clip(rec.fingerprint, 128),
    keygrip: clip(rec.keygrip, 128),
    op: rec.op,
    hashAlgo:
      typeof rec.hashAlgo === 'string' && !/^\d{1,6}$/.test(rec.hashAlgo)
        ? clip(rec.hashAlgo, 32)
        : intOrUndefined(rec.hashAlgo === undefined ? undefined : Number(rec.hashAlgo)),
    digest: digestHex(rec.digest),
    decision: rec.decision,
    reason: clip(rec.reason, 1024),
    rule: clip(rec.rule, 1024),
    durationMs: intOrUndefined(rec.durationMs),
    verification,
    content: rec.content
      ? {
          kind: clip(rec.content.kind, 32),
          bytes: intOrUndefined(rec.content.bytes),
          sha256: clip(rec.content.sha256, 64),
          summary: clip(rec.content.summary, 300),
          files: rec.content.files
            ? {
                proven: rec.content.files.proven === true,
                count: intOrUndefined(rec.content.files.count),
                first: rec.content.files.first?.slice(0, 8).map((p) => clip(p, 200) ?? ''),
                why: clip(rec.content.files.why, 200),
              }
            : undefined,
        }
      : undefined,
    ssh: rec.ssh
      ? {
          purpose: clip(rec.ssh.purpose, 16),
          subject: clip(rec.ssh.subject, 256),
          destination: clip(rec.ssh.destination, 128),
          destinationName: clip(rec.ssh.destinationName, 256),
          dataSha256: clip(rec.ssh.dataSha256, 64),
        }
      : undefined,
    requester: r
      ? {
          pid: intOrUndefined(r.pid),
          uid: intOrUndefined(r.uid),
          command: clip(r.command, 1024),
          user: clip(r.user, 256),
          name: clip(r.name, 64),
          parents: r.parents?.slice(0, MAX_AUDITED_PARENTS).map((p) => ({
            pid: intOrUndefined(p.pid),
            name: clip(p.name, 64),
            command: clip(p.command, 256),
          })),
        }
      : undefined,
  };
}

/** Why a line is not the record that should follow `prev`/`seq`, or undefined if it is. */
export function checkLine(
  line: Buffer,
  expect: { seq: number; prev: string },
): { reason: string } | { seq: number } {
  if (line.length === 0) return { reason: 'empty line' };
  let parsed: unknown;
  try {
    parsed = JSON.parse(line.toString('utf8'));
  } catch {
    return { reason: 'not valid JSON' };
  }
  if (parsed === null || typeof parsed !== 'object' || Array.isArray(parsed)) {
    return { reason: 'not a JSON object' };
  }
  const obj = parsed as { [k: string]: Json | undefined };
  const { seq, prev, hash } = obj;
  if (typeof seq !== 'number' || !Number.isSafeInteger(seq)) return { reason: 'no valid seq' };
  if (typeof prev !== 'string' || !/^[0-9a-f]{64}$/.test(prev)) {
    return { reason: 'no valid prev hash' };
  }
  if (typeof hash !== 'string' || !/^[0-9a-f]{64}$/.test(hash)) {
    return { reason: 'no valid hash' };
  }
  let canonical: string;
  try {
    canonical = canonicalJson(obj);
  } catch {
    return { reason: 'not a valid record' };
  }
  if (!Buffer.from(canonical, 'utf8').equals(line)) {
    return { reason: 'its bytes are not in canonical form (the line was edited)' };
  }
  const withoutHash = { ...obj, hash: undefined };
  if (sha256Hex(canonicalJson(withoutHash)) !== hash) {
    return { reason: 'its hash does not match its contents (the record was edited)' };
  }
  if (seq !== expect.seq) {
    return {
      reason: `its sequence number is ${seq}, expected ${expect.seq} (records are missing, repeated or reordered)`,
    };
  }
  if (prev !== expect.prev) {
    return { reason: 'its prev hash does not match the record before it' };
  }
  return { seq };
}
