// The audit trail: `audit.jsonl`, one canonical JSON object per line, hash-chained so that
// `keytether audit verify` notices any changed, removed or reordered byte. Each record is written
// (and, with `audit-sync = "fsync"`, synced) before the operation's result goes back.
//
// Chain: record n carries `seq` = n (from 1), `prev` = SHA-256 of record n-1's line bytes (without
// the newline; 64 zeros for the first), and `hash` = SHA-256 of the canonical JSON of record n
// without `hash`. The line itself is the canonical JSON (keys sorted, no spaces) of the whole
// record, so a byte that changes nothing semantically still breaks verification (record.ts).
//
// Around the chain: one writer at a time (lock.ts), the chain's end kept beside it so that a
// log cut short is noticed (head.ts), and a write the disk took only part of is undone, so a
// full disk refuses requests instead of leaving a torn record.

import { fstatSync, ftruncateSync, writeSync } from 'node:fs';
import { open } from 'node:fs/promises';
import type { FileHandle } from 'node:fs/promises';
import { acquireAuditLock, type AuditLock } from './lock.js';
import { endMismatch, HeadFile, readHead } from './head.js';
import {
  AuditError,
  canonicalJson,
  GENESIS_PREV,
  MAX_RECORD_BYTES,
  NL,
  recordBody,
  sha256Hex,
  type AuditInput,
  type Json,
} from './record.js';

export {
  AuditError,
  canonicalJson,
  GENESIS_PREV,
  MAX_RECORD_BYTES,
  type AuditDecision,
  type AuditInput,
  type AuditVerification,
} from './record.js';
export { verifyAuditLog, walkAuditLog, type AuditVerifyResult, type ChainEnd } from './verify.js';

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
  #lock: AuditLock | undefined;
  #head: HeadFile | undefined;
  #seq: number;
  #prev: string;
  /** The file's size after the last record this log wrote (or found): anything else is not ours. */
  #size: number;
  #pending: Pending[] = [];
  #flushing: Promise<void> | undefined;
  #broken: Error | undefined;
  #observers = new Set<(rec: AuditInput) => void>();
  #failureObservers = new Set<(e: AuditError) => void>();

  private constructor(
    path: string,
    fh: FileHandle,
    lock: AuditLock,
    head: HeadFile,
    end: { seq: number; prev: string; size: number },
    sync: AuditSync,
  ) {
    this.path = path;
    this.#fh = fh;
    this.#lock = lock;
    this.#head = head;
    this.#seq = end.seq;
    this.#prev = end.prev;
    this.#size = end.size;
    this.sync = sync;
  }

  /**
   * Opens (creating 0600) and continues the chain from the last record. Refuses a file others
   * can read or write, one whose last record is damaged (appending would bury it), one another
   * holder is writing (lock.ts), and one that ends before its head file says it did (head.ts).
   */
  static async open(path: string, opts: { sync?: AuditSync } = {}): Promise<AuditLog> {
    const lock = await acquireAuditLock(path);
    let fh: FileHandle | undefined;
    let head: HeadFile | undefined;
    try {
      fh = await open(path, 'a+', 0o600);
      const info = await fh.stat();
      if (!info.isFile()) throw new AuditError(`audit log ${path} is not a regular file`);
      if ((info.mode & 0o077) !== 0) {
        throw new AuditError(
          `audit log ${path} is accessible by other users: run chmod 600 ${path}`,
        );
      }
      const { seq, prev } = await readTail(fh, info.size, path);
      const recorded = await readHead(path);
      if (recorded.kind === 'damaged') {
        throw new AuditError(
          `the audit log's head file ${recorded.file} is damaged: run keytether audit verify, and move both files aside to start a new log`,
        );
      }
      if (recorded.kind === 'ok') {
        // Only the last record is at hand here; a head that lags the log (a crash between the
        // append and the head's update) is checked in full by keytether audit verify.
        const why = endMismatch(
          seq,
          (n) => (n === seq ? prev : undefined),
          seq > recorded.end.records ? { records: 0, hash: GENESIS_PREV } : recorded.end,
          'its head file',
        );
        if (why !== undefined) {
          throw new AuditError(
            `audit log ${path}: ${why}; run keytether audit verify, and move the log and ${path}.head aside to start a new log`,
          );
        }
      }
      head = HeadFile.openSync(path);
      return new AuditLog(
        path,
        fh,
        lock,
        head,
        { seq, prev, size: info.size },
        opts.sync ?? 'write',
      );
    } catch (e) {
      head?.close();
      await fh?.close();
      await lock.release();
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

  /**
   * Calls FN when records could not be written (their requests are refused), so the holder's user
   * hears of it where they look, not only the remote gpg.
   */
  onWriteFailed(fn: (e: AuditError) => void): () => void {
    this.#failureObservers.add(fn);
    return () => this.#failureObservers.delete(fn);
  }

  async close(): Promise<void> {
    while (this.#flushing) await this.#flushing;
    const fh = this.#fh;
    this.#fh = undefined;
    await fh?.close();
    this.#head?.close();
    this.#head = undefined;
    const lock = this.#lock;
    this.#lock = undefined;
    await lock?.release();
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
          for (const fn of this.#failureObservers) {
            try {
              fn(e as AuditError);
            } catch {
              // As for onRecorded.
            }
          }
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
    const fd = fh.fd;
    const size = fstatSync(fd).size;
    if (size !== this.#size) {
      // Someone else appended (or cut): chaining on from our last record would fork the chain.
      this.#broken = new Error(`its size changed from ${this.#size} to ${size} bytes`);
      throw new AuditError(
        `audit log ${this.path} was changed by another process while this holder had it open (${this.#broken.message}); refusing to fork its chain: run keytether audit verify`,
      );
    }
    try {
      let off = 0;
      while (off < data.length) {
        // A full disk can take part of a write without an error; the next write then fails.
        const bytesWritten = writeSync(fd, data, off, data.length - off);
        if (bytesWritten <= 0) throw new Error('the disk accepted no bytes');
        off += bytesWritten;
      }
      if (this.sync === 'fsync') await fh.datasync();
      // A record counts as written only with the head that proves it is there (on a full disk the
      // head's first write needs a block of its own, which the log's last one may not).
      this.#head!.write({ records: seq, hash: prev });
    } catch (e) {
      throw this.#undo(size, e as NodeJS.ErrnoException);
    }
    this.#seq = seq;
    this.#prev = prev;
    this.#size = size + data.length;
  }

  /**
   * Cuts a failed batch back off the file, so none of its records (not even part of a line) is
   * left to be chained after; the requests are refused. Only if that fails too is the log broken.
   */
  #undo(size: number, e: NodeJS.ErrnoException): AuditError {
    const why = describeIoError(e);
    try {
      ftruncateSync(this.#fh!.fd, size);
    } catch (t) {
      this.#broken = e;
      return new AuditError(
        `cannot write audit log ${this.path} (${why}), and cutting the partial record off failed (${describeIoError(t as NodeJS.ErrnoException)}): run keytether audit verify`,
      );
    }
    return new AuditError(`cannot write audit log ${this.path}: ${why}`);
  }
}

/** `no space left on device (ENOSPC)` rather than Node's `ENOSPC: no space left on device, write`. */
function describeIoError(e: NodeJS.ErrnoException): string {
  if (!e.code) return e.message;
  const text = e.message.replace(/^[A-Z]+: /, '').replace(/, \w+( '.*')?$/, '');
  return `${text} (${e.code})`;
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
