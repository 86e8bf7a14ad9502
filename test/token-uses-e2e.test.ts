// `--max-uses` counts operations that produced a result (issue #18.7), end to end with real
// processes on 127.0.0.1: `keytether relay`, a holder (`keytether agent --relay`) whose policy
// asks to confirm every relayed signature, a scripted pinentry that declines the first one, and
// stock gpg behind `keytether connect`. `token list --json` is the witness.

import t from 'tap';
import type { ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { exportSecretKey, generateKey, makeGnupgHome } from './support/gnupg.js';
import { runCli, spawnCli, waitForLine } from './support/cli.js';
import { makePinentryScript } from './support/pinentry-script.js';

function stop(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve();
  const exited = new Promise<void>((r) => child.once('exit', () => r()));
  child.kill('SIGTERM');
  return exited;
}

t.test('declined, wrong-key and refused requests leave the use count alone', async (t) => {
  const ws = await makeGnupgHome();
  t.teardown(() => ws.cleanup());
  const spec = { algo: 'ed25519', usage: 'cert', subkeys: [{ algo: 'ed25519', usage: 'sign' }] };
  const key = await generateKey(ws, { uid: 'Uma Uses <uma@example.org>', ...spec });
  const other = await generateKey(ws, { uid: 'Otto Other <otto@example.org>', ...spec });
  const tmp = await mkdtemp('/tmp/ktuses-');
  t.teardown(() => rm(tmp, { recursive: true, force: true }));
  const env = { KEYTETHER_HOME: path.join(tmp, 'home') };
  for (const k of [key, other]) {
    const imp = await runCli(['keys', 'import'], {
      env,
      input: await exportSecretKey(ws, k.fingerprint),
    });
    t.equal(imp.code, 0, imp.stderr);
  }
  const verifier = await makeGnupgHome();
  t.teardown(() => verifier.cleanup());
  const pub = await ws.gpg(['--batch', '--armor', '--export', key.fingerprint]);
  t.equal((await verifier.gpg(['--batch', '--import'], { input: pub.stdout })).code, 0);

  const relay = await spawnCli(['relay', '--listen', '127.0.0.1:0']);
  t.teardown(() => stop(relay));
  const url = (await waitForLine(relay.stdout!, /^listening: (\S+)$/, 30_000))[1]!;
  const pin = await makePinentryScript({ confirm: ['cancel', 'ok', 'ok', 'ok'] });
  t.teardown(() => pin.cleanup());
  const holder = await spawnCli(
    [
      'agent',
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
  );
  t.teardown(() => stop(holder));
  const linked = waitForLine(holder.stderr!, /^relay connected: /, 30_000);
  linked.catch(() => {});
  await waitForLine(holder.stdout!, /^ready: /, 30_000);
  await linked;

  const made = await runCli(
    ['token', 'create', '--key', key.fingerprint, '--max-uses', '2', '--relay', url],
    { env },
  );
  t.equal(made.code, 0, made.stderr);
  const token = made.stdout.trim();
  const tid = (
    JSON.parse(Buffer.from(token.split('.')[1]!, 'base64url').toString()) as {
      tid: string;
    }
  ).tid;
  const uses = async () => {
    const r = await runCli(['token', 'list', '--json'], { env });
    t.equal(r.code, 0, r.stderr);
    return (JSON.parse(r.stdout) as { id: string; uses: number }[]).find((x) => x.id === tid)?.uses;
  };
  const file = path.join(tmp, 'artifact.txt');
  await writeFile(file, 'artifact 1\n');
  let n = 0;
  const sign = async (fpr: string) => {
    const sig = path.join(tmp, `artifact.${++n}.sig`);
    const gpg = ['gpg', '--batch', '--no-tty', '-u', fpr, '-o', sig, '--detach-sign', file];
    const r = await runCli(['connect', '--relay', url, '--token', token, '--', ...gpg]);
    return { ...r, sig };
  };
  const confirms = async () => (await pin.calls()).flat().filter((c) => c.cmd === 'CONFIRM').length;

  const declined = await sign(key.fingerprint);
  t.not(declined.code, 0, 'gpg failed: the holder user declined');
  t.equal(await confirms(), 1, 'the holder asked');
  t.equal(await uses(), 0, 'a declined confirmation uses nothing');

  const wrong = await sign(other.fingerprint);
  t.not(wrong.code, 0, 'a key the token does not allow');
  t.notOk(existsSync(wrong.sig));
  t.equal(await uses(), 0, 'a request for another key uses nothing');

  for (const i of [1, 2]) {
    const ok = await sign(key.fingerprint);
    t.equal(ok.code, 0, ok.stderr);
    const v = await verifier.gpg(['--batch', '--verify', ok.sig, file]);
    t.match(v.stderr, /Good signature from "Uma Uses/);
    t.equal(await uses(), i, `signature ${i} counted`);
  }
  const asked = await confirms();
  const spent = await sign(key.fingerprint);
  t.not(spent.code, 0);
  t.match(spent.stderr, new RegExp(`PKSIGN: Forbidden - token ${tid} has used all of its 2`));
  t.equal(await confirms(), asked, 'a used-up token is refused before anyone is asked');
  t.equal(await uses(), 2);
});
