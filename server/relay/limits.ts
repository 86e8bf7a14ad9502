// The relay's limits (relay-protocol.md, "Limits") and the small counters that enforce them.

export interface RelayLimits {
  /** Largest tunnel message in bytes, facade side; holder frames may add the 5-byte mux header. */
  maxMessageBytes: number;
  maxStreamsPerHolder: number;
  /** Open WebSockets (holders and facades together) per remote address. */
  maxConnectionsPerAddress: number;
  /** Requests (stream opens and facade data messages) per second per token id, refilled… */
  tokenRatePerSecond: number;
  /** …into a bucket this large, so a short burst is not refused. */
  tokenBurst: number;
  /** Time a new connection has to authenticate. */
  authDeadlineMs: number;
  /**
   * Time a new TCP connection has to send its complete HTTP request head (the WebSocket upgrade
   * is a few hundred bytes in one write), idle or dribbling alike; then 408 and closed.
   */
  headersDeadlineMs: number;
  /** On SIGTERM, how long streams in flight may continue before everything is closed. */
  drainMs: number;
  /**
   * Bytes the relay may hold queued for one peer that is not reading. A facade whose holder is
   * this far behind is not read from until the holder catches up; a facade that is this far
   * behind itself loses its stream (one slow facade must not stall its holder's other streams).
   */
  maxBufferedBytes: number;
}

export const DEFAULT_LIMITS: RelayLimits = {
  maxMessageBytes: 1024 * 1024,
  maxStreamsPerHolder: 1024,
  maxConnectionsPerAddress: 64,
  tokenRatePerSecond: 50,
  tokenBurst: 50,
  authDeadlineMs: 5000,
  headersDeadlineMs: 10_000,
  drainMs: 10_000,
  maxBufferedBytes: 4 * 1024 * 1024,
};

// Buckets that have refilled completely carry no information; beyond this many keys they are
// dropped so a stream of distinct token ids cannot grow the map without bound.
const PRUNE_ABOVE = 10_000;

/** Token buckets keyed by token id. */
export class RateLimiter {
  private readonly buckets = new Map<string, { tokens: number; at: number }>();

  constructor(
    private readonly ratePerSecond: number,
    private readonly burst: number,
    private readonly now: () => number = () => performance.now(),
  ) {}

  /** Takes one request's worth from `key`'s bucket; false when it is empty. */
  take(key: string): boolean {
    const t = this.now();
    const b = this.buckets.get(key) ?? { tokens: this.burst, at: t };
    b.tokens = Math.min(this.burst, b.tokens + ((t - b.at) / 1000) * this.ratePerSecond);
    b.at = t;
    const ok = b.tokens >= 1;
    if (ok) b.tokens -= 1;
    this.buckets.set(key, b);
    if (this.buckets.size > PRUNE_ABOVE) this.prune(t);
    return ok;
  }

  /** How long until `key`'s bucket holds one request's worth again; 0 when it does now. */
  waitMs(key: string): number {
    const b = this.buckets.get(key);
    if (!b) return 0;
    const tokens = Math.min(
      this.burst,
      b.tokens + ((this.now() - b.at) / 1000) * this.ratePerSecond,
    );
    return tokens >= 1 ? 0 : Math.ceil(((1 - tokens) / this.ratePerSecond) * 1000);
  }

  private prune(t: number): void {
    for (const [k, b] of this.buckets) {
      if (b.tokens + ((t - b.at) / 1000) * this.ratePerSecond >= this.burst) this.buckets.delete(k);
    }
  }
}

/** Open connections per remote address. */
export class AddressCounter {
  private readonly counts = new Map<string, number>();

  constructor(private readonly max: number) {}

  /** Counts one more connection from `addr`; false (and not counted) when it is at the limit. */
  acquire(addr: string): boolean {
    const n = this.counts.get(addr) ?? 0;
    if (n >= this.max) return false;
    this.counts.set(addr, n + 1);
    return true;
  }

  release(addr: string): void {
    const n = (this.counts.get(addr) ?? 0) - 1;
    if (n > 0) this.counts.set(addr, n);
    else this.counts.delete(addr);
  }
}
