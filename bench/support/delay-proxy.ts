// An emulated slow link for benches: a TCP proxy on 127.0.0.1 that holds every chunk for a fixed
// time in each direction before passing it on, so a round trip through it costs 2 × delay on top
// of the real one. Chunks leave in the order they arrived; one timer per direction serves a
// queue (the delay is constant, so the queue is already sorted by due time).

import net from 'node:net';

export interface DelayProxy {
  port: number;
  close(): Promise<void>;
}

type Item = { due: number; chunk: Buffer | null };

/** Forwards `from` to `to`, each chunk (and the end) `delayMs` later than it arrived. */
function delayedPipe(from: net.Socket, to: net.Socket, delayMs: number): void {
  const queue: Item[] = [];
  let timer: NodeJS.Timeout | undefined;
  const flush = (): void => {
    timer = undefined;
    const now = performance.now();
    while (queue.length > 0 && queue[0]!.due <= now) {
      const { chunk } = queue.shift()!;
      if (chunk === null) to.end();
      else if (!to.destroyed) to.write(chunk);
    }
    arm();
  };
  const arm = (): void => {
    if (timer !== undefined || queue.length === 0) return;
    timer = setTimeout(flush, Math.max(0, queue[0]!.due - performance.now()));
  };
  const push = (chunk: Buffer | null): void => {
    queue.push({ due: performance.now() + delayMs, chunk });
    arm();
  };
  from.on('data', (d: Buffer) => push(d));
  from.on('end', () => push(null));
  from.on('close', () => {
    // A reset (not an orderly end) on one side resets the other once what was in flight is out.
    if (from.readableEnded) return;
    queue.length = 0;
    if (timer !== undefined) clearTimeout(timer);
    to.destroy();
  });
}

/** Listens on 127.0.0.1 (a free port) and forwards to `targetPort` there. */
export function startDelayProxy(targetPort: number, oneWayDelayMs: number): Promise<DelayProxy> {
  const sockets = new Set<net.Socket>();
  const server = net.createServer({ noDelay: true, allowHalfOpen: true }, (client) => {
    const upstream = net.connect({
      host: '127.0.0.1',
      port: targetPort,
      noDelay: true,
      // Each direction ends on its own, after what is still in flight on it.
      allowHalfOpen: true,
    });
    for (const s of [client, upstream]) {
      sockets.add(s);
      s.on('error', () => s.destroy());
      s.on('close', () => sockets.delete(s));
    }
    delayedPipe(client, upstream, oneWayDelayMs);
    delayedPipe(upstream, client, oneWayDelayMs);
  });
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const addr = server.address();
      if (addr === null || typeof addr === 'string') {
        reject(new Error('the delay proxy has no TCP address'));
        return;
      }
      resolve({
        port: addr.port,
        close: () =>
          new Promise<void>((done) => {
            for (const s of sockets) s.destroy();
            server.close(() => done());
          }),
      });
    });
  });
}
