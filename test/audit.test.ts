import t from 'tap';
import { mkdtemp, readFile, rm, stat, truncate, writeFile, chmod } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { AuditLog, GENESIS_PREV, verifyAuditLog } from '../workstation/audit/audit.js';
import type { AuditInput } from '../workstation/audit/audit.js';
import { operationLine } from '../workstation/audit/operation-line.js';
import { runCli as runKt } from './support/cli.js';

const dir = await mkdtemp(join(tmpdir(), 'kt-audit-'));
t.teardown(() => rm(dir, { recursive: true, force: true }));
let n = 0;
const freshPath = () => join(dir, `audit-${++n}.jsonl`);

function input(i: number, over: Partial<AuditInput> = {}): AuditInput {
  return {
    time: new Date(Date.UTC(2025, 0, 1, 12, 0, i)),
    front: i % 3 === 0 ? 'local' : i % 3 === 1 ? 'ssh' : 'relay',
    host: i % 3 === 0 ? undefined : `host${i}.example.com`,
    peer: '192.0.2.7:2222',
    tokenId: i % 3 === 2 ? `tok-${i}` : undefined,
    fingerprint: 'AAAABBBBCCCCDDDDEEEEFFFF0000111122223333',
    keygrip: '0123456789ABCDEF0123456789ABCDEF01234567',
    op: i % 4 === 3 ? 'decrypt' : 'sign',
    hashAlgo: 8,
    digest: Buffer.alloc(32, i),
    decision: (['allowed', 'confirmed', 'denied', 'canceled', 'failed'] as const)[i % 5]!,
    reason: i % 5 === 2 ? 'policy rule 1: front=ssh action=deny' : undefined,
    durationMs: 10 + i,
    requester: { pid: 1000 + i, uid: 1000, command: 'gpg --sign "ünïcødé"', user: 'alice' },
    ...over,
  };
}

async function writeLog(path: string, count: number): Promise<void> {
  const log = await AuditLog.open(path);
  for (let i = 0; i < count; i++) await log.append(input(i));
  await log.close();
}

t.test('append N records, then verify OK; records carry the contract fields', async (t) => {
  const path = freshPath();
  await writeLog(path, 5);
  t.same(await verifyAuditLog(path), { ok: true, records: 5 });
  const lines = (await readFile(path, 'utf8')).split('\n');
  t.equal(lines.pop(), '', 'ends with a newline');
  const recs = lines.map((l) => JSON.parse(l) as Record<string, unknown>);
  t.match(recs[1], {
    seq: 2,
    time: '2025-01-01T12:00:01.000Z',
    front: 'ssh',
    host: 'host1.example.com',
    peer: '192.0.2.7:2222',
    fingerprint: 'AAAABBBBCCCCDDDDEEEEFFFF0000111122223333',
    keygrip: '0123456789ABCDEF0123456789ABCDEF01234567',
    op: 'sign',
    hashAlgo: 8,
    digest: '01'.repeat(32),
    decision: 'confirmed',
    durationMs: 11,
    verification: 'blind',
    requester: { pid: 1001, uid: 1000, user: 'alice' },
  });
  t.equal(recs[0]?.prev, GENESIS_PREV);
  t.equal(recs[0]?.verification, undefined, 'local signatures are not marked blind');
  t.match(recs[0]?.hash, /^[0-9a-f]{64}$/);
  t.equal(recs.length, 5);

  // Reopening continues the chain.
  const log = await AuditLog.open(path);
  t.equal(log.records, 5);
  await log.append(input(5));
  await log.close();
  t.same(await verifyAuditLog(path), { ok: true, records: 6 });
});

t.test('file mode is 0600, and a looser existing file is refused', async (t) => {
  const path = freshPath();
  const old = process.umask(0);
  try {
    await writeLog(path, 1);
  } finally {
    process.umask(old);
  }
  t.equal((await stat(path)).mode & 0o777, 0o600);
  await chmod(path, 0o644);
  await t.rejects(AuditLog.open(path), { name: 'AuditError', message: /chmod 600/ });
});

t.test('changing any single byte makes verify fail, naming that record', async (t) => {
  const path = freshPath();
  // Five records cover every decision and front; every byte of them is tried.
  await writeLog(path, 5);
  const original = await readFile(path);
  // Which record (1-based line) each byte belongs to; a newline belongs to the line it ends.
  const recordOf: number[] = [];
  let rec = 1;
  for (const b of original) {
    recordOf.push(rec);
    if (b === 0x0a) rec++;
  }
  t.ok(original.length > 2000, `file has ${original.length} bytes`);
  const probe = join(dir, 'probe.jsonl');
  let failures = 0;
  const wrong: string[] = [];
  for (let pos = 0; pos < original.length; pos++) {
    // Alternate between a one-bit flip and a replacement with a random different byte.
    const copy = Buffer.from(original);
    const flip = pos % 2 === 0 ? 0x01 : 1 + Math.floor(Math.random() * 255);
    copy[pos] = copy[pos]! ^ flip;
    await writeFile(probe, copy);
    const r = await verifyAuditLog(probe);
    if (r.ok) {
      wrong.push(`byte ${pos}: verify passed`);
      continue;
    }
    failures++;
    const expected = recordOf[pos]!;
    // A damaged line end merges two lines or splits one, which surfaces at that line or the next.
    const okRecord = original[pos] === 0x0a ? [expected, expected + 1] : [expected];
    if (!okRecord.includes(r.record))
      wrong.push(`byte ${pos}: named record ${r.record}, expected ${expected}`);
  }
  t.same(wrong.slice(0, 10), [], 'every change detected at its record');
  t.equal(failures, original.length, `all ${original.length} positions fail verification`);
});

t.test('truncation, removal and reordering are detected', async (t) => {
  const path = freshPath();
  await writeLog(path, 4);
  const original = await readFile(path);
  const lines = original.toString('utf8').split('\n').slice(0, -1);

  await writeFile(path, original.subarray(0, original.length - 1));
  t.same(await verifyAuditLog(path), {
    ok: false,
    record: 4,
    reason: 'it is truncated (no line end)',
  });
  await writeFile(path, original.subarray(0, original.length - 30));
  t.match(await verifyAuditLog(path), { ok: false, record: 4 });
  await t.rejects(
    AuditLog.open(path),
    { message: /ends in a damaged record/ },
    'open refuses to bury damage',
  );

  await writeFile(path, [lines[0], lines[2], lines[3], ''].join('\n'));
  t.match(await verifyAuditLog(path), {
    ok: false,
    record: 2,
    reason: /sequence number is 3, expected 2/,
  });
  await writeFile(path, [lines[1], lines[2], lines[3], ''].join('\n'));
  t.match(await verifyAuditLog(path), { ok: false, record: 1 });
  await writeFile(path, [lines[0], lines[2], lines[1], lines[3], ''].join('\n'));
  t.match(await verifyAuditLog(path), { ok: false, record: 2 });
  await writeFile(path, [lines[0], lines[1], lines[1], lines[3], ''].join('\n'));
  t.match(await verifyAuditLog(path), { ok: false, record: 3 });
  await writeFile(path, '');
  t.same(await verifyAuditLog(path), { ok: true, records: 0 });
  await writeFile(path, 'x'.repeat(200_000));
  t.match(await verifyAuditLog(path), { ok: false, record: 1, reason: /longer than any record/ });

  // Whole-record truncation at a line end keeps a valid chain: a documented limit of any
  // self-contained hash chain.
  await writeFile(path, [lines[0], lines[1], ''].join('\n'));
  t.same(await verifyAuditLog(path), { ok: true, records: 2 });
});

t.test('concurrent appends stay chained and in call order', async (t) => {
  const path = freshPath();
  const log = await AuditLog.open(path);
  await Promise.all(Array.from({ length: 50 }, (_, i) => log.append(input(i, { durationMs: i }))));
  await log.close();
  t.same(await verifyAuditLog(path), { ok: true, records: 50 });
  const recs = (await readFile(path, 'utf8'))
    .trim()
    .split('\n')
    .map((l) => JSON.parse(l) as { seq: number; durationMs: number });
  t.same(
    recs.map((r) => r.durationMs),
    Array.from({ length: 50 }, (_, i) => i),
  );

  // Two logs open on one file at once would fork the chain; the second must at least not lose
  // the first's records when opened after them.
  const log2 = await AuditLog.open(path);
  await log2.append(input(50));
  await log2.close();
  t.same(await verifyAuditLog(path), { ok: true, records: 51 });
  await t.rejects(log2.append(input(51)), { message: /closed/ });
});

t.test('records never hold more than the listed fields', async (t) => {
  const path = freshPath();
  const log = await AuditLog.open(path);
  const sneaky = { ...input(1), passphrase: 'hunter2', plaintext: 'attack at dawn' } as AuditInput;
  await log.append(sneaky);
  await log.close();
  const text = await readFile(path, 'utf8');
  t.notMatch(text, /hunter2|attack at dawn|passphrase|plaintext/);
  t.same(Object.keys(JSON.parse(text) as object).sort(), [
    'decision',
    'digest',
    'durationMs',
    'fingerprint',
    'front',
    'hash',
    'hashAlgo',
    'host',
    'keygrip',
    'op',
    'peer',
    'prev',
    'requester',
    'seq',
    'time',
    'verification',
  ]);
});

t.test('hash algorithm given as digits or a name, digest as hex text', async (t) => {
  const path = freshPath();
  const log = await AuditLog.open(path);
  await log.append(input(1, { hashAlgo: '10', digest: 'ABCDEF' }));
  await log.append(input(2, { hashAlgo: 'sha512', verification: 'local' }));
  await log.close();
  const [a, b] = (await readFile(path, 'utf8'))
    .trim()
    .split('\n')
    .map((l) => JSON.parse(l) as Record<string, unknown>);
  t.match(a, { hashAlgo: 10, digest: 'abcdef' });
  t.match(b, { hashAlgo: 'sha512', verification: 'local' });
  t.same(await verifyAuditLog(path), { ok: true, records: 2 });
});

// The CLI as built from the current sources (support/cli.ts), never a dist/ left from before.
async function runCli(
  args: string[],
  env: Record<string, string>,
): Promise<{ code: number | null; out: string; err: string }> {
  const r = await runKt(args, { env });
  return { code: r.code, out: r.stdout, err: r.stderr };
}

t.test('keytether audit verify', async (t) => {
  const home = await mkdtemp(join(tmpdir(), 'kt-audit-home-'));
  t.teardown(() => rm(home, { recursive: true, force: true }));
  const path = join(home, 'audit.jsonl');
  await writeLog(path, 3);

  const ok = await runCli(['audit', 'verify'], { KEYTETHER_HOME: home });
  t.same(ok, { code: 0, out: 'audit log OK: 3 records (its head file agrees)\n', err: '' });

  const other = freshPath();
  await writeLog(other, 2);
  const byFile = await runCli(['audit', 'verify', '--file', other], { KEYTETHER_HOME: home });
  t.same(byFile, { code: 0, out: 'audit log OK: 2 records (its head file agrees)\n', err: '' });

  const bytes = await readFile(path);
  const second = bytes.indexOf(0x0a) + 1;
  bytes[second + 40] = bytes[second + 40]! ^ 0x04;
  await writeFile(path, bytes);
  const bad = await runCli(['audit', 'verify'], { KEYTETHER_HOME: home });
  t.equal(bad.code, 1);
  t.equal(bad.out, '');
  t.match(bad.err, /^keytether audit( verify)?: record 2 is broken: .+\n$/);

  await truncate(path, bytes.length - 1);
  const cut = await runCli(['audit', 'verify', '--file', path], { KEYTETHER_HOME: home });
  t.equal(cut.code, 1);
  t.match(cut.err, /record 2 is broken/);

  const missing = await runCli(['audit', 'verify', '--file', join(home, 'nope.jsonl')], {
    KEYTETHER_HOME: home,
  });
  t.equal(missing.code, 1);
  t.match(missing.err, /there is no audit log at .*nope\.jsonl/);
  t.notMatch(missing.err, /\n.+/, 'one line, no stack trace');
});

t.test('the requesting process and its parents are recorded, bounded', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'kt-audit-proc-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  const file = join(dir, 'audit.jsonl');
  const log = await AuditLog.open(file);
  const parents = Array.from({ length: 12 }, (_, i) => ({
    pid: 10 + i,
    name: i === 0 ? 'git' : 'sh',
    command: 'x'.repeat(400),
  }));
  const rec: AuditInput = {
    front: 'ssh',
    host: 'srv',
    op: 'sign',
    decision: 'allowed',
    requester: { pid: 9, name: 'gpg', command: 'gpg -bsau K', parents },
  };
  await log.append(rec);
  await log.close();
  const line = JSON.parse((await readFile(file, 'utf8')).trim()) as {
    requester: { name: string; parents: { pid: number; name: string; command: string }[] };
  };
  t.equal(line.requester.name, 'gpg');
  t.equal(line.requester.parents.length, 8, 'at most 8 parents');
  t.equal(line.requester.parents[0]?.name, 'git');
  t.ok(line.requester.parents[0]!.command.length <= 257, 'commands clipped');
  t.match(operationLine(rec), / by gpg ← git ← sh .*\(server says\): sign/);
  t.same(await verifyAuditLog(file), { ok: true, records: 1 });
});

t.test("the operation line says whether a commit's changed files were proven", async (t) => {
  const base: AuditInput = {
    front: 'ssh',
    host: 'srv',
    op: 'sign',
    decision: 'allowed',
    verification: 'verified',
    content: { kind: 'git-commit', bytes: 200, sha256: 'ab'.repeat(32), summary: 'commit: Fix' },
  };
  const files = (f: NonNullable<AuditInput['content']>['files']) =>
    operationLine({ ...base, content: { ...base.content!, files: f } });
  t.match(files({ proven: true, count: 3 }), /: allowed; commit: Fix \(3 files changed, proven\)$/);
  t.match(files({ proven: true, count: 1 }), /\(1 file changed, proven\)$/);
  t.match(files({ proven: false, why: 'no objects' }), /\(changed files not proven\)$/);
  t.match(operationLine(base), /; commit: Fix$/, 'a file or tag says nothing of files');
});
