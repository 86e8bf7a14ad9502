// The holder's way out to a relay (`keytether agent --relay URL`): one WebSocket to
// `<relay>/v1/holder`, authenticated with the holder identity, carrying many streams. Each stream
// is one facade; it gets its own tunnel served by a token-scoped view of the holder, so whatever a
// token does not allow is refused here, at the holder, whatever the relay or facade claims.
// Every stream is sealed end to end (workstation/seal.ts): the tunnel is served only over TLS 1.3
// with the holder identity's key, after the facade proved the token's secret inside it.

import { claimedRequester } from '../protocol/keyholder.js';
import { Duplex } from 'node:stream';
import tls from 'node:tls';
import WebSocket from 'ws';
import { ErrorCode, GpgError } from '../protocol/gpg-error.js';
import type {
  DecryptRequest,
  DecryptResult,
  Inventory,
  KeyEntry,
  KeyHolder,
  SignRequest,
} from '../protocol/keyholder.js';
import {
  describeRelayTlsError,
  relayEndpoint,
  relayTlsOptions,
  type RelayTrust,
} from '../protocol/relay/endpoint.js';
import { describeSealError } from '../protocol/seal.js';
import { relayAuthMessage } from '../protocol/relay/identity.js';
import {
  decodeMux,
  encodeMux,
  encodeMuxClose,
  MuxKind,
  parseMuxOpen,
} from '../protocol/relay/mux.js';
import { checkTokenSignature, parseToken, type ParsedToken } from '../protocol/token.js';
import { serveTunnel, type TunnelServerHandle } from '../protocol/tunnel/index.js';
import type { AuditInput } from './audit.js';
import { loadOrCreateIdentity } from './identity.js';
import {
  acceptSealedStream,
  loadSealCredentials,
  onSealedError,
  registryKnowsSecret,
  type SealAcceptOptions,
  type SealAcceptResult,
  type SealCredentials,
} from './seal.js';
import { TokenRegistry } from './tokens.js';

/** The holder identity as the relay client needs it (workstation/identity.ts provides one). */
export interface RelayIdentity {
  hid: string;
  hpk: Uint8Array;
  sign(data: Uint8Array): Uint8Array;
}

export type TokenDecision = { ok: true } | { ok: false; reason: string; message: string };

/** The holder's token registry: revocation, expiry, use counts (workstation/tokens.ts). */
export interface TokenAuthority {
  authorize(req: {
    token: ParsedToken;
    fingerprint: string;
    primaryFingerprint: string;
    op: 'sign' | 'decrypt';
    /** SHA-256 (hex) of the secret the facade proved in the sealed channel. */
    secretHash?: string | undefined;
  }): TokenDecision | Promise<TokenDecision>;
}

export interface RelayClientOptions {
  /** The relay's base URL as printed by `keytether relay`. */
  url: string;
  holder: KeyHolder;
  identity: RelayIdentity;
  tokens: TokenAuthority;
  audit: { append(rec: AuditInput): Promise<void> };
  /** The holder's TLS key and certificate (workstation/seal.ts); every stream is sealed. */
  seal: SealCredentials;
  /**
   * Benchmarks only (bench/relay.ts): serve streams without the seal, to measure what it costs.
   * A symbol, so that no config file, flag or environment variable can ever produce it.
   */
  benchUnsealed?: typeof BENCH_UNSEALED;
  /** Whether a proven secret (SHA-256 hex) is token TID's; checked before the tunnel starts. */
  checkSecret(tid: string, secretHash: string): Promise<boolean>;
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
  /** Re-pushes the inventory on every open stream (keys imported or removed). */
  inventoryChanged(): void;
  close(): Promise<void>;
}

/** The relay caps messages at 1 MiB; data frames stay well below it. */
const MAX_MESSAGE_BYTES = 1 << 20;
const MAX_DATA_CHUNK = 256 * 1024;
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

export function startRelayClient(opts: RelayClientOptions): RelayClient {
  const endpoint = relayEndpoint(opts.url, 'holder', opts.insecure ?? false);
  if (!endpoint.ok) throw new RangeError(endpoint.error);
  const tlsOptions = relayTlsOptions(endpoint.url, opts.trust, (o: tls.ConnectionOptions) =>
    tls.connect(o),
  ) as WebSocket.ClientOptions;
  const log = opts.log ?? (() => {});
  const minMs = opts.minBackoffMs ?? 500;
  const maxMs = opts.maxBackoffMs ?? 30_000;
  const streams = new Map<number, RelayStream>();
  let ws: WebSocket | undefined;
  let connected = false;
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
    const sock = new WebSocket(endpoint.url, {
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
      if (!stopped && attempt === 0) {
        log(`relay ${opts.url}: ${describeRelayTlsError(e) ?? e.message}`);
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
      const delay = backoffDelay(attempt++, minMs, maxMs);
      if (wasConnected || attempt === 1) {
        log(`relay ${opts.url}: ${text}; retrying in ${(delay / 1000).toFixed(1)} s`);
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
      attempt = 0;
      log(`relay connected: ${opts.url} as ${opts.identity.hid}`);
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
      openStream(sock, streamId, payload);
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

  const openStream = (sock: WebSocket, streamId: number, payload: Buffer) => {
    const refuse = (why: string) => sendClose(sock, streamId, why);
    const open = parseMuxOpen(payload);
    if ('error' in open) return refuse(open.error);
    const parsed = parseToken(open.token);
    if (!parsed.ok) return refuse(parsed.error);
    const token = parsed.token;
    // The relay checked this too, but the holder trusts only its own key.
    if (
      token.payload.hid !== opts.identity.hid ||
      !Buffer.from(token.hpk).equals(Buffer.from(opts.identity.hpk)) ||
      !checkTokenSignature(token).ok
    ) {
      return refuse('the token was not issued by this holder');
    }
    const peer = open.peer || undefined;
    const stream = new RelayStream(sock, streamId, () => streams.delete(streamId));
    streams.set(streamId, stream);
    const tid = token.payload.tid;
    const where = { ...(peer !== undefined ? { peer, host: peer } : {}), tokenId: tid };
    // The facade's word, carried by the relay: worth a record, though the relay could forge it.
    stream.onSealReport = (r) => {
      const reason = `sealed channel: the facade reported: ${r.slice('sealed channel: '.length)}`;
      void recordSealFailure(opts.audit, where, reason).then(() =>
        log(`relay stream from ${peer ?? 'a facade'} (token ${tid}) closed: ${reason}`),
      );
    };
    const unsealed = opts.benchUnsealed === BENCH_UNSEALED;
    void (unsealed ? acceptUnsealedForBench : acceptSealedStream)(stream, {
      credentials: opts.seal,
      checkSecret: (hash) => opts.checkSecret(tid, hash),
      // Before the TLS socket is torn down, so the facade hears this reason and no other.
      refuse: (why) => stream.closeWith(`sealed channel: ${why}`),
    }).then(async (sealed) => {
      if (!sealed.ok) {
        const reason = `sealed channel: ${sealed.reason}`;
        await recordSealFailure(opts.audit, where, reason);
        log(`relay stream from ${peer ?? 'a facade'} (token ${tid}) refused: ${reason}`);
        return;
      }
      const socket = sealed.socket;
      // After the handshake a broken, dropped, reordered or replayed record is a TLS error;
      // the tunnel reports it as its close reason, and it is audited here.
      onSealedError(socket, (e: Error) => {
        const reason = `sealed channel: ${describeSealError(e)}`;
        e.message = reason;
        stream.closeWith(reason);
        void recordSealFailure(opts.audit, where, reason).then(() =>
          log(`relay stream from ${peer ?? 'a facade'} (token ${tid}) closed: ${reason}`),
        );
      });
      socket.on('close', () => stream.destroy());
      const scoped = tokenScopedHolder(
        opts.holder,
        token,
        opts.tokens,
        opts.audit,
        peer,
        unsealed ? undefined : sealed.secretHash,
      );
      stream.tunnel = serveTunnel(scoped, socket, {
        software: opts.software,
        requester: (claimed) => ({
          ...claimedRequester(claimed),
          front: 'relay',
          tokenId: tid,
          ...(peer !== undefined ? { host: peer } : {}),
        }),
        // Changes are watched on the whole holder (when it can report them, as Holder does);
        // each push re-reads `scoped`, so the facade still sees only the token's keys.
        onInventoryChange: (changed) =>
          (
            opts.holder as { onInventoryChange?: (fn: () => void) => () => void }
          ).onInventoryChange?.(changed),
      });
    });
  };

  connect();

  return {
    url: opts.url,
    get connected() {
      return connected;
    },
    get streams() {
      return streams.size;
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

function sendData(sock: WebSocket, streamId: number, payload: Uint8Array): void {
  if (sock.readyState === WebSocket.OPEN) {
    sock.send(encodeMux(MuxKind.Data, streamId, payload), { binary: true });
  }
}

function sendClose(sock: WebSocket, streamId: number, reason: string): void {
  if (sock.readyState === WebSocket.OPEN) {
    sock.send(encodeMuxClose(streamId, reason), { binary: true });
  }
}

/** One facade's byte stream inside the holder's relay connection. */
class RelayStream extends Duplex {
  tunnel: TunnelServerHandle | undefined;
  /** Called when the facade ended the stream over a sealed-channel failure it saw. */
  onSealReport: ((reason: string) => void) | undefined;
  #closedRemotely = false;

  constructor(
    private readonly sock: WebSocket,
    private readonly id: number,
    private readonly forget: () => void,
  ) {
    super();
  }

  pushData(b: Buffer): void {
    if (!this.#closedRemotely) this.push(b);
  }

  /** Ends the stream telling the facade (through the relay) why. */
  closeWith(reason: string): void {
    if (!this.#closedRemotely) {
      this.#closedRemotely = true;
      this.forget();
      sendClose(this.sock, this.id, reason.slice(0, 200));
    }
    this.destroy();
  }

  remoteClosed(reason: string): void {
    if (this.#closedRemotely) return;
    if (reason.startsWith('sealed channel: ')) this.onSealReport?.(reason);
    this.#closedRemotely = true;
    this.push(null);
    this.destroy();
  }

  override _read(): void {
    // Flow control is the WebSocket's; tunnel frames are small and bounded by the tunnel.
  }

  override _write(chunk: Buffer, _enc: BufferEncoding, cb: (e?: Error | null) => void): void {
    if (this.#closedRemotely || this.sock.readyState !== WebSocket.OPEN) {
      cb(new Error('the relay stream is closed'));
      return;
    }
    for (let off = 0; off < chunk.length; off += MAX_DATA_CHUNK) {
      sendData(this.sock, this.id, chunk.subarray(off, off + MAX_DATA_CHUNK));
    }
    cb();
  }

  override _final(cb: (e?: Error | null) => void): void {
    this.#sendClose();
    cb();
  }

  override _destroy(err: Error | null, cb: (e?: Error | null) => void): void {
    this.forget();
    // TLS tears this stream down before it emits the error that says why; wait for closeWith.
    setImmediate(() => this.#sendClose());
    cb(err);
  }

  #sendClose(): void {
    this.forget();
    if (this.#closedRemotely) return;
    this.#closedRemotely = true;
    sendClose(this.sock, this.id, 'closed by the holder');
  }
}

function allowedBy(token: ParsedToken, k: { fingerprint: string; primaryFingerprint: string }) {
  const keys = token.payload.keys;
  return (
    keys.includes(k.fingerprint.toUpperCase()) || keys.includes(k.primaryFingerprint.toUpperCase())
  );
}

/**
 * The holder as one token sees it: only the token's keys are listed, and every operation is
 * first authorized by the registry (revocation, expiry, operations, uses). A refusal is recorded
 * in the audit log before gpg hears about it.
 */
export function tokenScopedHolder(
  holder: KeyHolder,
  token: ParsedToken,
  tokens: TokenAuthority,
  audit: { append(rec: AuditInput): Promise<void> },
  peer: string | undefined,
  secretHash?: string,
): KeyHolder {
  const tid = token.payload.tid;
  const check = async (
    op: 'sign' | 'decrypt',
    keygrip: string,
    extra: { hashAlgo?: number; digest?: Uint8Array },
  ): Promise<void> => {
    const inv = await holder.inventory();
    const entry: KeyEntry | undefined = inv.keys.find(
      (k) => k.keygrip === keygrip.toUpperCase() && allowedBy(token, k),
    );
    let refusal: string | undefined;
    if (!entry) {
      refusal = `token ${tid} does not allow this key`;
    } else {
      const d = await tokens.authorize({
        token,
        fingerprint: entry.fingerprint,
        primaryFingerprint: entry.primaryFingerprint,
        op,
        ...(secretHash !== undefined ? { secretHash } : {}),
      });
      if (!d.ok) refusal = d.message;
    }
    if (refusal === undefined) return;
    await audit.append({
      front: 'relay',
      ...(peer !== undefined ? { peer, host: peer } : {}),
      tokenId: tid,
      ...(entry ? { fingerprint: entry.fingerprint } : {}),
      keygrip: keygrip.toUpperCase(),
      op,
      ...extra,
      decision: 'denied',
      reason: refusal,
    });
    throw new GpgError(ErrorCode.FORBIDDEN, refusal);
  };

  return {
    async inventory(): Promise<Inventory> {
      const inv = await holder.inventory();
      const keys = inv.keys.filter((k) => allowedBy(token, k));
      const primaries = new Set(keys.map((k) => k.primaryFingerprint.toUpperCase()));
      return {
        keys,
        certificates: inv.certificates.filter((c) => primaries.has(c.fingerprint.toUpperCase())),
      };
    },
    async sign(req: SignRequest, signal?: AbortSignal): Promise<Uint8Array> {
      await check('sign', req.keygrip, { hashAlgo: req.hashAlgo, digest: req.digest });
      return holder.sign(req, signal);
    },
    async decrypt(req: DecryptRequest, signal?: AbortSignal): Promise<DecryptResult> {
      await check('decrypt', req.keygrip, {});
      return holder.decrypt(req, signal);
    },
  };
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
  for (const u of urls) {
    const e = relayEndpoint(u, 'holder', opts.insecure ?? false);
    if (!e.ok) throw new RelayUrlError(e.error);
  }
  const identity = await loadOrCreateIdentity(rt.home);
  const tokens = await TokenRegistry.open(rt.home, { identity });
  const seal = await loadSealCredentials(rt.home);
  const checkSecret = (tid: string, hash: string) => registryKnowsSecret(rt.home, tid, hash);
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

/**
 * A sealed-channel failure in the audit log. The schema has no operation for a channel event; it
 * is filed under `sign` with no key, and the reason says what happened.
 */
async function recordSealFailure(
  audit: { append(rec: AuditInput): Promise<void> },
  where: { peer?: string; host?: string; tokenId: string },
  reason: string,
): Promise<void> {
  await audit
    .append({ front: 'relay', ...where, op: 'channel', decision: 'failed', reason })
    .catch(() => undefined);
}

/** A `--relay` value that cannot be used; the message is one sentence for the user. */
export class RelayUrlError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'RelayUrlError';
  }
}

/** Marks a relay client that serves streams unsealed; see RelayClientOptions.benchUnsealed. */
export const BENCH_UNSEALED: unique symbol = Symbol('keytether bench: unsealed relay streams');

/**
 * The bench's stand-in for acceptSealedStream: the relay stream itself carries the tunnel, and no
 * secret is proven (the token registry then checks everything but the secret). The stream is not
 * a TLS socket; what the caller does with one (error listeners, close, the tunnel) works on any
 * Duplex, and the seal's options do not apply.
 */
function acceptUnsealedForBench(raw: Duplex, _opts: SealAcceptOptions): Promise<SealAcceptResult> {
  return Promise.resolve({ ok: true, socket: raw as tls.TLSSocket, secretHash: '' });
}
