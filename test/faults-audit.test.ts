// The audit log under faults (issue #12.3), with real processes and a real full disk: two holders
// on one log are refused by its lock instead of forking the chain, a SIGKILLed holder's lock and
// sockets are stale and replaced, a full disk refuses requests without leaving a torn record, and
// cutting records off the end is caught by the head file or a checkpoint kept elsewhere.

import t, { type Test } from 'tap';
import { spawnSync } from 'node:child_process';
import { closeSync, openSync, statfsSync, writeSync } from 'node:fs';
import { appendFile, lstat, mkdir, mkdtemp, readFile, rm, truncate } from 'node:fs/promises';
import path from 'node:path';
import { AuditLog, verifyAuditLog, type AuditInput } from '../workstation/audit/audit.js';
import { clientHome } from './support/gnupg.js';
import { runCli } from './support/cli.js';
import { testNeeding } from './support/ci.js';
import { auditRecords, keyWorld, startCli, timedSign } from './support/fault-rig.js';

const asRoot = process.getuid?.() === 0;

function rec(i: number): AuditInput {
  return {
    front: 'ssh',
    host: `host${i}.example.org`,
    op: 'sign',
    keygrip: '0123456789ABCDEF0123456789ABCDEF01234567',
    hashAlgo: 8,
    digest: Buffer.alloc(32, i),
    decision: 'allowed',
    reason: 'policy: test',
    requester: { pid: 1000 + i, command: `gpg --detach-sign file-${i}` },
  };
}

/** A tmpfs of SIZE mounted for this test only (the test's disk to fill). */
async function smallDisk(t: Test, size: string): Promise<string> {
  const dir = await mkdtemp('/tmp/ktfull-');
  const m = spawnSync('mount', ['-t', 'tmpfs', '-o', `size=${size},mode=0700`, 'tmpfs', dir]);
  if (m.status !== 0) {
    await rm(dir, { recursive: true, force: true });
    throw new Error(`mount -t tmpfs failed: ${m.stderr.toString().trim()}`);
  }
  t.teardown(async () => {
    spawnSync('umount', ['-l', dir]);
    await rm(dir, { recursive: true, force: true });
  });
  return dir;
}

/** Fills DIR's filesystem until only LEAVE bytes are free; returns the filler's path. */
function fill(dir: string, leave = 0): string {
  const filler = path.join(dir, 'filler');
  const fd = openSync(filler, 'a');
  try {
    const chunk = Buffer.alloc(4096, 0x55);
    for (;;) {
      const s = statfsSync(dir);
      const free = s.bavail * s.bsize;
      if (free <= leave) break;
      const n = Math.min(chunk.length, free - leave);
      try {
        if (writeSync(fd, chunk, 0, n) < n) break;
      } catch {
        break;
      }
    }
  } finally {
    closeSync(fd);
  }
  return filler;
}

const noTmpfs =
  !asRoot && 'needs root to mount a small tmpfs (the full disk): run the suite as root';

testNeeding(t, 'a write the full disk takes only part of is cut back off', noTmpfs, async (t) => {
  const disk = await smallDisk(t, '256k');
  const file = path.join(disk, 'audit.jsonl');
  const log = await AuditLog.open(file);
  t.teardown(() => log.close());
  for (let i = 0; i < 3; i++) await log.append(rec(i));
  const before = await readFile(file);
  // Two pages free: a batch of 40 records (~20 KiB) is taken in part, then ENOSPC.
  const filler = fill(disk, 8192);
  const results = await Promise.allSettled(
    Array.from({ length: 40 }, (_, i) => log.append(rec(i + 3))),
  );
  t.ok(
    results.every((r) => r.status === 'rejected'),
    'every request of the batch is refused',
  );
  const why = results[0]?.status === 'rejected' ? (results[0].reason as Error).message : '';
  t.match(why, /^cannot write audit log .*audit\.jsonl: no space left on device \(ENOSPC\)$/);
  t.same(await readFile(file), before, 'no torn record: the file is byte for byte what it was');
  t.same(await verifyAuditLog(file), { ok: true, records: 3 });

  // The log is not broken: once there is room, the chain goes on from record 3.
  await rm(filler);
  await log.append(rec(43));
  t.same(await verifyAuditLog(file), { ok: true, records: 4 });
  const last = JSON.parse((await readFile(file, 'utf8')).trim().split('\n').at(-1)!) as {
    seq: number;
    host: string;
  };
  t.match(last, { seq: 4, host: 'host43.example.org' });
});

testNeeding(t, 'a full disk refuses the holder’s requests with a sentence', noTmpfs, async (t) => {
  const disk = await smallDisk(t, '2m');
  const w = await keyWorld(
    t,
    'Dora Disk <dora@example.org>',
    path.join(await diskDir(disk), 'home'),
  );
  const socket = path.join(w.tmp, 'S.local');
  const agent = await startCli(t, ['agent', '--backend', 'builtin', '--socket', socket], w.env);
  const client = await clientHome(socket, w.publicKey);
  t.teardown(() => client.cleanup());

  const ok1 = await timedSign(client, w.fingerprint);
  t.equal(ok1.code, 0, `signing works while there is room: ${ok1.stderr}`);
  const logFile = path.join(w.home, 'audit.jsonl');

  // With the disk full, records still fit in the log's last block until one crosses into the
  // next: then that request is refused.
  const filler = fill(disk);
  let signed = 1;
  let before = await readFile(logFile);
  let refused: Awaited<ReturnType<typeof timedSign>> | undefined;
  const refusedLine = agent.nextStderr(/cannot write audit log/, 60_000);
  for (let i = 0; i < 12 && !refused; i++) {
    before = await readFile(logFile);
    const r = await timedSign(client, w.fingerprint);
    if (r.code === 0) signed++;
    else refused = r;
  }
  t.ok(refused, `a request is refused once the log needs a block (${signed - 1} fit before)`);
  t.match(refused?.stderr, /signing failed/i, 'gpg fails: no signature leaves without its record');
  const line = (await refusedLine).input;
  t.match(
    line,
    /cannot write audit log .*audit\.jsonl: no space left on device \(ENOSPC\); the request was refused/,
    'the holder says why, in one line',
  );
  t.same(await readFile(logFile), before, 'no torn record: the log is as before the request');
  const verified = await runCli(['audit', 'verify'], { env: w.env });
  t.equal(verified.code, 0, verified.stderr);
  t.equal(verified.stdout, `audit log OK: ${signed} records (its head file agrees)\n`);

  await rm(filler);
  const ok2 = await timedSign(client, w.fingerprint);
  t.equal(ok2.code, 0, `with room again, signing works at once: ${ok2.stderr}`);
  signed++;
  const recs = await auditRecords(w.home);
  t.same(
    recs.map((r) => [r.seq, r.decision]),
    Array.from({ length: signed }, (_, i) => [i + 1, 'allowed']),
    'one record per signature that left, none lost or repeated',
  );
  t.equal((await runCli(['audit', 'verify'], { env: w.env })).code, 0);
});

/** A directory on DISK for a keytether home's parent (the home itself is made 0700 by keytether). */
async function diskDir(disk: string): Promise<string> {
  const d = path.join(disk, 'kt');
  await mkdir(d, { mode: 0o700 });
  return d;
}

t.test('two holders on one audit log: the second is refused by the lock', async (t) => {
  const w = await keyWorld(t, 'Lou Lock <lou@example.org>');
  const first = await startCli(
    t,
    ['agent', '--backend', 'builtin', '--socket', path.join(w.tmp, 'S.first')],
    w.env,
  );
  const pid = first.child.pid!;
  const second = await runCli(
    ['agent', '--backend', 'builtin', '--socket', path.join(w.tmp, 'S.second')],
    { env: w.env },
  );
  t.equal(second.code, 1, 'the second holder does not start');
  t.equal(second.stdout, '', 'and never says ready');
  t.match(
    second.stderr,
    new RegExp(
      `^keytether agent: the audit log .*audit\\.jsonl is being written by another keytether holder \\(pid ${pid}\\); two writers would fork its hash chain: .+\\n$`,
    ),
  );

  // In one process the same lock holds: a second open of the file is refused too.
  const logFile = path.join(w.home, 'audit.jsonl');
  await t.rejects(AuditLog.open(logFile), {
    name: 'AuditError',
    message: new RegExp(`being written by another keytether holder \\(pid ${pid}\\)`),
  });

  // kill -9 leaves the lock, the agent socket and the control socket behind, all stale: the next
  // holder replaces them without being asked.
  await first.stop('SIGKILL');
  t.ok((await lstat(`${logFile}.lock`)).isSocket(), 'the dead holder’s lock is still there');
  t.ok((await lstat(path.join(w.tmp, 'S.first'))).isSocket(), 'and its agent socket');
  const again = await startCli(
    t,
    ['agent', '--backend', 'builtin', '--socket', path.join(w.tmp, 'S.first')],
    w.env,
  );
  const client = await clientHome(path.join(w.tmp, 'S.first'), w.publicKey);
  t.teardown(() => client.cleanup());
  const signed = await timedSign(client, w.fingerprint);
  t.equal(signed.code, 0, `the new holder signs: ${signed.stderr}`);
  await again.stop('SIGTERM');
  t.same(await verifyAuditLog(logFile), { ok: true, records: 1 });
});

t.test('a writer that bypasses the lock is caught before the chain forks', async (t) => {
  const dir = await mkdtemp('/tmp/ktfork-');
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  const file = path.join(dir, 'audit.jsonl');
  const log = await AuditLog.open(file);
  t.teardown(() => log.close());
  await log.append(rec(1));
  // What a second holder that broke a stale lock at the same instant would do: append on its own.
  await appendFile(file, (await readFile(file, 'utf8')).replace('"seq":1', '"seq":2'));
  await t.rejects(log.append(rec(2)), {
    message:
      /was changed by another process while this holder had it open .*refusing to fork its chain/,
  });
  const lines = (await readFile(file, 'utf8')).trim().split('\n');
  t.equal(lines.length, 2, 'nothing chained after the foreign record');
});

t.test('records cut off the end: the head file and a checkpoint show it', async (t) => {
  const w = await keyWorld(t, 'Tess Tail <tess@example.org>');
  const socket = path.join(w.tmp, 'S.local');
  const args = ['agent', '--backend', 'builtin', '--socket', socket];
  let agent = await startCli(t, args, w.env);
  const client = await clientHome(socket, w.publicKey);
  t.teardown(() => client.cleanup());
  for (let i = 0; i < 3; i++) t.equal((await timedSign(client, w.fingerprint)).code, 0);
  const cp = await runCli(['audit', 'checkpoint'], { env: w.env });
  t.equal(cp.code, 0, cp.stderr);
  t.match(cp.stdout, /^kt-audit-1:3:[0-9a-f]{64}\n$/);
  const checkpoint = cp.stdout.trim();
  t.equal((await timedSign(client, w.fingerprint)).code, 0);
  await agent.stop('SIGTERM');

  const logFile = path.join(w.home, 'audit.jsonl');
  const ok = await runCli(['audit', 'verify', '--checkpoint', checkpoint], { env: w.env });
  t.equal(
    ok.stdout,
    'audit log OK: 4 records (its head file agrees; the checkpoint at record 3 matches)\n',
    ok.stderr,
  );

  // Cut the last record at its line start: the chain alone still verifies.
  const text = await readFile(logFile, 'utf8');
  const lines = text.split('\n').filter(Boolean);
  await truncate(logFile, Buffer.byteLength(lines.slice(0, 3).join('\n') + '\n'));
  const cut = await runCli(['audit', 'verify'], { env: w.env });
  t.equal(cut.code, 1);
  t.equal(
    cut.stderr,
    'keytether audit verify: the log holds 3 records but its head file says 4 were written: records were removed from its end\n',
  );
  const refused = await runCli(args, { env: w.env });
  t.equal(refused.code, 1, 'a holder does not continue a log cut short');
  t.match(
    refused.stderr,
    /^keytether agent: audit log .*audit\.jsonl: the log holds 3 records but its head file says 4 were written: records were removed from its end; run keytether audit verify, and move the log and .*audit\.jsonl\.head aside to start a new log\n$/,
  );

  // Whoever can rewrite the head as well is caught by the checkpoint kept elsewhere.
  await truncate(logFile, Buffer.byteLength(lines.slice(0, 2).join('\n') + '\n'));
  await rm(`${logFile}.head`);
  t.equal(
    (await runCli(['audit', 'verify'], { env: w.env })).code,
    0,
    'no head: the chain is fine',
  );
  const caught = await runCli(['audit', 'verify', '--checkpoint', checkpoint], { env: w.env });
  t.equal(caught.code, 1);
  t.equal(
    caught.stderr,
    'keytether audit verify: the log holds 2 records but the checkpoint says 3 were written: records were removed from its end\n',
  );
  // A log rebuilt to the same length is another log: the hash at the checkpoint differs.
  await rm(logFile);
  const forged = await AuditLog.open(logFile);
  for (let i = 0; i < 3; i++) await forged.append(rec(i));
  await forged.close();
  const rewritten = await runCli(['audit', 'verify', '--checkpoint', checkpoint], { env: w.env });
  t.equal(rewritten.code, 1);
  t.match(rewritten.stderr, /record 3 is not the one the checkpoint names: the log was rewritten/);
  const bad = await runCli(['audit', 'verify', '--checkpoint', 'nonsense'], { env: w.env });
  t.equal(bad.code, 2, 'a value that is no checkpoint is a usage error');

  // Moved aside as the message says, a new log starts.
  await rm(`${logFile}.head`, { force: true });
  await rm(logFile);
  agent = await startCli(t, args, w.env);
  await agent.stop('SIGTERM');
});
