// Where the server's gpg looks for its agent and its configuration. gpgconf knows (it applies
// /run/user, GNUPGHOME hashing and gpgconf.ctl exactly as gpg will), so it is asked first; the
// fallback mirrors gpg's behaviour on hosts without /run/user.

import { execFile } from 'node:child_process';
import { homedir } from 'node:os';
import path from 'node:path';

export interface GnupgDirs {
  homedir: string;
  agentSocket: string;
  /** false when gpgconf could not be run and the paths are our own guess. */
  fromGpgconf: boolean;
}

const MAX_OUTPUT = 64 * 1024;

function run(cmd: string, args: string[], env: NodeJS.ProcessEnv): Promise<string | null> {
  return new Promise((resolve) => {
    execFile(
      cmd,
      args,
      { env, timeout: 10_000, maxBuffer: MAX_OUTPUT, encoding: 'utf8' },
      (err, stdout) => resolve(err ? null : stdout),
    );
  });
}

/** gpgconf's percent-escaping (`%3a` for `:` and friends) in --list-dirs output. */
function unescape(s: string): string {
  return s.replace(/%([0-9a-fA-F]{2})/g, (_m, h: string) => String.fromCharCode(parseInt(h, 16)));
}

export function defaultGnupgHome(env: NodeJS.ProcessEnv = process.env): string {
  return env.GNUPGHOME ? path.resolve(env.GNUPGHOME) : path.join(env.HOME || homedir(), '.gnupg');
}

export async function gnupgDirs(
  env: NodeJS.ProcessEnv = process.env,
  gpgconf = 'gpgconf',
): Promise<GnupgDirs> {
  const out = await run(gpgconf, ['--list-dirs'], env);
  if (out !== null) {
    const dirs = new Map<string, string>();
    for (const line of out.split('\n')) {
      const i = line.indexOf(':');
      if (i > 0) dirs.set(line.slice(0, i), unescape(line.slice(i + 1)));
    }
    const home = dirs.get('homedir');
    const sock = dirs.get('agent-socket');
    if (home && sock && path.isAbsolute(home) && path.isAbsolute(sock)) {
      return { homedir: home, agentSocket: sock, fromGpgconf: true };
    }
  }
  const home = defaultGnupgHome(env);
  return { homedir: home, agentSocket: path.join(home, 'S.gpg-agent'), fromGpgconf: false };
}

/** Runs a command and reports only whether it succeeded (systemctl probes, gpgconf --kill). */
export async function succeeds(
  cmd: string,
  args: string[],
  env: NodeJS.ProcessEnv = process.env,
): Promise<boolean> {
  return (await run(cmd, args, env)) !== null;
}
