// Where the audit log ends, kept outside it. A hash chain proves every record up to its last
// line, but not that the last line is the last one written: cutting whole records off the end
// leaves a valid chain. So the holder writes the chain's end (record count and the last line's
// hash) to `<log>.head` after every append, and refuses to continue a log shorter than its head;
// `keytether audit checkpoint` prints the same value for the user to keep elsewhere, which
// `keytether audit verify --checkpoint` checks. The head file sits next to the log, so it catches
// a crash, a restored backup or a careless edit; someone who can rewrite both files is caught
// only by a checkpoint kept out of their reach.

import { readFile } from 'node:fs/promises';
import { renameSync, rmSync, writeFileSync } from 'node:fs';
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
 * Replaces the head file atomically (a reader sees the old or the new one, never half). Not
 * synced: after a power cut it may lag the log, which only makes it prove less.
 */
export function writeHeadSync(logPath: string, end: ChainEnd): void {
  const file = headPath(logPath);
  const tmp = `${file}.tmp`;
  try {
    writeFileSync(tmp, `${formatCheckpoint(end)}\n`, { mode: 0o600 });
    renameSync(tmp, file);
  } catch (e) {
    rmSync(tmp, { force: true });
    throw e;
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
  return end ? { kind: 'ok', end } : { kind: 'damaged', file };
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
