// ProxyCommand: a local command whose stdin/stdout carry the SSH connection, run the way OpenSSH
// runs it (`/bin/sh -c 'exec COMMAND'`, stderr left on the user's terminal), so that
// `ssh -W %h:%p bastion`, a corporate connector or a socat line all work unchanged.

import { spawn } from 'node:child_process';
import { Duplex } from 'node:stream';
import { UserError } from '../../system/user-error.js';

export interface ProxyProcess {
  /** The connection, for ssh2's `sock`. */
  sock: Duplex;
  /**
   * Resolves once the command has exited (or after `graceMs` if it has not), with one sentence
   * saying it ended when it did, or undefined while it still runs.
   */
  endedEarly(graceMs: number): Promise<UserError | undefined>;
  /** Ends the command: its stdin is closed and, if it has not gone after that, SIGTERM. */
  stop(): void;
}

const STOP_GRACE_MS = 1000;

export function startProxyCommand(
  command: string,
  opts: { stderr?: 'inherit' | 'ignore' } = {},
): ProxyProcess {
  const child = spawn('/bin/sh', ['-c', `exec ${command}`], {
    stdio: ['pipe', 'pipe', opts.stderr ?? 'inherit'],
  });
  let ended: string | undefined;
  const exited = new Promise<void>((resolve) => {
    child.once('exit', (code, signal) => {
      ended = signal ? `was killed by signal ${signal}` : `exited with status ${code ?? '?'}`;
      resolve();
    });
    child.once('error', (e: NodeJS.ErrnoException) => {
      ended = `could not be started (${e.code ?? e.message})`;
      resolve();
    });
  });
  child.stdin.on('error', () => {});
  child.stdout.on('error', () => {});
  const sock = Duplex.from({ readable: child.stdout, writable: child.stdin });
  sock.on('error', () => {});
  const sentence = (): UserError =>
    new UserError(
      `ProxyCommand \`${command}\` ${ended ?? 'ended'} before the SSH connection was made; ` +
        `run it by hand to see why`,
    );
  return {
    sock,
    async endedEarly(graceMs) {
      let timer: NodeJS.Timeout | undefined;
      await Promise.race([
        exited,
        new Promise<void>((resolve) => (timer = setTimeout(resolve, graceMs))),
      ]);
      clearTimeout(timer);
      return ended === undefined ? undefined : sentence();
    },
    stop() {
      if (ended !== undefined) return;
      if (!child.stdin.writableEnded) child.stdin.end();
      const term = setTimeout(() => {
        if (ended === undefined) child.kill('SIGTERM');
      }, STOP_GRACE_MS);
      term.unref();
      void exited.then(() => clearTimeout(term));
    },
  };
}
