// The approval broker inside a real holder: a remote gpg (through a real tunnel) waits while the
// pinentry and the broker's other channels are offered the same confirmation. "Approve for N
// minutes" from a page or the command line is the policy's remembered approval: the next request
// inside the window is not asked, the first after it is (an injected clock, not a wait).

import t, { type Test } from 'tap';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import path from 'node:path';
import { serveAgent } from '../protocol/agent/index.js';
import { listenAt } from '../system/unix-socket.js';
import { Holder } from '../workstation/holder/holder.js';
import { AuditLog } from '../workstation/audit/audit.js';
import { ApprovalMemory } from '../workstation/policy/approvals.js';
import { ApprovalBroker, type BrokerEvent } from '../workstation/approvals/broker.js';
import { UnlockCache } from '../workstation/holder/unlock-cache.js';
import { Keystore } from '../workstation/keystore/index.js';
import type { UnlockedKey } from '../workstation/crypto/index.js';
import { Pinentry } from '../workstation/pinentry/pinentry.js';
import { clientHome, exportSecretKey, generateKey, makeGnupgHome } from './support/gnupg.js';
import { makePinentryScript, type PinentryScriptSpec } from './support/pinentry-script.js';
import { tunnelTo } from './support/socket-pair.js';

async function world(t: Test, spec: PinentryScriptSpec, pages: boolean) {
  const ws = await makeGnupgHome();
  t.teardown(() => ws.cleanup());
  const key = await generateKey(ws, {
    uid: 'Bea <bea@example.org>',
    algo: 'ed25519',
    usage: 'sign',
  });
  const dir = await mkdtemp('/tmp/kt-broker-');
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  const ks = await Keystore.open(path.join(dir, 'home'));
  await ks.importKeys(await exportSecretKey(ws, key.fingerprint, ''));
  const script = await makePinentryScript(spec);
  t.teardown(() => script.cleanup());
  const auditFile = path.join(dir, 'audit.jsonl');
  const audit = await AuditLog.open(auditFile);
  t.teardown(() => audit.close());
  let now = Date.now();
  const pinentry = new Pinentry({
    program: script.program,
    env: { ...process.env, ...script.env },
  });
  const broker = new ApprovalBroker({ pinentry, pages, timeoutMs: 30_000, now: () => now });
  const holder = new Holder({
    keystore: ks,
    policy: [{ action: 'confirm', clearSign: 'off' }],
    pinentry,
    broker,
    audit,
    cache: new UnlockCache<UnlockedKey>({ defaultTtlMs: 600_000, maxTtlMs: 600_000 }),
    approvals: new ApprovalMemory(),
    now: () => now,
  });
  const tunnel = await tunnelTo(t, holder, dir);
  await tunnel.ready;
  const socket = path.join(dir, 'S.agent');
  const server = await listenAt(socket, (s) => {
    void serveAgent(s, { holder: tunnel, requester: { front: 'ssh', host: 'ci.example' } });
  });
  t.teardown(() => server.close());
  const g = await clientHome(socket, (await ws.gpg(['--batch', '--export'])).stdout);
  t.teardown(() => g.cleanup());
  const sign = () =>
    g.gpg(['--batch', '-u', key.fingerprint, '--detach-sign'], { input: 'data\n' });
  const records = async () =>
    (await readFile(auditFile, 'utf8'))
      .split('\n')
      .filter(Boolean)
      .map((l) => JSON.parse(l) as { decision: string; reason?: string });
  /** The next request the broker offers. */
  const offered = () =>
    new Promise<string>((resolve) => {
      const stop = broker.subscribe((e: BrokerEvent) => {
        if (e.kind === 'offered') {
          stop();
          resolve(e.request.id);
        }
      });
    });
  return {
    sign,
    script,
    records,
    broker,
    advance: (ms: number) => (now += ms),
    offered,
  };
}

t.test('approve for 10 minutes: asked once, then again after the window', async (t) => {
  const w = await world(t, { hang: true }, true);
  const first = w.offered();
  const signing = w.sign();
  const id = await first;
  t.match(w.broker.get(id), { op: 'sign', requester: { front: 'ssh', host: 'ci.example' } });
  t.ok(w.broker.answer(id, { approved: true, channel: 'command line', rememberMs: 600_000 }));
  t.equal((await signing).code, 0);
  t.match((await w.records()).at(-1), {
    decision: 'confirmed',
    reason: /confirmed at the command line/,
  });
  t.notOk(w.broker.answer(id, { approved: false, channel: 'command line' }), 'answered once only');

  w.advance(9 * 60_000);
  const inside = await w.sign();
  t.equal(inside.code, 0, 'inside the window: signed without asking');
  t.match((await w.records()).at(-1), { decision: 'allowed' });
  t.equal(w.broker.pending().length, 0);

  w.advance(2 * 60_000);
  const again = w.offered();
  const after = w.sign();
  const id2 = await again;
  t.pass('past the window the request is offered again');
  w.broker.answer(id2, { approved: false, channel: 'web page' });
  const denied = await after;
  t.not(denied.code, 0);
  t.match(denied.stderr.toString(), /Operation cancelled/);
  t.match((await w.records()).at(-1), { decision: 'denied', reason: 'denied at the web page' });
});

t.test(
  'the pinentry answers first: the request is withdrawn from the other channels',
  async (t) => {
    const w = await world(t, { confirm: ['ok'] }, true);
    const events: BrokerEvent['kind'][] = [];
    w.broker.subscribe((e) => events.push(e.kind));
    t.equal((await w.sign()).code, 0);
    t.same(events, ['offered', 'withdrawn']);
    t.equal(w.broker.pending().length, 0);
    t.match((await w.records()).at(-1), {
      decision: 'confirmed',
      reason: 'policy: action=confirm clearSign=off',
    });
  },
);

t.test('no pinentry on a box with a page: the page still answers', async (t) => {
  const w = await world(t, { confirm: ['crash'] }, true);
  const first = w.offered();
  const signing = w.sign();
  const id = await first;
  await w.script.waitFor((inv) => inv.some((i) => i.calls.some((c) => c.cmd === 'CONFIRM')));
  t.ok(w.broker.answer(id, { approved: true, channel: 'web page' }));
  t.equal((await signing).code, 0);
});

t.test('without pages the pinentry failing fails the request, as before', async (t) => {
  const w = await world(t, { confirm: ['crash'] }, false);
  const r = await w.sign();
  t.not(r.code, 0);
  t.equal(w.broker.pending().length, 0);
});
