// What reading a big audit log for a person costs (issue #15's audit view, `keytether audit list`
// and `summary`): one pass over BENCH_AUDIT_RECORDS records (default 200,000) unfiltered, filtered
// by host, and counts only. The anchor, measured in the same run on the same file, is
// `keytether audit verify`'s chain check (verifyAuditLog), the least a reader that checks the
// chain must do; "× verify" says what the filters, the record schema and the counts add. The
// heap's growth over each pass shows that memory stays bounded by the limit, not the log.

import { mkdtemp, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { AuditLog, verifyAuditLog, type AuditInput } from '../workstation/audit/audit.js';
import { parseAuditFilter } from '../workstation/audit/filter.js';
import { queryAuditLog } from '../workstation/audit/query.js';
import { envNumber, median } from './support/settings.js';

const DECISIONS = ['allowed', 'confirmed', 'denied', 'canceled', 'failed'] as const;

function record(i: number, start: number): AuditInput {
  return {
    time: new Date(start + i * 1000),
    front: i % 2 === 0 ? 'ssh' : 'relay',
    host: `build${i % 50}.example.com`,
    tokenId: i % 2 === 1 ? `ktt_${(i % 20).toString(16).padStart(16, '0')}` : undefined,
    fingerprint: 'AAAABBBBCCCCDDDDEEEEFFFF0000111122223333',
    keygrip: '0123456789ABCDEF0123456789ABCDEF01234567',
    op: 'sign',
    hashAlgo: 8,
    digest: Buffer.alloc(32, i & 0xff),
    decision: DECISIONS[i % 5]!,
    durationMs: 3,
    requester: { pid: 1000 + (i % 100), command: 'gpg --detach-sign release.tar', name: 'gpg' },
  };
}

/** Median wall time of RUNS passes of FN, and the largest heap growth seen during one. */
async function measure(runs: number, fn: () => Promise<unknown>): Promise<[number, number]> {
  const times: number[] = [];
  let growth = 0;
  for (let i = 0; i < runs; i++) {
    (globalThis as { gc?: () => void }).gc?.();
    const base = process.memoryUsage().heapUsed;
    let peak = base;
    const sampler = setInterval(() => {
      peak = Math.max(peak, process.memoryUsage().heapUsed);
    }, 5);
    const start = performance.now();
    await fn();
    times.push(performance.now() - start);
    clearInterval(sampler);
    peak = Math.max(peak, process.memoryUsage().heapUsed);
    growth = Math.max(growth, peak - base);
  }
  return [median(times), growth];
}

export async function run(): Promise<void> {
  const count = envNumber('BENCH_AUDIT_RECORDS', 200_000, 1000);
  const runs = envNumber('BENCH_AUDIT_RUNS', 3, 1);
  const dir = await mkdtemp(path.join(tmpdir(), 'kt-bench-audit-'));
  try {
    const file = path.join(dir, 'audit.jsonl');
    const log = await AuditLog.open(file);
    const start = Date.UTC(2026, 0, 1);
    // Appended in batches, as concurrent requests are: the writer is not what this measures.
    for (let i = 0; i < count; i += 1000) {
      const n = Math.min(1000, count - i);
      await Promise.all(Array.from({ length: n }, (_, j) => log.append(record(i + j, start))));
    }
    await log.close();
    const size = (await stat(file)).size;
    process.stdout.write(
      `${count} records, ${(size / 2 ** 20).toFixed(1)} MiB; median of ${runs} passes each\n`,
    );

    const [anchor, anchorHeap] = await measure(runs, () => verifyAuditLog(file));
    const line = (what: string, ms: number, heap: number) =>
      process.stdout.write(
        `  ${what.padEnd(44)} ${ms.toFixed(0).padStart(6)} ms  ${(ms / anchor).toFixed(2).padStart(5)} × verify  heap +${(heap / 2 ** 20).toFixed(1)} MiB\n`,
      );
    line('verify (anchor)', anchor, anchorHeap);
    const cases: [string, Parameters<typeof queryAuditLog>[1]][] = [
      ['list, no filter, last 100', { limit: 100 }],
      [
        'list --host build7.example.com, last 100',
        { filter: parseAuditFilter({ host: 'build7.example.com' }), limit: 100 },
      ],
      ['list, no filter, last 10,000', { limit: 10_000 }],
      [
        'summary (counts only), --decision denied',
        { filter: parseAuditFilter({ decision: 'denied' }), limit: 0 },
      ],
    ];
    for (const [what, opts] of cases) {
      const [ms, heap] = await measure(runs, () => queryAuditLog(file, opts));
      line(what, ms, heap);
    }
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}
