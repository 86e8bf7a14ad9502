// What the tunnel costs per signature: Ed25519 signs/s through serveTunnel + tunnelClient over a
// real unix socket (both ends in this process, so CPU figures include both), sequential and with
// many requests in flight, against calling SimpleHolder directly. The target is that the tunnel
// adds well under 1 ms of CPU per signature.

import { randomBytes } from 'node:crypto';
import { once } from 'node:events';
import { mkdtemp, rm } from 'node:fs/promises';
import { createServer, connect, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import type { KeyHolder, SignRequest } from '../protocol/keyholder.js';
import { serveTunnel, tunnelClient } from '../protocol/tunnel/index.js';
import { SimpleHolder } from '../test/support/simple-holder.js';

const ROUND_MS = 500;
const ROUNDS = 3;

interface Figures {
  perSecond: number;
  cpuUsPerOp: number;
}

/** Best of a few rounds of `width` signing loops running for ROUND_MS each. */
async function measure(holder: KeyHolder, req: SignRequest, width: number): Promise<Figures> {
  for (let i = 0; i < 200; i++) await holder.sign(req);
  let best: Figures = { perSecond: 0, cpuUsPerOp: Infinity };
  for (let r = 0; r < ROUNDS; r++) {
    let ops = 0;
    const cpu0 = process.cpuUsage();
    const start = performance.now();
    const deadline = start + ROUND_MS;
    await Promise.all(
      Array.from({ length: width }, async () => {
        while (performance.now() < deadline) {
          await holder.sign(req);
          ops++;
        }
      }),
    );
    const elapsed = performance.now() - start;
    const cpu = process.cpuUsage(cpu0);
    const perSecond = (ops / elapsed) * 1000;
    if (perSecond > best.perSecond) {
      best = { perSecond, cpuUsPerOp: (cpu.user + cpu.system) / ops };
    }
  }
  return best;
}

export async function run(): Promise<void> {
  const dir = await mkdtemp(join(tmpdir(), 'kt-bench-'));
  const holder = new SimpleHolder();
  const req: SignRequest = {
    keygrip: holder.signKey.entry.keygrip,
    hashAlgo: 8,
    digest: randomBytes(32),
    description: 'Please enter the passphrase to unlock the OpenPGP secret key',
    requester: { front: 'ssh', host: 'bench', pid: 1, uid: 1000, command: 'gpg --sign' },
  };
  const server = createServer();
  const path = join(dir, 's');
  server.listen(path);
  await once(server, 'listening');
  const accepted = once(server, 'connection') as Promise<[Socket]>;
  const socket = connect(path);
  const [serverEnd] = await accepted;
  const frames = { out: 0, in: 0 };
  const handle = serveTunnel(holder, serverEnd, { software: 'keytether/bench' });
  const client = tunnelClient(socket, {
    software: 'keytether/bench',
    onFrame: (dir, type) => {
      if (type === 'sign') frames.out++;
      if (type === 'sign-result') frames.in++;
    },
  });
  try {
    await client.ready;
    const row = (cells: (string | number)[]) =>
      cells.map((c, i) => String(c).padStart(i === 0 ? 28 : 12)).join('');
    console.log(row(['', 'signs/s', 'CPU µs/sign', 'vs direct']));
    for (const width of [1, 32]) {
      const direct = await measure(holder, req, width);
      const before = { ...frames };
      const tunnel = await measure(client, req, width);
      console.log(
        row([
          `direct, ${width} in flight`,
          direct.perSecond.toFixed(0),
          direct.cpuUsPerOp.toFixed(1),
          '1.00',
        ]),
      );
      console.log(
        row([
          `tunnel, ${width} in flight`,
          tunnel.perSecond.toFixed(0),
          tunnel.cpuUsPerOp.toFixed(1),
          (tunnel.perSecond / direct.perSecond).toFixed(2),
        ]),
      );
      console.log(
        row([
          '  tunnel overhead',
          '',
          (tunnel.cpuUsPerOp - direct.cpuUsPerOp).toFixed(1),
          `${frames.out - before.out === frames.in - before.in ? '1:1' : 'MISMATCH'} frames`,
        ]),
      );
    }
  } finally {
    client.close('bench done');
    handle.close('bench done');
    await handle.closed;
    server.close();
    await rm(dir, { recursive: true, force: true });
  }
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  await run();
}
