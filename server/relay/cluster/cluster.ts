// Several relay instances as one relay (`keytether relay --redis URL`): a facade may land on any
// instance; when its holder is connected to another, the stream is carried there over Redis
// (origin-stream.ts on the facade's instance, remote-facade.ts on the holder's). Everything a
// relay decides about a holder's streams (rate, stream count, backpressure) is decided on the
// holder's instance, which sees every request of every token of that holder.

import type { FastifyBaseLogger } from 'fastify';
import { Counter, Gauge } from 'prom-client';
import type { WebSocket } from 'ws';
import type { RelayMetrics } from '../metrics.js';
import type { Holder, Stream, StreamRouter } from '../streams.js';
import { CloseCode } from '../wire.js';
import {
  LinkKind,
  closeBody,
  decodeLink,
  encodeLink,
  openBody,
  parseClose,
  parseCredit,
  parseOpen,
  parseRefusal,
  refusal,
  refusalBody,
  type LinkFrame,
  type LinkOpen,
  type LinkRefusal,
} from './frames.js';
import { OriginStream, type OriginHooks } from './origin-stream.js';
import { RedisLink } from './redis-link.js';
import { RemoteFacade, type LinkSender } from './remote-facade.js';

/** How long the holder's instance has to answer an open before the facade is refused. */
const OPEN_TIMEOUT_MS = 3_000;

type Side = 'origin' | 'owner';

export class Cluster implements LinkSender {
  private readonly link: RedisLink;
  private readonly origins = new Map<number, OriginStream>();
  private readonly owned = new Map<string, { stream: Stream; facade: RemoteFacade }>();
  private nextId = 1;
  private readonly carried: Counter<'side'>;
  private closed = false;

  constructor(
    url: string,
    private readonly log: FastifyBaseLogger,
    metrics: RelayMetrics,
    private readonly router: StreamRouter,
    /** On the holder's instance: the holder to open a facade's stream to, or why not. */
    private readonly admit: (open: LinkOpen) => Holder | LinkRefusal,
  ) {
    this.link = new RedisLink(url, log, {
      frame: (buf) => this.onFrame(buf),
      lost: () => this.endAll('the relay lost its connection to Redis'),
      peersGone: (ids) => this.peersGone(ids),
    });
    this.link.peers = () => this.peers();
    this.carried = new Counter({
      name: 'keytether_relay_cluster_streams_total',
      help: 'Streams carried between relay instances over Redis, by side (origin: the facade is here; owner: the holder is here)',
      labelNames: ['side'],
      registers: [metrics.registry],
    });
    for (const side of ['origin', 'owner'] as Side[]) this.carried.inc({ side }, 0);
    const origins = this.origins;
    const owned = this.owned;
    const link = this.link;
    new Gauge({
      name: 'keytether_relay_cluster_open_streams',
      help: 'Streams carried between relay instances open right now, by side',
      labelNames: ['side'],
      registers: [metrics.registry],
      collect() {
        this.set({ side: 'origin' }, origins.size);
        this.set({ side: 'owner' }, owned.size);
      },
    });
    new Gauge({
      name: 'keytether_relay_redis_up',
      help: 'Whether this relay instance is connected to Redis and receives frames (1) or not (0)',
      registers: [metrics.registry],
      collect() {
        this.set(link.up ? 1 : 0);
      },
    });
  }

  get instance(): string {
    return this.link.instance;
  }

  start(): Promise<void> {
    return this.link.start();
  }

  ping(): Promise<boolean> {
    return this.link.ping();
  }

  holderUp(hid: string): void {
    this.link.holderUp(hid);
  }

  holderDown(hid: string): void {
    this.link.holderDown(hid);
  }

  send(instance: string, kind: LinkKind, stream: number, origin: string, body: Uint8Array): void {
    void this.link.send(instance, encodeLink(kind, stream, origin, body)).then((ok) => {
      if (!ok && !this.closed) this.peersGone([instance]);
    });
  }

  /**
   * On the facade's instance, for a holder not connected here: finds the holder's instance and
   * opens the stream there. The facade hears `ok` (hooks.accepted) or a refusal.
   */
  route(ws: WebSocket, log: FastifyBaseLogger, open: LinkOpen, hooks: OriginHooks): OriginStream {
    const id = this.allocateId();
    const o = new OriginStream(this, this.instance, id, ws, log.child({ stream: id }), {
      accepted: () => {
        this.carried.inc({ side: 'origin' });
        o.log.info({ owner: o.owner }, 'stream opened on the holder instance');
        hooks.accepted();
      },
      refused: hooks.refused,
      ended: () => {
        this.origins.delete(id);
        hooks.ended();
      },
    });
    this.origins.set(id, o);
    void this.link.lookup(open.hid).then((owner) => {
      if (o.ended) return;
      if (owner === undefined || owner === this.instance) {
        o.refuse(CloseCode.HolderNotConnected, 'holder not connected');
        return;
      }
      o.opening(owner, OPEN_TIMEOUT_MS);
      void this.link
        .send(owner, encodeLink(LinkKind.Open, id, this.instance, openBody(open)))
        .then((ok) => {
          if (ok) return;
          // Its presence outlived it: the holder is not connected anywhere we know of.
          this.link.forget(open.hid, owner);
          o.refuse(CloseCode.HolderNotConnected, 'holder not connected');
        });
    });
    return o;
  }

  private allocateId(): number {
    for (;;) {
      const id = this.nextId;
      this.nextId = id >= 0xffffffff ? 1 : id + 1;
      if (!this.origins.has(id)) return id;
    }
  }

  private onFrame(buf: Buffer): void {
    const f = decodeLink(buf);
    if ('error' in f) {
      this.log.warn({ reason: f.error }, 'ignored a bad frame from another relay instance');
      return;
    }
    if (f.origin === this.instance) this.toOrigin(f);
    else this.toOwner(f);
  }

  /** A frame from a holder's instance about a stream whose facade is here. */
  private toOrigin(f: LinkFrame): void {
    const o = this.origins.get(f.stream);
    if (!o) return;
    switch (f.kind) {
      case LinkKind.Accept:
        o.accepted();
        break;
      case LinkKind.Refuse: {
        const r = parseRefusal(f.body);
        if (r) o.refuse(r.code, r.reason, r.metric);
        else o.refuse(CloseCode.HolderNotConnected, 'holder not connected');
        break;
      }
      case LinkKind.Data:
        o.fromOwner(f.body);
        break;
      case LinkKind.Credit: {
        const n = parseCredit(f.body);
        if (n !== undefined) o.credited(n);
        break;
      }
      case LinkKind.Close: {
        const c = parseClose(f.body) ?? { code: CloseCode.HolderNotConnected, reason: 'closed' };
        o.closedByOwner(c.code, c.reason);
        break;
      }
    }
  }

  /** A frame from a facade's instance about a stream whose holder is here. */
  private toOwner(f: LinkFrame): void {
    const key = `${f.origin}/${f.stream}`;
    if (f.kind === LinkKind.Open) {
      this.openOwned(f, key);
      return;
    }
    const entry = this.owned.get(key);
    if (!entry) {
      if (f.kind === LinkKind.Data) {
        const body = closeBody(CloseCode.HolderNotConnected, 'holder went away');
        this.send(f.origin, LinkKind.Close, f.stream, f.origin, body);
      }
      return;
    }
    if (f.kind === LinkKind.Data) {
      this.router.fromFacade(entry.stream, f.body);
      entry.facade.taken(f.body.length);
    } else if (f.kind === LinkKind.Credit) {
      const n = parseCredit(f.body);
      if (n !== undefined) entry.facade.credited(n);
    } else if (f.kind === LinkKind.Close) {
      const reason = parseClose(f.body)?.reason || 'facade closed';
      this.router.endStream(entry.stream, { reason });
    }
  }

  private openOwned(f: LinkFrame, key: string): void {
    const open = parseOpen(f.body);
    const refuse = (r: LinkRefusal) =>
      this.send(f.origin, LinkKind.Refuse, f.stream, f.origin, refusalBody(r));
    if (!open || this.owned.has(key)) {
      refuse(refusal(CloseCode.TokenInvalid, 'bad open frame', 'token_invalid'));
      return;
    }
    const holder = this.admit(open);
    if (!('ws' in holder)) {
      refuse(holder);
      return;
    }
    const facade = new RemoteFacade(this, f.origin, f.stream, () => this.owned.delete(key));
    const log = holder.log.child({ tid: open.tid, origin: f.origin });
    const stream = this.router.open(holder, facade, open.tid, log, {
      token: open.token,
      peer: open.peer,
    });
    this.owned.set(key, { stream, facade });
    this.carried.inc({ side: 'owner' });
  }

  private *peers(): Iterable<string> {
    for (const o of this.origins.values()) if (o.owner !== undefined) yield o.owner;
    for (const { facade } of this.owned.values()) yield facade.origin;
  }

  private peersGone(ids: string[]): void {
    const gone = new Set(ids);
    for (const o of [...this.origins.values()]) {
      if (o.owner !== undefined && gone.has(o.owner)) {
        o.refuse(CloseCode.HolderNotConnected, "the holder's relay instance went away");
      }
    }
    for (const { stream, facade } of [...this.owned.values()]) {
      if (gone.has(facade.origin)) {
        this.router.endStream(stream, { reason: "the facade's relay instance went away" });
      }
    }
  }

  private endAll(reason: string): void {
    for (const o of [...this.origins.values()]) o.refuse(CloseCode.HolderNotConnected, reason);
    for (const { stream } of [...this.owned.values()]) {
      this.router.endStream(stream, { facadeCode: CloseCode.HolderNotConnected, reason });
    }
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.endAll('relay shutting down');
    await this.link.close();
  }
}
