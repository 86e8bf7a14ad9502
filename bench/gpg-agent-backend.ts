// Ed25519 PKSIGN/s through keytether's gpg-agent back end against the same gpg-agent used
// directly. Three paths, measured alternately (A B C A B C …), each reporting its median:
//   direct    — SIGKEY/SETHASH/PKSIGN on gpg-agent's extra socket (what plain forwarding does)
//   back end  — Holder.sign in-process: policy, audit, RESET/SIGKEY/SETKEYDESC/SETHASH/PKSIGN
//   socket    — a client on keytether's local socket, served by that holder (the full local path)
// The key is unprotected, so the figures are protocol + key handling + signing.
// BENCH_SECONDS (default 3) per measurement, BENCH_ROUNDS (default 3) measurements per path.

import net from 'node:net';
import path from 'node:path';
import { mkdtemp, rm } from 'node:fs/promises';
import { randomBytes } from 'node:crypto';
import { pathToFileURL } from 'node:url';
import { serveAgent } from '../protocol/agent/index.js';
import { DEFAULT_CONFIG, type Config } from '../workstation/config.js';
import { openHolderRuntime } from '../workstation/runtime.js';
import { generateUnprotectedKey, makeBenchGnupg } from './support/gnupg-home.js';
import { connectAgent, signLoop } from './support/sign-loop.js';

function envNumber(name: string, fallback: number): number {
  const n = Number(process.env[name] ?? '');
  return process.env[name] && Number.isFinite(n) && n > 0 ? n : fallback;
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)]!;
}

export async function run(): Promise<void> {
  const seconds = envNumber('BENCH_SECONDS', 3);
  const rounds = envNumber('BENCH_ROUNDS', 3);
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
      const holderLoop = async () => {
        const start = process.hrtime.bigint();
        const end = start + BigInt(Math.round(seconds * 1e9));
        let ops = 0;
        while (process.hrtime.bigint() < end) {
          await rt.holder.sign({
            keygrip: key.keygrip,
            hashAlgo: 8,
            digest: randomBytes(32),
            requester: { front: 'local' },
          });
          ops++;
        }
        return { ops, seconds: Number(process.hrtime.bigint() - start) / 1e9 };
      };
      const paths = {
        direct: () => signLoop([direct], key.keygrip, seconds),
        'back end': holderLoop,
        socket: () => signLoop([viaSocket], key.keygrip, seconds),
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
      process.stdout.write(`gpg-agent back end, Ed25519 PKSIGN/s (median of ${rounds}):\n`);
      for (const [name, xs] of Object.entries(results)) {
        const m = median(xs);
        const overhead =
          name === 'direct' ? '' : `  overhead ${((base / m - 1) * 100).toFixed(1)}%`;
        process.stdout.write(`  ${name.padEnd(9)} ${m.toFixed(0).padStart(6)}/s${overhead}\n`);
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
