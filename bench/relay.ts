// PKSIGN through the relay path — Assuan client → `keytether connect` → relay → holder
// (`keytether agent --relay`) — against the real gpg-agent's local socket, both with 16
// concurrent clients each looping SIGKEY + SETHASH + PKSIGN (Ed25519, unprotected key).
// The relay runs in this process with its per-token rate limit raised so it does not cap the
// figure. Then: the RSS of a relay (own process) holding 1,000 idle authenticated holders.
// BENCH_SECONDS (default 5) per measurement; BENCH_IDLE_HOLDERS (default 1000).

import { existsSync, readFileSync, rmSync } from 'node:fs';
import { chmod, mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { generateKeyPairSync, randomBytes, sign } from 'node:crypto';
import path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import WebSocket from 'ws';
import type { FastifyInstance } from 'fastify';
import type { AssuanClient } from '../protocol/assuan/index.js';
import { relayAuthMessage } from '../protocol/relay/identity.js';
import { buildRelay, listenRelay, shutdownRelay } from '../server/relay/index.js';
import {
  exportAllSecretKeys,
  generateUnprotectedKey,
  makeBenchGnupg,
  type BenchGnupg,
} from './support/gnupg-home.js';
import { runTool, startDaemon, type Daemon } from './support/processes.js';
import { connectAgent, signOnce } from './support/sign-loop.js';

const here = path.dirname(fileURLToPath(import.meta.url));
const CLIENTS = 16;

function envNumber(name: string, fallback: number, min: number): number {
  const raw = process.env[name];
  if (raw === undefined || raw === '') return fallback;
  const n = Number(raw);
  if (!Number.isFinite(n) || n < min) throw new Error(`${name} must be a number ≥ ${min}`);
  return n;
}

function cliPath(): string {
  const candidates = [
    process.env.KEYTETHER_BENCH_CLI,
    path.join(here, '..', 'cli', 'main.js'),
    path.join(here, '..', 'dist', 'cli', 'main.js'),
  ];
  const found = candidates.find((p): p is string => p !== undefined && existsSync(p));
  if (!found) throw new Error('no built CLI found; run `npm run build` first');
  return found;
}

function percentile(sorted: number[], p: number): number {
  if (sorted.length === 0) return NaN;
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))]!;
}

interface Measured {
  ops: number;
  seconds: number;
  /** Per-op latency in ms, sorted. */
  lat: number[];
}

async function measure(clients: AssuanClient[], grip: string, seconds: number): Promise<Measured> {
  const start = performance.now();
  const end = start + seconds * 1000;
  const lat: number[] = [];
  await Promise.all(
    clients.map(async (c) => {
      while (performance.now() < end) {
        const t0 = performance.now();
        await signOnce(c, grip);
        lat.push(performance.now() - t0);
      }
    }),
  );
  lat.sort((a, b) => a - b);
  return { ops: lat.length, seconds: (performance.now() - start) / 1000, lat };
}

function report(label: string, m: Measured): number {
  const rate = m.ops / m.seconds;
  console.log(
    `${label.padEnd(22)} ${rate.toFixed(0).padStart(7)} ops/s  p50 ${percentile(m.lat, 50).toFixed(2)} ms  p99 ${percentile(m.lat, 99).toFixed(2)} ms  (${m.ops} ops in ${m.seconds.toFixed(1)} s)`,
  );
  return rate;
}

async function openClients(
  socket: string,
  n: number,
  into: AssuanClient[],
): Promise<AssuanClient[]> {
  const out: AssuanClient[] = [];
  for (let i = 0; i < n; i++) {
    const c = await connectAgent(socket);
    into.push(c);
    out.push(c);
  }
  return out;
}

function rssKiB(pid: number): number | undefined {
  try {
    const m = /^VmRSS:\s+(\d+) kB$/m.exec(readFileSync(`/proc/${pid}/status`, 'latin1'));
    return m ? Number(m[1]) : undefined;
  } catch {
    return undefined;
  }
}

/** One holder that authenticates with a fresh identity and then stays idle. */
function idleHolder(base: string): Promise<WebSocket> {
  const { privateKey, publicKey } = generateKeyPairSync('ed25519');
  const hpk = publicKey.export({ format: 'jwk' }).x!;
  const ws = new WebSocket(base.replace(/^http/, 'ws') + '/v1/holder', {
    perMessageDeflate: false,
  });
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      ws.terminate();
      reject(new Error('idle holder: no ok from the relay within 30 s'));
    }, 30_000);
    ws.on('error', (e) => {
      clearTimeout(timer);
      reject(e);
    });
    ws.on('close', (code) => {
      clearTimeout(timer);
      reject(new Error(`idle holder: relay closed the connection (${code})`));
    });
    ws.on('message', (data, isBinary) => {
      if (isBinary) return;
      const msg = JSON.parse(String(data)) as { type?: string; nonce?: string };
      if (msg.type === 'challenge' && typeof msg.nonce === 'string') {
        const sig = sign(null, relayAuthMessage(msg.nonce), privateKey);
        ws.send(JSON.stringify({ type: 'auth', hpk, sig: sig.toString('base64url') }));
      } else if (msg.type === 'ok') {
        clearTimeout(timer);
        ws.removeAllListeners('close');
        ws.on('error', () => {});
        resolve(ws);
      }
    });
  });
}

async function idleHoldersRss(count: number): Promise<void> {
  const script = path.join(here, 'support', 'relay-process.js');
  if (!existsSync(script)) {
    console.log(`relay RSS: skipped (${script} not built)`);
    return;
  }
  const limits = { maxConnectionsPerAddress: count + 100 };
  const relay = await startDaemon(
    process.execPath,
    [script, JSON.stringify(limits)],
    process.env,
    'listening: ',
  );
  const sockets: WebSocket[] = [];
  try {
    const url = relay.readyText.trim();
    const pid = relay.child.pid!;
    const before = rssKiB(pid);
    const BATCH = 50;
    for (let i = 0; i < count; i += BATCH) {
      const n = Math.min(BATCH, count - i);
      sockets.push(...(await Promise.all(Array.from({ length: n }, () => idleHolder(url)))));
    }
    // Let the relay settle after the connection burst before reading its RSS.
    await new Promise<void>((r) => setTimeout(r, 1000));
    const after = rssKiB(pid);
    if (before === undefined || after === undefined) {
      console.log('relay RSS: /proc not available');
      return;
    }
    console.log(
      `relay RSS (own process): ${(before / 1024).toFixed(1)} MiB idle, ` +
        `${(after / 1024).toFixed(1)} MiB with ${sockets.length} authenticated idle holders ` +
        `(+${((after - before) / sockets.length).toFixed(1)} KiB per holder)`,
    );
  } finally {
    for (const s of sockets) s.terminate();
    await relay.stop();
  }
}

export async function run(): Promise<void> {
  const seconds = envNumber('BENCH_SECONDS', 5, 0.1);
  const idleCount = Math.round(envNumber('BENCH_IDLE_HOLDERS', 1000, 0));
  const cli = cliPath();
  const root = await mkdtemp('/tmp/ktr-');
  await chmod(root, 0o700);
  let gnupg: BenchGnupg | undefined;
  let relay: FastifyInstance | undefined;
  const daemons: Daemon[] = [];
  const clients: AssuanClient[] = [];
  const onSignal = () => process.exit(130);
  const onExit = () => {
    for (const d of daemons) d.child.kill('SIGKILL');
    rmSync(root, { recursive: true, force: true });
  };
  process.once('SIGINT', onSignal);
  process.once('exit', onExit);
  try {
    gnupg = await makeBenchGnupg(path.join(root, 'g'));
    const key = await generateUnprotectedKey(gnupg, 'Bench Relay <relay@bench>', 'ed25519');
    const secret = await exportAllSecretKeys(gnupg);

    const home = path.join(root, 'kt');
    await mkdir(home, { mode: 0o700 });
    const env = { ...process.env, KEYTETHER_HOME: home };
    const keyFile = path.join(root, 'secret.gpg');
    await writeFile(keyFile, secret, { mode: 0o600 });
    secret.fill(0);
    try {
      const imp = await runTool(process.execPath, [cli, 'keys', 'import', keyFile], env);
      if (imp.code !== 0) throw new Error(`keytether keys import failed: ${imp.stderr}`);
    } finally {
      await rm(keyFile, { force: true });
    }

    relay = buildRelay({
      logger: false,
      limits: { tokenRatePerSecond: 1e6, tokenBurst: 1e6 },
    });
    const url = await listenRelay(relay, '127.0.0.1', 0);

    const holder = await startDaemon(
      process.execPath,
      [cli, 'agent', '--socket', path.join(root, 'S.local'), '--relay', url],
      env,
      'ready: ',
    );
    daemons.push(holder);
    // The holder says `ready:` before it may have logged in to the relay; wait for the login.
    await new Promise<void>((resolve, reject) => {
      let err = '';
      const timer = setTimeout(() => reject(new Error(`holder never connected: ${err}`)), 30_000);
      const onData = (d: Buffer) => {
        err += d.toString('utf8');
        if (/^relay connected: /m.test(err)) {
          clearTimeout(timer);
          holder.child.stderr!.removeListener('data', onData);
          holder.child.stderr!.resume();
          resolve();
        }
      };
      holder.child.stderr!.on('data', onData);
    });

    const tok = await runTool(
      process.execPath,
      [cli, 'token', 'create', '--key', key.fingerprint, '--relay', url],
      env,
    );
    if (tok.code !== 0) throw new Error(`keytether token create failed: ${tok.stderr}`);
    const token = tok.stdout.toString('utf8').trim();

    const connectSocket = path.join(root, 'S.connect');
    const facadeEnv: NodeJS.ProcessEnv = {
      ...process.env,
      KEYTETHER_HOME: path.join(root, 'facade-home'),
    };
    delete facadeEnv.KEYTETHER_TOKEN;
    const facade = await startDaemon(
      process.execPath,
      [cli, 'connect', '--relay', url, '--token', token, '--socket', connectSocket],
      facadeEnv,
      'ready: ',
    );
    daemons.push(facade);

    const sockets = {
      'gpg-agent': await gnupg.agentSocket(),
      'keytether relay': facade.readyText.trim(),
    };

    // Same key both ways: Ed25519 is deterministic, so the same digest must give the same bytes.
    const digest = randomBytes(32);
    const sigs: Buffer[] = [];
    for (const s of Object.values(sockets)) {
      const c = await connectAgent(s);
      clients.push(c);
      sigs.push(await signOnce(c, key.keygrip, digest));
      c.close();
    }
    if (!sigs[0]!.equals(sigs[1]!)) {
      throw new Error('the relay path and gpg-agent gave different signatures for one digest');
    }

    console.log(
      `Ed25519 PKSIGN (SIGKEY + SETHASH + PKSIGN per op), ${CLIENTS} concurrent clients, ` +
        `${seconds} s each, all on 127.0.0.1; latency is one whole op`,
    );
    const rates: Record<string, number> = {};
    for (const [label, sock] of Object.entries(sockets)) {
      const conns = await openClients(sock, CLIENTS, clients);
      await measure(conns, key.keygrip, Math.min(1, seconds)); // warm-up
      rates[label] = report(label, await measure(conns, key.keygrip, seconds));
      for (const c of conns) c.close();
    }
    const ratio = rates['keytether relay']! / rates['gpg-agent']!;
    console.log(`ratio relay path / local gpg-agent: ${ratio.toFixed(2)}x`);

    if (idleCount > 0) await idleHoldersRss(idleCount);
  } finally {
    for (const c of clients) c.close();
    process.removeListener('SIGINT', onSignal);
    try {
      for (const d of daemons.reverse()) await d.stop();
      if (relay) await shutdownRelay(relay, 0);
    } finally {
      process.removeListener('exit', onExit);
      try {
        await gnupg?.cleanup();
      } finally {
        await rm(root, { recursive: true, force: true });
      }
    }
  }
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  await run();
}
