// Ed25519 PKSIGN/s through keytether's gpg-agent back end against the same gpg-agent used
// directly. Three paths, measured alternately (A B C A B C …), each reporting its median:
//   direct    — on gpg-agent's extra socket, what gpg 2.2.40 sends per signature (see
//               shared/reference/gpg-agent-transcripts.md): RESET, SIGKEY, SETKEYDESC, SETHASH,
//               PKSIGN, one round trip each (what plain socket forwarding costs)
//   back end  — Holder.sign in-process: policy, audit, then the back end's one pipelined write
//   socket    — the same gpg-like client on keytether's local socket, served by that holder
// The key is unprotected, so the figures are protocol + key handling + signing.
// BENCH_SECONDS (default 3) per measurement, BENCH_ROUNDS (default 3) measurements per path.

import net from 'node:net';
import path from 'node:path';
import { mkdtemp, rm } from 'node:fs/promises';
import { randomBytes } from 'node:crypto';
import { pathToFileURL } from 'node:url';
import { serveAgent } from '../protocol/agent/index.js';
import { DEFAULT_CONFIG, type Config } from '../workstation/home/config.js';
import { openHolderRuntime } from '../workstation/holder/runtime.js';
import { generateUnprotectedKey, makeBenchGnupg } from './support/gnupg-home.js';
import { connectAgent } from './support/sign-loop.js';
import type { AssuanClient } from '../protocol/assuan/index.js';
import { envNumber, median } from './support/settings.js';

/** SETKEYDESC as gpg 2.2.40 words it for an Ed25519 key (same length, plus-percent escaped). */
const GPG_KEYDESC =
  'Please+enter+the+passphrase+to+unlock+the+OpenPGP+secret+key:%0A%22Bench+<bench@example.org>%22%0A255-bit+EDDSA+key,+ID+8520281264748C9A,%0Acreated+2026-11-27.%0A';

/** One signature exactly as gpg asks for it: five commands, each waiting for its reply. */
async function gpgLikeSign(client: AssuanClient, keygrip: string): Promise<void> {
  await client.transact('RESET');
  await client.transact(`SIGKEY ${keygrip}`);
  await client.transact(`SETKEYDESC ${GPG_KEYDESC}`);
  await client.transact(`SETHASH 8 ${randomBytes(32).toString('hex').toUpperCase()}`);
  const r = await client.transact('PKSIGN', { timeoutMs: 30_000 });
  if (!r.data.subarray(0, 12).toString('latin1').startsWith('(7:sig-val(')) {
    throw new Error('PKSIGN answered something other than a sig-val');
  }
}

async function timed(seconds: number, op: () => Promise<unknown>) {
  const start = process.hrtime.bigint();
  const end = start + BigInt(Math.round(seconds * 1e9));
  let ops = 0;
  while (process.hrtime.bigint() < end) {
    await op();
    ops++;
  }
  return { ops, seconds: Number(process.hrtime.bigint() - start) / 1e9 };
}

export async function run(): Promise<void> {
  const seconds = envNumber('BENCH_SECONDS', 3, 0.1);
  const rounds = envNumber('BENCH_ROUNDS', 3, 1);
  const dir = await mkdtemp('/tmp/ktbga-');
  const g = await makeBenchGnupg(path.join(dir, 'g'));
  try {
    const key = await generateUnprotectedKey(g, 'Bench <bench@example.org>', 'ed25519');
    await g.agentSocket();
    const config: Config = { ...DEFAULT_CONFIG, relay: [], policy: [], backend: 'gpg-agent' };
    const rt = await openHolderRuntime(path.join(dir, 'home'), config, { gnupgHome: g.home });
    const sock = path.join(dir, 'S.kt');
    const server = net.createServer((s) => {
      s.on('error', () => s.destroy());
      void serveAgent(s, { holder: rt.holder, requester: { front: 'local' } });
    });
    await new Promise<void>((resolve) => server.listen(sock, resolve));
    try {
      const direct = await connectAgent(rt.gpgAgent!.dirs.extraSocket);
      const viaSocket = await connectAgent(sock);
      await rt.holder.inventory();
      const description = decodeURIComponent(GPG_KEYDESC.replace(/\+/g, ' '));
      const paths = {
        direct: () => timed(seconds, () => gpgLikeSign(direct, key.keygrip)),
        'back end': () =>
          timed(seconds, () =>
            rt.holder.sign({
              keygrip: key.keygrip,
              hashAlgo: 8,
              digest: randomBytes(32),
              description,
              requester: { front: 'local' },
            }),
          ),
        socket: () => timed(seconds, () => gpgLikeSign(viaSocket, key.keygrip)),
      };
      const results: Record<string, number[]> = { direct: [], 'back end': [], socket: [] };
      for (let r = 0; r < rounds; r++) {
        for (const [name, loop] of Object.entries(paths)) {
          const { ops, seconds: s } = await loop();
          results[name]!.push(ops / s);
        }
      }
      direct.close();
      viaSocket.close();
      const base = median(results.direct!);
      process.stdout.write(
        `gpg-agent back end, Ed25519 PKSIGN/s (median of ${rounds} x ${seconds} s); direct and ` +
          `socket send what gpg 2.2.40 sends per signature (RESET, SIGKEY, SETKEYDESC, SETHASH, ` +
          `PKSIGN, one round trip each); goal: overhead <= 10%\n`,
      );
      for (const [name, xs] of Object.entries(results)) {
        const m = median(xs);
        const all = xs.map((x) => x.toFixed(0)).join(' ');
        const ratio =
          name === 'direct'
            ? ''
            : `  ratio ${(m / base).toFixed(3)}  overhead ${((base / m - 1) * 100).toFixed(1)}%`;
        process.stdout.write(
          `  ${name.padEnd(9)} ${m.toFixed(0).padStart(6)}/s${ratio}  (runs: ${all})\n`,
        );
      }
    } finally {
      await new Promise<void>((resolve) => server.close(() => resolve()));
      await rt.close();
    }
  } finally {
    await g.cleanup();
    await rm(dir, { recursive: true, force: true });
  }
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? '').href) {
  run().catch((e: unknown) => {
    process.stderr.write(`${(e as Error).stack ?? String(e)}\n`);
    process.exit(1);
  });
}
