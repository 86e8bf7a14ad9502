// Use counting and pruning in the token registry (issue #18.6, #18.7), on real files: a use is
// reserved by authorize and counted only when committed, counts go to the tokens.uses journal
// instead of rewriting tokens.json, a fold never counts a use twice, and old tokens are pruned.

import t from 'tap';
import { execFile } from 'node:child_process';
import { copyFile, mkdtemp, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { cliPath } from './support/cli.js';
import { parseToken, type ParsedToken } from '../protocol/token.js';
import { loadOrCreateIdentity } from '../workstation/home/identity.js';
import { TokenRegistry } from '../workstation/tokens/tokens.js';

const FPR = 'A'.repeat(40);
const T0 = Date.UTC(2030, 0, 1);
const DAY = 86_400_000;

let scratch: string;
t.before(async () => {
  scratch = await mkdtemp(path.join(tmpdir(), 'kt-uses-'));
});
t.teardown(() => rm(scratch, { recursive: true, force: true }));
let n = 0;

async function setUp(now: () => number = () => T0) {
  const home = path.join(scratch, `home${++n}`);
  const identity = await loadOrCreateIdentity(home);
  const reg = await TokenRegistry.open(home, { identity, now });
  t.teardown(() => reg.close());
  const issue = async (maxUses?: number, ttlMs = 3_600_000, r = reg) => {
    const p = parseToken(
      await r.issue({ keys: [FPR], ops: ['sign'], ttlMs, maxUses, relay: 'https://r.x' }, identity),
    );
    if (!p.ok) throw new Error(p.error);
    return p.token;
  };
  const ask = (token: ParsedToken, r = reg) =>
    r.authorize({ token, fingerprint: FPR, primaryFingerprint: FPR, op: 'sign' });
  const usesOf = async (token: ParsedToken, r = reg) =>
    (await r.list()).find((x) => x.id === token.payload.tid)?.uses;
  return { home, identity, reg, issue, ask, usesOf };
}

t.test('a released use is given back; only committed uses count', async (t) => {
  const { home, identity, reg, issue, ask, usesOf } = await setUp();
  const tok = await issue(2);
  for (let i = 0; i < 5; i++) {
    const d = await ask(tok);
    if (!d.ok) throw new Error(d.message);
    await d.use.release();
  }
  t.equal(await usesOf(tok), 0, 'five operations that failed at the holder used nothing');

  // Reserved and unsettled, uses hold their place: concurrent requests cannot exceed the limit.
  const a = await ask(tok);
  const b = await ask(tok);
  t.ok(a.ok && b.ok, 'two reservations');
  t.match(await ask(tok), { ok: false, reason: 'uses' }, 'a third waits for neither');
  if (!a.ok || !b.ok) return;
  await a.use.release();
  await a.use.release();
  await a.use.commit();
  const c = await ask(tok);
  t.ok(c.ok, "a's use came back once, and settling twice changes nothing");
  if (c.ok) await c.use.commit();
  await b.use.commit();
  t.equal(await usesOf(tok), 2);
  const other = await TokenRegistry.open(home, { identity });
  t.teardown(() => other.close());
  t.match(await ask(tok, other), { ok: false, reason: 'uses' }, 'another process sees 2 of 2');

  // Unlimited tokens are counted on commit only, too.
  const free = await issue();
  for (const settle of ['commit', 'release', 'commit'] as const) {
    const d = await ask(free);
    if (d.ok) await d.use[settle]();
  }
  await reg.flushUses();
  t.equal(await usesOf(free), 2, 'two commits, one release');
});

t.test('a limited use is appended to tokens.uses, not rewritten into tokens.json', async (t) => {
  const { home, issue, ask, usesOf } = await setUp();
  const tok = await issue(1000);
  const file = path.join(home, 'tokens.json');
  const before = await stat(file, { bigint: true });
  for (let i = 0; i < 20; i++) {
    const d = await ask(tok);
    if (!d.ok) throw new Error(d.message);
    await d.use.commit();
  }
  const after = await stat(file, { bigint: true });
  t.equal(after.ino, before.ino, 'tokens.json was not replaced');
  t.equal(after.mtimeNs, before.mtimeNs, 'nor written');
  const journal = path.join(home, 'tokens.uses');
  t.equal((await stat(journal)).mode & 0o777, 0o600, 'tokens.uses is 0600');
  const lines = (await readFile(journal, 'utf8')).trim().split('\n');
  t.equal(lines.length, 21, 'a header and one line per use');
  t.equal(await usesOf(tok), 20);
});

t.test('folding the journal into tokens.json never counts a use twice', async (t) => {
  const { home, identity, issue, ask, usesOf, reg } = await setUp();
  const tok = await issue(10);
  const spare = await issue();
  for (let i = 0; i < 3; i++) {
    const d = await ask(tok);
    if (d.ok) await d.use.commit();
  }
  const journal = path.join(home, 'tokens.uses');
  await copyFile(journal, path.join(home, 'old.uses'));
  // Any write of tokens.json folds the journal in (here: a revocation).
  t.equal(await reg.revoke(spare.payload.tid), true);
  t.equal(await usesOf(tok), 3, 'folded');
  const doc = JSON.parse(await readFile(path.join(home, 'tokens.json'), 'utf8')) as {
    tokens: { id: string; uses: number }[];
  };
  t.equal(doc.tokens.find((x) => x.id === tok.payload.tid)?.uses, 3, 'the count is in tokens.json');

  // A crash between writing tokens.json and starting the new journal leaves the old one.
  await copyFile(path.join(home, 'old.uses'), journal);
  const fresh = await TokenRegistry.open(home, { identity });
  t.teardown(() => fresh.close());
  t.equal(await usesOf(tok, fresh), 3, 'the stale journal is not counted again');
  const d = await ask(tok, fresh);
  if (d.ok) await d.use.commit();
  t.equal(await usesOf(tok, fresh), 4, 'and the next use starts a journal of its own');
  t.equal(await usesOf(tok), 4, 'seen by the first registry too');
});

t.test('a holder killed mid-operation keeps the use counted; a torn line is cut', async (t) => {
  const { home, issue, usesOf, ask } = await setUp(Date.now);
  const tok = await issue(3);
  // A real process (the built code the CLI runs) reserves a use and is killed before the holder
  // answers.
  const built = path.join(path.dirname(await cliPath()), '..');
  const script = `
    import { TokenRegistry } from ${JSON.stringify(path.join(built, 'workstation', 'tokens', 'tokens.js'))};
    import { parseToken } from ${JSON.stringify(path.join(built, 'protocol', 'token.js'))};
    const reg = await TokenRegistry.open(process.argv[1]);
    const p = parseToken(process.argv[2]);
    const d = await reg.authorize({ token: p.token, fingerprint: '${FPR}', primaryFingerprint: '${FPR}', op: 'sign' });
    process.stdout.write(d.ok ? 'reserved\\n' : d.message + '\\n');
    process.kill(process.pid, 'SIGKILL');`;
  const out = await new Promise<string>((resolve) => {
    execFile(
      process.execPath,
      ['--input-type=module', '-e', script, home, tok.publicPart],
      (_err, stdout, stderr) => resolve(stdout + stderr),
    );
  });
  t.match(out, /^reserved\n/, out);
  t.equal(await usesOf(tok), 1, 'the unsettled reservation counts');

  // Half a line from a writer that died mid-append: its use was never granted.
  await writeFile(path.join(home, 'tokens.uses'), `${tok.payload.tid} +`, { flag: 'a' });
  t.equal(await usesOf(tok), 1, 'the torn line adds nothing');
  const d = await ask(tok);
  if (d.ok) await d.use.commit();
  t.equal(await usesOf(tok), 2, 'the next append replaces it');
  t.match(await readFile(path.join(home, 'tokens.uses'), 'utf8'), /\+1\n$/);
});

t.test('prune: by command, and on any write after seven days', async (t) => {
  let now = T0;
  const { reg, issue } = await setUp(() => now);
  const ids = async () => (await reg.list()).map((x) => x.id).sort();
  const active = await issue(undefined, 30 * DAY);
  const revoked = await issue();
  const expired = await issue(undefined, 1000);
  t.equal(await reg.revoke(revoked.payload.tid), true);
  now = T0 + DAY;
  t.equal(await reg.prune(2 * DAY), 0, 'nothing ended two days ago');
  // Six days later: within the grace period, a write keeps them for token list.
  now = T0 + 6 * DAY;
  const later = await issue(undefined, 30 * DAY);
  t.equal((await ids()).length, 4, 'recently ended tokens are kept');
  now = T0 + 8 * DAY;
  const last = await issue(undefined, 30 * DAY);
  t.same(
    await ids(),
    [active, later, last].map((x) => x.payload.tid).sort(),
    'ended more than 7 days ago: dropped by the next write',
  );
  t.match(
    await reg.authorize({ token: expired, fingerprint: FPR, primaryFingerprint: FPR, op: 'sign' }),
    {
      ok: false,
      reason: 'unknown',
    },
  );
  t.equal(await reg.revoke(last.payload.tid), true);
  t.equal(await reg.prune(), 1, 'token prune drops ended tokens at once');
  t.same(await ids(), [active, later].map((x) => x.payload.tid).sort());
});
