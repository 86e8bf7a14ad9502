// Relay faults with real processes (issue #5): `keytether relay`, a holder (`keytether agent
// --relay`) and `keytether connect` feeding stock gpg. A signature waits at the holder for a
// confirmation while the relay is killed: gpg must fail promptly instead of hanging, the holder's
// audit log must say what became of the request, and the holder must survive and come back when
// a relay is started again on the same port.

import t from 'tap';
import type { ChildProcess } from 'node:child_process';
import { watch } from 'node:fs';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { exportSecretKey, generateKey, makeGnupgHome, clientHome } from './support/gnupg.js';
import { runCli, spawnCli, waitForLine } from './support/cli.js';
import { makePinentryScript } from './support/pinentry-script.js';
import { ALLOW_BLIND_FLAG } from './support/blind-signing.js';

interface Proc {
  child: ChildProcess;
  stderr(): string;
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  stop(signal?: NodeJS.Signals): Promise<unknown>;
}

function track(child: ChildProcess): Proc {
  let err = '';
  child.stderr!.on('data', (b: Buffer) => (err += b.toString()));
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) =>
    child.on('exit', (code, signal) => resolve({ code, signal })),
  );
  return {
    child,
    stderr: () => err,
    exited,
    async stop(signal = 'SIGTERM') {
      if (child.exitCode === null && child.signalCode === null) child.kill(signal);
      return exited;
    },
  };
}

async function auditRecords(home: string): Promise<Record<string, unknown>[]> {
  const text = await readFile(path.join(home, 'audit.jsonl'), 'utf8').catch(() => '');
  return text
    .split('\n')
    .filter(Boolean)
    .map((l) => JSON.parse(l) as Record<string, unknown>);
}

function tokenId(token: string): string {
  const payload = token.split('.')[1] ?? '';
  return (JSON.parse(Buffer.from(payload, 'base64url').toString('utf8')) as { tid: string }).tid;
}

t.test('the relay is killed while a signature waits at the holder', async (t) => {
  const ws = await makeGnupgHome();
  t.teardown(() => ws.cleanup());
  const key = await generateKey(ws, {
    uid: 'Fay Fault <fay@example.org>',
    algo: 'ed25519',
    usage: 'sign,cert',
  });
  const FPR = key.fingerprint;

  const tmp = await mkdtemp('/tmp/ktfault-');
  t.teardown(() => rm(tmp, { recursive: true, force: true }));
  const home = path.join(tmp, 'home');
  const env = { KEYTETHER_HOME: home };
  const secretFile = path.join(tmp, 'secret.gpg');
  await writeFile(secretFile, await exportSecretKey(ws, FPR), { mode: 0o600 });
  const imp = await runCli(['keys', 'import', secretFile], { env });
  t.equal(imp.code, 0, `keys import: ${imp.stderr}`);
  await rm(secretFile);
  const pub = await ws.gpg(['--batch', '--armor', '--export', FPR]);

  let relay = track(await spawnCli(['relay', '--listen', '127.0.0.1:0']));
  t.teardown(() => relay.stop('SIGKILL'));
  const url = (await waitForLine(relay.child.stdout!, /^listening: (\S+)$/, 30_000))[1]!;

  // Every relayed signature needs a confirmation: the first one is never answered (the user is
  // still looking at the dialog when the relay dies), the next is accepted.
  const pin = await makePinentryScript({ confirm: ['hang', 'ok'] });
  t.teardown(() => pin.cleanup());
  const holder = track(
    await spawnCli(
      [
        'agent',
        ...ALLOW_BLIND_FLAG,
        '--backend',
        'builtin',
        '--socket',
        path.join(tmp, 'S.local'),
        '--pinentry-program',
        pin.program,
        '--policy',
        'front=relay,op=sign,action=confirm',
        '--relay',
        url,
      ],
      { env: { ...env, ...pin.env } },
    ),
  );
  t.teardown(() => holder.stop('SIGKILL'));
  const firstLogin = waitForLine(holder.child.stderr!, /^relay connected: /, 30_000);
  firstLogin.catch(() => {});
  await waitForLine(holder.child.stdout!, /^ready: /, 30_000).catch((e: Error) => {
    throw new Error(`${e.message}; stderr: ${holder.stderr()}`);
  });
  await firstLogin;

  const tok = await runCli(['token', 'create', '--key', FPR, '--relay', url], { env });
  t.equal(tok.code, 0, `token create: ${tok.stderr}`);
  const token = tok.stdout.trim();
  const tid = tokenId(token);

  const sock = path.join(tmp, 'S.f');
  const facade = track(
    await spawnCli(['connect', '--relay', url, '--token', token, '--socket', sock]),
  );
  t.teardown(() => facade.stop('SIGKILL'));
  await waitForLine(facade.child.stdout!, /^ready: /, 30_000).catch((e: Error) => {
    throw new Error(`${e.message}; stderr: ${facade.stderr()}`);
  });
  const client = await clientHome(sock, pub.stdout);
  t.teardown(() => client.cleanup());
  const sign = () =>
    client.gpg(['--batch', '--no-tty', '-u', FPR, '--detach-sign'], {
      input: 'release 2.0\n',
      timeoutMs: 60_000,
    });

  const auditBefore = (await auditRecords(home)).length;
  const pending = sign();
  // The holder asked its user: the request is now in flight at the holder, past the relay.
  await pin.waitFor((inv) => inv.some((i) => i.calls.some((c) => c.cmd === 'CONFIRM')));

  const holderBack = waitForLine(holder.child.stderr!, /^relay connected: /, 60_000);
  holderBack.catch(() => {});
  const facadeBack = waitForLine(facade.child.stderr!, /reconnected to the holder/, 60_000);
  facadeBack.catch(() => {});
  const killedAt = Date.now();
  await relay.stop('SIGKILL');
  const r = await pending;
  const took = Date.now() - killedAt;

  t.not(r.code, 0, 'gpg failed');
  t.ok(took < 5000, `gpg got its error ${took} ms after the relay died (no hang)`);
  t.match(r.stderr, /agent|signing failed/i, 'gpg reports an agent/signing error');

  // The holder ends the request it can no longer answer, and says so in its audit log.
  const recorded = await waitForAudit(home, auditBefore, 10_000);
  const rec = recorded.find((x) => x.tokenId === tid && x.op === 'sign');
  t.ok(rec, `the holder audited the interrupted request: ${JSON.stringify(recorded)}`);
  t.match(rec, {
    front: 'relay',
    tokenId: tid,
    op: 'sign',
    fingerprint: FPR,
  });
  // The user never answered and nothing was signed: the request counts as canceled.
  t.equal(rec?.decision, 'canceled', 'the interrupted request is recorded as canceled');
  t.equal(holder.child.exitCode, null, 'the holder is still running');
  t.equal(holder.child.signalCode, null, 'the holder was not killed by a signal');

  // A new relay on the same port: the holder and the facade find it by themselves.
  relay = track(await spawnCli(['relay', '--listen', `127.0.0.1:${new URL(url).port}`]));
  await waitForLine(relay.child.stdout!, /^listening: /, 30_000);
  await holderBack;
  await facadeBack;
  const again = await sign();
  t.equal(again.code, 0, `signing works through the new relay: ${again.stderr}`);
  t.match((await auditRecords(home)).at(-1), {
    tokenId: tid,
    op: 'sign',
    decision: 'confirmed',
  });
  t.notMatch(holder.stderr(), /TypeError|ReferenceError|unhandled|at .*\.js:\d+/);
});

/** Audit records written after the first `after`, once there is at least one (or timeoutMs). */
async function waitForAudit(
  home: string,
  after: number,
  timeoutMs: number,
): Promise<Record<string, unknown>[]> {
  const file = path.join(home, 'audit.jsonl');
  return new Promise((resolve) => {
    let done = false;
    const finish = (recs: Record<string, unknown>[]) => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      watcher.close();
      resolve(recs);
    };
    const check = () => {
      void auditRecords(home).then((all) => {
        if (all.length > after) finish(all.slice(after));
      });
    };
    const timer = setTimeout(
      () => void auditRecords(home).then((a) => finish(a.slice(after))),
      timeoutMs,
    );
    const watcher = watch(path.dirname(file), check);
    check();
  });
}
