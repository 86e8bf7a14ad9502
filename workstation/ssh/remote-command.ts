// `keytether ssh HOST -- CMD`: one command on the server while the link is up, as `ssh HOST CMD`
// runs it, with gpg's socket served and SSH_AUTH_SOCK set. Its output is this process's and its
// exit status ends the session.

import type { Client } from 'ssh2';
import { execChannel, shellQuote } from './remote-exec.js';

/** Signal names ssh reports → their numbers, for the shell's 128+N exit status. */
const SIGNALS: Record<string, number> = {
  HUP: 1,
  INT: 2,
  QUIT: 3,
  ABRT: 6,
  KILL: 9,
  SEGV: 11,
  PIPE: 13,
  TERM: 15,
};

/**
 * The shell line: the ssh-agent env file `serve` wrote before it said `ready:` is sourced (it
 * names this session's socket; a login shell sources the same file), then CMD runs in its place.
 */
export function remoteCommandLine(argv: readonly string[], sshAgent: boolean): string {
  const cmd = `exec ${argv.map(shellQuote).join(' ')}`;
  if (!sshAgent) return cmd;
  return (
    'f="$(gpgconf --list-dirs homedir 2>/dev/null)/keytether-ssh-agent.env"; ' +
    `if [ -r "$f" ]; then . "$f"; fi; ${cmd}`
  );
}

/**
 * Runs ARGV on the server over CLIENT with this process's stdin (unless a terminal: no pty is
 * asked for), stdout and stderr; resolves with its exit status once its output has all arrived.
 */
export async function runRemoteCommand(
  client: Client,
  argv: readonly string[],
  opts: { sshAgent: boolean },
): Promise<number> {
  const channel = await execChannel(client, remoteCommandLine(argv, opts.sshAgent));
  channel.pipe(process.stdout, { end: false });
  channel.stderr.pipe(process.stderr, { end: false });
  if (process.stdin.isTTY) channel.end();
  else process.stdin.pipe(channel);
  let status = 255;
  channel.on('exit', (code: number | null, signal?: string) => {
    if (code !== null) status = code;
    else if (signal !== undefined) status = 128 + (SIGNALS[signal] ?? 0);
  });
  await new Promise<void>((resolve) => channel.on('close', () => resolve()));
  process.stdin.unpipe(channel);
  return status;
}
