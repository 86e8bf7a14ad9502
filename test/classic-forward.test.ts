// Classic forwarding: `keytether agent`'s socket carried to a server by OpenSSH's own
// `RemoteForward` (ssh -R), no facade and no keytether on the server. Every Assuan line then
// crosses the link, so it costs more round trips than `keytether ssh`, but stock gpg on the
// server must still sign with a key that only the workstation holds.

import t from 'tap';
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdtemp, readdir, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { runCli, spawnCli, waitForLine } from './support/cli.js';
import {
  exportPublicKey,
  exportSecretKey,
  generateKey,
  makeGnupgHome,
  type TempGnupg,
} from './support/gnupg.js';
import { gpgClients } from './support/gpg-versions.js';
import { SSH_BIN, sshArgs, startSshd } from './support/sshd.js';

const READY_DEADLINE_MS = 30_000;
const POLL_MS = 50;

function exitOf(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve();
  return new Promise((resolve) => child.once('exit', () => resolve()));
}

async function stopChild(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const exited = exitOf(child);
  child.kill('SIGTERM');
  const kill = setTimeout(() => child.kill('SIGKILL'), 5_000);
  await exited;
  clearTimeout(kill);
}

/**
 * Polls the forwarded socket with `GETINFO version` until an agent answers OK there, the ssh
 * client exits (forward refused) or the deadline passes. sshd binds the socket only after the
 * client asked for it, and nothing on the client side announces that moment without -v.
 */
async function waitForAgent(
  server: TempGnupg,
  gpgConnectAgent: string,
  ssh: ChildProcess,
  sshStderr: () => string,
): Promise<string> {
  const deadline = Date.now() + READY_DEADLINE_MS;
  let last = '';
  for (;;) {
    if (ssh.exitCode !== null || ssh.signalCode !== null) {
      throw new Error(`ssh -R exited (${ssh.exitCode ?? ssh.signalCode}): ${sshStderr()}`);
    }
    const r = await server.run(gpgConnectAgent, ['--no-autostart', 'GETINFO version', '/bye'], {
      timeoutMs: 10_000,
    });
    const out = r.stdout.toString('utf8');
    const m = /^D (\S+)\nOK/m.exec(out);
    if (r.code === 0 && m) return m[1]!;
    last = `${out.trim()} ${r.stderr.trim()}`;
    if (Date.now() > deadline) {
      throw new Error(`the forwarded socket never answered: ${last}; ssh: ${sshStderr()}`);
    }
    await new Promise((resolve) => setTimeout(resolve, POLL_MS));
  }
}

t.test('OpenSSH RemoteForward of keytether agent serves gpg on the server', async (t) => {
  // Workstation: an unprotected Ed25519 signing key, imported into a keytether home.
  const ws = await makeGnupgHome();
  t.teardown(() => ws.cleanup());
  const key = await generateKey(ws, {
    uid: 'Cleo Classic <cleo@example.org>',
    algo: 'ed25519',
    usage: 'sign,cert',
  });
  const tmp = await mkdtemp('/tmp/ktcf-');
  t.teardown(() => rm(tmp, { recursive: true, force: true }));
  const ktHome = path.join(tmp, 'kt');
  const secrets = path.join(tmp, 'secret.gpg');
  await writeFile(secrets, await exportSecretKey(ws, key.fingerprint), { mode: 0o600 });
  const imp = await runCli(['keys', 'import', secrets], { env: { KEYTETHER_HOME: ktHome } });
  t.equal(imp.code, 0, `keys import: ${imp.stderr}`);
  await rm(secrets);

  const localSocket = path.join(tmp, 'S.kt');
  const agent = await spawnCli(['agent', '--socket', localSocket], {
    env: { KEYTETHER_HOME: ktHome },
  });
  let agentStderr = '';
  agent.stderr!.on('data', (d: Buffer) => (agentStderr += d.toString()));
  t.teardown(() => stopChild(agent));
  try {
    await waitForLine(agent.stdout!, /^ready: /, 30_000);
  } catch (e) {
    throw new Error(`keytether agent did not get ready: ${(e as Error).message}; ${agentStderr}`);
  }

  // Server: public key only, and gpg must never start an agent of its own there.
  const server = await makeGnupgHome({ gpgConf: ['no-autostart'] });
  t.teardown(() => server.cleanup());
  const pub = await exportPublicKey(ws, key.fingerprint);
  const imported = await server.gpg(['--batch', '--import'], { input: pub });
  t.equal(imported.code, 0, imported.stderr);
  // The socket's directory must exist before sshd can bind in it (under /run/user when present).
  await server.run('gpgconf', ['--create-socketdir']);
  const dirs = await server.run('gpgconf', ['--list-dirs', 'agent-socket']);
  const remoteSocket = dirs.stdout.toString().trim();
  t.ok(remoteSocket.startsWith('/'), `server agent socket: ${remoteSocket}`);

  const sshd = await startSshd({ streamLocalBindUnlink: true });
  t.teardown(() => sshd.stop());

  const ssh = spawn(
    SSH_BIN,
    [
      '-N',
      '-o',
      'ExitOnForwardFailure=yes',
      '-R',
      `${remoteSocket}:${localSocket}`,
      ...sshArgs(sshd),
    ],
    { stdio: ['ignore', 'ignore', 'pipe'] },
  );
  let sshStderr = '';
  ssh.stderr!.on('data', (d: Buffer) => (sshStderr += d.toString()));
  t.teardown(() => stopChild(ssh));

  const version = await waitForAgent(server, 'gpg-connect-agent', ssh, () => sshStderr);
  t.match(version, /^\d+\.\d+/, `an agent answers on the forwarded socket (version ${version})`);

  const msg = path.join(tmp, 'msg.txt');
  await writeFile(msg, 'signed on the server through a plain ssh -R\n');
  for (const client of gpgClients()) {
    await t.test(client.label, async (t) => {
      const sig = path.join(tmp, `msg.${client.version}.sig`);
      const s = await server.run(client.gpg, [
        '--batch',
        '--no-tty',
        '-u',
        key.fingerprint,
        '-o',
        sig,
        '--detach-sign',
        msg,
      ]);
      t.equal(s.code, 0, `detach-sign: ${s.stderr}`);
      const v = await server.run(client.gpg, ['--batch', '--no-tty', '--verify', sig, msg]);
      t.equal(v.code, 0, v.stderr);
      t.match(v.stderr, /Good signature from "Cleo Classic <cleo@example\.org>"/);
    });
  }

  await t.test('the server holds no secret key material', async (t) => {
    const dir = path.join(server.home, 'private-keys-v1.d');
    t.same(existsSync(dir) ? await readdir(dir) : [], []);
  });

  await t.test(
    'with the forward gone, signing on the server fails instead of hanging',
    async (t) => {
      await stopChild(ssh);
      const started = Date.now();
      const s = await server.run(
        '/usr/bin/gpg',
        ['--batch', '--no-tty', '-u', key.fingerprint, '--detach-sign', msg],
        { timeoutMs: 20_000 },
      );
      t.not(s.code, 0, 'no signature without the workstation');
      t.ok(Date.now() - started < 10_000, 'and it fails promptly');
    },
  );
});
