// How much the Assuan layer costs next to the cryptography it carries: parse throughput for D
// lines (server side: an INQUIRE answer being decoded; client side: a reply being parsed), and an
// in-memory INQUIRE round trip through serveAssuan + AssuanClient, each compared with one Ed25519
// signature (~50 µs).

import { Duplex } from 'node:stream';
import { randomBytes } from 'node:crypto';
import { pathToFileURL } from 'node:url';
import { LineReader } from '../protocol/assuan/line-reader.js';
import { decodeDataLine, encodeData, parseResponseLine } from '../protocol/assuan/codec.js';
import { serveAssuan } from '../protocol/assuan/server.js';
import { AssuanClient } from '../protocol/assuan/client.js';

const SIGNATURE_US = 50;
const SIZES = [1024, 4096, 16 * 1024, 64 * 1024];
const ROUND_MS = 100;

/** Server side: what ctx.inquire does with the client's D lines up to END. */
function serverDecode(wire: Buffer): number {
  const reader = new LineReader();
  let total = 0;
  const parts: Buffer[] = [];
  for (const ev of reader.push(wire)) {
    if (ev.type !== 'line') throw new Error('unexpected event');
    const line = ev.line;
    if (line[0] === 0x44 && line[1] === 0x20) {
      const d = decodeDataLine(line.subarray(2));
      total += d.length;
      parts.push(d);
    }
  }
  return Buffer.concat(parts, total).length;
}

/** Client side: what transact does with a D…OK reply. */
function clientParse(wire: Buffer): number {
  const reader = new LineReader();
  let total = 0;
  const parts: Buffer[] = [];
  for (const ev of reader.push(wire)) {
    if (ev.type !== 'line') throw new Error('unexpected event');
    const r = parseResponseLine(ev.line);
    if (r.type === 'D') {
      total += r.data.length;
      parts.push(r.data);
    }
  }
  return Buffer.concat(parts, total).length;
}

// Best of several rounds: the figure of interest is the cost of the code, not of whatever else
// shares the CPU.
const ROUNDS = 5;

function timeIt(fn: () => void): number {
  for (let i = 0; i < 20; i++) fn();
  let best = Infinity;
  for (let r = 0; r < ROUNDS; r++) {
    let iterations = 0;
    const start = process.hrtime.bigint();
    let elapsed = 0n;
    while (elapsed < BigInt(ROUND_MS) * 1_000_000n) {
      for (let i = 0; i < 20; i++) fn();
      iterations += 20;
      elapsed = process.hrtime.bigint() - start;
    }
    best = Math.min(best, Number(elapsed) / 1000 / iterations);
  }
  return best; // µs per call
}

async function timeAsync(fn: () => Promise<void>): Promise<number> {
  for (let i = 0; i < 20; i++) await fn();
  let best = Infinity;
  for (let r = 0; r < ROUNDS; r++) {
    let iterations = 0;
    const start = process.hrtime.bigint();
    let elapsed = 0n;
    while (elapsed < BigInt(ROUND_MS) * 1_000_000n) {
      await fn();
      iterations++;
      elapsed = process.hrtime.bigint() - start;
    }
    best = Math.min(best, Number(elapsed) / 1000 / iterations);
  }
  return best;
}

/** Two in-memory Duplex ends, so the round trip measures our code rather than the kernel. */
function duplexPair(): [Duplex, Duplex] {
  const make = (): Duplex & { peer?: Duplex } => {
    const d: Duplex & { peer?: Duplex } = new Duplex({
      read() {},
      write(chunk: Buffer, _enc, cb) {
        d.peer!.push(chunk);
        cb();
      },
      final(cb) {
        d.peer!.push(null);
        cb();
      },
    });
    return d;
  };
  const a = make();
  const b = make();
  a.peer = b;
  b.peer = a;
  return [a, b];
}

function row(cols: (string | number)[]): string {
  return cols.map((c, i) => String(c).padStart(i === 0 ? 22 : 11)).join(' ');
}

export async function run(): Promise<void> {
  console.log(
    `Assuan D-line parsing (random payloads; "% sig" = share of a ${SIGNATURE_US} µs Ed25519 signature)`,
  );
  console.log(row(['path / payload', 'lines', 'µs/payload', 'MB/s', 'µs/line', '% sig']));
  for (const size of SIZES) {
    const payload = randomBytes(size);
    const dLines = encodeData(payload);
    const lines = dLines.toString('latin1').split('\n').length - 1;
    const serverWire = Buffer.concat([dLines, Buffer.from('END\n')]);
    const clientWire = Buffer.concat([dLines, Buffer.from('OK\n')]);
    if (serverDecode(serverWire) !== size || clientParse(clientWire) !== size) {
      throw new Error('round trip mismatch');
    }
    for (const [name, fn, wire] of [
      ['server inquiry decode', serverDecode, serverWire],
      ['client response parse', clientParse, clientWire],
    ] as const) {
      const us = timeIt(() => void fn(wire));
      console.log(
        row([
          `${name} ${size / 1024} KiB`,
          lines,
          us.toFixed(1),
          (size / us).toFixed(0),
          (us / lines).toFixed(2),
          `${((us / SIGNATURE_US) * 100).toFixed(0)}%`,
        ]),
      );
    }
  }

  console.log('\nINQUIRE round trip via serveAssuan + AssuanClient over an in-memory duplex');
  console.log(row(['payload', 'lines', 'µs/trip', 'MB/s', 'µs/line', '% sig']));
  const [serverEnd, clientEnd] = duplexPair();
  const session = serveAssuan(serverEnd, {
    commands: {
      ECHOLEN: async (ctx) => {
        const data = await ctx.inquire('DATA', { maxLength: 1 << 20 });
        return String(data.length);
      },
    },
  });
  const client = await AssuanClient.connect(clientEnd);
  for (const size of SIZES) {
    const payload = randomBytes(size);
    const lines = encodeData(payload).toString('latin1').split('\n').length - 1;
    const us = await timeAsync(async () => {
      const r = await client.transact('ECHOLEN', { onInquire: () => payload });
      if (r.okText !== String(size)) throw new Error('bad reply');
    });
    console.log(
      row([
        `${size / 1024} KiB`,
        lines,
        us.toFixed(1),
        (size / us).toFixed(0),
        (us / lines).toFixed(2),
        `${((us / SIGNATURE_US) * 100).toFixed(0)}%`,
      ]),
    );
  }
  client.close();
  await session;
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  await run();
}
