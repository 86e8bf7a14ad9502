// The running agent's control socket, `$KEYTETHER_HOME/S.keytether`: how the same user's other
// keytether processes reach it. `keytether status` asks what the agent is doing; `keytether ssh`
// borrows its holder through a tunnel, so one passphrase cache, one policy and one audit chain
// serve every front of the workstation.
//
// Protocol. The client sends one request line (printable ASCII, at most 512 bytes, LF-terminated)
// within 10 s of connecting:
//   `status`                 → `OK <pid>\n`, one JSON document (a StatusDocument), `\n`, EOF.
//   `tunnel ssh <host>`      → `OK <pid>\n`, then the rest of the connection is the tunnel
//                              protocol with the agent as holder. <host> is percent-encoded.
//   `lock <keygrip>|all`     → forgets unlocked keys (lock.ts).
//   `approvals`, `approve <id> [<ms>]`, `deny <id>`, `web url`: confirmations (approvals.ts).
// Anything else is answered with `ERR <sentence>\n` and the connection is closed.

import { sshSummary } from '../audit/operation-line.js';
import net from 'node:net';
import type { KeyHolder } from '../../protocol/keyholder.js';
import type { AuditInput, AuditLog } from '../audit/audit.js';
import { shortProcessChain } from '../backends/requester-text.js';
import { listenUnix, probeSocket } from '../holder/local-socket.js';
import { isActivatedSocket } from '../../system/socket-activation.js';
import { UserError } from '../../system/user-error.js';
import { inventoryWatcher } from '../holder/holder.js';
import { TokenRegistry } from '../tokens/tokens.js';
import {
  ControlProtocolError,
  controlSocketPath,
  readLine,
  REQUEST_TIMEOUT_MS,
} from './connection.js';
import {
  RECENT_KEPT,
  relayStatuses,
  type Front,
  type FrontStatus,
  type RecentOperation,
  type RateLimitStatus,
  type RelaySource,
  type StatusDocument,
} from './status.js';
import { RequestLimiter } from '../holder/request-limits.js';
import { parseTunnelHost, startTunnel, type LiveTunnel } from './tunnel.js';
import { answerLock, type LockableCache } from './lock.js';
import { serveApprovalRequest, type ApprovalControl } from './approvals.js';

export { CONTROL_SOCKET_NAME, controlSocketPath } from './connection.js';
export {
  requestStatus,
  type Front,
  type FrontStatus,
  type RecentOperation,
  type RelaySource,
  type RelayStatus,
  type StatusDocument,
  type UnlockedStatus,
} from './status.js';
export { openAgentTunnel, type AgentTunnel } from './tunnel.js';

const MAX_CONNECTIONS = 64;

async function registryLabels(home: string, ids: string[]): Promise<Map<string, string>> {
  const registry = await TokenRegistry.open(home);
  try {
    const wanted = new Set(ids);
    const out = new Map<string, string>();
    for (const t of await registry.list()) {
      if (wanted.has(t.id) && t.label !== null) out.set(t.id, t.label);
    }
    return out;
  } finally {
    await registry.close();
  }
}
// sockaddr_un.sun_path is 108 bytes including the terminating NUL.
const MAX_SOCKET_PATH_BYTES = 107;

export interface ControlRuntime {
  holder: KeyHolder;
  cache: LockableCache;
  audit: AuditLog;
  broker?: ApprovalControl['broker'];
}

export interface ControlServerOptions {
  home: string;
  /** The agent's gpg-agent socket, shown by `keytether status`; none for an in-process holder. */
  agentSocket?: string;
  /** For an in-process holder: the command it belongs to (`keytether ssh HOST`). */
  command?: string;
  /** Fronts the control socket does not see itself (an in-process holder's own SSH session). */
  fronts?: () => FrontStatus[];
  /** Where token labels are looked up: the token registry of HOME unless given (tests). */
  tokenLabels?: (ids: string[]) => Promise<Map<string, string>>;
  /** keytether's version (packageVersion()). */
  version: string;
  relays?: RelaySource;
  /**
   * The whole request line must arrive within this long of connecting (default 10 s), so a
   * client that connects and says nothing, or dribbles, holds a connection slot no longer.
   */
  requestTimeoutMs?: number;
  /** The approval page, for `keytether open`. */
  web?: ApprovalControl['web'];
  /** Where a line about a cut client goes; default stderr. */
  log?: (line: string) => void;
}

export interface ControlServer {
  readonly path: string;
  close(): Promise<void>;
}

/**
 * Starts the control socket for a running agent. Call it once the agent's own socket is up;
 * close() before the runtime closes. Refuses when another agent already answers for this home.
 */
export async function startControlServer(
  rt: ControlRuntime,
  opts: ControlServerOptions,
): Promise<ControlServer> {
  const socketPath = controlSocketPath(opts.home);
  if (Buffer.byteLength(socketPath) > MAX_SOCKET_PATH_BYTES) {
    throw new UserError(
      `the control socket path ${socketPath} is too long for a unix socket; use a shorter KEYTETHER_HOME`,
    );
  }
  // A socket systemd passed answers because systemd holds it, not because another agent does.
  if (!isActivatedSocket(socketPath) && (await probeSocket(socketPath)) === 'live') {
    throw new UserError(
      `another keytether agent is already running for ${opts.home}; stop it first (keytether status shows its pid)`,
    );
  }

  const startedAt = new Date();
  const software = `keytether/${opts.version}`;
  const counts: Record<Front, number> = { local: 0, ssh: 0, relay: 0 };
  const recent: RecentOperation[] = [];
  const tunnels = new Set<LiveTunnel>();
  const conns = new Set<net.Socket>();

  // Every request of every front (the agent's gpg socket, relays, tunnels here) ends in exactly
  // one audit record, so the audit log is the one place to observe them all without the fronts
  // knowing about the control socket. Observed after the record is written, so the status never
  // shows an operation the audit log does not hold.
  const restoreAudit = rt.audit.onRecorded((rec: AuditInput) => {
    // A lock is the user's act on the cache, not a use of a key: not an operation to count.
    if (rec.op === 'lock') return;
    counts[rec.front] = (counts[rec.front] ?? 0) + 1;
    const requestedBy = rec.requester ? shortProcessChain(rec.requester) : undefined;
    recent.push({
      time: (rec.time ?? new Date()).toISOString(),
      front: rec.front,
      ...(rec.host !== undefined ? { host: rec.host } : {}),
      ...(rec.tokenId !== undefined ? { tokenId: rec.tokenId } : {}),
      ...(rec.peer !== undefined && rec.front === 'relay' ? { relayPeer: rec.peer } : {}),
      op: rec.op,
      ...(rec.verification !== undefined ? { verification: rec.verification } : {}),
      ...(rec.content !== undefined ? { summary: rec.content.summary } : {}),
      ...(rec.ssh !== undefined ? { summary: sshSummary(rec.ssh) } : {}),
      ...(requestedBy !== undefined ? { requestedBy } : {}),
      ...(rec.keygrip !== undefined ? { keygrip: rec.keygrip } : {}),
      ...(rec.fingerprint !== undefined ? { fingerprint: rec.fingerprint } : {}),
      decision: rec.decision,
    });
    if (recent.length > RECENT_KEPT) recent.shift();
  });

  // Labels are signed into their tokens, so one read per token id is enough.
  const labels = new Map<string, string | null>();
  const lookUpLabels = opts.tokenLabels ?? ((ids) => registryLabels(opts.home, ids));
  const withLabels = async (ops: RecentOperation[]): Promise<RecentOperation[]> => {
    const missing = [
      ...new Set(
        ops.flatMap((r) => (r.tokenId !== undefined && !labels.has(r.tokenId) ? [r.tokenId] : [])),
      ),
    ];
    if (missing.length > 0) {
      try {
        const found = await lookUpLabels(missing);
        for (const id of missing) labels.set(id, found.get(id) ?? null);
      } catch {
        // Without the registry the ids still say which token it was; asked again next time.
      }
    }
    return ops.map((r) => {
      const label = r.tokenId !== undefined ? labels.get(r.tokenId) : undefined;
      return label ? { ...r, tokenLabel: label } : r;
    });
  };

  const status = async (): Promise<StatusDocument> => {
    const fingerprints = new Map<string, string>();
    try {
      for (const k of (await rt.holder.inventory()).keys) {
        fingerprints.set(k.keygrip.toUpperCase(), k.fingerprint);
      }
    } catch {
      // Without an inventory the keygrips still say which keys are unlocked.
    }
    const relays = relayStatuses(opts.relays);
    const fronts: FrontStatus[] = [
      ...(opts.agentSocket !== undefined
        ? [{ front: 'local' as const, since: startedAt.toISOString(), requests: counts.local }]
        : []),
      ...(opts.fronts?.() ?? []),
      ...[...tunnels].map((t) => ({
        front: 'ssh' as const,
        host: t.host,
        since: t.since.toISOString(),
        requests: t.requests,
      })),
    ];
    if (relays.length > 0 || counts.relay > 0) {
      fronts.push({ front: 'relay', since: startedAt.toISOString(), requests: counts.relay });
    }
    return {
      pid: process.pid,
      version: opts.version,
      home: opts.home,
      ...(opts.command !== undefined ? { command: opts.command } : {}),
      ...(opts.agentSocket !== undefined ? { agentSocket: opts.agentSocket } : {}),
      startedAt: startedAt.toISOString(),
      fronts,
      relays,
      unlocked: rt.cache.entries().map((e) => {
        const fingerprint = fingerprints.get(e.keygrip.toUpperCase());
        return {
          keygrip: e.keygrip,
          ...(fingerprint !== undefined ? { fingerprint } : {}),
          expiresInS: Math.max(1, Math.ceil(e.expiresInMs / 1000)),
        };
      }),
      recent: await withLabels([...recent]),
      ...rateLimits(),
    };
  };

  const rateLimits = (): { rateLimits?: RateLimitStatus[] } => {
    const limiter = (rt.holder as { limiter?: unknown }).limiter;
    const alerts = limiter instanceof RequestLimiter ? limiter.alerts() : [];
    return alerts.length > 0 ? { rateLimits: alerts } : {};
  };

  const refuse = (sock: net.Socket, why: string): void => {
    if (sock.writable) sock.end(`ERR ${why}\n`);
    else sock.destroy();
  };

  const watchInventory = inventoryWatcher(rt.holder);
  const log = opts.log ?? ((line: string) => process.stderr.write(`${line}\n`));

  const serve = async (sock: net.Socket): Promise<void> => {
    let line: string;
    try {
      line = await readLine(sock, opts.requestTimeoutMs ?? REQUEST_TIMEOUT_MS);
    } catch (e) {
      const why = e instanceof ControlProtocolError ? e.message : 'the request failed';
      if (e instanceof ControlProtocolError && e.overdue) {
        log(`keytether: cut a client of ${socketPath}: ${why}`);
        // It may not be reading either: say why, then let go of it at once.
        if (sock.writable) sock.end(`ERR ${why}\n`);
        setImmediate(() => sock.destroy());
        return;
      }
      refuse(sock, why);
      return;
    }
    const words = line.split(' ');
    if (line === 'status') {
      let doc: string;
      try {
        doc = JSON.stringify(await status());
      } catch (e) {
        refuse(sock, `the status could not be collected (${(e as Error).message})`);
        return;
      }
      sock.end(`OK ${process.pid}\n${doc}\n`);
      return;
    }
    if (words.length === 3 && words[0] === 'tunnel' && words[1] === 'ssh') {
      const host = parseTunnelHost(words[2]!);
      if (host === undefined) {
        refuse(sock, 'the tunnel request names an invalid host');
        return;
      }
      startTunnel(sock, host, { holder: rt.holder, tunnels, software, watchInventory });
      return;
    }
    if (words[0] === 'lock') return answerLock(sock, words, rt.cache, log, rt.audit);
    if (serveApprovalRequest(words, sock, { broker: rt.broker, web: opts.web }, refuse)) return;
    refuse(
      sock,
      'unknown request; expected "status", "tunnel ssh <host>", "lock", "approvals", "approve", "deny" or "web url"',
    );
  };

  let server: net.Server;
  try {
    server = await listenUnix(socketPath, (sock) => {
      sock.on('error', () => sock.destroy());
      if (conns.size >= MAX_CONNECTIONS) {
        refuse(sock, `more than ${MAX_CONNECTIONS} control connections at once`);
        return;
      }
      conns.add(sock);
      sock.on('close', () => conns.delete(sock));
      void serve(sock);
    });
  } catch (e) {
    restoreAudit();
    throw e;
  }

  let closing: Promise<void> | undefined;
  return {
    path: socketPath,
    close() {
      closing ??= (async () => {
        restoreAudit();
        const done = new Promise<void>((resolve) => server.close(() => resolve()));
        for (const t of tunnels) t.handle?.close('the keytether agent is stopping');
        for (const s of conns) s.destroy();
        await done;
      })();
      return closing;
    },
  };
}
