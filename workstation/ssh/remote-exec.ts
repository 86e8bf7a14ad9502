// Commands run on the server over an established SSH connection: the exec channel the tunnel
// runs on, short captured commands, and asking gpgconf there where gpg expects its agent.

import type { Client, ClientChannel } from 'ssh2';
import { UserError } from '../../system/user-error.js';

export interface ExecOptions {
  /** Sent as SSH "env" requests; sshd applies only names its AcceptEnv allows. */
  env?: Record<string, string>;
}

/** Starts COMMAND on the server and resolves with its channel: stdin/stdout as one duplex stream,
 * stderr as `.stderr`, `'exit'` (code, signal) then `'close'`. This is what the tunnel runs on. */
export function execChannel(
  client: Client,
  command: string,
  opts: ExecOptions = {},
): Promise<ClientChannel> {
  return new Promise((resolve, reject) => {
    const cb = (err: Error | undefined, channel: ClientChannel): void => {
      if (err) {
        reject(new UserError(`could not start \`${command}\` over SSH: ${err.message}`));
        return;
      }
      resolve(channel);
    };
    try {
      if (opts.env) client.exec(command, { env: opts.env }, cb);
      else client.exec(command, cb);
    } catch (e) {
      reject(
        new UserError(
          `could not start \`${command}\` over SSH: ${e instanceof Error ? e.message : String(e)}`,
        ),
      );
    }
  });
}

export interface ExecResult {
  code: number | null;
  signal: string | undefined;
  stdout: string;
  stderr: string;
}

/** Runs a short command and collects its output (each stream capped at `maxBytes`). */
export async function execCapture(
  client: Client,
  command: string,
  opts: ExecOptions & { maxBytes?: number; timeoutMs?: number } = {},
): Promise<ExecResult> {
  const max = opts.maxBytes ?? 64 * 1024;
  const channel = await execChannel(client, command, opts);
  return new Promise((resolve, reject) => {
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    let outLen = 0;
    let errLen = 0;
    let code: number | null = null;
    let signal: string | undefined;
    const timer = setTimeout(() => {
      channel.close();
      reject(
        new UserError(
          `\`${command}\` did not finish over SSH within ${Math.round((opts.timeoutMs ?? 30_000) / 1000)} s`,
        ),
      );
    }, opts.timeoutMs ?? 30_000);
    channel.on('data', (d: Buffer) => {
      if (outLen < max) out.push(d.subarray(0, max - outLen));
      outLen += d.length;
    });
    channel.stderr.on('data', (d: Buffer) => {
      if (errLen < max) err.push(d.subarray(0, max - errLen));
      errLen += d.length;
    });
    channel.on('exit', (c: number | null, s?: string) => {
      code = c;
      signal = s ?? undefined;
    });
    channel.on('close', () => {
      clearTimeout(timer);
      resolve({
        code,
        signal,
        stdout: Buffer.concat(out).toString('utf8'),
        stderr: Buffer.concat(err).toString('utf8'),
      });
    });
  });
}

/** Quotes one argument for the remote user's POSIX shell. */
export function shellQuote(arg: string): string {
  if (/^[A-Za-z0-9_\/.,:=@%+-]+$/.test(arg)) return arg;
  return `'${arg.replace(/'/g, `'\\''`)}'`;
}

/** Where gpg on the server expects its agent: `gpgconf --list-dirs agent-socket` run there. */
export async function remoteAgentSocket(
  client: Client,
  opts: { gpgconf?: string; host?: string } = {},
): Promise<string> {
  const gpgconf = opts.gpgconf ?? 'gpgconf';
  const host = opts.host ?? 'the server';
  const command = `${shellQuote(gpgconf)} --list-dirs agent-socket`;
  const res = await execCapture(client, command, { maxBytes: 8192, timeoutMs: 30_000 });
  const why = res.stderr.trim().split('\n')[0] ?? '';
  if (res.code !== 0) {
    throw new UserError(
      `could not find gpg's agent socket on ${host}: \`${command}\` ` +
        (res.code === 127 ? 'was not found' : `exited with status ${res.code ?? res.signal}`) +
        `${why ? ` (${why})` : ''}; install GnuPG 2.1 or later there, or pass --remote-socket PATH`,
    );
  }
  const lines = res.stdout.split('\n').filter((l) => l !== '');
  const socket = lines[0];
  if (lines.length !== 1 || !socket || !socket.startsWith('/') || socket.length > 4096) {
    throw new UserError(
      `\`${command}\` on ${host} printed something that is not a socket path; pass --remote-socket PATH`,
    );
  }
  return socket;
}
