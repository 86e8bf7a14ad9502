// The origin's side of a cross-instance stream: a facade connected to this instance whose holder
// is connected to another (its owner). This side is a pipe: the facade's bytes go to the owner,
// whose StreamRouter applies the relay's rules; the owner's bytes go to the facade.
//
// At most WINDOW bytes sent to the owner wait for its credit; beyond that the facade is not read
// (TCP then holds back its sender), so nothing queues without bound in Redis or here.

import type { FastifyBaseLogger } from 'fastify';
import type { WebSocket } from 'ws';
import { CloseCode, isOpen, wsReason } from '../wire.js';
import {
  CLOSE_NONE,
  CLOSE_TERMINATE,
  CREDIT_BATCH_BYTES,
  LinkKind,
  closeBody,
  creditBody,
} from './frames.js';
import type { LinkSender } from './remote-facade.js';

/** Bytes a facade may have on the way to the owner before it is no longer read. */
export const WINDOW_BYTES = 1024 * 1024;

export interface OriginHooks {
  /** The owner accepted: tell the facade, as a local stream does. */
  accepted(): void;
  /** The stream cannot be opened: close the facade with CODE, counted as METRIC. */
  refused(code: number, reason: string, metric: string): void;
  /** The stream is over, whichever way. */
  ended(): void;
}

export class OriginStream {
  owner: string | undefined;
  ended = false;
  private opened = false;
  private inflight = 0;
  private paused = false;
  private openTimer: NodeJS.Timeout | undefined;
  /** Bytes of the owner's that the facade's socket has taken, not yet credited back. */
  private owed = 0;

  constructor(
    private readonly link: LinkSender,
    readonly self: string,
    readonly id: number,
    private readonly ws: WebSocket,
    readonly log: FastifyBaseLogger,
    private readonly hooks: OriginHooks,
  ) {}

  /** The open frame has gone to OWNER; it must answer within MS. */
  opening(owner: string, ms: number): void {
    this.owner = owner;
    this.openTimer = setTimeout(
      () => this.refuse(CloseCode.HolderNotConnected, "the holder's relay instance did not answer"),
      ms,
    );
    this.openTimer.unref();
  }

  refuse(code: number, reason: string, metric = 'holder_not_connected'): void {
    if (this.ended) return;
    // Even before an answer: an open frame the owner has yet to see is ended right after it.
    this.toOwner(LinkKind.Close, closeBody(CLOSE_NONE, reason));
    this.finish();
    if (this.opened) {
      if (isOpen(this.ws)) this.ws.close(code, wsReason(reason));
    } else {
      this.hooks.refused(code, reason, metric);
    }
  }

  accepted(): void {
    if (this.ended || this.opened) return;
    clearTimeout(this.openTimer);
    this.opened = true;
    this.hooks.accepted();
  }

  /** A binary message from the facade. */
  fromFacade(data: Buffer): void {
    if (this.ended || !this.opened) return;
    this.toOwner(LinkKind.Data, data);
    this.inflight += data.length;
    if (this.inflight >= WINDOW_BYTES && !this.paused) {
      this.paused = true;
      this.ws.pause();
      this.log.debug('facade paused: the holder instance has not taken what it was sent');
    }
  }

  credited(bytes: number): void {
    this.inflight = Math.max(0, this.inflight - bytes);
    if (this.paused && this.inflight < WINDOW_BYTES && !this.ended) {
      this.paused = false;
      this.ws.resume();
    }
  }

  /** Data from the holder, through the owner; credited once the facade's socket has it. */
  fromOwner(data: Buffer): void {
    if (this.ended || !isOpen(this.ws)) return;
    this.ws.send(data, { binary: true }, (err) => {
      if (err || this.ended) return;
      this.owed += data.length;
      if (this.owed < CREDIT_BATCH_BYTES) return;
      this.toOwner(LinkKind.Credit, creditBody(this.owed));
      this.owed = 0;
    });
  }

  /** The owner ended the stream. */
  closedByOwner(code: number, reason: string): void {
    if (this.ended) return;
    this.finish();
    if (code === CLOSE_TERMINATE) this.ws.terminate();
    else if (isOpen(this.ws)) this.ws.close(code === CLOSE_NONE ? 1000 : code, wsReason(reason));
  }

  /** The facade's socket closed. */
  facadeClosed(reason: string): void {
    if (this.ended) return;
    // An open frame may be on its way: the owner learns of the close after it, in order.
    this.toOwner(LinkKind.Close, closeBody(CLOSE_NONE, reason));
    this.finish();
  }

  private finish(): void {
    this.ended = true;
    clearTimeout(this.openTimer);
    this.hooks.ended();
  }

  private toOwner(kind: LinkKind, body: Uint8Array): void {
    if (this.owner !== undefined) this.link.send(this.owner, kind, this.id, this.self, body);
  }
}
