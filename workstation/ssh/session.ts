// One `keytether ssh` session on an established SSH connection: starts `keytether serve --stdio`
// on the server, carries the holder's tunnel over that exec channel, relays what the server says
// on stderr, and turns however it ends into either a deliberate stop or one sentence of why.

import type { Client, ClientChannel } from 'ssh2';
import type { KeyHolder } from '../../protocol/keyholder.js';
import { claimedRequester } from '../../protocol/keyholder.js';
import { serveTunnel } from '../../protocol/tunnel/index.js';
import { UserError } from '../../system/user-error.js';
import { inventoryWatcher, linkLimits } from '../holder/holder.js';
import { execChannel, shellQuote, sshLastError } from './connect.js';

export interface SshSessionOptions {
  holder: KeyHolder;
  client: Client;
  /** The host as the user named it, for messages and the audit log. */
  host: string;
  /** How to run keytether on the server, a shell command line (`keytether`, `node /x/main.js`). */
  remoteCommand: string;
  remoteSocket?: string;
  importKeys?: boolean;
  /** Pass --replace to serve: stop a gpg-agent on the server socket first. */
  replace?: boolean;
  /** false passes --no-ssh-agent to serve: no ssh-agent socket on the server. */
  sshAgent?: boolean;
  /** Pass --linger to serve: the socket outlives a dropped link this long (see serve-stdio). */
  lingerMs?: number;
  /** `keytether/<version>`. */
  software: string;
  /** The server said gpg can use its socket now. */
  onReady: (socketPath: string) => void;
  /** The server serves an ssh-agent socket for this session there (said after `ready:`). */
  onSshAgent?: (socketPath: string) => void;
  /** Every other line the server wrote to stderr. */
  onRemoteLine: (line: string) => void;
  /** Aborting ends the session deliberately (Ctrl-C): the server then removes its socket. */
  signal?: AbortSignal;
  /** How long to wait for the server's exit status after the tunnel is gone. Default 3 s. */
  exitWaitMs?: number;
  /**
   * Set when `holder` is a connection to a running `keytether agent`: once it ends, the server
   * has nothing left to ask, so the session ends too.
   */
  holderClosed?: Promise<{ reason: string }>;
  /**
   * Tells the session when the holder's keys changed, so the server's inventory follows. Default:
   * the holder's own onInventoryChange when it has one (an in-process Holder).
   */
  onInventoryChange?: (changed: () => void) => (() => void) | void;
}

export interface SshSessionEnd {
  /** True when the session ended because `signal` was aborted. */
  stopped: boolean;
  reason: string;
}

const MAX_LINE_CHARS = 4096;
const KEPT_LINES = 20;
const STOP_REASON = 'interrupted on the workstation';

/**
 * `<cmd> serve --stdio [--socket P] [--import-keys] [--replace] [--no-ssh-agent]`, arguments quoted for the remote
 * shell.
 */
export function serveCommand(
  remoteCommand: string,
  opts: {
    remoteSocket?: string;
    importKeys?: boolean;
    replace?: boolean;
    lingerMs?: number;
    sshAgent?: boolean;
  } = {},
): string {
  const args = ['serve', '--stdio'];
  if (opts.remoteSocket !== undefined) args.push('--socket', opts.remoteSocket);
  if (opts.importKeys) args.push('--import-keys');
  if (opts.replace) args.push('--replace');
  // Only when asked: a server's older keytether would refuse the unknown flag.
  if (opts.sshAgent === false) args.push('--no-ssh-agent');
  if (opts.lingerMs !== undefined) args.push('--linger', `${opts.lingerMs}ms`);
  return [remoteCommand, ...args.map(shellQuote)].join(' ');
}

/** Splits a byte stream into lines, cutting absurdly long ones so a server cannot grow memory. */
function lineSplitter(onLine: (line: string) => void): {
  push(chunk: Buffer): void;
  end(): void;
} {
  let buf = '';
  return {
    push(chunk) {
      buf += chunk.toString('utf8');
      let nl: number;
      while ((nl = buf.indexOf('\n')) >= 0) {
        onLine(buf.slice(0, nl).replace(/\r$/, ''));
        buf = buf.slice(nl + 1);
      }
      if (buf.length > MAX_LINE_CHARS) {
        onLine(buf.slice(0, MAX_LINE_CHARS));
        buf = '';
      }
    },
    end() {
      if (buf !== '') onLine(buf);
      buf = '';
    },
  };
}

// Control characters from the server must not drive the user's terminal.
function printable(line: string): string {
  return line.replace(/[\x00-\x08\x0b-\x1f\x7f]/g, '?');
}

// keytether is not on the npm registry, so the install has to come from the user's own copy.
function notInstalled(host: string, remoteCommand: string, software: string): UserError {
  const tgz = `keytether-${software.slice(software.indexOf('/') + 1)}.tgz`;
  return new UserError(
    `\`${remoteCommand}\` was not found on ${host}; install keytether there from a tarball ` +
      `(npm pack in your keytether checkout, copy ${tgz} to ${host}, run npm install -g ./${tgz} there) ` +
      `or from a git checkout on ${host} (npm install -g .), or pass --remote-command with how to run it`,
  );
}

/**
 * Runs the session until the tunnel ends. Resolves with how it ended when it was stopped on
 * purpose; rejects with a UserError (one sentence) for every other ending.
 */
export async function runSshSession(opts: SshSessionOptions): Promise<SshSessionEnd> {
  const command = serveCommand(opts.remoteCommand, opts);
  if (opts.signal?.aborted) return { stopped: true, reason: STOP_REASON };
  const channel: ClientChannel = await execChannel(opts.client, command);

  const lastLines: string[] = [];
  let ready = false;
  const lines = lineSplitter((raw) => {
    const line = printable(raw);
    const m = /^ready: (\/.*)$/.exec(line);
    if (m && !ready) {
      ready = true;
      opts.onReady(m[1]!);
      return;
    }
    const agent = /^ssh-agent: (\/.*)$/.exec(line);
    if (agent && ready && opts.onSshAgent) {
      opts.onSshAgent(agent[1]!);
      return;
    }
    lastLines.push(line);
    if (lastLines.length > KEPT_LINES) lastLines.shift();
    opts.onRemoteLine(line);
  });
  channel.stderr.on('data', (d: Buffer) => lines.push(d));

  const exited = new Promise<{ code: number | null; signal: string | undefined } | null>(
    (resolve) => {
      channel.on('exit', (code: number | null, signal?: string) =>
        resolve({ code, signal: signal ?? undefined }),
      );
      // A channel that closes without an exit status: the connection went away.
      channel.on('close', () => resolve(null));
    },
  );
  const channelClosed = new Promise<void>((resolve) => channel.on('close', () => resolve()));

  // An in-process holder reports its own key changes; a borrowed one needs the caller's hook.
  const watchInventory = opts.onInventoryChange ?? inventoryWatcher(opts.holder);
  const tunnel = serveTunnel(opts.holder, channel, {
    software: opts.software,
    // The server's claims about who asks are not trusted: the holder records where the request
    // really came from, the host this workstation connected to.
    requester: (claimed) => ({ ...claimedRequester(claimed), front: 'ssh', host: opts.host }),
    ...(watchInventory ? { onInventoryChange: watchInventory } : {}),
    ...linkLimits(opts.holder),
  });
  void opts.holderClosed?.then(({ reason }) =>
    tunnel.close(`the keytether agent on this workstation went away (${reason})`),
  );

  let stopped = false;
  const onAbort = (): void => {
    stopped = true;
    tunnel.close(STOP_REASON);
  };
  opts.signal?.addEventListener('abort', onAbort, { once: true });
  const connectionClosed = (): void => tunnel.close('the SSH connection closed');
  opts.client.once('close', connectionClosed);

  let reason: string;
  try {
    ({ reason } = await tunnel.closed);
  } finally {
    opts.signal?.removeEventListener('abort', onAbort);
    opts.client.removeListener('close', connectionClosed);
  }

  // The server's exit status and last words explain most endings better than the tunnel can.
  const waitMs = opts.exitWaitMs ?? 3000;
  let timer: NodeJS.Timeout | undefined;
  const status = await Promise.race([
    exited,
    new Promise<'timeout'>((resolve) => (timer = setTimeout(() => resolve('timeout'), waitMs))),
  ]);
  clearTimeout(timer);
  if (status !== 'timeout') {
    await Promise.race([channelClosed, new Promise((r) => setTimeout(r, 200).unref())]);
  }
  lines.end();
  if (channel.destroyed === false) channel.destroy();

  if (stopped) return { stopped: true, reason: STOP_REASON };

  const code = status !== 'timeout' && status ? status.code : null;
  const said = lastLines.join('\n');
  if (
    !ready &&
    (code === 127 || /command not found|: not found|No such file or directory/i.test(said))
  ) {
    throw notInstalled(opts.host, opts.remoteCommand, opts.software);
  }
  const served = [...lastLines].reverse().find((l) => l.startsWith('keytether serve: '));
  let why = served ? served.slice('keytether serve: '.length) : reason;
  if (!served) {
    const sshErr = sshLastError(opts.client);
    if (sshErr) why = `${reason} (${sshErr.message})`;
    else if (code !== null && code !== 0)
      why = `${reason} (the server's keytether exited with status ${code})`;
  }
  throw new UserError(`the connection to ${opts.host} closed: ${why}`);
}
