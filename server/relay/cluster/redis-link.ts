// One relay instance's connection to the Redis that several instances share
// (`keytether relay --redis URL`): holder presence (holder id → the instance it is connected to,
// with a TTL the owner keeps refreshing), and a pub/sub channel per instance on which the others
// send it stream frames (frames.ts). Redis sees what a relay sees: routing metadata and sealed
// bytes, never a token's secret.

import { randomBytes } from 'node:crypto';
import type { FastifyBaseLogger } from 'fastify';
import { Redis, type RedisOptions } from 'ioredis';

const PREFIX = 'keytether:relay:';
/** A holder's presence outlives its owner by at most this long (the owner refreshes it). */
export const PRESENCE_TTL_MS = 10_000;
const PRESENCE_REFRESH_MS = 3_000;
/** How often an instance checks that the instances at the other end of its streams are alive. */
export const PEER_CHECK_MS = 1_000;
// Reconnect quickly: a relay without Redis can only serve holders connected to itself.
const MAX_RECONNECT_DELAY_MS = 1_000;

const channel = (instance: string): string => `${PREFIX}i:${instance}`;
const holderKey = (hid: string): string => `${PREFIX}h:${hid}`;

// Deletes a holder's presence only while it still names this instance: a holder that has just
// moved to another instance must keep its new entry.
const FORGET_SCRIPT = `if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end return 0`;

export interface RedisLinkEvents {
  /** A frame for this instance arrived on its channel. */
  frame(buf: Buffer): void;
  /** The subscription was lost: frames may have been dropped, so cross-instance streams end. */
  lost(): void;
  /** Peer instances whose channel has no subscriber any more: they are gone. */
  peersGone(instances: string[]): void;
}

export class RedisLink {
  /** This instance's id, random per process start. */
  readonly instance = randomBytes(8).toString('hex');
  private readonly pub: Redis;
  private readonly sub: Redis;
  private readonly holders = new Set<string>();
  private refreshTimer: NodeJS.Timeout | undefined;
  private peerTimer: NodeJS.Timeout | undefined;
  private closing = false;
  private subscribed = false;
  private onSubscribed: (() => void) | undefined;
  /** Instances at the other end of this instance's open cross-instance streams. */
  peers: () => Iterable<string> = () => [];

  constructor(
    url: string,
    private readonly log: FastifyBaseLogger,
    private readonly on: RedisLinkEvents,
  ) {
    const opts: RedisOptions = {
      lazyConnect: true,
      // A relay request must fail at once while Redis is away, not wait in a queue for it.
      enableOfflineQueue: false,
      maxRetriesPerRequest: 1,
      connectTimeout: 3_000,
      retryStrategy: (times) => Math.min(times * 100, MAX_RECONNECT_DELAY_MS),
      connectionName: `keytether-relay-${this.instance}`,
    };
    this.pub = new Redis(url, opts);
    this.sub = new Redis(url, { ...opts, autoResubscribe: false });
    for (const [name, r] of [
      ['publish', this.pub],
      ['subscribe', this.sub],
    ] as const) {
      r.on('error', (e: Error) => {
        if (!this.closing) this.log.warn({ redis: name, error: e.message }, 'redis error');
      });
    }
    this.pub.on('ready', () => {
      // After a Redis restart the presence of this instance's holders is gone; say it again now.
      void this.refresh();
      this.announce();
    });
    this.sub.on('ready', () => {
      this.sub.subscribe(channel(this.instance)).then(
        () => {
          this.subscribed = true;
          this.onSubscribed?.();
          this.announce();
        },
        () => this.sub.disconnect(true),
      );
    });
    this.sub.on('close', () => {
      const was = this.subscribed;
      this.subscribed = false;
      if (was && !this.closing) this.on.lost();
    });
    this.sub.on('messageBuffer', (_ch: Buffer, msg: Buffer) => this.on.frame(msg));
  }

  /**
   * Connects, waiting at most `ms` for Redis. A relay whose Redis is away still serves the holders
   * connected to it, keeps trying, and says so on /healthz.
   */
  async start(ms = 3_000): Promise<void> {
    const ready = Promise.all([
      new Promise<void>((resolve) => this.pub.once('ready', () => resolve())),
      new Promise<void>((resolve) => (this.onSubscribed = resolve)),
    ]);
    this.pub.connect().catch(() => {});
    this.sub.connect().catch(() => {});
    let timer: NodeJS.Timeout | undefined;
    await Promise.race([ready, new Promise((r) => (timer = setTimeout(r, ms)))]);
    clearTimeout(timer);
    if (!this.up) this.log.warn({ instance: this.instance }, 'redis not reachable yet; retrying');
    this.refreshTimer = setInterval(() => void this.refresh(), PRESENCE_REFRESH_MS);
    this.refreshTimer.unref();
    this.peerTimer = setInterval(() => void this.checkPeers(), PEER_CHECK_MS);
    this.peerTimer.unref();
  }

  private announce(): void {
    if (this.up) this.log.info({ instance: this.instance }, 'redis ready');
  }

  /** Both connections are up and this instance receives frames. */
  get up(): boolean {
    return this.pub.status === 'ready' && this.subscribed;
  }

  /** Answers within `ms` whether Redis answers a PING. */
  async ping(ms = 1_000): Promise<boolean> {
    if (!this.up) return false;
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<boolean>((r) => (timer = setTimeout(() => r(false), ms)));
    try {
      return await Promise.race([this.pub.ping().then((p) => p === 'PONG'), timeout]);
    } catch {
      return false;
    } finally {
      clearTimeout(timer);
    }
  }

  /** Sends FRAME to INSTANCE; false when nobody is listening there (or Redis is away). */
  async send(instance: string, frame: Buffer): Promise<boolean> {
    try {
      return (await this.pub.publish(channel(instance), frame)) > 0;
    } catch {
      return false;
    }
  }

  holderUp(hid: string): void {
    this.holders.add(hid);
    this.pub.set(holderKey(hid), this.instance, 'PX', PRESENCE_TTL_MS).catch(() => {});
  }

  holderDown(hid: string): void {
    this.holders.delete(hid);
    this.forget(hid, this.instance);
  }

  /** Removes HID's presence if it still names INSTANCE (found dead). */
  forget(hid: string, instance: string): void {
    this.pub.eval(FORGET_SCRIPT, 1, holderKey(hid), instance).catch(() => {});
  }

  /** The instance HID is connected to, per Redis; undefined when none (or Redis is away). */
  async lookup(hid: string): Promise<string | undefined> {
    try {
      return (await this.pub.get(holderKey(hid))) ?? undefined;
    } catch {
      return undefined;
    }
  }

  private async refresh(): Promise<void> {
    if (this.holders.size === 0 || this.pub.status !== 'ready') return;
    const p = this.pub.pipeline();
    for (const hid of this.holders) p.set(holderKey(hid), this.instance, 'PX', PRESENCE_TTL_MS);
    await p.exec().catch(() => {});
  }

  // A killed instance's Redis connection closes with it, and with it its subscription: a peer
  // whose channel has no subscriber is gone, whatever its holders' presence still says.
  private async checkPeers(): Promise<void> {
    const peers = [...new Set(this.peers())];
    if (peers.length === 0 || !this.up) return;
    let counts: unknown[];
    try {
      counts = (await this.pub.call('PUBSUB', 'NUMSUB', ...peers.map(channel))) as unknown[];
    } catch {
      return;
    }
    const gone = peers.filter((_p, i) => Number(counts[2 * i + 1]) === 0);
    if (gone.length > 0) this.on.peersGone(gone);
  }

  async close(): Promise<void> {
    this.closing = true;
    clearInterval(this.refreshTimer);
    clearInterval(this.peerTimer);
    if (this.pub.status === 'ready' && this.holders.size > 0) {
      await Promise.all([...this.holders].map((hid) => this.holderDown(hid)));
    }
    await Promise.all(
      [this.pub, this.sub].map((r) =>
        r.status === 'ready' ? r.quit().catch(() => r.disconnect()) : r.disconnect(),
      ),
    );
  }
}
