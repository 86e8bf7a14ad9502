// PKSIGN the way gpg asks for a signature (SIGKEY, SETHASH, PKSIGN on one connection), timed.

import net from 'node:net';
import { randomBytes } from 'node:crypto';
import { AssuanClient } from '../../protocol/assuan/index.js';

/** libgcrypt's id for SHA-256, as gpg sends it in SETHASH. */
const SHA256 = 8;

export async function connectAgent(socketPath: string): Promise<AssuanClient> {
  const sock = net.createConnection(socketPath);
  await new Promise<void>((resolve, reject) => {
    sock.once('connect', resolve);
    sock.once('error', reject);
  });
  sock.on('error', () => sock.destroy());
  return AssuanClient.connect(sock);
}

/** One signature over `digest` (random when omitted); returns the sig-val S-expression. */
export async function signOnce(
  client: AssuanClient,
  keygrip: string,
  digest: Buffer = randomBytes(32),
): Promise<Buffer> {
  await client.transact(`SIGKEY ${keygrip}`);
  await client.transact(`SETHASH ${SHA256} ${digest.toString('hex').toUpperCase()}`);
  const r = await client.transact('PKSIGN', { timeoutMs: 30_000 });
  if (!r.data.subarray(0, 12).toString('latin1').startsWith('(7:sig-val(')) {
    throw new Error('PKSIGN answered something other than a sig-val');
  }
  return r.data;
}

export interface LoopResult {
  ops: number;
  seconds: number;
}

/**
 * Every client signs back to back, each with a fresh random digest, until `seconds` have passed;
 * the count is over all clients and the time is until the last one finished its final op.
 */
export async function signLoop(
  clients: AssuanClient[],
  keygrip: string,
  seconds: number,
): Promise<LoopResult> {
  const start = process.hrtime.bigint();
  const end = start + BigInt(Math.round(seconds * 1e9));
  let ops = 0;
  await Promise.all(
    clients.map(async (c) => {
      while (process.hrtime.bigint() < end) {
        await signOnce(c, keygrip);
        ops++;
      }
    }),
  );
  return { ops, seconds: Number(process.hrtime.bigint() - start) / 1e9 };
}
