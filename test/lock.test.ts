// `keytether lock` (issue #15's "lock now", in the CLI): a real `keytether agent` unlocks a key
// for stock gpg through the scripted pinentry; `keytether lock` makes it forget the key, so the
// status no longer lists it and the next signature asks the pinentry again. Then `--all`, the
// answers when nothing is unlocked, bad usage and the control request itself.

import t from 'tap';
import net from 'node:net';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { controlSocketPath, type StatusDocument } from '../workstation/control/control.js';
import { runCli, spawnCli, waitForLine } from './support/cli.js';
import {
  clientHome,
  exportPublicKey,
  exportSecretKey,
  generateKey,
  makeGnupgHome,
} from './support/gnupg.js';
import { makePinentryScript } from './support/pinentry-script.js';

const PASS = 'lock me up';

t.test('keytether lock forgets an unlocked key', async (t) => {
  const ws = await makeGnupgHome();
  t.teardown(() => ws.cleanup());
  const key = await generateKey(ws, {
    uid: 'Lotte Lock <lotte@example.org>',
    algo: 'ed25519',
    usage: 'sign,cert',
    passphrase: PASS,
  });
  const tmp = await mkdtemp('/tmp/ktlock-');
  t.teardown(() => rm(tmp, { recursive: true, force: true }));
  const home = path.join(tmp, 'kt');
  const env = { KEYTETHER_HOME: home };
  const kt = (args: string[]) => runCli(args, { env, timeoutMs: 30_000 });
  const secrets = path.join(tmp, 'secret.gpg');
  await writeFile(secrets, await exportSecretKey(ws, key.fingerprint, PASS), { mode: 0o600 });
  const imp = await kt(['keys', 'import', secrets]);
  t.equal(imp.code, 0, `keys import: ${imp.stderr}`);
  await rm(secrets);

  const pin = await makePinentryScript({ answers: Array(6).fill(PASS) });
  t.teardown(() => pin.cleanup());
  const socket = path.join(tmp, 'S.gpg-agent');
  const agent = await spawnCli(
    ['agent', '--socket', socket, '--backend', 'builtin', '--pinentry-program', pin.program],
    { env: { ...env, ...pin.env } },
  );
  const exited = new Promise<void>((resolve) => agent.on('exit', () => resolve()));
  t.teardown(async () => {
    if (agent.exitCode === null && agent.signalCode === null) {
      agent.kill('SIGTERM');
      await exited;
    }
  });
  let agentErr = '';
  agent.stderr!.on('data', (d: Buffer) => (agentErr += d.toString()));
  await waitForLine(agent.stdout!, /^ready: /, 30_000).catch((e: Error) => {
    throw new Error(`${e.message}; agent stderr: ${agentErr}`);
  });

  const client = await clientHome(socket, await exportPublicKey(ws, key.fingerprint));
  t.teardown(() => client.cleanup());
  const sign = async (what: string) => {
    const r = await client.gpg(['--batch', '-u', key.fingerprint, '--detach-sign'], {
      input: `${what}\n`,
    });
    t.equal(r.code, 0, `gpg signs (${what}): ${r.stderr}`);
  };
  const prompts = async () => (await pin.invocations()).length;
  const unlocked = async () => {
    const r = await kt(['status', '--json']);
    t.equal(r.code, 0, r.stderr);
    return (JSON.parse(r.stdout) as StatusDocument).unlocked;
  };

  await sign('first');
  await sign('second');
  t.equal(await prompts(), 1, 'one prompt, then the cache');
  t.match(await unlocked(), [{ keygrip: key.keygrip, fingerprint: key.fingerprint }]);

  const logged = waitForLine(agent.stderr!, / lock key /, 30_000);
  const lock = await kt(['lock', key.fingerprint]);
  t.equal(lock.code, 0, lock.stderr);
  t.equal(lock.stdout, `locked ${key.fingerprint} (keygrip ${key.keygrip})\n`);
  t.equal(lock.stderr, '');
  const line = await logged;
  // The agent's line is the audit record's: who asked, which key, and why it asks again.
  t.match(
    line.input,
    new RegExp(
      `^\\d\\d:\\d\\d:\\d\\d local by .*: lock key ${key.keygrip}: allowed — forgotten on request`,
    ),
  );
  const records = (await readFile(path.join(home, 'audit.jsonl'), 'utf8'))
    .split('\n')
    .filter(Boolean)
    .map((l) => JSON.parse(l) as Record<string, unknown> & { requester?: { command?: string } });
  const rec = records.at(-1)!;
  t.match(rec, { front: 'local', op: 'lock', keygrip: key.keygrip, decision: 'allowed' });
  t.match(rec.requester?.command, /\block\b/, 'the record names the process that asked');
  const verify = await kt(['audit', 'verify']);
  t.equal(verify.code, 0, `the chain holds with the lock record: ${verify.stderr}`);
  const listed = await kt(['audit', 'list', '--key', key.keygrip, '--json']);
  t.equal(listed.code, 0, listed.stderr);
  t.match(listed.stdout, /"op": ?"lock"/, 'audit list shows it');
  t.same(await unlocked(), [], 'status no longer lists it');

  await sign('after lock');
  t.equal(await prompts(), 2, 'the next signature asks the pinentry again');
  t.equal((await unlocked()).length, 1, 'and the key is unlocked again');

  // By keygrip (any case) and by key id, as audit list --key takes them.
  const byGrip = await kt(['lock', key.keygrip.toLowerCase()]);
  t.equal(byGrip.stdout, `locked ${key.fingerprint} (keygrip ${key.keygrip})\n`, byGrip.stderr);
  const keyId = key.fingerprint.slice(-16);
  const notUnlocked = await kt(['lock', keyId]);
  t.equal(notUnlocked.code, 0, 'locking a locked key is no error');
  t.equal(notUnlocked.stdout, `${keyId} is not unlocked; nothing to lock\n`);

  await sign('after the second lock');
  t.equal(await prompts(), 3);
  const all = await kt(['lock', '--all']);
  t.equal(all.code, 0, all.stderr);
  t.equal(all.stdout, 'locked 1 key\n');
  t.same(await unlocked(), []);
  const again = await kt(['lock', '--all']);
  t.equal(again.stdout, 'no key was unlocked\n');
  await sign('after lock --all');
  t.equal(await prompts(), 4, 'after lock --all the pinentry is asked again');

  await t.test('bad usage is refused in one line, exit 2', async (t) => {
    for (const [args, message] of [
      [['lock'], 'name one key to lock, or --all'],
      [['lock', '--all', key.fingerprint], 'name one key to lock, or --all'],
      [
        ['lock', 'xyz'],
        "KEY takes a fingerprint, keygrip, 16-digit key id or SSH SHA256: fingerprint, not 'xyz'",
      ],
    ] as const) {
      const r = await kt([...args]);
      t.equal(r.code, 2, args.join(' '));
      t.equal(r.stderr, `keytether lock: ${message}\n`);
      t.equal(r.stdout, '');
    }
  });

  await t.test('the control request', async (t) => {
    const ask = (line: string) =>
      new Promise<string>((resolve, reject) => {
        const s = net.connect(controlSocketPath(home));
        let out = '';
        s.on('data', (d: Buffer) => (out += d.toString()));
        s.on('error', reject);
        s.on('close', () => resolve(out));
        s.write(`${line}\n`);
      });
    // The last signature unlocked the key again.
    t.equal(await ask('lock all'), `OK ${agent.pid}\n{"locked":["${key.keygrip}"]}\n`);
    t.equal(await ask(`lock ${key.keygrip}`), `OK ${agent.pid}\n{"locked":[]}\n`);
    for (const bad of ['lock', 'lock 1234', 'lock all more']) {
      t.equal(
        await ask(bad),
        'ERR the lock request names no keygrip; expected "lock <keygrip>" or "lock all"\n',
        bad,
      );
    }
  });

  const other = await runCli(['lock', '--all'], {
    env: { KEYTETHER_HOME: path.join(tmp, 'none') },
  });
  t.equal(other.code, 1);
  t.equal(
    other.stderr,
    `keytether lock: nothing to lock: no keytether agent runs for ${path.join(tmp, 'none')}\n`,
  );
});
