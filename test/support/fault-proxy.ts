// A TCP proxy on 127.0.0.1 that makes a link misbehave on demand, for the link-fault tests (tc
// netem is not available here): added latency, a bandwidth limit, a blackhole that holds every
// byte as a dropped route does (TCP delivers it all once the route is back), and a reset that
// ends every connection with an RST as a rebooted middlebox would.

import net from 'node:net';

export type ProxyMode =
  | { kind: 'pass' }
  | { kind: 'latency'; ms: number }
  | { kind: 'bandwidth'; bytesPerSecond: number }
  | { kind: 'blackhole' };

export interface FaultProxy {
  port: number;
  /** How many connections were accepted so far. */
  readonly accepted: number;
  set(mode: ProxyMode): void;
  /** Resolves once a blackhole holds at least one chunk (something was sent into it). */
  holding(): Promise<void>;
  /** RSTs every open connection (both sides); new ones are accepted as before. */
  reset(): void;
  close(): Promise<void>;
}

interface Pipe {
  down: net.Socket;
  up: net.Socket;
}

export async function startFaultProxy(target: {
  host?: string;
  port: number;
}): Promise<FaultProxy> {
  let mode: ProxyMode = { kind: 'pass' };
  let accepted = 0;
  const pipes = new Set<Pipe>();
  /** Wakes senders held by a blackhole. */
  let released: (() => void)[] = [];
  let onHold: (() => void)[] = [];

  const forward = (from: net.Socket, to: net.Socket) => {
    // One chunk at a time, in order: each waits for the mode's delay before the next is read.
    let chain = Promise.resolve();
    from.on('data', (chunk: Buffer) => {
      from.pause();
      chain = chain.then(async () => {
        for (;;) {
          const m = mode;
          if (m.kind === 'blackhole') {
            for (const f of onHold.splice(0)) f();
            await new Promise<void>((r) => released.push(r));
            continue;
          }
          if (m.kind === 'latency') await delay(m.ms);
          if (m.kind === 'bandwidth') await delay((chunk.length / m.bytesPerSecond) * 1000);
          break;
        }
        if (!to.destroyed) to.write(chunk);
        if (!from.destroyed) from.resume();
      });
    });
    from.on('end', () => void chain.then(() => to.end()));
  };

  const server = net.createServer((down) => {
    accepted++;
    const up = net.connect(target.port, target.host ?? '127.0.0.1');
    const pipe = { down, up };
    pipes.add(pipe);
    const drop = () => {
      pipes.delete(pipe);
      down.destroy();
      up.destroy();
    };
    down.on('error', drop);
    up.on('error', drop);
    down.on('close', drop);
    up.on('close', drop);
    forward(down, up);
    forward(up, down);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const port = (server.address() as net.AddressInfo).port;

  const proxy: FaultProxy = {
    port,
    get accepted() {
      return accepted;
    },
    holding() {
      if (released.length > 0) return Promise.resolve();
      return new Promise<void>((r) => onHold.push(r));
    },
    set(m) {
      mode = m;
      if (m.kind !== 'blackhole') {
        const wake = released;
        released = [];
        for (const r of wake) r();
      }
    },
    reset() {
      for (const p of [...pipes]) {
        pipes.delete(p);
        p.down.resetAndDestroy();
        p.up.resetAndDestroy();
      }
    },
    async close() {
      proxy.set({ kind: 'pass' });
      proxy.reset();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
  return proxy;
}

function delay(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}
