// What one remote side may ask of the holder: a bounded number of requests per link and of
// confirmation prompts per server (a flood gets "Limit reached" at once, and the user sees at most
// four dialogs, not 256); refusals it can repeat at will are summarised in the audit log instead
// of written one by one (the chain stays valid); per-token and per-key rate limits refuse beyond
// their burst, with one burst-alert record and a line in `keytether status`.

import t, { type Test } from 'tap';
import { createHash } from 'node:crypto';
import { mkdir, mkdtemp, readFile, rm } from 'node:fs/promises';
import path from 'node:path';
import { ErrorCode, toGpgError } from '../protocol/gpg-error.js';
import type { Requester } from '../protocol/keyholder.js';
import { serveTunnel, tunnelClient } from '../protocol/tunnel/index.js';
import { formatStatus } from '../cli/commands/status.js';
import { AuditLog, verifyAuditLog, type AuditInput } from '../workstation/audit/audit.js';
import { RefusalSummary } from '../workstation/audit/rate-summary.js';
import { requestStatus, startControlServer } from '../workstation/control/control.js';
import { Holder, linkLimits } from '../workstation/holder/holder.js';
import { RequestLimiter } from '../workstation/holder/request-limits.js';
import { UnlockCache } from '../workstation/holder/unlock-cache.js';
import { Keystore } from '../workstation/keystore/index.js';
import type { UnlockedKey } from '../workstation/crypto/index.js';
import { ApprovalMemory } from '../workstation/policy/approvals.js';
import type { PolicyRule } from '../workstation/policy/policy.js';
import type { PassphraseAsker } from '../workstation/pinentry/pinentry.js';
import { exportSecretKey, generateKey, makeGnupgHome } from './support/gnupg.js';
import { socketPair } from './support/socket-pair.js';

const digest = createHash('sha256').update('data').digest();

let shared: { ksDir: string; grip: string } | undefined;
async function signingKey(): Promise<{ ksDir: string; grip: string }> {
  if (shared) return shared;
  const g = await makeGnupgHome();
  t.teardown(() => g.cleanup());
  const key = await generateKey(g, { uid: 'L <l@example.org>', algo: 'ed25519', usage: 'sign' });
  const ksDir = await mkdtemp('/tmp/kt-limits-ks-');
  t.teardown(() => rm(ksDir, { recursive: true, force: true }));
  const ks = await Keystore.open(ksDir);
  await ks.importKeys(await exportSecretKey(g, key.fingerprint));
  shared = { ksDir, grip: key.keygrip };
  return shared;
}

async function holderWorld(
  t: Test,
  opts: {
    policy: PolicyRule[];
    pinentry?: PassphraseAsker;
    limiter?: RequestLimiter;
    refusals?: (audit: AuditLog) => RefusalSummary;
  },
) {
  const { ksDir, grip } = await signingKey();
  const dir = await mkdtemp('/tmp/kt-limits-');
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  const auditFile = path.join(dir, 'audit.jsonl');
  const audit = await AuditLog.open(auditFile);
  t.teardown(() => audit.close());
  const holder = new Holder({
    keystore: await Keystore.open(ksDir),
    policy: opts.policy,
    pinentry: opts.pinentry ?? {
      getPassphrase: () => Promise.reject(new Error('no passphrase here')),
      confirm: () => Promise.resolve(true),
    },
    audit,
    cache: new UnlockCache<UnlockedKey>({ defaultTtlMs: 60_000, maxTtlMs: 60_000 }),
    approvals: new ApprovalMemory(),
    ...(opts.limiter ? { limiter: opts.limiter } : {}),
    ...(opts.refusals ? { refusals: opts.refusals(audit) } : {}),
  });
  const records = async () =>
    (await readFile(auditFile, 'utf8'))
      .split('\n')
      .filter(Boolean)
      .map((l) => JSON.parse(l) as { decision: string; reason?: string; host?: string });
  return { dir, holder, audit, auditFile, grip, records };
}

t.test('a remote side flooding 300 requests: refused at once, at most 4 prompts', async (t) => {
  let prompts = 0;
  let answer!: () => void;
  const answered = new Promise<void>((r) => (answer = r));
  // The user is away: every dialog stays open until the test answers them all.
  const away: PassphraseAsker = {
    getPassphrase: () => Promise.reject(new Error('no passphrase here')),
    confirm: async () => {
      prompts++;
      await answered;
      return true;
    },
  };
  const w = await holderWorld(t, {
    policy: [{ action: 'confirm', clearSign: 'off' }],
    pinentry: away,
  });
  const [serverEnd, clientEnd] = await socketPair(t, w.dir);
  const logged: string[] = [];
  serveTunnel(w.holder, serverEnd, {
    software: 'keytether/test',
    requester: (c) => ({ ...c, front: 'ssh', host: 'flood.example' }),
    ...linkLimits(w.holder),
    onLimit: (s) => logged.push(s),
  });
  const facade = tunnelClient(clientEnd, { software: 'keytether/test' });
  t.teardown(() => facade.close());
  await facade.ready;

  const requester: Requester = { front: 'ssh' };
  const settled: (string | ReturnType<typeof toGpgError>)[] = [];
  let allButPrompts!: () => void;
  const refusedAll = new Promise<void>((r) => (allButPrompts = r));
  const started = performance.now();
  const outcomes = Array.from({ length: 300 }, () =>
    facade
      .sign({ keygrip: w.grip, hashAlgo: 8, digest, requester })
      .then(
        () => 'signed' as const,
        (e: unknown) => toGpgError(e),
      )
      .then((o) => {
        settled.push(o);
        if (settled.length === 296) allButPrompts();
        return o;
      }),
  );
  // Everything but the four waiting at the pinentry is answered without the user.
  await refusedAll;
  const took = performance.now() - started;
  t.ok(took < 10_000, `296 refusals in ${Math.round(took)} ms, while 4 dialogs are open`);
  t.equal(prompts, 4, 'four dialogs, not 256');
  const errors = settled.filter((o) => typeof o !== 'string');
  t.equal(errors.length, 296);
  t.ok(
    errors.every((e) => e.code === ErrorCode.LIMIT_REACHED),
    'each refused with Limit reached',
  );
  const texts = new Set(errors.map((e) => e.detail));
  t.same([...texts].sort(), [
    'more than 32 requests at once on this link',
    'more than 4 confirmations already waiting for ssh flood.example',
  ]);
  // Refused confirmations leave the link at once, so later requests get in and meet the cap.
  const waitingRefusals = errors.filter((e) => /confirmations/.test(e.detail ?? '')).length;
  t.ok(waitingRefusals >= 28, `${waitingRefusals} refused for the confirmations waiting`);
  t.ok(296 - waitingRefusals > 0, `${296 - waitingRefusals} refused by the link's cap`);
  t.same(
    logged,
    ['the server sent more than 32 requests at once on this link; refusing the rest'],
    'one log line',
  );

  answer();
  const results = await Promise.all(outcomes);
  t.equal(results.filter((o) => o === 'signed').length, 4, 'the four confirmed ones sign');
  // Ten confirmation refusals on record, the rest in one summary (written at the window's end).
  await w.holder.flushRefusals();
  const recs = await w.records();
  t.equal(recs.filter((r) => r.decision === 'confirmed').length, 4);
  const refusedRecs = recs.filter((r) => r.decision === 'denied');
  t.equal(refusedRecs.length, 11, `ten refusals and one summary, not ${waitingRefusals} records`);
  t.match(refusedRecs.at(-1)?.reason, `${waitingRefusals - 10} more requests`);
  t.match(
    refusedRecs.at(-1)?.reason,
    /^\d+ more requests beyond the confirmations waiting from flood\.example refused in the last \d+ s, not recorded one by one/,
  );
  t.same(await verifyAuditLog(w.auditFile), { ok: true, records: recs.length });
});

t.test('a flood of requests for unknown keys: ten records and one summary', async (t) => {
  const w = await holderWorld(t, {
    policy: [{ action: 'allow', clearSign: 'off' }],
    refusals: (audit) => new RefusalSummary(audit, { windowMs: 1000 }),
  });
  const summary = new Promise<AuditInput>((resolve) => {
    const stop = w.audit.onRecorded((rec) => {
      if (/more requests/.test(rec.reason ?? '')) {
        stop();
        resolve(rec);
      }
    });
  });
  const requester: Requester = { front: 'ssh', host: 'scan.example' };
  const unknown = 'AB'.repeat(20);
  const started = performance.now();
  const codes = new Set<number | undefined>();
  for (let i = 0; i < 50; i++) {
    const e = await w.holder.sign({ keygrip: unknown, hashAlgo: 8, digest, requester }).then(
      () => undefined,
      (err: unknown) => toGpgError(err),
    );
    codes.add(e?.code);
  }
  t.same([...codes], [ErrorCode.NO_SECKEY], 'each is refused as gpg-agent would: No secret key');
  t.equal((await w.records()).length, 10, 'only the first ten of the window are written');
  const rec = await summary;
  const took = performance.now() - started;
  t.ok(
    took >= 900 && took < 5000,
    `the summary came with the window's end (${Math.round(took)} ms)`,
  );
  t.match(rec, {
    front: 'ssh',
    host: 'scan.example',
    decision: 'failed',
    reason:
      '40 more requests for unknown keys from scan.example refused in the last 1 s, not recorded one by one (last: no such key)',
  });
  const recs = await w.records();
  t.equal(recs.length, 11);
  t.same(await verifyAuditLog(w.auditFile), { ok: true, records: 11 }, 'the chain is intact');
});

t.test('per-token rate limit: refusals past the burst, one alert, a status line', async (t) => {
  const limiter = new RequestLimiter({ token: { perMinute: 6, burst: 5 } });
  const w = await holderWorld(t, { policy: [{ action: 'allow', clearSign: 'off' }], limiter });
  const requester: Requester = { front: 'relay', tokenId: 'ktt_ratetest' };
  const outcomes: (number | 'signed')[] = [];
  for (let i = 0; i < 10; i++) {
    outcomes.push(
      await w.holder.sign({ keygrip: w.grip, hashAlgo: 8, digest, requester }).then(
        () => 'signed' as const,
        (e: unknown) => toGpgError(e).code,
      ),
    );
  }
  t.same(outcomes, [...Array(5).fill('signed'), ...Array(5).fill(ErrorCode.LIMIT_REACHED)]);
  const recs = await w.records();
  t.equal(recs.filter((r) => r.decision === 'allowed').length, 5);
  const denied = recs.filter((r) => r.decision === 'denied');
  t.equal(
    denied[0]?.reason,
    'rate limit: token ktt_ratetest asked for more than 5 at once and 6 a minute (burst alert)',
    'the first refusal is the burst alert',
  );
  t.equal(denied.length, 5);

  // Another token and the workstation itself are not affected.
  const other = await w.holder.sign({
    keygrip: w.grip,
    hashAlgo: 8,
    digest,
    requester: { front: 'relay', tokenId: 'ktt_other' },
  });
  t.ok(other.length > 0, 'another token still signs');

  const home = path.join(w.dir, 'home');
  await mkdir(home, { mode: 0o700 });
  const control = await startControlServer(
    { holder: w.holder, cache: { entries: () => [], delete: () => false }, audit: w.audit },
    { home, version: '9.9.9' },
  );
  t.teardown(() => control.close());
  const doc = await requestStatus(home);
  t.match(doc?.rateLimits, [{ kind: 'token', id: 'ktt_ratetest', refused: 5, active: true }]);
  t.match(
    formatStatus(doc!),
    /\nrate limits:\n {2}token ktt_ratetest: over its rate since \S+, 5 requests refused; refusing\n/,
  );
});

t.test('per-key rate limit applies across tokens and servers, never to local', async (t) => {
  const limiter = new RequestLimiter({ key: { perMinute: 6, burst: 3 } });
  const w = await holderWorld(t, { policy: [{ action: 'allow', clearSign: 'off' }], limiter });
  const ask = (requester: Requester) =>
    w.holder.sign({ keygrip: w.grip, hashAlgo: 8, digest, requester }).then(
      () => 'signed',
      (e: unknown) => toGpgError(e).detail,
    );
  t.equal(await ask({ front: 'ssh', host: 'a.example' }), 'signed');
  t.equal(await ask({ front: 'relay', tokenId: 'ktt_one' }), 'signed');
  t.equal(await ask({ front: 'ssh', host: 'b.example' }), 'signed');
  t.match(await ask({ front: 'relay', tokenId: 'ktt_two' }), /^rate limit: key [0-9A-F]{40} /);
  t.equal(await ask({ front: 'local' }), 'signed', "the workstation's own gpg is not limited");
});
