// The control socket's tunnel command: `keytether ssh` borrowing the running agent's holder, so
// the agent decides, caches and audits the server's requests as `{front: 'ssh', host}`.

import { claimedRequester } from '../../protocol/keyholder.js';
import type net from 'node:net';
import type {
  DecryptRequest,
  DecryptResult,
  KeyHolder,
  SignRequest,
} from '../../protocol/keyholder.js';
import {
  serveTunnel,
  tunnelClient,
  type TunnelClient,
  type TunnelServerHandle,
} from '../../protocol/tunnel/index.js';
import { UserError } from '../../system/user-error.js';
import { linkLimits } from '../holder/holder.js';
import { MAX_HOST_CHARS, REQUEST_TIMEOUT_MS, request } from './connection.js';

export function parseTunnelHost(encoded: string): string | undefined {
  if (!/^[A-Za-z0-9._~!*'()%-]{1,768}$/.test(encoded)) return undefined;
  let host: string;
  try {
    host = decodeURIComponent(encoded);
  } catch {
    return undefined;
  }
  if (host.length > MAX_HOST_CHARS || /[\x00-\x1f\x7f\s]/.test(host)) return undefined;
  return host;
}

export interface LiveTunnel {
  host: string;
  since: Date;
  requests: number;
  handle?: TunnelServerHandle;
}

/** Answers `tunnel ssh <host>` on SOCK: the rest of the connection is a tunnel to the holder. */
export function startTunnel(
  sock: net.Socket,
  host: string,
  ctx: {
    holder: KeyHolder;
    tunnels: Set<LiveTunnel>;
    software: string;
    watchInventory: ((changed: () => void) => () => void) | undefined;
  },
): void {
  const { holder, tunnels, software, watchInventory } = ctx;
  const live: LiveTunnel = { host, since: new Date(), requests: 0 };
  const counted: KeyHolder = {
    inventory: () => holder.inventory(),
    sign(req: SignRequest, signal?: AbortSignal) {
      live.requests++;
      return holder.sign(req, signal);
    },
    decrypt(req: DecryptRequest, signal?: AbortSignal): Promise<DecryptResult> {
      live.requests++;
      return holder.decrypt(req, signal);
    },
  };
  tunnels.add(live);
  sock.write(`OK ${process.pid}\n`);
  live.handle = serveTunnel(counted, sock, {
    software,
    // The claim is trusted: only the same user's `keytether ssh` can open this 0600 socket in a
    // 0700 home, and it already rewrote the server's claim to the host it connected to (as the
    // in-process holder would). Front and host are pinned to what the opening line declared,
    // which is also what the status shows for this connection.
    requester: (claimed) => ({ ...claimedRequester(claimed), front: 'ssh', host }),
    // `keytether ssh` passes these pushes on to its server, so imports reach gpg there too.
    ...(watchInventory ? { onInventoryChange: watchInventory } : {}),
    ...linkLimits(holder),
  });
  void live.handle.closed.then(() => tunnels.delete(live));
  sock.resume();
}

export interface AgentTunnel {
  /** The running agent as a KeyHolder. */
  holder: TunnelClient;
  pid: number;
}

/**
 * Borrows the running agent's holder for an SSH session to HOST: requests made through it are
 * decided, cached and audited by the agent as `{front: 'ssh', host}`. Undefined when no agent
 * runs for HOME. Resolves once the agent's key inventory has arrived.
 */
export async function openAgentTunnel(
  home: string,
  host: string,
  opts: { software: string; timeoutMs?: number },
): Promise<AgentTunnel | undefined> {
  const timeoutMs = opts.timeoutMs ?? REQUEST_TIMEOUT_MS;
  if (host.length === 0 || host.length > MAX_HOST_CHARS || /[\x00-\x1f\x7f\s]/.test(host)) {
    throw new UserError(
      `the host name is empty, longer than ${MAX_HOST_CHARS} characters, or holds spaces or control characters, so the running keytether agent cannot serve it; check the destination, or pass --no-agent`,
    );
  }
  const conn = await request(home, `tunnel ssh ${encodeURIComponent(host)}`, timeoutMs);
  if (!conn) return undefined;
  const holder = tunnelClient(conn.sock, {
    software: opts.software,
    inventoryTimeoutMs: timeoutMs,
  });
  conn.sock.resume();
  try {
    await holder.inventory();
  } catch (e) {
    holder.close('the key inventory did not arrive');
    throw new UserError(
      `the running keytether agent (pid ${conn.pid}) did not share its keys (${(e as Error).message}); restart it or pass --no-agent`,
    );
  }
  return { holder, pid: conn.pid };
}
