// `keytether doctor --server`: what on this machine would stop gpg from reaching a keytether
// facade, or let something else answer in its place — the gpg that is installed, the agent
// socket it uses and who listens there, gpg.conf's no-autostart, and systemd starting gpg-agent
// on that socket behind keytether's back; and sshd's settings (sshd-check.ts).

import { execFile } from 'node:child_process';
import { existsSync, realpathSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import net from 'node:net';
import path from 'node:path';
import { AssuanClient } from '../protocol/assuan/index.js';
import { CONTENT_COMMAND } from '../protocol/agent/index.js';
import { ErrorCode, GpgError } from '../protocol/gpg-error.js';
import type { Finding } from '../system/diagnosis.js';
import { probeSocket } from '../system/unix-socket.js';
import { gnupgDirs } from './gnupg-dirs.js';
import { diagnoseSshd } from './sshd-check.js';

const MIN_GPG: [number, number] = [2, 2];
/** sun_path holds 108 bytes with its NUL. */
const MAX_SOCKET_PATH_BYTES = 107;

function gpgVersion(env: NodeJS.ProcessEnv): Promise<string | undefined> {
  return new Promise((resolve) => {
    execFile('gpg', ['--version'], { env, timeout: 10_000 }, (err, stdout) =>
      resolve(err ? undefined : /^gpg \(GnuPG\) (\S+)/m.exec(String(stdout))?.[1]),
    );
  });
}

/** Who answers on SOCKET: keytether (it knows KEYTETHER_CONTENT), a gpg-agent, or no one. */
async function whoListens(socket: string): Promise<'keytether' | 'gpg-agent' | 'unknown'> {
  const sock = net.connect(socket);
  sock.on('error', () => {});
  try {
    const c = await AssuanClient.connect(sock, { timeoutMs: 3000 });
    try {
      await c.transact(CONTENT_COMMAND, { timeoutMs: 3000 });
      return 'keytether';
    } catch (e) {
      // keytether wants its options; gpg-agent does not know the command at all.
      if (e instanceof GpgError && e.code === ErrorCode.ASS_UNKNOWN_CMD) return 'gpg-agent';
      return e instanceof GpgError ? 'keytether' : 'unknown';
    } finally {
      c.close();
    }
  } catch {
    return 'unknown';
  } finally {
    sock.destroy();
  }
}

/** The gpg-agent socket units a user manager would start on connection, if enabled. */
function enabledGpgAgentSockets(env: NodeJS.ProcessEnv): string[] {
  const home = env.HOME ?? '';
  const config = env.XDG_CONFIG_HOME || path.join(home, '.config');
  const dirs = [
    path.join(config, 'systemd/user/sockets.target.wants'),
    '/etc/systemd/user/sockets.target.wants',
  ];
  // A unit linked to /dev/null is masked: systemd never starts it, whatever wants it.
  const masked = (unit: string) =>
    [path.join(config, 'systemd/user', unit), path.join('/etc/systemd/user', unit)].some((p) => {
      try {
        return realpathSync(p) === '/dev/null';
      } catch {
        return false;
      }
    });
  const found = new Set<string>();
  for (const d of dirs) {
    for (const unit of ['gpg-agent.socket', 'gpg-agent-extra.socket']) {
      if (existsSync(path.join(d, unit)) && !masked(unit)) found.add(unit);
    }
  }
  return [...found];
}

export async function diagnoseServer(
  env: NodeJS.ProcessEnv = process.env,
  opts: { sshdConfig?: string } = {},
): Promise<Finding[]> {
  const out: Finding[] = [];
  const version = await gpgVersion(env);
  if (version === undefined) {
    out.push({
      severity: 'fail',
      text: 'gpg is not installed (or not on PATH)',
      fix: 'install it: apt-get install gnupg (or your system’s gnupg package)',
    });
  } else {
    const [maj = 0, min = 0] = version.split('.').map(Number);
    const old = maj < MIN_GPG[0] || (maj === MIN_GPG[0] && min < MIN_GPG[1]);
    out.push(
      old
        ? {
            severity: 'fail',
            text: `gpg ${version} is older than 2.2, which keytether's agent protocol needs`,
            fix: 'install gpg 2.2 or newer',
          }
        : { severity: 'ok', text: `gpg ${version}` },
    );
  }

  const dirs = await gnupgDirs(env);
  const socket = dirs.agentSocket;
  out.push({
    severity: dirs.fromGpgconf ? 'ok' : 'warn',
    text: `GnuPG home ${dirs.homedir}, agent socket ${socket}${dirs.fromGpgconf ? '' : ' (guessed: gpgconf did not answer)'}`,
  });
  if (Buffer.byteLength(socket) > MAX_SOCKET_PATH_BYTES) {
    out.push({
      severity: 'fail',
      text: `the agent socket path is ${Buffer.byteLength(socket)} bytes, longer than a unix socket allows`,
      fix: 'use a shorter GNUPGHOME, or run gpgconf --create-socketdir so the socket lives under /run/user',
    });
  }

  const state = await probeSocket(socket).catch(() => 'absent' as const);
  if (state === 'live') {
    const who = await whoListens(socket);
    if (who === 'keytether') {
      out.push({ severity: 'ok', text: `a keytether facade answers on ${socket}` });
    } else if (who === 'gpg-agent') {
      out.push({
        severity: 'warn',
        text: `a gpg-agent of this machine is listening on ${socket}, so gpg here uses it and not your workstation's keys`,
        fix: "stop it with 'gpgconf --kill gpg-agent', or let keytether do it: keytether ssh --replace HOST",
      });
    } else {
      out.push({
        severity: 'warn',
        text: `something that is not an agent answers on ${socket}`,
      });
    }
  } else if (state === 'stale') {
    out.push({
      severity: 'info',
      text: `${socket} is a stale socket file (nothing listens); keytether replaces it when it starts`,
    });
  } else if (state === 'not-a-socket') {
    out.push({
      severity: 'fail',
      text: `${socket} exists and is not a socket, so no agent can listen there`,
      fix: 'move it away',
    });
  } else {
    out.push({
      severity: 'info',
      text: `no agent listens on ${socket} now; keytether ssh or keytether connect starts a facade there`,
    });
  }

  const conf = path.join(dirs.homedir, 'gpg.conf');
  const confText = await readFile(conf, 'utf8').catch(() => '');
  out.push(
    /^[ \t]*no-autostart[ \t]*$/m.test(confText)
      ? { severity: 'ok', text: `${conf} has no-autostart` }
      : {
          severity: 'warn',
          text: `${conf} lacks no-autostart, so a gpg run while no facade listens starts a local gpg-agent on the socket`,
          fix: `add a line 'no-autostart' to ${conf} (keytether ssh adds it for its sessions)`,
        },
  );

  const units = enabledGpgAgentSockets(env);
  if (units.length > 0) {
    out.push({
      severity: 'warn',
      text: `systemd starts gpg-agent on connection (${units.join(', ')} enabled), which takes the socket from a facade`,
      fix: `systemctl --user mask --now ${units.join(' ')}`,
    });
  }
  out.push(
    ...(await diagnoseSshd(opts.sshdConfig !== undefined ? { config: opts.sshdConfig } : {})),
  );
  return out;
}
