// Reading a whole audit log back: the chain check behind `keytether audit verify`, and where the
// log ends (for checkpoints and the head file, see head.ts).

import { open } from 'node:fs/promises';
import { checkLine, GENESIS_PREV, MAX_RECORD_BYTES, NL, sha256Hex } from './record.js';

export type AuditVerifyResult =
  { ok: true; records: number } | { ok: false; record: number; reason: string };

/** A point in a chain: how many records, and the SHA-256 of the last one's line. */
export interface ChainEnd {
  records: number;
  hash: string;
}

export type AuditWalkResult =
  | {
      ok: true;
      records: number;
      /** The line hash of each record asked for in `at` that the log holds. */
      hashes: Map<number, string>;
      end: ChainEnd;
    }
  | { ok: false; record: number; reason: string };

/**
 * Checks the whole chain, streaming. Throws only when the file cannot be read (e.g. ENOENT);
 * every kind of damage is a result naming the first broken record (1-based line).
 */
export async function verifyAuditLog(path: string): Promise<AuditVerifyResult> {
  const r = await walkAuditLog(path);
  return r.ok ? { ok: true, records: r.records } : r;
}

/** verifyAuditLog, also noting the line hashes of the records numbered in AT. */
export async function walkAuditLog(
  path: string,
  at: readonly number[] = [],
): Promise<AuditWalkResult> {
  const wanted = new Set(at);
  const hashes = new Map<number, string>();
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
        if (wanted.has(record)) hashes.set(record, expect.prev);
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
    return { ok: true, records: record, hashes, end: { records: record, hash: expect.prev } };
  } finally {
    await fh.close();
  }
}
