// A real OpenSSH sshd for benches, listening on 127.0.0.1 as the current user: fresh host and
// client keys in `dir`, remote sessions get `env` (SetEnv), stream-local forwarding allowed with
// StreamLocalBindUnlink so a forwarded socket replaces a stale one. stop() ends sshd and every
// per-connection child it forked (they share its process group).

import { spawn } from 'node:child_process';
import { mkdirSync } from 'node:fs';
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { runTool } from './processes.js';

export interface BenchSshd {
  port: number;
  user: string;
  /** Unencrypted Ed25519 key authorised for `user`. */
  clientKey: string;
  /** The host key's `ssh-ed25519 AAAA…` part, for known_hosts lines. */
  hostKey: string;
  /** A known_hosts file naming this host key for 127.0.0.1 on each of `ports`. */
  knownHosts(file: string, ports: number[]): Promise<void>;
  stop(): Promise<void>;
}

const SSHD = '/usr/sbin/sshd';
const START_TIMEOUT_MS = 15_000;

async function keygen(file: string): Promise<string> {
  const r = await runTool(
    'ssh-keygen',
    ['-q', '-t', 'ed25519', '-N', '', '-C', 'keytether-bench', '-f', file],
    process.env,
  );
  if (r.code !== 0) throw new Error(`ssh-keygen failed: ${r.stderr}`);
  return (await readFile(file + '.pub', 'utf8')).trim().split(' ').slice(0, 2).join(' ');
}

function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.once('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const addr = srv.address();
      srv.close(() => resolve(typeof addr === 'object' && addr ? addr.port : 0));
    });
  });
}

function setEnvLine(env: Record<string, string>): string {
  for (const [k, v] of Object.entries(env)) {
    if (/["\n\r\0]/.test(v) || /[\s"=]/.test(k)) throw new Error(`SetEnv cannot carry ${k}`);
  }
  return `SetEnv ${Object.entries(env)
    .map(([k, v]) => `"${k}=${v}"`)
    .join(' ')}`;
}

/** Starts sshd with its files in `dir` (created; must be new). */
export async function startBenchSshd(dir: string, env: Record<string, string>): Promise<BenchSshd> {
  try {
    // sshd refuses to start without its privilege-separation directory.
    mkdirSync('/run/sshd', { recursive: true, mode: 0o755 });
  } catch {
    // not root: sshd will say what is missing
  }
  await mkdir(dir, { mode: 0o700 });
  const hostKeyFile = path.join(dir, 'host_ed25519');
  const clientKey = path.join(dir, 'client_ed25519');
  const [hostKey, clientPub] = await Promise.all([keygen(hostKeyFile), keygen(clientKey)]);
  const authorized = path.join(dir, 'authorized_keys');
  await writeFile(authorized, clientPub + '\n', { mode: 0o600 });
  const user = os.userInfo().username;

  for (let attempt = 0; ; attempt++) {
    const port = await freePort();
    const cfg = path.join(dir, 'sshd_config');
    await writeFile(
      cfg,
      [
        'ListenAddress 127.0.0.1',
        `Port ${port}`,
        `HostKey ${hostKeyFile}`,
        `PidFile ${path.join(dir, 'sshd.pid')}`,
        `AuthorizedKeysFile ${authorized}`,
        'StrictModes no',
        'UsePAM no',
        'PasswordAuthentication no',
        'KbdInteractiveAuthentication no',
        'PermitRootLogin yes',
        'AllowStreamLocalForwarding yes',
        'StreamLocalBindUnlink yes',
        'X11Forwarding no',
        'PrintMotd no',
        'PrintLastLog no',
        'UseDNS no',
        setEnvLine(env),
        '',
      ].join('\n'),
      { mode: 0o600 },
    );
    // Own process group, so stop() also ends the per-connection children.
    const child = spawn(SSHD, ['-D', '-e', '-f', cfg], {
      stdio: ['ignore', 'ignore', 'pipe'],
      detached: true,
    });
    let log = '';
    const killGroup = (sig: NodeJS.Signals) => {
      try {
        process.kill(-(child.pid ?? 0), sig);
      } catch {
        // already gone
      }
    };
    const onExit = () => killGroup('SIGKILL');
    process.once('exit', onExit);
    const listening = await new Promise<boolean>((resolve, reject) => {
      const timer = setTimeout(() => {
        killGroup('SIGKILL');
        reject(new Error(`sshd did not start listening:\n${log}`));
      }, START_TIMEOUT_MS);
      child.stderr.on('data', (d: Buffer) => {
        log = (log + d.toString('utf8')).slice(-8192);
        if (log.includes(`Server listening on 127.0.0.1 port ${port}.`)) {
          clearTimeout(timer);
          resolve(true);
        }
      });
      child.once('exit', () => {
        clearTimeout(timer);
        resolve(false);
      });
    });
    if (!listening) {
      process.removeListener('exit', onExit);
      // Someone else took the port between the probe and sshd's bind: try another one.
      if (attempt < 4 && /Address already in use|Cannot bind/.test(log)) continue;
      throw new Error(`sshd exited before listening:\n${log}`);
    }
    const exited = new Promise<void>((r) => child.once('exit', () => r()));
    return {
      port,
      user,
      clientKey,
      hostKey,
      async knownHosts(file, ports) {
        const lines = ports.map((p) => `[127.0.0.1]:${p} ${hostKey}\n`).join('');
        await writeFile(file, lines, { mode: 0o600 });
      },
      async stop() {
        process.removeListener('exit', onExit);
        if (child.exitCode !== null || child.signalCode !== null) return;
        killGroup('SIGTERM');
        await exited;
      },
    };
  }
}
