// The audit trail: `audit.jsonl`, one canonical JSON object per line, hash-chained so that
// `keytether audit verify` notices any changed, removed or reordered byte. Each record is written
// (and, with `audit-sync = "fsync"`, synced) before the operation's result goes back.
//
// Chain: record n carries `seq` = n (from 1), `prev` = SHA-256 of record n-1's line bytes (without
// the newline; 64 zeros for the first), and `hash` = SHA-256 of the canonical JSON of record n
// without `hash`. The line itself is the canonical JSON (keys sorted, no spaces) of the whole
// record, so a byte that changes nothing semantically still breaks verification.

import { createHash } from 'node:crypto';
import { writeSync } from 'node:fs';
import { open } from 'node:fs/promises';
import type { FileHandle } from 'node:fs/promises';

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
  /** `channel`: a relayed stream's sealed channel failed (tampering, wrong secret). */
  op: 'sign' | 'decrypt' | 'channel';
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

export type AuditVerifyResult =
  { ok: true; records: number } | { ok: false; record: number; reason: string };

export const GENESIS_PREV = '0'.repeat(64);
/** No honest record comes near this; a longer line is damage, and verify must not buffer it all. */
export const MAX_RECORD_BYTES = 64 * 1024;
const NL = 0x0a;

function sha256Hex(data: Uint8Array | string): string {
  return createHash('sha256').update(data).digest('hex');
}

type Json = string | number | boolean | null | Json[] | { [k: string]: Json | undefined };

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
function recordBody(rec: AuditInput): { [k: string]: Json | undefined } {
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
function checkLine(
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

/**
 * Checks the whole chain, streaming. Throws only when the file cannot be read (e.g. ENOENT);
 * every kind of damage is a result naming the first broken record (1-based line).
 */
export async function verifyAuditLog(path: string): Promise<AuditVerifyResult> {
  const fh = await open(path, 'r');
  try {
    const chunk = Buffer.alloc(64 * 1024);
    let pending = Buffer.alloc(0);
    let expect = { seq: 1, prev: GENESIS_PREV };
    let record = 0;
    for (;;) {
      const { bytesRead } = await fh.read(chunk, 0, chunk.length, null);
      if (bytesRead === 0) break;
      pending = Buffer.concat([pending, chunk.subarray(0, bytesRead)]);
      let start = 0;
      for (let nl = pending.indexOf(NL, start); nl !== -1; nl = pending.indexOf(NL, start)) {
        record++;
        const line = pending.subarray(start, nl);
        if (line.length > MAX_RECORD_BYTES) {
          return { ok: false, record, reason: 'it is longer than any record keytether writes' };
        }
        const r = checkLine(line, expect);
        if ('reason' in r) return { ok: false, record, reason: r.reason };
        expect = { seq: r.seq + 1, prev: sha256Hex(line) };
        start = nl + 1;
      }
      pending = Buffer.from(pending.subarray(start));
      if (pending.length > MAX_RECORD_BYTES) {
        return {
          ok: false,
          record: record + 1,
          reason: 'it is longer than any record keytether writes',
        };
      }
    }
    if (pending.length > 0) {
      return { ok: false, record: record + 1, reason: 'it is truncated (no line end)' };
    }
    return { ok: true, records: record };
  } finally {
    await fh.close();
  }
}

/**
 * `write`: each record is handed to the kernel (write(2) completed) before the result goes back,
 * so it survives a crash of keytether. `fsync`: it is also fdatasync'ed, so it survives a power
 * cut; costs about a millisecond per batch on ordinary disks.
 *
 * The write(2) itself is synchronous: appending a few hundred bytes to the page cache takes
 * microseconds, while handing it to the thread pool cost each relayed signature two thread
 * switches (measured: about 7% of the holder's CPU under 16 concurrent signers). Only the
 * fdatasync, which can take milliseconds, goes to the thread pool.
 */
export type AuditSync = 'write' | 'fsync';

interface Pending {
  rec: AuditInput;
  resolve: () => void;
  reject: (e: Error) => void;
}

export class AuditLog {
  readonly path: string;
  readonly sync: AuditSync;
  #fh: FileHandle | undefined;
  #seq: number;
  #prev: string;
  #pending: Pending[] = [];
  #flushing: Promise<void> | undefined;
  #broken: Error | undefined;
  #observers = new Set<(rec: AuditInput) => void>();

  private constructor(path: string, fh: FileHandle, seq: number, prev: string, sync: AuditSync) {
    this.path = path;
    this.#fh = fh;
    this.#seq = seq;
    this.#prev = prev;
    this.sync = sync;
  }

  /**
   * Opens (creating 0600) and continues the chain from the last record. Refuses a file others
   * can read or write, and one whose last record is damaged, since appending would bury it.
   */
  static async open(path: string, opts: { sync?: AuditSync } = {}): Promise<AuditLog> {
    const fh = await open(path, 'a+', 0o600);
    try {
      const info = await fh.stat();
      if (!info.isFile()) throw new AuditError(`audit log ${path} is not a regular file`);
      if ((info.mode & 0o077) !== 0) {
        throw new AuditError(
          `audit log ${path} is accessible by other users: run chmod 600 ${path}`,
        );
      }
      const { seq, prev } = await readTail(fh, info.size, path);
      return new AuditLog(path, fh, seq, prev, opts.sync ?? 'write');
    } catch (e) {
      await fh.close();
      throw e;
    }
  }

  /** Number of records in the file so far. */
  get records(): number {
    return this.#seq;
  }

  /**
   * Appends one record; resolves once it is written (and synced, in `fsync` mode). Records are
   * chained in call order. Appends that arrive while a write is in flight are written together
   * in one write (and one sync), so concurrent operations share the cost.
   */
  append(rec: AuditInput): Promise<void> {
    return new Promise<void>((resolve, reject) => {
      this.#pending.push({ rec, resolve, reject });
      // Start after this turn's I/O callbacks, so records appended by every connection that was
      // readable in this turn go out in one write (and one sync).
      this.#flushing ??= new Promise<void>((r) => setImmediate(r)).then(() => this.#drain());
    });
  }

  /**
   * Calls FN with every record once it is written, so a status view never shows an operation the
   * file does not hold. Returns the way to stop. An observer's exception is its own problem: it
   * must not fail the operation whose record was already written.
   */
  onRecorded(fn: (rec: AuditInput) => void): () => void {
    this.#observers.add(fn);
    return () => this.#observers.delete(fn);
  }

  async close(): Promise<void> {
    while (this.#flushing) await this.#flushing;
    const fh = this.#fh;
    this.#fh = undefined;
    await fh?.close();
  }

  async #drain(): Promise<void> {
    try {
      while (this.#pending.length > 0) {
        const batch = this.#pending;
        this.#pending = [];
        try {
          await this.#writeBatch(batch.map((p) => p.rec));
          for (const p of batch) {
            for (const fn of this.#observers) {
              try {
                fn(p.rec);
              } catch {
                // See onRecorded.
              }
            }
            p.resolve();
          }
        } catch (e) {
          for (const p of batch) p.reject(e as Error);
        }
      }
    } finally {
      this.#flushing = undefined;
    }
  }

  async #writeBatch(recs: AuditInput[]): Promise<void> {
    if (this.#broken) {
      throw new AuditError(`audit log ${this.path} failed earlier: ${this.#broken.message}`);
    }
    const fh = this.#fh;
    if (!fh) throw new AuditError(`audit log ${this.path} is closed`);
    let seq = this.#seq;
    let prev = this.#prev;
    const lines: string[] = [];
    for (const rec of recs) {
      seq += 1;
      const body: { [k: string]: Json | undefined } = { ...recordBody(rec), seq, prev };
      // Serialise the members once: the line is the hashed text with the `hash` member placed
      // at its sorted position, which is exactly canonicalJson({ ...body, hash }).
      const keys = Object.keys(body)
        .filter((k) => body[k] !== undefined)
        .sort();
      const members = keys.map((k) => `${JSON.stringify(k)}:${canonicalJson(body[k] as Json)}`);
      const hash = sha256Hex(`{${members.join(',')}}`);
      const at = keys.findIndex((k) => k > 'hash');
      members.splice(at === -1 ? members.length : at, 0, `"hash":${JSON.stringify(hash)}`);
      const text = `{${members.join(',')}}`;
      lines.push(`${text}\n`);
      prev = sha256Hex(text);
    }
    const data = Buffer.from(lines.join(''), 'utf8');
    try {
      let off = 0;
      while (off < data.length) {
        const bytesWritten = writeSync(fh.fd, data, off, data.length - off);
        if (bytesWritten <= 0) throw new Error('the disk accepted no bytes');
        off += bytesWritten;
      }
      if (this.sync === 'fsync') await fh.datasync();
    } catch (e) {
      // A partial line may now be on disk; any later record would be chained after damage.
      this.#broken = e as Error;
      throw new AuditError(`cannot write audit log ${this.path}: ${(e as Error).message}`);
    }
    this.#seq = seq;
    this.#prev = prev;
  }
}

async function readTail(
  fh: FileHandle,
  size: number,
  path: string,
): Promise<{ seq: number; prev: string }> {
  if (size === 0) return { seq: 0, prev: GENESIS_PREV };
  const damaged = (why: string) =>
    new AuditError(
      `audit log ${path} ends in a damaged record (${why}): run keytether audit verify, and move the file aside to start a new log`,
    );
  const want = Math.min(size, MAX_RECORD_BYTES + 2);
  const buf = Buffer.alloc(want);
  let got = 0;
  while (got < want) {
    const { bytesRead } = await fh.read(buf, got, want - got, size - want + got);
    if (bytesRead === 0) break;
    got += bytesRead;
  }
  if (got !== want) throw damaged('it changed while being read');
  if (buf[want - 1] !== NL) throw damaged('no line end');
  const start = buf.lastIndexOf(NL, want - 2) + 1;
  if (start === 0 && want < size) throw damaged('it is too long');
  const line = buf.subarray(start, want - 1);
  let obj: { seq?: unknown; hash?: unknown };
  try {
    obj = JSON.parse(line.toString('utf8')) as { seq?: unknown; hash?: unknown };
  } catch {
    throw damaged('not valid JSON');
  }
  if (typeof obj?.seq !== 'number' || !Number.isSafeInteger(obj.seq) || obj.seq < 1) {
    throw damaged('no valid seq');
  }
  const { hash, ...rest } = obj as { [k: string]: Json };
  if (typeof hash !== 'string' || sha256Hex(canonicalJson(rest)) !== hash) {
    throw damaged('its hash does not match');
  }
  return { seq: obj.seq, prev: sha256Hex(line) };
}
