// `keytether ssh` against a real OpenSSH sshd: the workstation's in-process holder is forwarded
// to a "server" account (same machine, its own GNUPGHOME) where `keytether serve --stdio` runs
// over the exec channel, and stock gpg and git there sign and decrypt with keys that never leave
// the workstation.

import t from 'tap';
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, readFile, readdir, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { shellQuote } from '../workstation/ssh/connect.js';
import { cliPath, runCli, spawnCli, waitForLine } from './support/cli.js';
import { exportSecretKey, generateKey, makeGnupgHome } from './support/gnupg.js';
import { gpgClients } from './support/gpg-versions.js';
import { startSshd, type Sshd } from './support/sshd.js';
import { ALLOW_BLIND_FLAG } from './support/blind-signing.js';

interface Run {
  code: number | null;
  stdout: Buffer;
  stderr: string;
}

function run(
  bin: string,
  args: string[],
  opts: { env: NodeJS.ProcessEnv; input?: string | Buffer; cwd?: string; timeoutMs?: number },
): Promise<Run> {
  return new Promise((resolve, reject) => {
    const child = spawn(bin, args, { env: opts.env, cwd: opts.cwd, stdio: 'pipe' });
    const out: Buffer[] = [];
    let stderr = '';
    const timer = setTimeout(() => child.kill('SIGKILL'), opts.timeoutMs ?? 60_000);
    child.stdout.on('data', (d: Buffer) => out.push(d));
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    child.on('error', (e) => {
      clearTimeout(timer);
      reject(e);
    });
    child.on('close', (code) => {
      clearTimeout(timer);
      resolve({ code, stdout: Buffer.concat(out), stderr });
    });
    child.stdin.on('error', () => {});
    child.stdin.end(opts.input ?? '');
  });
}

function exitOf(child: ChildProcess): Promise<number | null> {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve(child.exitCode);
  return new Promise((resolve) => child.once('exit', (c) => resolve(c)));
}

t.test('keytether ssh forwards the holder to a real sshd', async (t) => {
  // Workstation: an unprotected Ed25519 key with a cv25519 subkey, imported into keytether.
  const ws = await makeGnupgHome();
  t.teardown(() => ws.cleanup());
  const key = await generateKey(ws, {
    uid: 'Sid Shell <sid@example.org>',
    algo: 'ed25519',
    usage: 'sign,cert',
    subkeys: [{ algo: 'cv25519', usage: 'encr' }],
  });
  const tmp = await mkdtemp('/tmp/ktssh-');
  t.teardown(() => rm(tmp, { recursive: true, force: true }));
  const ktHome = path.join(tmp, 'kt');
  const userHome = path.join(tmp, 'user');
  await mkdir(userHome, { mode: 0o700 });
  const secrets = path.join(tmp, 'secret.gpg');
  await writeFile(secrets, await exportSecretKey(ws, key.fingerprint), { mode: 0o600 });
  const imp = await runCli(['keys', 'import', secrets], { env: { KEYTETHER_HOME: ktHome } });
  t.equal(imp.code, 0, `keys import: ${imp.stderr}`);
  await rm(secrets);

  // Server: a GNUPGHOME with nothing in it; sessions on the sshd get it through SetEnv.
  const server = await makeGnupgHome();
  t.teardown(() => server.cleanup());
  const sshd: Sshd = await startSshd({ env: { GNUPGHOME: server.home } });
  t.teardown(() => sshd.stop());
  const dirs = await server.run('gpgconf', ['--list-dirs', 'agent-socket']);
  const remoteSocket = dirs.stdout.toString().trim();
  t.ok(remoteSocket.startsWith('/'), `server agent socket: ${remoteSocket}`);

  const cli = await cliPath();
  const remoteCommand = `${shellQuote(process.execPath)} ${shellQuote(cli)}`;
  const env = { KEYTETHER_HOME: ktHome, HOME: userHome, SSH_AUTH_SOCK: undefined };
  const sshArgs = (knownHosts: string, extra: string[] = []) => [
    'ssh',
    ...ALLOW_BLIND_FLAG,
    '-p',
    String(sshd.port),
    '-i',
    sshd.clientKey,
    '-o',
    `UserKnownHostsFile=${knownHosts}`,
    '-o',
    'GlobalKnownHostsFile=/dev/null',
    `${sshd.user}@127.0.0.1`,
    '--remote-command',
    remoteCommand,
    ...extra,
  ];

  await t.test('an unknown host key is refused with its fingerprint', async (t) => {
    const empty = path.join(tmp, 'empty_known_hosts');
    await writeFile(empty, '', { mode: 0o600 });
    const r = await runCli(sshArgs(empty), { env });
    t.equal(r.code, 1, r.stderr);
    t.match(r.stderr, /^keytether ssh: .*SHA256:[A-Za-z0-9+/]{43}/);
    t.match(r.stderr, /--accept-new/);
    t.equal(r.stderr.trim().split('\n').length, 1, 'one sentence');
    t.equal(r.stdout, '');
  });

  await t.test('a missing remote keytether says how to install it', async (t) => {
    const r = await runCli(
      [...sshArgs(sshd.knownHostsFile), '--remote-command', '/nonexistent/keytether'],
      { env },
    );
    t.equal(r.code, 1, r.stderr);
    // keytether is not published, so the registry install it used to suggest fails.
    t.notMatch(r.stderr, /npm install -g keytether\b/);
    t.match(
      r.stderr,
      /^keytether ssh: `\/nonexistent\/keytether` was not found on 127\.0\.0\.1; install keytether there from a tarball \(npm pack in your keytether checkout, copy keytether-\d+\.\d+\.\d+\.tgz to 127\.0\.0\.1, run npm install -g \.\/keytether-\d+\.\d+\.\d+\.tgz there\) or from a git checkout on 127\.0\.0\.1 \(npm install -g \.\), or pass --remote-command with how to run it$/m,
    );
    t.equal(r.stderr.match(/^keytether ssh: /gm)?.length, 1, 'in one line');
    t.equal(r.stdout, '');
  });

  await t.test("a gpg-agent live on the server's socket: refused, then --replace", async (t) => {
    const launch = await server.run('gpgconf', ['--launch', 'gpg-agent']);
    t.equal(launch.code, 0, launch.stderr);
    const refused = await runCli(
      [...sshArgs(sshd.knownHostsFile), '--remote-socket', remoteSocket],
      { env },
    );
    t.equal(refused.code, 1, refused.stderr);
    t.match(refused.stderr, /a gpg-agent is already listening on .*pass --replace to do that/);
    const session = await spawnCli(
      [...sshArgs(sshd.knownHostsFile), '--remote-socket', remoteSocket, '--replace'],
      { env },
    );
    const ended = exitOf(session);
    try {
      await waitForLine(session.stdout!, /^ready: /, 30_000);
      // The server's own agent has no keys; the holder's key answers only through keytether.
      const have = await server.connectAgent([`HAVEKEY ${key.keygrip}`]);
      t.match(have.stdout.toString(), /^OK/m, "keytether serves the server's socket now");
    } finally {
      session.kill('SIGINT');
      await ended;
    }
  });

  const child = await spawnCli(
    sshArgs(sshd.knownHostsFile, [
      '--remote-socket',
      remoteSocket,
      '--import-keys',
      // Remote decryption asks for confirmation by default; this test has no one to ask.
      '--policy',
      'front=ssh,op=decrypt,action=allow',
    ]),
    { env },
  );
  let stderr = '';
  child.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
  const exited = exitOf(child);
  t.teardown(() => {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
  });
  let ready: RegExpMatchArray;
  try {
    ready = await waitForLine(child.stdout!, /^ready: (.+)$/, 60_000);
  } catch (e) {
    child.kill('SIGKILL');
    throw new Error(`keytether ssh did not get ready: ${(e as Error).message}; stderr: ${stderr}`);
  }
  t.equal(ready[1], remoteSocket, 'ready names the remote socket');

  /** git on the "server" in REPO, signing as Sid through PROGRAM (gpg.program). */
  const gitIn = (repo: string, program: string) => (args: string[]) =>
    run(
      'git',
      [
        '-c',
        `gpg.program=${program}`,
        '-c',
        `user.signingkey=${key.fingerprint}`,
        '-c',
        'user.name=Sid Shell',
        '-c',
        'user.email=sid@example.org',
        ...args,
      ],
      { env: { ...server.env, GIT_CONFIG_NOSYSTEM: '1', HOME: userHome }, cwd: repo },
    );

  const msg = path.join(tmp, 'msg.txt');
  await writeFile(msg, 'signed on the server, keyed on the workstation\n');
  for (const client of gpgClients()) {
    await t.test(client.label, async (t) => {
      const gpg = (args: string[], input?: string | Buffer) =>
        run(client.gpg, ['--batch', '--no-tty', ...args], {
          env: server.env,
          ...(input !== undefined ? { input } : {}),
        });
      const sig = path.join(tmp, `msg.${client.version}.sig`);
      const s = await gpg(['-u', key.fingerprint, '-o', sig, '--detach-sign', msg]);
      t.equal(s.code, 0, s.stderr);
      const v = await gpg(['--verify', sig, msg]);
      t.equal(v.code, 0, v.stderr);
      t.match(v.stderr, /Good signature from "Sid Shell/);

      const plain = `for the subkey via ${client.label}\n`;
      const enc = await gpg(['-r', key.subkeys[0]!.fingerprint, '--encrypt'], plain);
      t.equal(enc.code, 0, enc.stderr);
      const dec = await gpg(['--decrypt'], enc.stdout);
      t.equal(dec.code, 0, dec.stderr);
      t.equal(dec.stdout.toString(), plain);

      const k = await gpg(['-K']);
      t.equal(k.code, 0, k.stderr);
      t.match(k.stdout.toString(), /^sec /m);
      t.notMatch(k.stdout.toString(), /^(sec|ssb)#/m);

      const repo = await mkdtemp(path.join(tmp, 'repo-'));
      const git = gitIn(repo, client.gpg);
      t.equal((await git(['init', '-q'])).code, 0);
      const c = await git(['commit', '-q', '-S', '--allow-empty', '-m', 'signed over ssh']);
      t.equal(c.code, 0, c.stderr);
      const vc = await git(['verify-commit', 'HEAD']);
      t.equal(vc.code, 0, vc.stderr);
      t.match(vc.stderr, /Good signature from "Sid Shell/);
    });
  }

  await t.test('git through the shim the session wrote is clear-signed', async (t) => {
    const said =
      /: git: to clear-sign commits here, run 'git config --global gpg\.program (\S+)'/.exec(
        stderr,
      );
    t.ok(said, 'the session says how to point git at the shim');
    const program = said![1]!;
    t.equal(program, path.join(server.home, 'keytether-git-sign'));
    const repo = await mkdtemp(path.join(tmp, 'shim-repo-'));
    const git = gitIn(repo, program);
    t.equal((await git(['init', '-q'])).code, 0);
    await writeFile(path.join(repo, 'notes.txt'), 'clear\n');
    t.equal((await git(['add', 'notes.txt'])).code, 0);
    const c = await git(['commit', '-q', '-S', '-m', 'clear over ssh']);
    t.equal(c.code, 0, c.stderr);
    t.match((await git(['verify-commit', 'HEAD'])).stderr, /Good signature from "Sid Shell/);
    const last = (await readFile(path.join(ktHome, 'audit.jsonl'), 'utf8'))
      .split('\n')
      .filter(Boolean)
      .map((l) => JSON.parse(l) as Record<string, unknown>)
      .filter((r) => r.op === 'sign')
      .at(-1);
    t.match(last, {
      verification: 'verified',
      content: {
        summary: 'commit: clear over ssh',
        files: { proven: true, first: ['A notes.txt'] },
      },
    });
  });

  await t.test('the server holds no secret key material', async (t) => {
    const dir = path.join(server.home, 'private-keys-v1.d');
    t.same(existsSync(dir) ? await readdir(dir) : [], []);
  });

  await t.test('SIGTERM ends the session and the remote socket goes away', async (t) => {
    child.kill('SIGTERM');
    t.equal(await exited, 0, stderr);
    t.notOk(existsSync(remoteSocket), 'the remote socket was removed');
    const started = Date.now();
    const s = await run(
      '/usr/bin/gpg',
      ['--batch', '--no-tty', '-u', key.fingerprint, '--detach-sign', msg],
      { env: server.env, timeoutMs: 20_000 },
    );
    t.not(s.code, 0, 'signing fails once the holder is gone');
    t.ok(Date.now() - started < 10_000, 'and fails quickly instead of hanging');
  });

  await t.test('the audit log names the SSH host, not what the server claimed', async (t) => {
    const text = await readFile(path.join(ktHome, 'audit.jsonl'), 'utf8');
    const recs = text
      .split('\n')
      .filter(Boolean)
      .map((l) => JSON.parse(l) as Record<string, unknown>);
    t.ok(recs.some((r) => r.op === 'sign') && recs.some((r) => r.op === 'decrypt'));
    t.ok(
      recs.every((r) => r.front === 'ssh' && r.host === '127.0.0.1'),
      'every request came in over ssh from 127.0.0.1',
    );
  });
});
