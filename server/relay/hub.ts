// The relay's routing core: authenticates holders (challenge/response with their identity key)
// and facades (the signed public part of a token), then carries each facade WebSocket as one mux
// stream over its holder's WebSocket (relay-protocol.md, "Relay endpoints").
//
// The relay sees tokens' public parts and routing metadata only. Logs name token ids (`tid`) and
// holder ids (`hid`), never a token, signature or nonce; every refusal is one log line with its
// reason and one count in the refusals metric.

import { randomBytes } from 'node:crypto';
import type { IncomingMessage } from 'node:http';
import type { Duplex } from 'node:stream';
import type { FastifyBaseLogger } from 'fastify';
import { Gauge } from 'prom-client';
import { WebSocket, WebSocketServer, type RawData } from 'ws';
import { holderIdFromPublicKey } from '../../protocol/relay/identity.js';
import { MUX_HEADER_BYTES, MuxKind, decodeMux } from '../../protocol/relay/mux.js';
import { checkTokenSignature, parseToken } from '../../protocol/token.js';
import { AddressCounter, RateLimiter, type RelayLimits } from './limits.js';
import { TrustedProxies } from './client-address.js';
import type { RelayMetrics, Role } from './metrics.js';
import { StreamRouter, localFacade, type Holder, type Stream } from './streams.js';
import { Cluster } from './cluster/cluster.js';
import { refusal, type LinkRefusal } from './cluster/frames.js';
import { OriginStream } from './cluster/origin-stream.js';
import {
  CloseCode,
  FacadeTokenSchema,
  RelaySocket,
  holderAuthKey,
  isOpen,
  parseControl,
  wsReason,
} from './wire.js';

export { CloseCode } from './wire.js';

// After close() a well-behaved peer answers at once; one that does not is cut off after this.
const CLOSE_HANDSHAKE_MS = 2000;

export class RelayHub {
  private readonly holders = new Map<string, Holder>();
  private readonly sockets = new Set<WebSocket>();
  /** Sockets that have not authenticated yet; closed at once when the relay starts draining. */
  private readonly pending = new Set<WebSocket>();
  private readonly addresses: AddressCounter;
  private readonly rate: RateLimiter;
  private readonly streams: StreamRouter;
  private readonly holderWss: WebSocketServer;
  private readonly facadeWss: WebSocketServer;
  private draining = false;
  /** With --redis: the other relay instances this one shares holders with. */
  readonly cluster: Cluster | undefined;

  constructor(
    private readonly log: FastifyBaseLogger,
    private readonly limits: RelayLimits,
    private readonly metrics: RelayMetrics,
    private readonly proxies: TrustedProxies = new TrustedProxies([]),
    redisUrl?: string,
  ) {
    this.addresses = new AddressCounter(limits.maxConnectionsPerAddress);
    this.rate = new RateLimiter(limits.tokenRatePerSecond, limits.tokenBurst);
    this.streams = new StreamRouter(limits, metrics, this.rate);
    if (redisUrl !== undefined) {
      this.cluster = new Cluster(redisUrl, log, metrics, this.streams, (open) =>
        this.admitStream(open.hid, open.tid),
      );
    }
    const common = { noServer: true, perMessageDeflate: false, WebSocket: RelaySocket } as const;
    this.holderWss = new WebSocketServer({
      ...common,
      maxPayload: limits.maxMessageBytes + MUX_HEADER_BYTES,
    });
    this.facadeWss = new WebSocketServer({ ...common, maxPayload: limits.maxMessageBytes });
    const sockets = this.sockets;
    new Gauge({
      name: 'keytether_relay_buffered_bytes',
      help: 'Bytes queued in the relay for peers that have not read them yet',
      registers: [metrics.registry],
      collect() {
        let n = 0;
        for (const ws of sockets) n += ws.bufferedAmount;
        this.set(n);
      },
    });
  }

  /** The HTTP server's 'upgrade' handler. */
  handleUpgrade(req: IncomingMessage, socket: Duplex, head: Buffer): void {
    let path: string;
    try {
      path = new URL(req.url ?? '/', 'http://relay').pathname;
    } catch {
      path = '';
    }
    const role: Role | undefined =
      path === '/v1/holder' ? 'holder' : path === '/v1/facade' ? 'facade' : undefined;
    if (!role) {
      socket.on('error', () => {});
      socket.end('HTTP/1.1 404 Not Found\r\nConnection: close\r\nContent-Length: 0\r\n\r\n');
      return;
    }
    const wss = role === 'holder' ? this.holderWss : this.facadeWss;
    wss.handleUpgrade(req, socket, head, (ws) => this.accept(role, ws, req));
  }

  private accept(role: Role, ws: WebSocket, req: IncomingMessage): void {
    const addr = this.proxies.clientAddress(
      req.socket.remoteAddress,
      req.headers['x-forwarded-for'],
    );
    const log = this.log.child({ role, addr });
    ws.on('error', (e: Error & { code?: string }) => {
      if (e.code === 'WS_ERR_UNSUPPORTED_MESSAGE_LENGTH') {
        // ws has already closed the socket (with 4010, see RelaySocket); count and log it.
        this.metrics.refusals.inc({ reason: 'frame_too_large' });
        log.info({ code: CloseCode.FrameTooLarge, reason: 'frame too large' }, 'refused');
      } else {
        log.warn({ error: e.message }, 'websocket error');
      }
    });
    // Refused sockets are tracked too, so shutdown can cut off one whose peer never closes.
    this.sockets.add(ws);
    ws.once('close', () => this.sockets.delete(ws));
    if (this.draining) {
      this.refuse(ws, log, CloseCode.ShuttingDown, 'relay shutting down', 'shutting_down');
      return;
    }
    if (!this.addresses.acquire(addr)) {
      this.refuse(ws, log, CloseCode.RateLimited, 'too many connections', 'too_many_connections');
      return;
    }
    this.pending.add(ws);
    this.metrics.connections.inc({ role });
    ws.once('close', () => {
      this.addresses.release(addr);
      this.pending.delete(ws);
      this.metrics.connections.dec({ role });
    });
    const deadline = setTimeout(() => {
      if (this.pending.has(ws)) {
        this.refuse(ws, log, CloseCode.AuthTimeout, 'auth timeout', 'auth_timeout');
      }
    }, this.limits.authDeadlineMs);
    ws.once('close', () => clearTimeout(deadline));
    if (role === 'holder') this.acceptHolder(ws, log);
    else this.acceptFacade(ws, log, addr);
  }

  private refuse(
    ws: WebSocket,
    log: FastifyBaseLogger,
    code: number,
    reason: string,
    metricReason: string,
  ): void {
    this.pending.delete(ws);
    this.metrics.refusals.inc({ reason: metricReason });
    log.info({ code, reason }, 'refused');
    ws.close(code, wsReason(reason));
  }

  // ---- holders ----

  private acceptHolder(ws: WebSocket, log: FastifyBaseLogger): void {
    const nonce = randomBytes(32).toString('base64url');
    let holder: Holder | undefined;
    ws.on('message', (data, isBinary) => {
      if (!isOpen(ws)) return;
      if (holder) {
        if (isBinary) this.fromHolder(holder, data as Buffer);
        else holder.log.debug('ignored a text message from the holder');
        return;
      }
      const hpk = isBinary ? undefined : holderAuthKey(data, nonce);
      if (!hpk) {
        this.refuse(ws, log, CloseCode.AuthFailed, 'auth failed', 'auth_failed');
        return;
      }
      holder = this.registerHolder(ws, holderIdFromPublicKey(hpk), log);
      ws.send(JSON.stringify({ type: 'ok', hid: holder.hid }));
    });
    ws.once('close', () => {
      if (holder) this.dropHolder(holder);
    });
    ws.send(JSON.stringify({ type: 'challenge', nonce }));
  }

  private registerHolder(ws: WebSocket, hid: string, connLog: FastifyBaseLogger): Holder {
    this.pending.delete(ws);
    const log = connLog.child({ hid });
    const old = this.holders.get(hid);
    if (old) {
      old.log.info({ code: CloseCode.Replaced }, 'holder replaced by a new connection');
      this.dropHolder(old);
      old.ws.close(CloseCode.Replaced, 'replaced');
    }
    const holder: Holder = { ws, hid, log, streams: new Map(), nextStreamId: 1 };
    this.holders.set(hid, holder);
    this.cluster?.holderUp(hid);
    log.info('holder connected');
    return holder;
  }

  /** Forgets `holder` (if it is still the current one for its id) and ends its streams. */
  private dropHolder(holder: Holder): void {
    if (this.holders.get(holder.hid) !== holder) return;
    this.holders.delete(holder.hid);
    this.cluster?.holderDown(holder.hid);
    for (const s of [...holder.streams.values()]) {
      this.streams.endStream(s, {
        facadeCode: CloseCode.HolderNotConnected,
        reason: 'holder went away',
      });
    }
    holder.log.info('holder disconnected');
  }

  private fromHolder(holder: Holder, data: Buffer): void {
    const f = decodeMux(data, this.limits.maxMessageBytes);
    if ('error' in f || f.kind === MuxKind.Open) {
      const reason = 'error' in f ? f.error : 'holders do not open streams';
      this.metrics.refusals.inc({ reason: 'bad_frame' });
      holder.log.warn({ code: 1002, reason }, 'refused');
      holder.ws.close(1002, wsReason('bad mux frame'));
      return;
    }
    // A frame for a stream that just ended here crossed our close on the wire; nothing to do.
    const s = holder.streams.get(f.streamId);
    if (!s) return;
    if (f.kind === MuxKind.Data) {
      this.streams.toFacade(s, f.payload);
    } else {
      this.streams.endStream(s, {
        facadeCode: 1000,
        reason: f.payload.toString('utf8'),
        fromHolder: true,
      });
    }
  }

  // ---- facades ----

  private acceptFacade(ws: WebSocket, log: FastifyBaseLogger, addr: string): void {
    let stream: Stream | OriginStream | undefined;
    let answered = false;
    ws.on('message', (data, isBinary) => {
      if (!isOpen(ws)) return;
      if (!answered) {
        answered = true;
        stream = this.openStream(ws, log, addr, data, isBinary);
        return;
      }
      if (!stream || stream.ended) return;
      if (!isBinary) stream.log.debug('ignored a text message from the facade');
      else if (stream instanceof OriginStream) stream.fromFacade(data as Buffer);
      else this.streams.fromFacade(stream, data as Buffer);
    });
    ws.once('close', (code, reason) => {
      if (!stream || stream.ended) return;
      const why = reason.toString('utf8') || `facade closed (${code})`;
      if (stream instanceof OriginStream) stream.facadeClosed(why);
      else this.streams.endStream(stream, { reason: why });
    });
  }

  private openStream(
    ws: WebSocket,
    connLog: FastifyBaseLogger,
    addr: string,
    data: RawData,
    isBinary: boolean,
  ): Stream | OriginStream | undefined {
    const msg = isBinary ? undefined : parseControl(data, FacadeTokenSchema);
    if (!msg) {
      this.refuse(ws, connLog, CloseCode.TokenInvalid, 'expected a token message', 'token_invalid');
      return undefined;
    }
    const parsed = parseToken(msg.token);
    if (!parsed.ok) {
      this.refuse(ws, connLog, CloseCode.TokenInvalid, parsed.error, 'token_invalid');
      return undefined;
    }
    const token = parsed.token;
    if (token.secret) {
      // The secret proves the facade to the holder end to end; a relay must never hold it.
      token.secret.fill(0);
      this.refuse(
        ws,
        connLog,
        CloseCode.TokenInvalid,
        'send only the public part of the token, never its secret',
        'token_invalid',
      );
      return undefined;
    }
    const { tid, hid, exp } = token.payload;
    const log = connLog.child({ tid, hid });
    const sig = checkTokenSignature(token);
    if (!sig.ok) {
      const reason =
        sig.reason === 'holder'
          ? 'token holder id does not match its key'
          : 'token signature invalid';
      this.refuse(ws, log, CloseCode.TokenInvalid, reason, 'token_invalid');
      return undefined;
    }
    if (exp <= Math.floor(Date.now() / 1000)) {
      this.refuse(ws, log, CloseCode.TokenExpired, 'token expired', 'token_expired');
      return undefined;
    }
    if (this.draining) {
      this.refuse(ws, log, CloseCode.ShuttingDown, 'relay shutting down', 'shutting_down');
      return undefined;
    }
    if (!this.holders.has(hid) && this.cluster) {
      // Connected to another instance, perhaps: that one decides on rate and stream count.
      const open = { hid, tid, token: token.publicPart, peer: addr };
      return this.cluster.route(ws, log, open, {
        accepted: () => {
          this.pending.delete(ws);
          ws.send(JSON.stringify({ type: 'ok' }));
        },
        refused: (code, reason, metric) => this.refuse(ws, log, code, reason, metric),
        ended: () => {},
      });
    }
    const admitted = this.admitStream(hid, tid);
    if (!('ws' in admitted)) {
      this.refuse(ws, log, admitted.code, admitted.reason, admitted.metric);
      return undefined;
    }
    this.pending.delete(ws);
    return this.streams.open(admitted, localFacade(ws), tid, log, {
      token: token.publicPart,
      peer: addr,
    });
  }

  /**
   * On the holder's instance: may a facade (here, or on another instance with --redis) open a
   * stream to holder HID with token TID? The rate is taken only after the token's signature was
   * checked, or anyone could drain another token's bucket.
   */
  private admitStream(hid: string, tid: string): Holder | LinkRefusal {
    if (this.draining)
      return refusal(CloseCode.ShuttingDown, 'relay shutting down', 'shutting_down');
    const holder = this.holders.get(hid);
    if (!holder) {
      return refusal(CloseCode.HolderNotConnected, 'holder not connected', 'holder_not_connected');
    }
    if (!this.rate.take(tid)) return refusal(CloseCode.RateLimited, 'rate limited', 'rate_limited');
    if (holder.streams.size >= this.limits.maxStreamsPerHolder) {
      return refusal(CloseCode.RateLimited, 'too many streams', 'too_many_streams');
    }
    return holder;
  }

  // ---- shutdown ----

  /**
   * Stops accepting connections, lets streams in flight finish for up to `drainMs`, then closes
   * every connection with 1001.
   */
  async shutdown(drainMs: number): Promise<void> {
    if (!this.draining) {
      this.draining = true;
      this.log.info({ streams: this.streams.count, drainMs }, 'shutting down');
      for (const ws of [...this.pending]) {
        this.refuse(ws, this.log, CloseCode.ShuttingDown, 'relay shutting down', 'shutting_down');
      }
      if (this.streams.count > 0) {
        await new Promise<void>((resolve) => {
          const timer = setTimeout(resolve, drainMs);
          this.streams.onDrained = () => {
            clearTimeout(timer);
            resolve();
          };
        });
        this.streams.onDrained = undefined;
      }
    }
    await this.closeAll();
  }

  /** Closes every connection with 1001 and waits (briefly) until they are gone. */
  async closeAll(): Promise<void> {
    this.draining = true;
    const open = [...this.sockets];
    await Promise.all(
      open.map(
        (ws) =>
          new Promise<void>((resolve) => {
            if (ws.readyState === WebSocket.CLOSED) return resolve();
            const timer = setTimeout(() => ws.terminate(), CLOSE_HANDSHAKE_MS);
            ws.once('close', () => {
              clearTimeout(timer);
              resolve();
            });
            ws.close(CloseCode.ShuttingDown, 'relay shutting down');
          }),
      ),
    );
    this.holderWss.close();
    this.facadeWss.close();
    await this.cluster?.close();
  }
}
