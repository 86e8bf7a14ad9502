// Connecting to a server the way OpenSSH's `ssh` would: directly, through a ProxyCommand, or
// through jump hosts, each of which is a full SSH connection of its own (handshake.ts).

import type { Duplex } from 'node:stream';
import type { Client, ClientChannel } from 'ssh2';
import { UserError } from '../../system/user-error.js';
import type { SshTarget } from './config.js';
import { handshake, setSshLastError, type ConnectSshOptions } from './handshake.js';

export { sshLastError, type ConnectSshOptions } from './handshake.js';
export {
  execCapture,
  execChannel,
  remoteAgentSocket,
  shellQuote,
  type ExecOptions,
  type ExecResult,
} from './remote-exec.js';

/** How a jump host is named in errors: as the user wrote it, with its port unless 22. */
export function jumpHostName(hop: SshTarget): string {
  return hop.port === 22 ? hop.host : `${hop.host}:${hop.port}`;
}

/**
 * Connects to TARGET the way OpenSSH would: through each of its jump hosts in turn (each one a
 * full SSH connection of its own, the next tunnelled through the previous one's direct-tcpip
 * channel), or through its ProxyCommand, or directly. Ending the returned client ends the hops.
 */
export async function connectSsh(target: SshTarget, opts: ConnectSshOptions = {}): Promise<Client> {
  const hops: Client[] = [];
  const endHops = (): void => {
    for (const c of hops.splice(0).reverse()) c.end();
  };
  let sock: Duplex | undefined;
  try {
    for (const [i, hop] of target.jumps.entries()) {
      const name = jumpHostName(hop);
      const hopClient = await handshake(hop, opts, sock).catch((e: unknown) => {
        throw inJumpHost(name, e);
      });
      hops.push(hopClient);
      const next = target.jumps[i + 1] ?? target;
      sock = await forwardThrough(
        hopClient,
        name,
        next,
        opts.readyTimeoutMs ?? next.connectTimeoutMs ?? 20_000,
      );
    }
    const client = await handshake(target, opts, sock);
    for (const [i, hop] of hops.entries()) {
      const name = jumpHostName(target.jumps[i]!);
      // A hop that fails takes the tunnel with it; say which one it was.
      hop.on('error', (e: Error) =>
        setSshLastError(client, new Error(`jump host ${name}: ${e.message}`)),
      );
      hop.once('close', () => client.end());
    }
    client.once('close', endHops);
    return client;
  } catch (e) {
    endHops();
    throw e;
  }
}

function inJumpHost(name: string, e: unknown): Error {
  const message = e instanceof Error ? e.message : String(e);
  return e instanceof UserError || !(e instanceof Error)
    ? new UserError(`jump host ${name}: ${message}`)
    : e;
}

/** A direct-tcpip channel from HOP to NEXT's HostName and Port (what `ssh -W` asks for). */
function forwardThrough(
  hop: Client,
  name: string,
  next: SshTarget,
  limitMs: number,
): Promise<ClientChannel> {
  return new Promise((resolve, reject) => {
    let done = false;
    const settle = (why: string | undefined, channel?: ClientChannel): void => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      hop.removeListener('close', onClose);
      if (why === undefined && channel) {
        resolve(channel);
        return;
      }
      channel?.close();
      reject(
        new UserError(
          `jump host ${name} could not open a connection to ${next.hostName}:${next.port} (${why}); ` +
            `check that sshd there allows it (AllowTcpForwarding) and that ${next.hostName} is reachable from it`,
        ),
      );
    };
    const onClose = (): void => settle('the connection to the jump host closed');
    // The jump host dials the next one itself; a black-holed address must not hang us.
    const timer = setTimeout(
      () => settle(`no answer within ${Math.round(limitMs / 1000)} s`),
      limitMs > 0 ? limitMs : 20_000,
    );
    hop.once('close', onClose);
    try {
      hop.forwardOut('127.0.0.1', 0, next.hostName, next.port, (err, channel) => {
        if (err) settle(err.message.replace(/^\(SSH\) Channel open failure: /, ''));
        else settle(undefined, channel);
      });
    } catch (e) {
      settle(e instanceof Error ? e.message : String(e));
    }
  });
}
