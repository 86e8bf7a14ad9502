// A real OpenSSH sshd for integration tests: its own host key, config, client key pair and
// known_hosts line in a throwaway directory, listening on 127.0.0.1 on a free port. Nothing in
// the real user's ~ or /etc/ssh is touched (except the optional extra test user, see below).

import { spawn, spawnSync } from 'node:child_process';
import type { ChildProcess } from 'node:child_process';
import { mkdirSync, rmSync } from 'node:fs';
import { chmod, mkdir, mkdtemp, readFile, writeFile } from 'node:fs/promises';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';

export const SSHD_BIN = '/usr/sbin/sshd';
export const SSH_BIN = 'ssh';

/** Name of the optional unprivileged test account (created once, left in place). */
export const SECOND_USER = 'keytether-test';

export interface StartSshdOptions {
  /** Variables every session on this sshd gets (sshd_config SetEnv); PATH defaults to one that
   * finds this node first. Values must not contain `"` or newlines. */
  env?: Record<string, string>;
  /** `StreamLocalBindUnlink` (default true). */
  streamLocalBindUnlink?: boolean;
  /** Extra sshd_config lines, appended last. */
  extraConfig?: string[];
  /** Also authorise the client key for SECOND_USER, creating it with useradd when root. */
  secondUser?: boolean;
  /** sshd's LogLevel (default VERBOSE); DEBUG1 also logs each forwarding channel it opens. */
  logLevel?: 'VERBOSE' | 'DEBUG1';
}

export interface Sshd {
  host: '127.0.0.1';
  port: number;
  /** `ssh-ed25519 AAAA…` */
  hostKeyPub: string;
  /** `[127.0.0.1]:PORT ssh-ed25519 AAAA…` */
  knownHostsLine: string;
  /** A known_hosts file holding just knownHostsLine. */
  knownHostsFile: string;
  /** Unencrypted ed25519 private key authorised for `user` (and secondUser). */
  clientKey: string;
  clientKeyPub: string;
  /** The current user's name, which the client key logs in as. */
  user: string;
  /** The unprivileged account, when requested and available. */
  secondUser: string | undefined;
  /** The temporary directory holding everything. */
  dir: string;
  /** What remote sessions get through SetEnv (PATH etc.). */
  env: Record<string, string>;
  /** Everything sshd logged so far (LogLevel VERBOSE unless logLevel says otherwise). */
  log(): string;
  /** Authorises another public key line for `forUser` (default: user). */
  authorize(pubLine: string, forUser?: string): Promise<void>;
  stop(): Promise<void>;
}

export interface SshExecResult {
  code: number | null;
  stdout: string;
  stderr: string;
}

const START_TIMEOUT_MS = 15_000;
const live = new Map<ChildProcess, string>();
let exitHookInstalled = false;

function reapAtExit(): void {
  for (const [child, dir] of live) {
    if (child.pid !== undefined) {
      try {
        process.kill(-child.pid, 'SIGKILL');
      } catch {
        // already gone
      }
    }
    rmSync(dir, { recursive: true, force: true });
  }
  live.clear();
}

function run(
  cmd: string,
  args: string[],
): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    child.on('error', reject);
    child.on('close', (code) => resolve({ code, stdout, stderr }));
  });
}

async function keygen(file: string, comment: string): Promise<string> {
  const r = await run('ssh-keygen', ['-q', '-t', 'ed25519', '-N', '', '-C', comment, '-f', file]);
  if (r.code !== 0) throw new Error(`ssh-keygen failed: ${r.stderr}`);
  return (await readFile(file + '.pub', 'utf8')).trim();
}

export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.once('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const addr = srv.address();
      const port = typeof addr === 'object' && addr ? addr.port : 0;
      srv.close(() => resolve(port));
    });
  });
}

function currentUser(): string {
  try {
    return os.userInfo().username;
  } catch {
    return process.env.USER ?? 'root';
  }
}

/** Creates SECOND_USER if possible; never deletes it (other test files may be using it). */
function ensureSecondUser(): string | undefined {
  if (process.getuid?.() !== 0) return undefined;
  if (spawnSync('id', ['-u', SECOND_USER], { stdio: 'ignore' }).status !== 0) {
    const r = spawnSync('useradd', ['-m', '-s', '/bin/sh', SECOND_USER], { stdio: 'ignore' });
    // 9: created concurrently by another test file.
    if (r.status !== 0 && r.status !== 9) return undefined;
  }
  // useradd leaves the password field as "!", which sshd without PAM treats as a locked account.
  spawnSync('usermod', ['-p', '*', SECOND_USER], { stdio: 'ignore' });
  return SECOND_USER;
}

function sshdConfigValue(name: string, value: string): string {
  if (/["\n\r\0]/.test(value) || /[\s"=]/.test(name)) {
    throw new Error(`sshd SetEnv cannot carry ${name}'s value`);
  }
  return `"${name}=${value}"`;
}

/** Waits for "Server listening on 127.0.0.1 port N." (or sshd's exit, with its log). */
function waitListening(child: ChildProcess, port: number, logs: { text: string }): Promise<void> {
  return new Promise((resolve, reject) => {
    const marker = `Server listening on 127.0.0.1 port ${port}.`;
    const timer = setTimeout(() => {
      cleanup();
      reject(
        new Error(`sshd did not start listening within ${START_TIMEOUT_MS} ms:\n${logs.text}`),
      );
    }, START_TIMEOUT_MS);
    const onData = (): void => {
      if (logs.text.includes(marker)) {
        cleanup();
        resolve();
      }
    };
    const onExit = (code: number | null): void => {
      cleanup();
      reject(
        Object.assign(new Error(`sshd exited with ${code}:\n${logs.text}`), { sshdLog: logs.text }),
      );
    };
    const cleanup = (): void => {
      clearTimeout(timer);
      child.stderr?.off('data', onData);
      child.off('exit', onExit);
    };
    child.stderr?.on('data', onData);
    child.on('exit', onExit);
    onData();
  });
}

export async function startSshd(opts: StartSshdOptions = {}): Promise<Sshd> {
  // sshd refuses to start without its privilege-separation directory.
  try {
    mkdirSync('/run/sshd', { recursive: true, mode: 0o755 });
  } catch {
    // not root: sshd will say what is missing
  }
  const dir = await mkdtemp(path.join('/tmp', 'kt-sshd-'));
  // Traversable (not listable) so sshd can read the second user's authorized_keys as that user.
  await chmod(dir, 0o711);
  const hostKey = path.join(dir, 'host_ed25519');
  const clientKey = path.join(dir, 'client_ed25519');
  const [hostKeyPub, clientKeyPub] = await Promise.all([
    keygen(hostKey, 'keytether-test-host'),
    keygen(clientKey, 'keytether-test-client'),
  ]);
  const user = currentUser();
  const secondUser = opts.secondUser ? ensureSecondUser() : undefined;
  const authDir = path.join(dir, 'authorized_keys');
  await mkdir(authDir, { mode: 0o755 });
  await chmod(authDir, 0o755);
  const authorize = async (pubLine: string, forUser = user): Promise<void> => {
    const file = path.join(authDir, forUser);
    let existing = '';
    try {
      existing = await readFile(file, 'utf8');
    } catch {
      // first key for this user
    }
    await writeFile(file, existing + pubLine.trim() + '\n', { mode: 0o644 });
    await chmod(file, 0o644);
  };
  await authorize(clientKeyPub);
  if (secondUser) await authorize(clientKeyPub, secondUser);

  const env: Record<string, string> = {
    PATH: [
      path.dirname(process.execPath),
      '/usr/local/sbin',
      '/usr/local/bin',
      '/usr/sbin',
      '/usr/bin',
      '/sbin',
      '/bin',
    ].join(':'),
    LANG: 'C',
    ...opts.env,
  };

  const logs = { text: '' };
  let child: ChildProcess | undefined;
  let port = 0;
  for (let attempt = 0; attempt < 5 && !child; attempt++) {
    port = await freePort();
    const config = [
      `ListenAddress 127.0.0.1`,
      `Port ${port}`,
      `HostKey ${hostKey}`,
      `PidFile ${path.join(dir, 'sshd.pid')}`,
      `AuthorizedKeysFile ${authDir}/%u`,
      `StrictModes no`,
      `UsePAM no`,
      `PasswordAuthentication no`,
      `KbdInteractiveAuthentication no`,
      `PubkeyAuthentication yes`,
      `PermitRootLogin yes`,
      `AllowTcpForwarding yes`,
      `AllowStreamLocalForwarding yes`,
      `AllowAgentForwarding yes`,
      `StreamLocalBindUnlink ${opts.streamLocalBindUnlink === false ? 'no' : 'yes'}`,
      `X11Forwarding no`,
      `PrintMotd no`,
      `PrintLastLog no`,
      `UseDNS no`,
      `PermitUserEnvironment no`,
      `AcceptEnv LANG LC_* KEYTETHER_* GNUPGHOME`,
      `SetEnv ${Object.entries(env)
        .map(([k, v]) => sshdConfigValue(k, v))
        .join(' ')}`,
      `Subsystem sftp internal-sftp`,
      `LogLevel ${opts.logLevel ?? 'VERBOSE'}`,
      ...(opts.extraConfig ?? []),
      '',
    ].join('\n');
    const cfgFile = path.join(dir, 'sshd_config');
    await writeFile(cfgFile, config, { mode: 0o600 });
    const check = await run(SSHD_BIN, ['-t', '-f', cfgFile]);
    if (check.code !== 0) {
      await rmDir(dir);
      throw new Error(`sshd rejected the test config: ${check.stderr}`);
    }
    logs.text = '';
    // Own process group, so stop() also ends the per-connection sshd children.
    const c = spawn(SSHD_BIN, ['-D', '-e', '-f', cfgFile], {
      stdio: ['ignore', 'ignore', 'pipe'],
      detached: true,
    });
    c.stderr.on('data', (d: Buffer) => (logs.text += d.toString()));
    try {
      await waitListening(c, port, logs);
      child = c;
    } catch (e) {
      // Another process took the port between our probe and sshd's bind: try another one.
      if (!/Address already in use|Cannot bind/.test(logs.text) || attempt === 4) {
        c.kill('SIGKILL');
        await rmDir(dir);
        throw e;
      }
    }
  }
  if (!child) throw new Error('sshd could not bind a port');
  const proc = child;
  proc.unref();
  (proc.stderr as unknown as { unref?: () => void } | null)?.unref?.();
  live.set(proc, dir);
  if (!exitHookInstalled) {
    exitHookInstalled = true;
    process.on('exit', reapAtExit);
  }

  const knownHostsLine = `[127.0.0.1]:${port} ${hostKeyPub.split(' ').slice(0, 2).join(' ')}`;
  const knownHostsFile = path.join(dir, 'known_hosts');
  await writeFile(knownHostsFile, knownHostsLine + '\n', { mode: 0o600 });

  let stopped: Promise<void> | undefined;
  return {
    host: '127.0.0.1',
    port,
    hostKeyPub,
    knownHostsLine,
    knownHostsFile,
    clientKey,
    clientKeyPub,
    user,
    secondUser,
    dir,
    env,
    log: () => logs.text,
    authorize,
    stop() {
      stopped ??= (async () => {
        if (proc.exitCode === null && proc.signalCode === null) {
          const exited = new Promise<void>((resolve) => proc.once('exit', () => resolve()));
          // Unreferenced so a forgotten stop() cannot keep a test alive; referenced again here so
          // the process waits for sshd to go.
          proc.ref();
          try {
            process.kill(-(proc.pid ?? 0), 'SIGTERM');
          } catch {
            proc.kill('SIGTERM');
          }
          await exited;
        }
        live.delete(proc);
        await rmDir(dir);
      })();
      return stopped;
    },
  };
}

async function rmDir(dir: string): Promise<void> {
  rmSync(dir, { recursive: true, force: true });
}

/** Arguments for the stock OpenSSH client against this sshd, isolated from ~/.ssh. */
export function sshArgs(h: Sshd, opts: { user?: string; key?: string } = {}): string[] {
  return [
    '-F',
    '/dev/null',
    '-o',
    `UserKnownHostsFile=${h.knownHostsFile}`,
    '-o',
    'GlobalKnownHostsFile=/dev/null',
    '-o',
    'StrictHostKeyChecking=yes',
    '-o',
    'BatchMode=yes',
    '-o',
    'IdentitiesOnly=yes',
    '-o',
    'IdentityAgent=none',
    '-o',
    'LogLevel=ERROR',
    '-i',
    opts.key ?? h.clientKey,
    '-p',
    String(h.port),
    `${opts.user ?? h.user}@${h.host}`,
  ];
}

/** Runs COMMAND on the test sshd with the real `ssh` client, for comparison with stock OpenSSH. */
export function sshExec(
  h: Sshd,
  command: string,
  opts: { user?: string; key?: string; input?: string; timeoutMs?: number } = {},
): Promise<SshExecResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(SSH_BIN, [...sshArgs(h, opts), command], {
      stdio: ['pipe', 'pipe', 'pipe'],
    });
    let stdout = '';
    let stderr = '';
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`ssh ${command} did not finish in time; stderr: ${stderr}`));
    }, opts.timeoutMs ?? 30_000);
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
    child.stdin.end(opts.input ?? '');
  });
}
