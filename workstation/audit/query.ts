// Reading the audit log for a person: the records an AuditFilter selects, their counts per day
// and decision, and whether the hash chain holds — in one streaming pass, so a log of millions
// of records is read in bounded memory (the last LIMIT matches, one count per day). Behind
// `keytether audit list` / `audit summary` and the web page's audit view.
//
// A broken chain does not end the reading: the records after the break are still shown (hiding
// them would hide what the damage is about), the chain status names the first broken record,
// and lines that are no record at all are counted as unreadable.

import { open } from 'node:fs/promises';
import { z } from 'zod';
import { endMismatch, readHead } from './head.js';
import { AUDIT_DECISIONS, matchesFilter, type AuditFilter } from './filter.js';
import {
  checkLine,
  GENESIS_PREV,
  MAX_RECORD_BYTES,
  NL,
  sha256Hex,
  type AuditDecision,
  type AuditInput,
} from './record.js';

export const DEFAULT_QUERY_LIMIT = 100;
export const MAX_QUERY_LIMIT = 100_000;

const str = (max: number) => z.string().max(max);
const int = z.number().int();

// Only what readers show; the chain check (checkLine) covers every byte of the rest.
const RecordSchema = z
  .object({
    seq: int,
    time: str(64),
    front: z.enum(['local', 'ssh', 'relay']),
    peer: str(300).optional(),
    host: str(300).optional(),
    tokenId: str(200).optional(),
    fingerprint: str(200).optional(),
    keygrip: str(200).optional(),
    op: z.enum(['sign', 'decrypt', 'ssh-sign', 'channel', 'lock']),
    hashAlgo: z.union([int, str(64)]).optional(),
    digest: str(300).optional(),
    decision: z.enum(AUDIT_DECISIONS as [AuditDecision, ...AuditDecision[]]),
    reason: str(1100).optional(),
    rule: str(1100).optional(),
    durationMs: int.optional(),
    verification: z.enum(['blind', 'verified', 'holder-built', 'local']).optional(),
    content: z
      .object({
        kind: str(64),
        bytes: int,
        sha256: str(64),
        summary: str(400),
        files: z
          .object({
            proven: z.boolean(),
            count: int.optional(),
            first: z.array(str(300)).max(16).optional(),
            why: str(300).optional(),
          })
          .optional(),
      })
      .optional(),
    ssh: z
      .object({
        purpose: str(32),
        subject: str(300).optional(),
        destination: str(200).optional(),
        destinationName: str(300).optional(),
        dataSha256: str(64),
      })
      .optional(),
    requester: z
      .object({
        pid: int.optional(),
        uid: int.optional(),
        command: str(1100).optional(),
        user: str(300).optional(),
        name: str(100).optional(),
        parents: z
          .array(z.object({ pid: int, name: str(100), command: str(300).optional() }))
          .max(16)
          .optional(),
      })
      .optional(),
    prev: str(64),
    hash: str(64),
  })
  .strip();

/** One record as the log holds it (seq, prev and hash included). */
export type AuditRecord = z.infer<typeof RecordSchema>;

export type DayCounts = { day: string; total: number } & Record<AuditDecision, number>;

export type ChainStatus =
  | {
      ok: true;
      records: number;
      /** Whether the log still reaches the end its head file (`<log>.head`) recorded. */
      head: 'agrees' | 'absent';
    }
  | {
      ok: false;
      /** The first broken record (1-based line); absent when the head file is what disagrees. */
      record?: number;
      reason: string;
    };

export interface AuditQueryResult {
  /** The last `limit` matching records, oldest first. */
  records: AuditRecord[];
  /** How many records matched in all. */
  matched: number;
  /** Lines in the log. */
  total: number;
  /** Lines that are no readable record (only after a break of the chain). */
  unreadable: number;
  /** Matching records per UTC day, oldest day first. */
  days: DayCounts[];
  chain: ChainStatus;
}

export interface AuditQueryOptions {
  filter?: AuditFilter;
  /** Matching records to return (the most recent); default 100, 0 for counts only. */
  limit?: number;
}

function emptyDay(day: string): DayCounts {
  return { day, total: 0, allowed: 0, confirmed: 0, denied: 0, canceled: 0, failed: 0 };
}

/**
 * Reads the log at PATH once. Throws only when the file cannot be read (ENOENT…); damage is in
 * the result's chain status.
 */
export async function queryAuditLog(
  path: string,
  opts: AuditQueryOptions = {},
): Promise<AuditQueryResult> {
  const filter = opts.filter ?? {};
  const limit = Math.max(0, Math.min(opts.limit ?? DEFAULT_QUERY_LIMIT, MAX_QUERY_LIMIT));
  const head = await readHead(path);
  const headAt = head.kind === 'ok' ? head.end.records : -1;
  let headHash: string | undefined;

  const kept: AuditRecord[] = [];
  let keptStart = 0;
  const days = new Map<string, DayCounts>();
  let matched = 0;
  let total = 0;
  let unreadable = 0;
  let broken: { record: number; reason: string } | undefined;
  let expect = { seq: 1, prev: GENESIS_PREV };

  const take = (line: Buffer | undefined, why?: string): void => {
    total++;
    if (line === undefined) {
      broken ??= { record: total, reason: why ?? 'it is not a record' };
      unreadable++;
      return;
    }
    const check = checkLine(line, expect);
    if ('reason' in check) broken ??= { record: total, reason: check.reason };
    const lineHash = sha256Hex(line);
    if (total === headAt) headHash = lineHash;
    let rec: AuditRecord;
    try {
      const parsed = RecordSchema.safeParse(JSON.parse(line.toString('utf8')));
      if (!parsed.success) throw new Error('not a record');
      rec = parsed.data;
    } catch {
      unreadable++;
      // Past damage, chain on from this line's place so one bad line is one break, not many.
      expect = { seq: expect.seq + 1, prev: lineHash };
      return;
    }
    // After a break the chain goes on from what each record says, so later records still read.
    expect = { seq: rec.seq + 1, prev: lineHash };
    if (!matchesFilter(filter, rec)) return;
    matched++;
    const day = rec.time.slice(0, 10);
    let counts = days.get(day);
    if (!counts) days.set(day, (counts = emptyDay(day)));
    counts.total++;
    counts[rec.decision]++;
    if (limit === 0) return;
    // A ring of the last LIMIT matches: memory stays bounded however many match.
    if (kept.length < limit) kept.push(rec);
    else {
      kept[keptStart] = rec;
      keptStart = (keptStart + 1) % limit;
    }
  };

  const fh = await open(path, 'r');
  try {
    const chunk = Buffer.alloc(64 * 1024);
    let pending = Buffer.alloc(0);
    // Inside a line longer than any record: its bytes are dropped up to its line end.
    let skipping = false;
    for (;;) {
      const { bytesRead } = await fh.read(chunk, 0, chunk.length, null);
      if (bytesRead === 0) break;
      let data = chunk.subarray(0, bytesRead);
      if (skipping) {
        const nl = data.indexOf(NL);
        if (nl === -1) continue;
        skipping = false;
        data = data.subarray(nl + 1);
      }
      pending = pending.length === 0 ? Buffer.from(data) : Buffer.concat([pending, data]);
      let start = 0;
      for (let nl = pending.indexOf(NL, start); nl !== -1; nl = pending.indexOf(NL, start)) {
        const line = pending.subarray(start, nl);
        if (line.length > MAX_RECORD_BYTES) take(undefined, 'it is longer than any record');
        else take(line);
        start = nl + 1;
      }
      pending = Buffer.from(pending.subarray(start));
      if (pending.length > MAX_RECORD_BYTES) {
        take(undefined, 'it is longer than any record keytether writes');
        pending = Buffer.alloc(0);
        skipping = true;
      }
    }
    if (pending.length > 0) take(undefined, 'it is truncated (no line end)');
  } finally {
    await fh.close();
  }

  const records =
    kept.length < limit ? kept : [...kept.slice(keptStart), ...kept.slice(0, keptStart)];
  return {
    records,
    matched,
    total,
    unreadable,
    days: [...days.values()].sort((a, b) => (a.day < b.day ? -1 : a.day > b.day ? 1 : 0)),
    chain: chainStatus(broken, total, head, headHash),
  };
}

function chainStatus(
  broken: { record: number; reason: string } | undefined,
  total: number,
  head: Awaited<ReturnType<typeof readHead>>,
  headHash: string | undefined,
): ChainStatus {
  if (broken) return { ok: false, ...broken };
  if (head.kind === 'damaged')
    return { ok: false, reason: `its head file ${head.file} is damaged` };
  if (head.kind === 'absent') return { ok: true, records: total, head: 'absent' };
  const why = endMismatch(
    total,
    (n) => (n === head.end.records ? headHash : undefined),
    head.end,
    'its head file',
  );
  return why === undefined
    ? { ok: true, records: total, head: 'agrees' }
    : { ok: false, reason: why };
}

/** A record as operationLine (operation-line.ts) takes it. */
export function recordAsInput(rec: AuditRecord): AuditInput {
  const { seq: _seq, prev: _prev, hash: _hash, time, ...rest } = rec;
  return { ...rest, time: new Date(time) } as AuditInput;
}
