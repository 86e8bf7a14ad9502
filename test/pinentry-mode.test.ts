// `gpg --pinentry-mode cancel|error` on a server: a script that must never prompt gets gpg-agent's
// own error at once (Operation cancelled / No pinentry) and the workstation's pinentry is never
// started, whether the key needs its passphrase or the policy a confirmation; the refusal is
// audited. `loopback` keeps meaning "the holder asks on the workstation".

import t, { type Test } from 'tap';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import path from 'node:path';
import { serveAgent } from '../protocol/agent/index.js';
import { listenAt } from '../system/unix-socket.js';
import { Holder } from '../workstation/holder/holder.js';
import { AuditLog } from '../workstation/audit/audit.js';
import { ApprovalMemory } from '../workstation/policy/approvals.js';
import { UnlockCache } from '../workstation/holder/unlock-cache.js';
import { Keystore } from '../workstation/keystore/index.js';
import type { UnlockedKey } from '../workstation/crypto/index.js';
import { Pinentry } from '../workstation/pinentry/pinentry.js';
import type { PolicyRule } from '../workstation/policy/policy.js';
import { clientHome, exportSecretKey, generateKey, makeGnupgHome } from './support/gnupg.js';
import { makePinentryScript, type PinentryScriptSpec } from './support/pinentry-script.js';
import { tunnelTo } from './support/socket-pair.js';

const PASS = 'mode-pass';

async function world(
  t: Test,
  opts: { protect: boolean; policy: PolicyRule[] },
  spec: PinentryScriptSpec,
) {
  const ws = await makeGnupgHome();
  t.teardown(() => ws.cleanup());
  const key = await generateKey(ws, {
    uid: 'Mode <mode@example.org>',
    algo: 'ed25519',
    usage: 'sign',
    ...(opts.protect ? { passphrase: PASS } : {}),
  });
  const dir = await mkdtemp('/tmp/kt-pmode-');
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  const ks = await Keystore.open(path.join(dir, 'home'));
  await ks.importKeys(await exportSecretKey(ws, key.fingerprint, opts.protect ? PASS : ''));
  const script = await makePinentryScript(spec);
  t.teardown(() => script.cleanup());
  const auditFile = path.join(dir, 'audit.jsonl');
  const audit = await AuditLog.open(auditFile);
  t.teardown(() => audit.close());
  const holder = new Holder({
    keystore: ks,
    policy: opts.policy,
    pinentry: new Pinentry({ program: script.program, env: { ...process.env, ...script.env } }),
    audit,
    cache: new UnlockCache<UnlockedKey>({ defaultTtlMs: 600_000, maxTtlMs: 600_000 }),
    approvals: new ApprovalMemory(),
  });
  // The server's side: the facade's agent socket, its holder reached through a real tunnel.
  const tunnel = await tunnelTo(t, holder, dir);
  await tunnel.ready;
  const socket = path.join(dir, 'S.agent');
  const server = await listenAt(socket, (s) => {
    void serveAgent(s, { holder: tunnel, requester: { front: 'ssh', host: 'ci.example' } });
  });
  t.teardown(() => server.close());
  const g = await clientHome(socket, (await ws.gpg(['--batch', '--export'])).stdout);
  t.teardown(() => g.cleanup());
  const sign = (mode: string) =>
    g.gpg(['--batch', '--pinentry-mode', mode, '-u', key.fingerprint, '--detach-sign'], {
      input: 'data\n',
    });
  const records = async () =>
    (await readFile(auditFile, 'utf8'))
      .split('\n')
      .filter(Boolean)
      .map((l) => JSON.parse(l) as { decision: string; reason?: string });
  return { sign, script, records };
}

for (const [mode, text, decision] of [
  ['error', 'No pinentry', 'failed'],
  ['cancel', 'Operation cancelled', 'canceled'],
] as const) {
  t.test(`--pinentry-mode ${mode}: a key that needs its passphrase`, async (t) => {
    const w = await world(
      t,
      { protect: true, policy: [{ action: 'allow', clearSign: 'off' }] },
      { answers: [PASS] },
    );
    const started = performance.now();
    const r = await w.sign(mode);
    const took = performance.now() - started;
    t.not(r.code, 0, 'gpg fails');
    t.match(r.stderr.toString(), text, `with gpg-agent's answer: ${text}`);
    t.ok(took < 10_000, `at once (${Math.round(took)} ms), not after a pinentry timeout`);
    t.same(await w.script.invocations(), [], 'the workstation pinentry was never started');
    t.match((await w.records()).at(-1), {
      decision,
      reason: new RegExp(`pinentry-mode=${mode}: unlocking the key would need the pinentry`),
    });
  });

  t.test(`--pinentry-mode ${mode}: a policy that asks for confirmation`, async (t) => {
    const w = await world(
      t,
      { protect: false, policy: [{ action: 'confirm', clearSign: 'off' }] },
      { confirm: ['ok'] },
    );
    const r = await w.sign(mode);
    t.not(r.code, 0);
    t.match(r.stderr.toString(), text);
    t.same(await w.script.invocations(), [], 'no confirmation prompt was opened');
    t.match((await w.records()).at(-1), {
      decision,
      reason: new RegExp(`pinentry-mode=${mode}: the confirmation this policy asks for`),
    });
  });
}

t.test('--pinentry-mode loopback still asks at the holder, never the server', async (t) => {
  const w = await world(
    t,
    { protect: true, policy: [{ action: 'confirm', clearSign: 'off' }] },
    {
      answers: [PASS],
      confirm: ['ok'],
    },
  );
  const r = await w.sign('loopback');
  t.equal(r.code, 0, r.stderr.toString());
  const cmds = (await w.script.calls()).flat().map((c) => c.cmd);
  t.ok(cmds.includes('GETPIN') && cmds.includes('CONFIRM'), 'the workstation pinentry asked');
  t.match((await w.records()).at(-1), { decision: 'confirmed' });
});

t.test('--pinentry-mode error signs when no prompt is needed (key already unlocked)', async (t) => {
  const w = await world(
    t,
    { protect: true, policy: [{ action: 'allow', clearSign: 'off' }] },
    { answers: [PASS] },
  );
  t.equal((await w.sign('ask')).code, 0, 'the first signature unlocks at the workstation');
  t.equal((await w.script.invocations()).length, 1);
  const r = await w.sign('error');
  t.equal(r.code, 0, r.stderr.toString());
  t.equal((await w.script.invocations()).length, 1, 'and the second needs no pinentry');
  t.match((await w.records()).at(-1), { decision: 'allowed' });
});
