// WebSocket message counters for the bench's child processes: every `ws` socket in the process
// (the holder's or facade's relay connection) counts the messages and bytes it sends and
// receives. On SIGUSR2 the process prints `counters: {"sent":…,"sentBytes":…,"recv":…,
// "recvBytes":…}` on stdout, so the bench can take the difference over its measured window and
// tell how many relay messages, and how many bytes, one operation costs with and without the
// seal. Patching the prototype is for benches only: it sees the very sockets the library opens.

import WebSocket from 'ws';

const counts = { sent: 0, sentBytes: 0, recv: 0, recvBytes: 0 };

function size(data: unknown): number {
  if (Buffer.isBuffer(data) || data instanceof Uint8Array) return data.byteLength;
  if (data instanceof ArrayBuffer) return data.byteLength;
  if (Array.isArray(data)) return data.reduce((n: number, d) => n + size(d), 0);
  if (typeof data === 'string') return Buffer.byteLength(data);
  return 0;
}

export function installWsCounters(): void {
  const proto = WebSocket.prototype as unknown as {
    send: (data: unknown, ...rest: unknown[]) => void;
    emit: (event: string | symbol, ...args: unknown[]) => boolean;
  };
  const send = proto.send;
  proto.send = function (this: unknown, data: unknown, ...rest: unknown[]) {
    counts.sent++;
    counts.sentBytes += size(data);
    return send.call(this, data, ...rest);
  };
  const emit = proto.emit;
  proto.emit = function (this: unknown, event: string | symbol, ...args: unknown[]) {
    if (event === 'message') {
      counts.recv++;
      counts.recvBytes += size(args[0]);
    }
    return emit.call(this, event, ...args);
  };
  process.on('SIGUSR2', () => process.stdout.write(`counters: ${JSON.stringify(counts)}\n`));
}

export type WsCounts = typeof counts;
