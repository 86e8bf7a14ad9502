// ssh-agent signatures through the relay, every part a real process: `keytether relay`, a holder
// (`keytether agent --relay`, which also serves a local ssh-agent socket), tokens from
// `keytether token create --ops`, and `keytether connect -- CMD` with SSH_AUTH_SOCK set for CMD.
// A token with ssh-sign signs (ssh-keygen -Y verify passes); one without it is refused in the
// token-refusal sentence and audited.

import t from 'tap';
import type { ChildProcess } from 'node:child_process';
import { execFile, spawn } from 'node:child_process';
import { promisify } from 'node:util';
import { existsSync } from 'node:fs';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { exportSecretKey, generateKey, makeGnupgHome } from './support/gnupg.js';
import { importIntoKeytether, runCli, spawnCli, waitForLine } from './support/cli.js';

const execFileP = promisify(execFile);

function run(bin: string, args: string[], env: NodeJS.ProcessEnv, input = '') {
  return new Promise<{ code: number | null; stdout: string; stderr: string }>((resolve) => {
    const c = spawn(bin, args, { env, stdio: 'pipe' });
    let stdout = '';
    let stderr = '';
    c.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    c.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    c.on('close', (code) => resolve({ code, stdout, stderr }));
    c.stdin.end(input);
  });
}

function stopper(child: ChildProcess): () => Promise<void> {
  const exited = new Promise<void>((r) => child.once('exit', () => r()));
  return async () => {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGTERM');
    await exited;
  };
}

t.test('ssh-agent signatures through keytether connect and a relay', async (t) => {
  const ws = await makeGnupgHome();
  t.teardown(() => ws.cleanup());
  const key = await generateKey(ws, {
    uid: 'Cid CI <cid@example.org>',
    algo: 'ed25519',
    usage: 'sign,cert',
    subkeys: [{ algo: 'ed25519', usage: 'auth' }],
  });
  const authFpr = key.subkeys[0]!.fingerprint;
  const authPub = (await ws.gpg(['--batch', '--export-ssh-key', `${authFpr}!`])).stdout
    .toString()
    .trim();
  const tmp = await mkdtemp('/tmp/ktrelayssh-');
  t.teardown(() => rm(tmp, { recursive: true, force: true }));
  const home = path.join(tmp, 'home');
  const env = { KEYTETHER_HOME: home };
  await importIntoKeytether(await exportSecretKey(ws, key.fingerprint), env);

  const relay = await spawnCli(['relay', '--listen', '127.0.0.1:0']);
  t.teardown(stopper(relay));
  const url = (await waitForLine(relay.stdout!, /^listening: (\S+)$/, 30_000))[1]!;
  const holder = await spawnCli(
    [
      'agent',
      '--socket',
      path.join(tmp, 'S.local'),
      '--relay',
      url,
      // A relayed ssh signature is confirmed by default; nobody is here to confirm.
      '--policy',
      'front=relay,op=ssh-sign,action=allow',
    ],
    { env },
  );
  t.teardown(stopper(holder));
  let holderErr = '';
  holder.stderr!.on('data', (d: Buffer) => (holderErr += d.toString()));
  const connected = waitForLine(holder.stderr!, /^relay connected: /, 30_000);
  connected.catch(() => {});
  // Printed right after `ready:`, often in the same read.
  const localSsh = (await waitForLine(holder.stdout!, /^ssh-agent: (\/\S+)$/, 30_000))[1]!;
  await connected;

  const pubFile = path.join(tmp, 'auth.pub');
  await writeFile(pubFile, authPub + '\n');
  const msg = path.join(tmp, 'tag.txt');
  const text = 'object 4b825dc642cb6eb9a060e54bf8d69288fbee4904\ntype commit\ntag v1\n';
  await writeFile(msg, text);
  const allowed = path.join(tmp, 'allowed_signers');
  await writeFile(allowed, `cid@example.org ${authPub}\n`);
  const verify = (sig: string) =>
    run(
      'ssh-keygen',
      ['-Y', 'verify', '-f', allowed, '-I', 'cid@example.org', '-n', 'git', '-s', sig],
      process.env,
      text,
    );
  /** `keytether connect -- sh -c SCRIPT PUB MSG` with token TOK and no ssh-agent of its own. */
  const connectRunning = (tok: string, script: string, pub: string) =>
    runCli(['connect', '--relay', url, '--', 'sh', '-c', script, pub, msg], {
      env: { KEYTETHER_TOKEN: tok, SSH_AUTH_SOCK: undefined },
    });
  const lastRecord = async () =>
    (await readFile(path.join(home, 'audit.jsonl'), 'utf8'))
      .split('\n')
      .filter(Boolean)
      .map((l) => JSON.parse(l) as Record<string, unknown>)
      .at(-1);
  const token = async (...extra: string[]) => {
    const r = await runCli(['token', 'create', '--relay', url, ...extra], { env });
    t.equal(r.code, 0, `token create: ${r.stderr}`);
    return r.stdout.trim();
  };

  await t.test('keytether agent serves the same holder on a local ssh-agent socket', async (t) => {
    t.equal(localSsh, path.join(home, 'S.ssh-agent'));
    const l = await run('ssh-add', ['-L'], { ...process.env, SSH_AUTH_SOCK: localSsh });
    t.equal(l.code, 0, l.stderr);
    t.match(l.stdout, authPub.split(' ')[1]!);
  });

  await t.test(
    'a token with ssh-sign: CMD gets SSH_AUTH_SOCK and its signature verifies',
    async (t) => {
      const tok = await token('--key', key.fingerprint, '--ops', 'ssh-sign');
      const r = await connectRunning(
        tok,
        'echo "sock=$SSH_AUTH_SOCK"; ssh-add -l && ssh-keygen -Y sign -n git -f "$0" "$1"',
        pubFile,
      );
      t.equal(r.code, 0, r.stderr);
      const sock = /^sock=(\/\S+)$/m.exec(r.stdout)?.[1];
      t.ok(sock, 'SSH_AUTH_SOCK is set for the command');
      t.match(r.stderr, `ssh-agent: ${sock}`, 'and announced on stderr');
      t.notOk(existsSync(sock!), 'the socket is gone afterwards');
      t.match(r.stdout, /ED25519/, 'ssh-add -l lists the auth subkey');
      const v = await verify(`${msg}.sig`);
      t.equal(v.code, 0, v.stderr);
      t.match(v.stdout, /Good "git" signature for cid@example.org/);
      const rec = await lastRecord();
      t.match(rec, { front: 'relay', op: 'ssh-sign', decision: 'allowed', fingerprint: authFpr });
    },
  );

  await t.test('connect without a command prints ssh-agent: beside its gpg socket', async (t) => {
    const tok = await token('--key', key.fingerprint, '--ops', 'ssh-sign');
    const gpgSock = path.join(tmp, 'S.ci');
    const facade = await spawnCli(['connect', '--relay', url, '--token', tok, '--socket', gpgSock]);
    const stop = stopper(facade);
    t.teardown(stop);
    const line = await waitForLine(facade.stdout!, /^ssh-agent: (\/\S+)$/, 30_000);
    t.equal(line[1], `${gpgSock}.kt-ssh`);
    const l = await run('ssh-add', ['-L'], { ...process.env, SSH_AUTH_SOCK: line[1]! });
    t.equal(l.code, 0, l.stderr);
    t.match(l.stdout, authPub.split(' ')[1]!, 'the token names the auth subkey, so it is listed');
    await stop();
    t.notOk(existsSync(line[1]!), 'removed when connect stops');
  });

  await t.test('a token without ssh-sign is refused with the token sentence', async (t) => {
    await rm(`${msg}.sig`, { force: true });
    // Naming the auth subkey itself lists it, so the refusal is the operation's, not the key's.
    const tok = await token('--key', authFpr, '--ops', 'sign');
    const r = await runCli(
      [
        'connect',
        '--relay',
        url,
        '--',
        'ssh-keygen',
        '-Y',
        'sign',
        '-n',
        'git',
        '-f',
        pubFile,
        msg,
      ],
      { env: { KEYTETHER_TOKEN: tok, SSH_AUTH_SOCK: undefined } },
    );
    t.not(r.code, 0, 'ssh-keygen fails');
    const tid = JSON.parse(Buffer.from(tok.split('.')[1]!, 'base64url').toString()) as {
      tid: string;
    };
    t.match(r.stderr, `ssh-agent: Forbidden - token ${tid.tid} does not allow ssh-sign operations`);
    t.notOk(existsSync(`${msg}.sig`), 'no signature was written');
    const rec = await lastRecord();
    t.match(rec, { front: 'relay', op: 'ssh-sign', decision: 'denied', tokenId: tid.tid });
  });

  await t.test(
    'token create refuses a key without an auth subkey for --ops ssh-sign',
    async (t) => {
      const bare = await generateKey(ws, { uid: 'No Auth <na@example.org>', algo: 'ed25519' });
      await importIntoKeytether(await exportSecretKey(ws, bare.fingerprint), env);
      const r = await runCli(
        ['token', 'create', '--relay', url, '--key', bare.fingerprint, '--ops', 'ssh-sign'],
        { env },
      );
      t.equal(r.code, 1, r.stderr);
      t.match(r.stderr, `gpg --quick-add-key ${bare.fingerprint} ed25519 auth`);
      const bad = await runCli(['token', 'create', '--key', key.fingerprint, '--ops', 'ssh'], {
        env,
      });
      t.equal(bad.code, 2);
      t.match(bad.stderr, /'ssh' is not an operation; use --ops with sign, decrypt, ssh-sign/);
    },
  );
  await t.test(
    'an imported OpenSSH key: a token names it by SHA256: and CI signs with it',
    async (t) => {
      const idFile = path.join(tmp, 'id_ed25519');
      await execFileP('ssh-keygen', ['-q', '-t', 'ed25519', '-N', '', '-C', 'ci@ws', '-f', idFile]);
      const imported = await runCli(['keys', 'import', idFile], { env });
      t.equal(imported.code, 0, imported.stderr);
      const sshFpr = /^imported (SHA256:\S+)/.exec(imported.stdout)![1]!;
      const refused = await runCli(
        ['token', 'create', '--relay', url, '--key', sshFpr, '--ops', 'sign,ssh-sign'],
        { env },
      );
      t.equal(refused.code, 1);
      t.match(refused.stderr, `${sshFpr} is an SSH key, which only makes SSH signatures`);

      const tok = await token('--key', sshFpr, '--ops', 'ssh-sign');
      const idPub = (await readFile(`${idFile}.pub`, 'utf8')).trim();
      await rm(`${msg}.sig`, { force: true });
      const r = await connectRunning(
        tok,
        'ssh-add -L && ssh-keygen -Y sign -n git -f "$0" "$1"',
        `${idFile}.pub`,
      );
      t.equal(r.code, 0, r.stderr);
      t.equal(r.stdout.trim().split('\n').length, 1, 'the token shows its one key only');
      t.equal(r.stdout.trim(), idPub, 'listed as its .pub line, with its own comment');
      await writeFile(allowed, `cid@example.org ${idPub}\n`);
      const v = await verify(`${msg}.sig`);
      t.equal(v.code, 0, v.stderr);
      const rec = await lastRecord();
      t.match(rec, { front: 'relay', op: 'ssh-sign', decision: 'allowed', fingerprint: sshFpr });
    },
  );
  t.notMatch(holderErr, /Error:/, 'the holder printed no stack');
});
