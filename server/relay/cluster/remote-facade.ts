// The owner's side of a cross-instance stream: a facade connected to another relay instance, as
// the StreamRouter drives it (FacadeEnd). The router's own rules then apply unchanged: the token's
// rate, the holder's backpressure, a facade that does not read losing its stream.
//
// Flow control is by credit. What this instance sent to the origin and the origin has not yet
// handed to the facade's socket is this facade's bufferedAmount (the router cuts a slow reader by
// it). Whatever the origin sends is credited back once the router took it, in batches, except
// while the router has paused the facade: the origin then runs out of window and stops reading.

import type { FacadeEnd } from '../streams.js';
import { CLOSE_TERMINATE, CREDIT_BATCH_BYTES, LinkKind, closeBody, creditBody } from './frames.js';

export interface LinkSender {
  /** Sends a frame about stream (origin, number) to INSTANCE; false when it is not listening. */
  send(instance: string, kind: LinkKind, stream: number, origin: string, body: Uint8Array): void;
}

export class RemoteFacade implements FacadeEnd {
  private closed = false;
  private unacked = 0;
  private paused = false;
  private owed = 0;

  constructor(
    private readonly link: LinkSender,
    readonly origin: string,
    readonly stream: number,
    private readonly onReleased: () => void,
  ) {}

  get open(): boolean {
    return !this.closed;
  }

  get bufferedAmount(): number {
    return this.unacked;
  }

  accepted(): void {
    this.frame(LinkKind.Accept, Buffer.alloc(0));
  }

  send(data: Buffer): void {
    this.unacked += data.length;
    this.frame(LinkKind.Data, data);
  }

  /** Data the origin's facade sent; the router takes it, then the origin gets its credit. */
  taken(bytes: number): void {
    this.owed += bytes;
    if (!this.paused && this.owed >= CREDIT_BATCH_BYTES) this.payCredit();
  }

  private payCredit(): void {
    if (this.owed > 0 && !this.closed) this.frame(LinkKind.Credit, creditBody(this.owed));
    this.owed = 0;
  }

  /** The origin handed BYTES of ours to the facade's socket. */
  credited(bytes: number): void {
    this.unacked = Math.max(0, this.unacked - bytes);
  }

  pause(): void {
    this.paused = true;
  }

  resume(): void {
    this.paused = false;
    if (this.owed >= CREDIT_BATCH_BYTES) this.payCredit();
  }

  close(code: number, reason: string): void {
    if (this.closed) return;
    this.frame(LinkKind.Close, closeBody(code, reason));
    this.closed = true;
  }

  terminate(): void {
    if (this.closed) return;
    this.frame(LinkKind.Close, closeBody(CLOSE_TERMINATE, 'facade is not reading'));
    this.closed = true;
  }

  /** The router ended the stream (whoever asked); a slow reader's terminate() may follow. */
  released(): void {
    this.onReleased();
  }

  private frame(kind: LinkKind, body: Uint8Array): void {
    if (!this.closed) this.link.send(this.origin, kind, this.stream, this.origin, body);
  }
}
