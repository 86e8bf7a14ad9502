// Carrying facade streams over their holder's WebSocket once both sides are authenticated:
// data in both directions, backpressure, and ending a stream exactly once.

import type { FastifyBaseLogger } from 'fastify';
import type { WebSocket } from 'ws';
import {
  MuxKind,
  encodeMux,
  encodeMuxClose,
  encodeMuxOpen,
  type MuxOpen,
} from '../../protocol/relay/mux.js';
import type { RateLimiter, RelayLimits } from './limits.js';
import type { RelayMetrics } from './metrics.js';
import { CloseCode, isOpen, wsReason } from './wire.js';

// 4008 is the spec's code for a peer the relay will not serve at the rate it asks for; a facade
// that does not read its answers is one.
const SLOW_READER_REASON = 'facade is not reading';
/** A throttled facade is read again after at most this long, whatever its token's rate. */
const MAX_THROTTLE_MS = 5000;

/**
 * The facade side of a stream as the router drives it: the facade's own WebSocket on this
 * instance, or (with --redis) a facade connected to another instance (cluster/remote-facade.ts).
 */
export interface FacadeEnd {
  readonly open: boolean;
  /** Bytes sent to the facade that it has not taken yet. */
  readonly bufferedAmount: number;
  /** Tells the facade its stream is open. */
  accepted(): void;
  send(data: Buffer): void;
  pause(): void;
  resume(): void;
  close(code: number, reason: string): void;
  terminate(): void;
  /** The stream has ended, for whichever reason. */
  released(): void;
}

export function localFacade(ws: WebSocket): FacadeEnd {
  return {
    get open() {
      return isOpen(ws);
    },
    get bufferedAmount() {
      return ws.bufferedAmount;
    },
    accepted: () => ws.send(JSON.stringify({ type: 'ok' })),
    send: (data) => ws.send(data, { binary: true }),
    pause: () => ws.pause(),
    resume: () => ws.resume(),
    close: (code, reason) => ws.close(code, wsReason(reason)),
    terminate: () => ws.terminate(),
    released: () => {},
  };
}

export interface Holder {
  ws: WebSocket;
  hid: string;
  log: FastifyBaseLogger;
  streams: Map<number, Stream>;
  nextStreamId: number;
}

export interface Stream {
  id: number;
  holder: Holder;
  facade: FacadeEnd;
  tid: string;
  log: FastifyBaseLogger;
  ended: boolean;
  /** When the oldest facade data message not yet answered by the holder was forwarded. */
  pendingSince: number | undefined;
  /** Not read from until the holder's socket has taken what is queued for it. */
  paused: boolean;
  /** Not read from until the token's bucket refills: the facade sends faster than its rate. */
  throttle: NodeJS.Timeout | undefined;
  /** Messages that came over the rate, forwarded in order as the bucket refills. */
  held: Buffer[];
  heldBytes: number;
}

/** The open streams of every holder, counted so that shutdown can wait for them to end. */
export class StreamRouter {
  count = 0;
  onDrained: (() => void) | undefined;

  constructor(
    private readonly limits: RelayLimits,
    private readonly metrics: RelayMetrics,
    private readonly rate: RateLimiter,
  ) {}

  /** Registers a facade's stream with its holder and tells both sides it is open. */
  open(
    holder: Holder,
    facade: FacadeEnd,
    tid: string,
    log: FastifyBaseLogger,
    open: MuxOpen,
  ): Stream {
    const id = this.allocateStreamId(holder);
    const stream: Stream = {
      id,
      holder,
      facade,
      tid,
      log: log.child({ stream: id }),
      ended: false,
      pendingSince: undefined,
      paused: false,
      throttle: undefined,
      held: [],
      heldBytes: 0,
    };
    holder.streams.set(id, stream);
    this.count++;
    holder.ws.send(encodeMuxOpen(id, open));
    facade.accepted();
    this.metrics.streams.inc();
    stream.log.info('stream opened');
    return stream;
  }

  private allocateStreamId(holder: Holder): number {
    // At most maxStreamsPerHolder ids are in use, so this finds a free one quickly.
    for (;;) {
      const id = holder.nextStreamId;
      holder.nextStreamId = id >= 0xffffffff ? 1 : id + 1;
      if (!holder.streams.has(id)) return id;
    }
  }

  /** Hands a data frame from the holder to the stream's facade. */
  toFacade(s: Stream, payload: Buffer): void {
    if (s.pendingSince !== undefined) {
      this.metrics.latency.observe((performance.now() - s.pendingSince) / 1000);
      s.pendingSince = undefined;
    }
    if (!s.facade.open) return;
    if (s.facade.bufferedAmount > this.limits.maxBufferedBytes) {
      // Pausing the holder would stall every stream it carries; this one alone is dropped,
      // and terminated rather than closed so its queue is freed now, not after a handshake.
      this.metrics.refusals.inc({ reason: 'slow_reader' });
      s.log.info({ code: CloseCode.RateLimited, reason: SLOW_READER_REASON }, 'refused');
      this.endStream(s, { reason: SLOW_READER_REASON });
      s.facade.terminate();
      return;
    }
    s.facade.send(payload);
  }

  fromFacade(s: Stream, data: Buffer): void {
    if (s.held.length > 0 || !this.rate.take(s.tid)) {
      this.hold(s, data);
      return;
    }
    this.forward(s, data);
  }

  private forward(s: Stream, data: Buffer): void {
    this.metrics.requests.inc();
    s.pendingSince ??= performance.now();
    const to = s.holder.ws;
    if (!isOpen(to)) return;
    if (to.bufferedAmount + data.length <= this.limits.maxBufferedBytes || s.paused) {
      to.send(encodeMux(MuxKind.Data, s.id, data));
      return;
    }
    // The holder is not keeping up: stop reading from this facade (TCP then holds back its
    // sender) until this message has been handed to the holder's socket, i.e. all before it too.
    s.paused = true;
    s.facade.pause();
    s.log.debug({ buffered: to.bufferedAmount }, 'facade paused: the holder is behind');
    to.send(encodeMux(MuxKind.Data, s.id, data), () => {
      s.paused = false;
      this.resume(s);
    });
  }

  /**
   * Over its token's rate, a stream is slowed, not cut: the message waits, in order with any
   * before it, and the facade is not read again until the bucket has let all of them through. A
   * CI job sending a large payload to be clear-signed (many sealed records) or signing in a burst
   * then takes longer instead of losing every signature in flight; a flood only fills its own TCP
   * window. What is held is bounded like a holder's send queue; beyond it the stream ends.
   */
  private hold(s: Stream, data: Buffer): void {
    s.held.push(data);
    s.heldBytes += data.length;
    if (s.heldBytes > this.limits.maxBufferedBytes) {
      this.metrics.refusals.inc({ reason: 'rate_limited' });
      s.log.info({ code: CloseCode.RateLimited, reason: 'rate limited' }, 'refused');
      this.endStream(s, { facadeCode: CloseCode.RateLimited, reason: 'rate limited' });
      return;
    }
    if (s.throttle !== undefined) return;
    this.metrics.throttled.inc();
    s.log.debug('facade throttled: over its token rate');
    s.facade.pause();
    this.release(s);
  }

  /** Forwards held messages as the bucket allows, then reads the facade again. */
  private release(s: Stream): void {
    const waitMs = Math.max(1, Math.min(this.rate.waitMs(s.tid), MAX_THROTTLE_MS));
    s.throttle = setTimeout(() => {
      s.throttle = undefined;
      if (s.ended) return;
      while (s.held.length > 0 && this.rate.take(s.tid)) {
        const data = s.held.shift()!;
        s.heldBytes -= data.length;
        this.forward(s, data);
      }
      if (s.held.length > 0) this.release(s);
      else this.resume(s);
    }, waitMs);
    s.throttle.unref();
  }

  private resume(s: Stream): void {
    if (s.ended || s.paused || s.throttle !== undefined || !s.facade.open) return;
    s.facade.resume();
    s.log.debug('facade resumed');
  }

  /**
   * Ends a stream once: tells the holder (unless the holder ended it) and closes the facade
   * (unless the facade ended it, i.e. `facadeCode` is absent).
   */
  endStream(s: Stream, how: { reason: string; facadeCode?: number; fromHolder?: boolean }): void {
    if (s.ended) return;
    s.ended = true;
    clearTimeout(s.throttle);
    s.held = [];
    s.holder.streams.delete(s.id);
    this.count--;
    if (!how.fromHolder && isOpen(s.holder.ws)) {
      s.holder.ws.send(encodeMuxClose(s.id, how.reason));
    }
    if (how.facadeCode !== undefined && s.facade.open) {
      s.facade.close(how.facadeCode, how.reason);
    }
    s.facade.released();
    s.log.info({ reason: how.reason.slice(0, 200) }, 'stream closed');
    if (this.count === 0) this.onDrained?.();
  }
}
