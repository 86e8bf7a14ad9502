// `keytether ssh` exposes the holder as an ssh-agent on the server: against a real sshd, the
// printed socket lists the OpenPGP authentication subkey to stock ssh-add (and refuses ssh-add
// -D), ssh-keygen -Y sign -n git signs through it and ssh-keygen -Y verify accepts, stock ssh
// logs in with the key only the workstation has, the env file sets SSH_AUTH_SOCK for a shell,
// and --no-ssh-agent serves none.

import t from 'tap';
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, statSync } from 'node:fs';
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { shellQuote } from '../workstation/ssh/connect.js';
import { cliPath, importIntoKeytether, runCli, spawnCli, waitForLine } from './support/cli.js';
import { exportSecretKey, generateKey, makeGnupgHome } from './support/gnupg.js';
import { sshArgs, startSshd } from './support/sshd.js';
import { ALLOW_BLIND_FLAG } from './support/blind-signing.js';

interface Run {
  code: number | null;
  stdout: string;
  stderr: string;
}

function run(bin: string, args: string[], env: NodeJS.ProcessEnv, input = ''): Promise<Run> {
  return new Promise((resolve, reject) => {
    const child = spawn(bin, args, { env, stdio: 'pipe' });
    let stdout = '';
    let stderr = '';
    const timer = setTimeout(() => child.kill('SIGKILL'), 60_000);
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    child.on('error', (e) => {
      clearTimeout(timer);
      reject(e);
    });
    child.on('close', (code) => {
      clearTimeout(timer);
      resolve({ code, stdout, stderr });
    });
    child.stdin.on('error', () => {});
    child.stdin.end(input);
  });
}

function exitOf(child: ChildProcess): Promise<number | null> {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve(child.exitCode);
  return new Promise((resolve) => child.once('exit', (c) => resolve(c)));
}

t.test('keytether ssh serves an ssh-agent socket on a real sshd', async (t) => {
  // Workstation: a signing primary with an Ed25519 authentication subkey, in keytether's store.
  const ws = await makeGnupgHome();
  t.teardown(() => ws.cleanup());
  const key = await generateKey(ws, {
    uid: 'Ada Auth <ada@example.org>',
    algo: 'ed25519',
    usage: 'sign,cert',
    subkeys: [{ algo: 'ed25519', usage: 'auth' }],
  });
  const authFpr = key.subkeys[0]!.fingerprint;
  const exported = await ws.gpg(['--batch', '--export-ssh-key', `${authFpr}!`]);
  const authPub = exported.stdout.toString().trim();
  t.match(authPub, /^ssh-ed25519 /, 'gpg exports the auth subkey as an OpenSSH key');
  const tmp = await mkdtemp('/tmp/ktsshagent-');
  t.teardown(() => rm(tmp, { recursive: true, force: true }));
  const ktHome = path.join(tmp, 'kt');
  const userHome = path.join(tmp, 'user');
  await mkdir(userHome, { mode: 0o700 });
  await importIntoKeytether(await exportSecretKey(ws, key.fingerprint), { KEYTETHER_HOME: ktHome });

  // Server: an empty GNUPGHOME its sessions get through SetEnv; the sshd also takes the auth key.
  const server = await makeGnupgHome();
  t.teardown(() => server.cleanup());
  const sshd = await startSshd({ env: { GNUPGHOME: server.home } });
  t.teardown(() => sshd.stop());
  await sshd.authorize(authPub);
  const remoteSocket = (await server.run('gpgconf', ['--list-dirs', 'agent-socket'])).stdout
    .toString()
    .trim();

  const cli = await cliPath();
  const remoteCommand = `${shellQuote(process.execPath)} ${shellQuote(cli)}`;
  const env = { KEYTETHER_HOME: ktHome, HOME: userHome, SSH_AUTH_SOCK: undefined };
  const session = (extra: string[] = []) =>
    spawnCli(
      [
        'ssh',
        ...ALLOW_BLIND_FLAG,
        '-p',
        String(sshd.port),
        '-i',
        sshd.clientKey,
        '-o',
        `UserKnownHostsFile=${sshd.knownHostsFile}`,
        '-o',
        'GlobalKnownHostsFile=/dev/null',
        `${sshd.user}@127.0.0.1`,
        '--remote-command',
        remoteCommand,
        '--remote-socket',
        remoteSocket,
        '--policy',
        'front=ssh,op=ssh-sign,action=allow',
        ...extra,
      ],
      { env },
    );

  const child = await session();
  let stdout = '';
  let stderr = '';
  child.stdout!.on('data', (d: Buffer) => (stdout += d.toString()));
  child.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
  const exited = exitOf(child);
  t.teardown(() => {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
  });
  let agentSock: string;
  try {
    agentSock = (await waitForLine(child.stdout!, /^ssh-agent: (\/.+)$/, 60_000))[1]!;
  } catch (e) {
    child.kill('SIGKILL');
    throw new Error(`no ssh-agent line: ${(e as Error).message}; stderr: ${stderr}`);
  }
  const agentEnv = { ...process.env, ...server.env, HOME: userHome, SSH_AUTH_SOCK: agentSock };

  await t.test(
    'the ssh-agent line follows ready: and names a private socket by the gpg one',
    async (t) => {
      const lines = stdout.split('\n').filter(Boolean);
      t.same(lines, [`ready: ${remoteSocket}`, `ssh-agent: ${agentSock}`]);
      t.equal(path.dirname(agentSock), path.dirname(remoteSocket), 'same run directory');
      t.equal(statSync(agentSock).mode & 0o777, 0o600, 'socket 0600');
      t.equal(statSync(path.dirname(agentSock)).mode & 0o777, 0o700, 'directory 0700');
    },
  );

  await t.test('ssh-add -l lists the auth subkey; -D and adding a key are refused', async (t) => {
    const fp = await run('ssh-keygen', ['-lf', '-'], process.env, authPub + '\n');
    const want = fp.stdout.split(' ')[1]!;
    const l = await run('ssh-add', ['-l'], agentEnv);
    t.equal(l.code, 0, l.stderr);
    t.equal(l.stdout.trim().split('\n').length, 1, 'one identity');
    t.match(l.stdout, want, 'the auth subkey');
    const d = await run('ssh-add', ['-D'], agentEnv);
    t.not(d.code, 0, 'ssh-add -D fails');
    const own = path.join(tmp, 'own_ed25519');
    await run('ssh-keygen', ['-q', '-t', 'ed25519', '-N', '', '-f', own], process.env);
    t.not((await run('ssh-add', [own], agentEnv)).code, 0, 'adding a key fails');
    t.match((await run('ssh-add', ['-l'], agentEnv)).stdout, want, 'the key is still listed');
  });

  await t.test('ssh-keygen -Y sign -n git through the socket; -Y verify passes', async (t) => {
    const text = 'tree 4b825dc642cb6eb9a060e54bf8d69288fbee4904\n\nsigned with ssh\n';
    const msg = path.join(tmp, 'commit.txt');
    await writeFile(msg, text);
    const pubFile = path.join(tmp, 'auth.pub');
    await writeFile(pubFile, authPub + '\n');
    const s = await run('ssh-keygen', ['-Y', 'sign', '-n', 'git', '-f', pubFile, msg], agentEnv);
    t.equal(s.code, 0, s.stderr);
    const allowed = path.join(tmp, 'allowed_signers');
    await writeFile(allowed, `ada@example.org ${authPub}\n`);
    const v = await run(
      'ssh-keygen',
      ['-Y', 'verify', '-f', allowed, '-I', 'ada@example.org', '-n', 'git', '-s', `${msg}.sig`],
      process.env,
      text,
    );
    t.equal(v.code, 0, v.stderr);
    t.match(v.stdout, /Good "git" signature for ada@example.org/);
    const audit = (await readFile(path.join(ktHome, 'audit.jsonl'), 'utf8'))
      .split('\n')
      .filter(Boolean)
      .map((l) => JSON.parse(l) as Record<string, unknown>);
    t.match(audit.at(-1), { op: 'ssh-sign', front: 'ssh' }, 'audited as an ssh signature');
  });

  await t.test(
    'stock ssh logs in through the socket with the key only the workstation has',
    async (t) => {
      const args = sshArgs(sshd).map((a) =>
        a === 'IdentityAgent=none' ? `IdentityAgent=${agentSock}` : a,
      );
      args.splice(args.indexOf('-i'), 2);
      args.splice(args.indexOf('IdentitiesOnly=yes') - 1, 2);
      const r = await run('ssh', [...args, 'echo', 'via-keytether'], agentEnv);
      t.equal(r.code, 0, r.stderr);
      t.equal(r.stdout.trim(), 'via-keytether');
    },
  );

  await t.test('a second session to the account shares the socket and says so', async (t) => {
    const second = await session();
    const secondExited = exitOf(second);
    const line = await waitForLine(second.stdout!, /^ssh-agent: (\/.+)$/, 60_000);
    t.equal(line[1], agentSock, 'the same path');
    second.kill('SIGINT');
    t.equal(await secondExited, 0);
    const l = await run('ssh-add', ['-l'], agentEnv);
    t.equal(l.code, 0, 'still served by the first session');
  });

  await t.test('the env file a login shell sources sets SSH_AUTH_SOCK', async (t) => {
    const said = /: ssh: .* run '\. (\S+)'/.exec(stderr);
    t.ok(said, 'the session says which file to source');
    const file = said![1]!;
    t.equal(file, path.join(server.home, 'keytether-ssh-agent.env'));
    t.equal(statSync(file).mode & 0o777, 0o600);
    const sh = await run('sh', ['-c', `. ${shellQuote(file)}; ssh-add -l`], {
      ...agentEnv,
      SSH_AUTH_SOCK: '',
    });
    t.equal(sh.code, 0, sh.stderr);
    t.match(sh.stdout, /ED25519/);
  });

  t.test(
    'the socket and env file go when the session ends; --no-ssh-agent serves none',
    async (t) => {
      child.kill('SIGINT');
      t.equal(await exited, 0, stderr);
      t.notOk(existsSync(agentSock), 'socket removed');
      t.notOk(existsSync(path.join(server.home, 'keytether-ssh-agent.env')), 'env file removed');
      const off = await session(['--no-ssh-agent']);
      let out = '';
      off.stdout!.on('data', (d: Buffer) => (out += d.toString()));
      const offExited = exitOf(off);
      await waitForLine(off.stdout!, /^ready: /, 60_000);
      t.notOk(existsSync(agentSock), 'no ssh-agent socket');
      off.kill('SIGINT');
      t.equal(await offExited, 0);
      t.notMatch(out, /ssh-agent:/);
    },
  );

  t.test(
    'keytether ssh HOST -- CMD: CMD runs with gpg and SSH_AUTH_SOCK served and sets the exit status',
    async (t) => {
      const c = await session([
        '--',
        'sh',
        '-c',
        'echo "sock=$SSH_AUTH_SOCK"; ssh-add -l; gpg-connect-agent "GETINFO version" /bye; exit 7',
      ]);
      let out = '';
      let err = '';
      c.stdout!.on('data', (d: Buffer) => (out += d.toString()));
      c.stderr!.on('data', (d: Buffer) => (err += d.toString()));
      c.stdin!.end();
      t.equal(await exitOf(c), 7, `the command's status: ${err}`);
      t.match(out, `sock=${agentSock}\n`, 'SSH_AUTH_SOCK names the session socket');
      t.match(out, /ED25519/, 'ssh-add -l lists the auth subkey');
      t.match(out, /^D 2\.\d+\.\d+/m, "gpg's agent socket is served");
      t.notMatch(out, /^(ready|ssh-agent):/m, "stdout is the command's alone");
      t.match(err, `ready: ${remoteSocket}`, "keytether's lines are on stderr");
      t.notOk(existsSync(agentSock), 'the socket is gone with the session');

      const both = await runCli(['ssh', '--reconnect', 'host.example', '--', 'true'], { env });
      t.equal(both.code, 2);
      t.match(both.stderr, /--reconnect keeps a link up until interrupted, and a command ends it/);
    },
  );
});
