// The holder's way out to a relay (`keytether agent --relay URL`): one WebSocket to
// `<relay>/v1/holder`, authenticated with the holder identity, carrying many streams. Each stream
// is one facade; it gets its own tunnel served by a token-scoped view of the holder, so whatever a
// token does not allow is refused here, at the holder, whatever the relay or facade claims.
// Every stream is sealed end to end (workstation/relay/seal.ts): the tunnel is served only over TLS 1.3
// with the holder identity's key, after the facade proved the token's secret inside it.

import tls from 'node:tls';
import WebSocket from 'ws';
import type { KeyHolder } from '../../protocol/keyholder.js';
import {
  describeRelayTlsError,
  relayEndpoint,
  relayTlsOptions,
  type RelayTrust,
} from '../../protocol/relay/endpoint.js';
import { relayAuthMessage } from '../../protocol/relay/identity.js';
import { decodeMux, MuxKind } from '../../protocol/relay/mux.js';
import type { AuditInput } from '../audit/audit.js';
import { loadOrCreateIdentity } from '../home/identity.js';
import { BENCH_UNSEALED, sendClose, serveRelayStream, type HolderStream } from './stream.js';
import { loadSealCredentials, type Admission, type SealCredentials } from './seal.js';
import type { TokenAuthority } from '../tokens/scoped-holder.js';
import { TokenRegistry } from '../tokens/tokens.js';

export { BENCH_UNSEALED } from './stream.js';
export {
  tokenScopedHolder,
  type TokenAuthority,
  type TokenDecision,
  type TokenUse,
} from '../tokens/scoped-holder.js';

/** The holder identity as the relay client needs it (workstation/home/identity.ts provides one). */
export interface RelayIdentity {
  hid: string;
  hpk: Uint8Array;
  sign(data: Uint8Array): Uint8Array;
}

export interface RelayClientOptions {
  /**
   * The relay's base URL as printed by `keytether relay`; or several instances of one relay
   * (`keytether relay --redis`), comma-separated: the holder is connected to one at a time and
   * moves on to the next when it goes away.
   */
  url: string;
  holder: KeyHolder;
  identity: RelayIdentity;
  tokens: TokenAuthority;
  audit: { append(rec: AuditInput): Promise<void> };
  /** The holder's TLS key and certificate (workstation/relay/seal.ts); every stream is sealed. */
  seal: SealCredentials;
  /**
   * Benchmarks only (bench/relay.ts): serve streams without the seal, to measure what it costs.
   * A symbol, so that no config file, flag or environment variable can ever produce it.
   */
  benchUnsealed?: typeof BENCH_UNSEALED;
  /**
   * Whether a proven secret (SHA-256 hex) is token TID's and the token is still good (not revoked
   * or expired); checked before the tunnel starts and before every inventory push.
   */
  checkSecret(tid: string, secretHash: string): Promise<Admission>;
  /** `keytether/<version>`. */
  software: string;
  /** Allow ws:// to a host that is not loopback. */
  insecure?: boolean;
  /** How to trust a wss:// relay's certificate (default: the system CAs). */
  trust?: RelayTrust;
  /** One line per connection event, for the agent's stderr. Never carries token secrets. */
  log?: (line: string) => void;
  /** Backoff bounds; defaults 500 ms and 30 s. */
  minBackoffMs?: number;
  maxBackoffMs?: number;
  /** Test hook: called when the relay accepted the holder. */
  onConnected?: (hid: string) => void;
}

export interface RelayClient {
  readonly url: string;
  readonly connected: boolean;
  /** Open facade streams right now. */
  readonly streams: number;
  /** Why the last attempt failed, while not connected (one sentence; no secrets). */
  readonly lastError: string | undefined;
  /** Re-pushes the inventory on every open stream (keys imported or removed). */
  inventoryChanged(): void;
  close(): Promise<void>;
}

/**
 * While the relay is simply not there (connection refused or reset, or it went away), asking
 * again costs it nothing, so the holder asks at least this often: back within about 5 s of a
 * relay restart, however long it was down. A relay that answers with a refusal is asked as
 * rarely as maxBackoffMs allows.
 */
const UNREACHABLE_MAX_BACKOFF_MS = 2_500;

/** The relay caps messages at 1 MiB; data frames stay well below it. */
const MAX_MESSAGE_BYTES = 1 << 20;
const MAX_STREAMS = 1024;
const AUTH_TIMEOUT_MS = 10_000;

/** Human text for the relay's close codes (see the relay spec). */
const CLOSE_TEXT: Record<number, string> = {
  4001: 'the relay rejected the holder identity',
  4002: 'the relay timed out waiting for authentication',
  4008: 'the relay refused: too many connections',
  4009: 'another holder with the same identity connected to the relay',
  4010: 'the relay received a frame that is too large',
  1001: 'the relay is shutting down',
};

export function backoffDelay(attempt: number, minMs: number, maxMs: number): number {
  const ceiling = Math.min(maxMs, minMs * 2 ** Math.min(attempt, 20));
  // Half fixed, half random: spread out holders that lost the same relay at the same moment.
  return Math.round(ceiling / 2 + (Math.random() * ceiling) / 2);
}

/** The instances a `relay` entry names: one URL, or several of one relay, comma-separated. */
export function relayInstances(entry: string): string[] {
  return entry
    .split(',')
    .map((u) => u.trim())
    .filter((u) => u !== '');
}

export function startRelayClient(opts: RelayClientOptions): RelayClient {
  const instances = relayInstances(opts.url).map((url) => {
    const endpoint = relayEndpoint(url, 'holder', opts.insecure ?? false);
    if (!endpoint.ok) throw new RangeError(endpoint.error);
    const tlsOptions = relayTlsOptions(endpoint.url, opts.trust, (o: tls.ConnectionOptions) =>
      tls.connect(o),
    ) as WebSocket.ClientOptions;
    return { url, endpoint: endpoint.url, tlsOptions };
  });
  if (instances.length === 0) throw new RangeError('the relay URL is empty');
  let at = 0;
  const log = opts.log ?? (() => {});
  const minMs = opts.minBackoffMs ?? 500;
  const maxMs = opts.maxBackoffMs ?? 30_000;
  const streams = new Map<number, HolderStream>();
  let ws: WebSocket | undefined;
  let connected = false;
  let lastError: string | undefined;
  let stopped = false;
  let attempt = 0;
  let retryTimer: NodeJS.Timeout | undefined;
  let stoppedResolve!: () => void;
  const fullyClosed = new Promise<void>((r) => (stoppedResolve = r));

  const dropStreams = (reason: string) => {
    for (const s of streams.values()) s.remoteClosed(reason);
    streams.clear();
  };

  const connect = () => {
    retryTimer = undefined;
    if (stopped) return;
    const { url, endpoint, tlsOptions } = instances[at]!;
    const sock = new WebSocket(endpoint, {
      maxPayload: MAX_MESSAGE_BYTES,
      handshakeTimeout: AUTH_TIMEOUT_MS,
      perMessageDeflate: false,
      ...tlsOptions,
    });
    ws = sock;
    const authTimer = setTimeout(() => sock.terminate(), AUTH_TIMEOUT_MS);
    authTimer.unref();

    sock.on('message', (data: WebSocket.RawData, isBinary: boolean) => {
      const buf = toBuffer(data);
      if (!isBinary) {
        onControl(sock, buf, authTimer);
        return;
      }
      if (!connected) {
        sock.close(4001, 'binary data before authentication');
        return;
      }
      onMux(sock, buf);
    });
    sock.on('error', (e: Error) => {
      // A certificate problem is the user's to fix; say so in words, not OpenSSL's code.
      const sentence = describeRelayTlsError(e);
      if (sentence !== undefined) lastError = sentence;
      if (!stopped && attempt === 0) {
        log(`relay ${url}: ${sentence ?? e.message}`);
      }
    });
    sock.on('close', (code: number, reasonBuf: Buffer) => {
      clearTimeout(authTimer);
      const wasConnected = connected;
      connected = false;
      if (ws === sock) ws = undefined;
      dropStreams('the relay connection closed');
      if (stopped) {
        stoppedResolve();
        return;
      }
      const reason = reasonBuf.toString('utf8').slice(0, 200);
      const text = CLOSE_TEXT[code] ?? `connection closed (${code}${reason ? `: ${reason}` : ''})`;
      // A certificate sentence says more than the close that follows it.
      if (wasConnected || lastError === undefined || code !== 1006) lastError = text;
      const gone = code === 1006 || code === 1001;
      // Another instance of the same relay serves the holder as well as this one did.
      at = (at + 1) % instances.length;
      const delay = backoffDelay(
        attempt++,
        minMs,
        gone ? Math.min(maxMs, UNREACHABLE_MAX_BACKOFF_MS) : maxMs,
      );
      if (wasConnected || attempt === 1) {
        const next = instances.length > 1 ? ` at ${instances[at]!.url}` : '';
        log(`relay ${url}: ${text}; retrying${next} in ${(delay / 1000).toFixed(1)} s`);
      }
      retryTimer = setTimeout(connect, delay);
    });
  };

  const onControl = (sock: WebSocket, buf: Buffer, authTimer: NodeJS.Timeout) => {
    let msg: { type?: unknown; nonce?: unknown; hid?: unknown };
    try {
      msg = JSON.parse(buf.toString('utf8')) as typeof msg;
    } catch {
      sock.close(4001, 'bad control message');
      return;
    }
    if (msg.type === 'challenge' && typeof msg.nonce === 'string' && !connected) {
      if (!/^[A-Za-z0-9_-]{16,128}$/.test(msg.nonce)) {
        sock.close(4001, 'bad challenge');
        return;
      }
      const sig = opts.identity.sign(relayAuthMessage(msg.nonce));
      sock.send(
        JSON.stringify({
          type: 'auth',
          hpk: Buffer.from(opts.identity.hpk).toString('base64url'),
          sig: Buffer.from(sig).toString('base64url'),
        }),
      );
    } else if (msg.type === 'ok' && !connected) {
      if (msg.hid !== undefined && msg.hid !== opts.identity.hid) {
        sock.close(4001, 'the relay named another holder id');
        return;
      }
      clearTimeout(authTimer);
      connected = true;
      lastError = undefined;
      attempt = 0;
      log(`relay connected: ${instances[at]!.url} as ${opts.identity.hid}`);
      opts.onConnected?.(opts.identity.hid);
    }
    // Other control messages are for newer holders; ignoring them keeps old ones working.
  };

  const onMux = (sock: WebSocket, buf: Buffer) => {
    const frame = decodeMux(buf);
    if ('error' in frame) {
      sock.close(4010, frame.error.slice(0, 120));
      return;
    }
    const { kind, streamId, payload } = frame;
    if (kind === MuxKind.Open) {
      if (streams.has(streamId)) {
        sendClose(sock, streamId, 'stream id already in use');
        return;
      }
      if (streams.size >= MAX_STREAMS) {
        sendClose(sock, streamId, 'too many streams');
        return;
      }
      serveRelayStream(opts, log, streams, sock, streamId, payload);
    } else if (kind === MuxKind.Data) {
      streams.get(streamId)?.pushData(payload);
    } else if (kind === MuxKind.Close) {
      const s = streams.get(streamId);
      if (s) {
        streams.delete(streamId);
        s.remoteClosed(payload.toString('utf8').slice(0, 200) || 'the facade went away');
      }
    }
  };

  connect();

  return {
    get url() {
      return instances[at]!.url;
    },
    get connected() {
      return connected;
    },
    get streams() {
      return streams.size;
    },
    get lastError() {
      return lastError;
    },
    inventoryChanged() {
      for (const s of streams.values()) s.tunnel?.inventoryChanged();
    },
    async close() {
      if (stopped) return fullyClosed;
      stopped = true;
      if (retryTimer) clearTimeout(retryTimer);
      dropStreams('the holder is shutting down');
      if (!ws) {
        stoppedResolve();
      } else {
        const sock = ws;
        // A relay that never answers the close must not keep the agent from exiting.
        const kill = setTimeout(() => sock.terminate(), 2000);
        kill.unref();
        sock.close(1001, 'holder shutting down');
      }
      return fullyClosed;
    },
  };
}

function toBuffer(data: WebSocket.RawData): Buffer {
  if (Buffer.isBuffer(data)) return data;
  if (Array.isArray(data)) return Buffer.concat(data);
  return Buffer.from(data);
}

export interface RelayClientsHandle {
  readonly clients: readonly RelayClient[];
  inventoryChanged(): void;
  close(): Promise<void>;
}

/**
 * `keytether agent --relay URL…`: one client per relay, all serving the runtime's holder under
 * the holder identity, with the token registry of the same home as the authority.
 */
export async function startRelayClients(
  rt: { holder: KeyHolder; home: string; audit: { append(rec: AuditInput): Promise<void> } },
  urls: readonly string[],
  opts: {
    software: string;
    insecure?: boolean;
    trust?: RelayTrust | undefined;
    log?: (line: string) => void;
  },
): Promise<RelayClientsHandle> {
  if (urls.length === 0) {
    return { clients: [], inventoryChanged() {}, close: async () => {} };
  }
  // Bad URLs are refused before anything connects, so a typo is one clear message.
  if (urls.some((u) => relayInstances(u).length === 0)) {
    throw new RelayUrlError('a relay URL is empty; use the URL the relay printed');
  }
  for (const u of urls.flatMap(relayInstances)) {
    const e = relayEndpoint(u, 'holder', opts.insecure ?? false);
    if (!e.ok) throw new RelayUrlError(e.error);
  }
  const identity = await loadOrCreateIdentity(rt.home);
  const tokens = await TokenRegistry.open(rt.home, { identity });
  const seal = await loadSealCredentials(rt.home);
  const checkSecret = (tid: string, hash: string) => tokens.admits(tid, hash);
  const clients = urls.map((url) =>
    startRelayClient({
      url,
      holder: rt.holder,
      identity,
      tokens,
      audit: rt.audit,
      seal,
      checkSecret,
      software: opts.software,
      ...(opts.insecure !== undefined ? { insecure: opts.insecure } : {}),
      ...(opts.trust !== undefined ? { trust: opts.trust } : {}),
      ...(opts.log ? { log: opts.log } : {}),
    }),
  );
  return {
    clients,
    inventoryChanged() {
      for (const c of clients) c.inventoryChanged();
    },
    async close() {
      await Promise.all(clients.map((c) => c.close()));
      await tokens.flushUses();
    },
  };
}

/** A `--relay` value that cannot be used; the message is one sentence for the user. */
export class RelayUrlError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'RelayUrlError';
  }
}
