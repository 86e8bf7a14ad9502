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
