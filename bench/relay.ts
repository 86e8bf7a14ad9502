// PKSIGN through the relay path — Assuan client → facade → relay → holder — against the real
// gpg-agent's local socket, all with 16 concurrent clients each looping SIGKEY + SETHASH +
// PKSIGN (Ed25519, unprotected key, builtin back end). The relay runs in this process with its
// per-token rate limit raised so it does not cap the figure. Measured in one run:
//   - gpg-agent: the local socket of the real gpg-agent;
//   - relay, CLI processes: `keytether connect` and `keytether agent --relay` (sealed);
//   - relay in-process, sealed / unsealed: facade and holder in this process, built from the same
//     library calls as the CLI, once with the sealed channel and once without (issue #6: sealing
//     should cost at most 10% throughput). The unsealed holder exists only here: it is a symbol
//     option of startRelayClient that no flag, config or environment variable can set.
// Then: the RSS of a relay (own process) holding 1,000 idle authenticated holders.
// BENCH_SECONDS (default 5) per measurement; BENCH_IDLE_HOLDERS (default 1000).

import { existsSync, readFileSync, rmSync } from 'node:fs';
import { chmod, mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { generateKeyPairSync, randomBytes, sign } from 'node:crypto';
import path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import WebSocket from 'ws';
import type { FastifyInstance } from 'fastify';
import type { AssuanClient } from '../protocol/assuan/index.js';
import { relayEndpoint } from '../protocol/relay/endpoint.js';
import { relayAuthMessage } from '../protocol/relay/identity.js';
import { parseToken } from '../protocol/token.js';
import { tunnelClient } from '../protocol/tunnel/index.js';
import { openFacadeSocket, RelayHolder } from '../server/connect.js';
import { startFacade } from '../server/facade.js';
import { buildRelay, listenRelay, shutdownRelay } from '../server/relay/index.js';
import { sealFacadeStream } from '../server/seal.js';
import { DEFAULT_CONFIG } from '../workstation/config.js';
import { loadOrCreateIdentity } from '../workstation/identity.js';
import { BENCH_UNSEALED, startRelayClient, type RelayClient } from '../workstation/relay-client.js';
import { openHolderRuntime, type HolderRuntime } from '../workstation/runtime.js';
import { loadSealCredentials, registryKnowsSecret } from '../workstation/seal.js';
import { TokenRegistry } from '../workstation/tokens.js';
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
    `${label.padEnd(30)} ${rate.toFixed(0).padStart(7)} ops/s  p50 ${percentile(m.lat, 50).toFixed(2)} ms  p99 ${percentile(m.lat, 99).toFixed(2)} ms  (${m.ops} ops in ${m.seconds.toFixed(1)} s)`,
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

/** A holder in this process, connected to the relay at `url`; resolves once the relay took it. */
async function inProcessHolder(
  rt: HolderRuntime,
  tokens: TokenRegistry,
  url: string,
  sealed: boolean,
): Promise<RelayClient> {
  const identity = await loadOrCreateIdentity(rt.home);
  const seal = await loadSealCredentials(rt.home);
  let connected!: () => void;
  const up = new Promise<void>((r) => (connected = r));
  const client = startRelayClient({
    url,
    holder: rt.holder,
    identity,
    tokens,
    audit: rt.audit,
    seal,
    checkSecret: (tid, hash) => registryKnowsSecret(rt.home, tid, hash),
    software: 'keytether/bench',
    onConnected: () => connected(),
    ...(sealed ? {} : { benchUnsealed: BENCH_UNSEALED }),
  });
  try {
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(
        () => reject(new Error('in-process holder: no login to the relay within 30 s')),
        30_000,
      );
      void up.then(() => {
        clearTimeout(timer);
        resolve();
      });
    });
  } catch (e) {
    await client.close();
    throw e;
  }
  return client;
}

/** `keytether connect --socket` in this process, with or without the sealed channel. */
async function inProcessFacade(
  url: string,
  token: string,
  socketPath: string,
  sealed: boolean,
): Promise<{ close(): Promise<void> }> {
  const parsed = parseToken(token);
  if (!parsed.ok) throw new Error(`bench token: ${parsed.error}`);
  const { publicPart, hpk, secret } = parsed.token;
  const endpoint = relayEndpoint(url, 'facade');
  if (!endpoint.ok) throw new Error(endpoint.error);
  const stream = await openFacadeSocket(endpoint.url, publicPart);
  const channel = sealed
    ? await sealFacadeStream(stream, {
        hpk,
        secret: secret!,
        closeReason: () => stream.closeInfo?.reason || undefined,
        onFailure: (reason) => stream.closeWith?.(reason),
      })
    : stream;
  secret?.fill(0);
  const tunnel = tunnelClient(channel, { software: 'keytether/bench' });
  const up = await Promise.race([tunnel.ready.then(() => null), tunnel.closed]);
  if (up !== null) throw new Error(`in-process facade: the tunnel did not come up: ${up.reason}`);
  const holder = new RelayHolder();
  holder.set(tunnel);
  const facade = await startFacade({ socketPath, holder, front: 'relay' });
  return {
    async close() {
      tunnel.close('bench done');
      await facade.close();
    },
  };
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
      [
        cli,
        'agent',
        '--backend',
        'builtin',
        '--socket',
        path.join(root, 'S.local'),
        '--relay',
        url,
      ],
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

    const GPG_AGENT = 'gpg-agent';
    const CLI = 'relay, CLI processes';
    const SEALED = 'relay in-process, sealed';
    const UNSEALED = 'relay in-process, unsealed';
    console.log(
      `Ed25519 PKSIGN (SIGKEY + SETHASH + PKSIGN per op), ${CLIENTS} concurrent clients, ` +
        `${seconds} s each, all on 127.0.0.1; latency is one whole op`,
    );
    // Same key every way: Ed25519 is deterministic, so the same digest must give the same bytes.
    const digest = randomBytes(32);
    let reference: Buffer | undefined;
    const rates: Record<string, number> = {};
    const bench = async (label: string, sock: string) => {
      const c = await connectAgent(sock);
      clients.push(c);
      const sig = await signOnce(c, key.keygrip, digest);
      c.close();
      reference ??= sig;
      if (!sig.equals(reference)) {
        throw new Error(`${label} and gpg-agent gave different signatures for one digest`);
      }
      const conns = await openClients(sock, CLIENTS, clients);
      await measure(conns, key.keygrip, Math.min(1, seconds)); // warm-up
      rates[label] = report(label, await measure(conns, key.keygrip, seconds));
      for (const c of conns) c.close();
    };

    await bench(GPG_AGENT, await gnupg.agentSocket());
    await bench(CLI, facade.readyText.trim());
    // The in-process holder has the same identity: the CLI one must be gone first, or the relay
    // would hand the connection back and forth between them.
    await facade.stop();
    await holder.stop();
    daemons.length = 0;

    const rt = await openHolderRuntime(home, { ...DEFAULT_CONFIG, backend: 'builtin' });
    const tokens = await TokenRegistry.open(home, { identity: await loadOrCreateIdentity(home) });
    try {
      for (const [label, sealed] of [
        [SEALED, true],
        [UNSEALED, false],
      ] as const) {
        const client = await inProcessHolder(rt, tokens, url, sealed);
        const sock = path.join(root, sealed ? 'S.sealed' : 'S.unsealed');
        const f = await inProcessFacade(url, token, sock, sealed);
        try {
          await bench(label, sock);
        } finally {
          await f.close();
          await client.close();
        }
      }
    } finally {
      await tokens.flushUses();
      await rt.close();
    }
    const ratio = (a: string, b: string) =>
      `${(rates[a]! / rates[b]!).toFixed(2)}x (${((rates[a]! / rates[b]! - 1) * 100).toFixed(1)}%)`;
    console.log(`throughput sealed / unsealed (in-process): ${ratio(SEALED, UNSEALED)}`);
    console.log(`throughput sealed in-process / gpg-agent:  ${ratio(SEALED, GPG_AGENT)}`);
    console.log(`throughput CLI processes / gpg-agent:      ${ratio(CLI, GPG_AGENT)}`);

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
