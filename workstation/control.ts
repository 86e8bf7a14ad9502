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
// Anything else is answered with `ERR <sentence>\n` and the connection is closed.

import { claimedRequester } from '../protocol/keyholder.js';
import net from 'node:net';
import fs from 'node:fs/promises';
import path from 'node:path';
import { z } from 'zod';
import type {
  DecryptRequest,
  DecryptResult,
  KeyHolder,
  Requester,
  SignRequest,
} from '../protocol/keyholder.js';
import {
  serveTunnel,
  tunnelClient,
  type TunnelClient,
  type TunnelServerHandle,
} from '../protocol/tunnel/index.js';
import type { AuditInput, AuditLog } from './audit.js';
import { listenUnix, probeSocket } from './local-socket.js';
import { UserError } from '../cli/errors.js';
import { inventoryWatcher } from './holder.js';

export const CONTROL_SOCKET_NAME = 'S.keytether';
const MAX_LINE_BYTES = 512;
const REQUEST_TIMEOUT_MS = 10_000;
const MAX_CONNECTIONS = 64;
const MAX_STATUS_BYTES = 1 << 20;
const RECENT_KEPT = 20;
const MAX_HOST_CHARS = 255;
// sockaddr_un.sun_path is 108 bytes including the terminating NUL.
const MAX_SOCKET_PATH_BYTES = 107;

export type Front = Requester['front'];

export interface FrontStatus {
  front: Front;
  host?: string;
  /** ISO time the front connected (the agent's start for its own gpg socket). */
  since: string;
  /** Requests that reached the holder through it. */
  requests: number;
}

export interface RelayStatus {
  url: string;
  state: 'connected' | 'connecting';
  /** Facades connected through this relay right now. */
  streams?: number;
}

export interface UnlockedStatus {
  keygrip: string;
  fingerprint?: string;
  /** Whole seconds until the cache forgets the key (rounded up, so a live key is never 0). */
  expiresInS: number;
}

export interface RecentOperation {
  time: string;
  front: Front;
  host?: string;
  op: 'sign' | 'decrypt' | 'channel';
  keygrip?: string;
  fingerprint?: string;
  decision: string;
}

export interface StatusDocument {
  pid: number;
  version: string;
  home: string;
  agentSocket: string;
  startedAt: string;
  fronts: FrontStatus[];
  relays: RelayStatus[];
  unlocked: UnlockedStatus[];
  /** Oldest first, at most 20. */
  recent: RecentOperation[];
}

/** The agent's relay clients as the status needs them (RelayClientsHandle fits), or a getter. */
export type RelaySource =
  | { readonly clients: readonly { url: string; connected: boolean; streams: number }[] }
  | (() => RelayStatus[]);

export interface ControlRuntime {
  holder: KeyHolder;
  cache: { entries(): { keygrip: string; expiresInMs: number }[] };
  audit: AuditLog;
}

export interface ControlServerOptions {
  home: string;
  /** The agent's gpg-agent socket, shown by `keytether status`. */
  agentSocket: string;
  /** keytether's version (packageVersion()). */
  version: string;
  relays?: RelaySource;
}

export interface ControlServer {
  readonly path: string;
  close(): Promise<void>;
}

export function controlSocketPath(home: string): string {
  return path.join(home, CONTROL_SOCKET_NAME);
}

class ControlProtocolError extends Error {}

/**
 * Reads the first LF-terminated line, then leaves the socket paused with whatever followed it
 * pushed back, so the next reader (the tunnel) starts exactly after the line.
 */
function readLine(sock: net.Socket, timeoutMs: number): Promise<string> {
  return new Promise((resolve, reject) => {
    let buf = Buffer.alloc(0);
    const finish = (err: Error | undefined, line?: string, rest?: Buffer): void => {
      clearTimeout(timer);
      sock.off('data', onData);
      sock.off('end', onEnd);
      sock.off('close', onEnd);
      sock.off('error', onError);
      if (err) {
        reject(err);
        return;
      }
      sock.pause();
      if (rest && rest.length > 0) sock.unshift(rest);
      resolve(line!);
    };
    const onData = (chunk: Buffer): void => {
      buf = Buffer.concat([buf, chunk]);
      const nl = buf.indexOf(0x0a);
      if (nl < 0 ? buf.length > MAX_LINE_BYTES : nl > MAX_LINE_BYTES) {
        finish(new ControlProtocolError(`the first line is longer than ${MAX_LINE_BYTES} bytes`));
        return;
      }
      if (nl < 0) return;
      const text = buf.subarray(0, nl).toString('latin1');
      if (!/^[\x20-\x7e]*$/.test(text)) {
        finish(new ControlProtocolError('the first line is not printable ASCII'));
        return;
      }
      finish(undefined, text, buf.subarray(nl + 1));
    };
    const onEnd = (): void => finish(new ControlProtocolError('the connection closed'));
    const onError = (e: Error): void => finish(e);
    const timer = setTimeout(
      () => finish(new ControlProtocolError(`no line within ${timeoutMs / 1000} s`)),
      timeoutMs,
    );
    timer.unref();
    sock.on('data', onData);
    sock.on('end', onEnd);
    sock.on('close', onEnd);
    sock.on('error', onError);
    sock.resume();
  });
}

function relayStatuses(src: RelaySource | undefined): RelayStatus[] {
  if (!src) return [];
  if (typeof src === 'function') return src();
  return src.clients.map((c) => ({
    url: c.url,
    state: c.connected ? 'connected' : 'connecting',
    streams: c.streams,
  }));
}

function parseTunnelHost(encoded: string): string | undefined {
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

interface LiveTunnel {
  host: string;
  since: Date;
  requests: number;
  handle?: TunnelServerHandle;
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
  if ((await probeSocket(socketPath)) === 'live') {
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
  const audit = rt.audit;
  const ownAppend = Object.getOwnPropertyDescriptor(audit, 'append');
  const append = audit.append.bind(audit);
  audit.append = async (rec: AuditInput): Promise<void> => {
    await append(rec);
    counts[rec.front] = (counts[rec.front] ?? 0) + 1;
    recent.push({
      time: (rec.time ?? new Date()).toISOString(),
      front: rec.front,
      ...(rec.host !== undefined ? { host: rec.host } : {}),
      op: rec.op,
      ...(rec.keygrip !== undefined ? { keygrip: rec.keygrip } : {}),
      ...(rec.fingerprint !== undefined ? { fingerprint: rec.fingerprint } : {}),
      decision: rec.decision,
    });
    if (recent.length > RECENT_KEPT) recent.shift();
  };
  const restoreAudit = (): void => {
    if (ownAppend) Object.defineProperty(audit, 'append', ownAppend);
    else delete (audit as { append?: unknown }).append;
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
      { front: 'local', since: startedAt.toISOString(), requests: counts.local },
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
      agentSocket: opts.agentSocket,
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
      recent: [...recent],
    };
  };

  const refuse = (sock: net.Socket, why: string): void => {
    if (sock.writable) sock.end(`ERR ${why}\n`);
    else sock.destroy();
  };

  const watchInventory = inventoryWatcher(rt.holder);
  const startTunnel = (sock: net.Socket, host: string): void => {
    const live: LiveTunnel = { host, since: new Date(), requests: 0 };
    const counted: KeyHolder = {
      inventory: () => rt.holder.inventory(),
      sign(req: SignRequest, signal?: AbortSignal) {
        live.requests++;
        return rt.holder.sign(req, signal);
      },
      decrypt(req: DecryptRequest, signal?: AbortSignal): Promise<DecryptResult> {
        live.requests++;
        return rt.holder.decrypt(req, signal);
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
    });
    void live.handle.closed.then(() => tunnels.delete(live));
    sock.resume();
  };

  const serve = async (sock: net.Socket): Promise<void> => {
    let line: string;
    try {
      line = await readLine(sock, REQUEST_TIMEOUT_MS);
    } catch (e) {
      refuse(sock, e instanceof ControlProtocolError ? e.message : 'the request failed');
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
      startTunnel(sock, host);
      return;
    }
    refuse(sock, 'unknown request; expected "status" or "tunnel ssh <host>"');
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

// ---- clients ---------------------------------------------------------------------------------

interface ControlConnection {
  sock: net.Socket;
  pid: number;
}

function noAgentCode(e: unknown): boolean {
  const code = (e as NodeJS.ErrnoException).code;
  return code === 'ENOENT' || code === 'ECONNREFUSED';
}

/**
 * Connects and sends REQUEST; resolves with the socket positioned after the `OK <pid>` line, or
 * undefined when no agent listens for HOME. Other failures are UserErrors (one sentence).
 */
async function request(
  home: string,
  line: string,
  timeoutMs: number,
): Promise<ControlConnection | undefined> {
  const p = controlSocketPath(home);
  let st;
  try {
    st = await fs.lstat(p);
  } catch (e) {
    if (noAgentCode(e)) return undefined;
    throw new UserError(`cannot reach the keytether agent at ${p}: ${(e as Error).message}`);
  }
  // Requests (and a tunnel's signatures) must only ever go to an agent of this user.
  const uid = typeof process.getuid === 'function' ? process.getuid() : undefined;
  if (uid !== undefined && st.uid !== uid) {
    throw new UserError(`${p} belongs to another user; remove it or fix KEYTETHER_HOME`);
  }
  const sock = net.connect(p);
  try {
    await new Promise<void>((resolve, reject) => {
      sock.once('connect', resolve);
      sock.once('error', reject);
    });
  } catch (e) {
    sock.destroy();
    if (noAgentCode(e)) return undefined;
    throw new UserError(`cannot reach the keytether agent at ${p}: ${(e as Error).message}`);
  }
  sock.on('error', () => {});
  sock.write(`${line}\n`);
  let reply: string;
  try {
    reply = await readLine(sock, timeoutMs);
  } catch (e) {
    sock.destroy();
    throw new UserError(
      `the keytether agent at ${p} did not answer (${(e as Error).message}); restart it`,
    );
  }
  const ok = /^OK ([1-9]\d{0,9})$/.exec(reply);
  if (!ok) {
    sock.destroy();
    const err = /^ERR (.{1,300})$/.exec(reply);
    throw new UserError(
      err
        ? `the keytether agent at ${p} refused the request: ${err[1]}`
        : `${p} does not speak the keytether control protocol; is it from another version? restart the agent`,
    );
  }
  return { sock, pid: Number(ok[1]) };
}

const StatusSchema = z.object({
  pid: z.number().int(),
  version: z.string().max(100),
  home: z.string().max(4096),
  agentSocket: z.string().max(4096),
  startedAt: z.string().max(64),
  fronts: z
    .array(
      z.object({
        front: z.enum(['local', 'ssh', 'relay']),
        host: z.string().max(MAX_HOST_CHARS).optional(),
        since: z.string().max(64),
        requests: z.number().int().nonnegative(),
      }),
    )
    .max(1000),
  relays: z
    .array(
      z.object({
        url: z.string().max(4096),
        state: z.enum(['connected', 'connecting']),
        streams: z.number().int().nonnegative().optional(),
      }),
    )
    .max(1000),
  unlocked: z
    .array(
      z.object({
        keygrip: z.string().max(128),
        fingerprint: z.string().max(128).optional(),
        expiresInS: z.number().int().nonnegative(),
      }),
    )
    .max(10_000),
  recent: z
    .array(
      z.object({
        time: z.string().max(64),
        front: z.enum(['local', 'ssh', 'relay']),
        host: z
          .string()
          .max(MAX_HOST_CHARS + 2)
          .optional(),
        op: z.enum(['sign', 'decrypt']),
        keygrip: z.string().max(128),
        fingerprint: z.string().max(128).optional(),
        decision: z.string().max(32),
      }),
    )
    .max(RECENT_KEPT),
});

/** The running agent's status, or undefined when no agent runs for HOME. */
export async function requestStatus(
  home: string,
  opts: { timeoutMs?: number } = {},
): Promise<StatusDocument | undefined> {
  const timeoutMs = opts.timeoutMs ?? REQUEST_TIMEOUT_MS;
  const conn = await request(home, 'status', timeoutMs);
  if (!conn) return undefined;
  const { sock } = conn;
  const body = await new Promise<string>((resolve, reject) => {
    const parts: Buffer[] = [];
    let size = 0;
    const timer = setTimeout(() => fail('it sent no complete status in time'), timeoutMs);
    timer.unref();
    function fail(why: string): void {
      clearTimeout(timer);
      sock.destroy();
      reject(new UserError(`the keytether agent's status could not be read: ${why}; restart it`));
    }
    sock.on('data', (d: Buffer) => {
      size += d.length;
      if (size > MAX_STATUS_BYTES) fail('it is larger than 1 MiB');
      else parts.push(d);
    });
    sock.on('end', () => {
      clearTimeout(timer);
      resolve(Buffer.concat(parts).toString('utf8'));
    });
    sock.resume();
  });
  let parsed: unknown;
  try {
    parsed = JSON.parse(body);
  } catch {
    throw new UserError("the keytether agent's status is not JSON; restart the agent");
  }
  const valid = StatusSchema.safeParse(parsed);
  if (!valid.success) {
    const issue = valid.error.issues[0];
    throw new UserError(
      `the keytether agent's status is malformed at ${issue?.path.join('.') || 'the top'}; is it from another version? restart it`,
    );
  }
  return valid.data as StatusDocument;
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
    throw new UserError(`the host name is not usable with the running keytether agent`);
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
