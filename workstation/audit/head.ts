// Where the audit log ends, kept outside it. A hash chain proves every record up to its last
// line, but not that the last line is the last one written: cutting whole records off the end
// leaves a valid chain. So the holder writes the chain's end (record count and the last line's
// hash) to `<log>.head` after every append, and refuses to continue a log shorter than its head;
// `keytether audit checkpoint` prints the same value for the user to keep elsewhere, which
// `keytether audit verify --checkpoint` checks. The head file sits next to the log, so it catches
// a crash, a restored backup or a careless edit; someone who can rewrite both files is caught
// only by a checkpoint kept out of their reach.

import { readFile } from 'node:fs/promises';
import { closeSync, constants, fstatSync, ftruncateSync, openSync, writeSync } from 'node:fs';
import { AuditError } from './record.js';
import type { ChainEnd } from './verify.js';

const CHECKPOINT = /^kt-audit-1:(\d{1,15}):([0-9a-f]{64})$/;

/** `kt-audit-1:<records>:<hash of the last record's line>`, one token to paste anywhere. */
export function formatCheckpoint(end: ChainEnd): string {
  return `kt-audit-1:${end.records}:${end.hash}`;
}

export function parseCheckpoint(text: string): ChainEnd | undefined {
  const m = CHECKPOINT.exec(text.trim());
  if (!m) return undefined;
  const records = Number(m[1]);
  return Number.isSafeInteger(records) ? { records, hash: m[2]! } : undefined;
}

export function headPath(logPath: string): string {
  return `${logPath}.head`;
}

/**
 * The head file, open for the writer's lifetime and overwritten in place after each append: one
 * short line at offset 0, a single write(2) of under 100 bytes, so a reader sees the old line or
 * the new one. (Replacing it by rename costs 1.5 ms per append on ext4, which flushes a file
 * renamed over another; this costs about as much as the append itself.) Not synced: after a power
 * cut it may lag the log, which only makes it prove less.
 */
export class HeadFile {
  readonly #fd: number;
  #length = 0;

  private constructor(fd: number, length: number) {
    this.#fd = fd;
    this.#length = length;
  }

  static openSync(logPath: string): HeadFile {
    const file = headPath(logPath);
    // Never O_APPEND: the line is rewritten at offset 0.
    const fd = openSync(file, constants.O_RDWR | constants.O_CREAT, 0o600);
    try {
      const st = fstatSync(fd);
      if (!st.isFile()) throw new AuditError(`${file} is not a regular file`);
      if ((st.mode & 0o077) !== 0) {
        throw new AuditError(`${file} is accessible by other users: run chmod 600 ${file}`);
      }
      return new HeadFile(fd, st.size);
    } catch (e) {
      closeSync(fd);
      throw e;
    }
  }

  write(end: ChainEnd): void {
    const line = Buffer.from(`${formatCheckpoint(end)}\n`);
    if (writeSync(this.#fd, line, 0, line.length, 0) !== line.length) {
      throw Object.assign(new Error('the disk took only part of the head'), { code: 'ENOSPC' });
    }
    // Record counts only grow, so this is for a head left longer by something else.
    if (line.length < this.#length) ftruncateSync(this.#fd, line.length);
    this.#length = line.length;
  }

  close(): void {
    closeSync(this.#fd);
  }
}

export type HeadState =
  { kind: 'absent' } | { kind: 'ok'; end: ChainEnd } | { kind: 'damaged'; file: string };

export async function readHead(logPath: string): Promise<HeadState> {
  const file = headPath(logPath);
  let text: string;
  try {
    text = await readFile(file, 'utf8');
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return { kind: 'absent' };
    throw e;
  }
  const end = parseCheckpoint(text);
  if (end) return { kind: 'ok', end };
  // An empty head is one whose first write never happened (a full disk at the first append).
  if (text === '') return { kind: 'absent' };
  return { kind: 'damaged', file };
}

/**
 * Why a log whose records up to each number in HASHES hash as given, and which holds RECORDS in
 * all, does not reach END; undefined when it does. WHAT names END for the sentence.
 */
export function endMismatch(
  records: number,
  hashAt: (n: number) => string | undefined,
  end: ChainEnd,
  what: string,
): string | undefined {
  if (records < end.records) {
    return `the log holds ${records} record${records === 1 ? '' : 's'} but ${what} says ${end.records} were written: records were removed from its end`;
  }
  if (end.records > 0 && hashAt(end.records) !== end.hash) {
    return `record ${end.records} is not the one ${what} names: the log was rewritten from there on, or it is another log`;
  }
  return undefined;
}
