// Two ends of an in-memory byte stream: what one writes the other reads, end() is a half-close.
// A fuzz case needs a fresh connection per session, and a million unix sockets would measure the
// kernel instead of the session; the session code only ever sees a Duplex either way.

import { Duplex } from 'node:stream';

class End extends Duplex {
  peer!: End;
  override _read(): void {}
  override _write(chunk: Buffer, _enc: BufferEncoding, cb: (e?: Error | null) => void): void {
    if (!this.peer.destroyed) this.peer.push(chunk);
    cb();
  }
  override _final(cb: (e?: Error | null) => void): void {
    if (!this.peer.destroyed) this.peer.push(null);
    cb();
  }
  override _destroy(err: Error | null, cb: (e?: Error | null) => void): void {
    if (!this.peer.destroyed) this.peer.destroy();
    cb(err);
  }
}

export function streamPair(): [Duplex, Duplex] {
  const a = new End();
  const b = new End();
  a.peer = b;
  b.peer = a;
  return [a, b];
}
