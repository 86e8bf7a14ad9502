// The workstation's own gpg on the holder's socket is named by the kernel, not by a claim: the
// audit record and the prompt carry its pid, command and what started it, as they do for a
// server's (where they are that server's report).

import t from 'tap';
import { spawn } from 'node:child_process';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { clientHome, exportSecretKey, generateKey, makeGnupgHome } from './support/gnupg.js';
import { runCli, spawnCli, waitForLine } from './support/cli.js';

t.test('a local signature names the gpg process and its parents', async (t) => {
  const ws = await makeGnupgHome();
  t.teardown(() => ws.cleanup());
  const key = await generateKey(ws, { uid: 'Lu <lu@example.org>', algo: 'ed25519', usage: 'sign' });
  const tmp = await mkdtemp('/tmp/ktlocal-');
  t.teardown(() => rm(tmp, { recursive: true, force: true }));
  const home = path.join(tmp, 'home');
  const f = path.join(tmp, 'k.gpg');
  await writeFile(f, await exportSecretKey(ws, key.fingerprint), { mode: 0o600 });
  t.equal((await runCli(['keys', 'import', f], { env: { KEYTETHER_HOME: home } })).code, 0);
  await rm(f);
  const socket = path.join(tmp, 'S.agent');
  const agent = await spawnCli(['agent', '--socket', socket], { env: { KEYTETHER_HOME: home } });
  t.teardown(() => agent.kill('SIGKILL'));
  await waitForLine(agent.stdout!, /^ready: /, 30_000);
  const g = await clientHome(socket, (await ws.gpg(['--batch', '--export'])).stdout);
  t.teardown(() => g.cleanup());

  // gpg started by a shell started by this test: the chain the kernel knows.
  const sh = spawn(
    'sh',
    ['-c', `echo data | gpg --batch -u ${key.fingerprint} --detach-sign > /dev/null; echo done`],
    { env: { ...process.env, ...g.env }, stdio: ['ignore', 'pipe', 'pipe'] },
  );
  let err = '';
  sh.stderr.on('data', (b: Buffer) => (err += b.toString()));
  await waitForLine(sh.stdout, /^done$/, 60_000);
  const rec = (await readFile(path.join(home, 'audit.jsonl'), 'utf8'))
    .split('\n')
    .filter(Boolean)
    .map(
      (l) =>
        JSON.parse(l) as {
          op: string;
          decision: string;
          requester?: { pid?: number; command?: string; parents?: { pid: number; name: string }[] };
        },
    )
    .filter((r) => r.op === 'sign')
    .at(-1);
  t.match(rec, { decision: 'allowed' }, err);
  t.match(rec?.requester?.command, /^gpg --batch -u [0-9A-F]{40} --detach-sign$/, 'the command');
  t.ok((rec?.requester?.pid ?? 0) > 1, 'its pid');
  t.equal(rec?.requester?.parents?.[0]?.pid, sh.pid, 'started by the shell');
  t.equal(rec?.requester?.parents?.[0]?.name, 'sh');
  t.ok(
    rec?.requester?.parents?.some((p) => p.pid === process.pid),
    'which this test process started',
  );
});
