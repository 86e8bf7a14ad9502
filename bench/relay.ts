// PKSIGN through the relay path — Assuan client → facade → relay → holder — against the real
// gpg-agent's local socket, all with 16 concurrent clients each looping SIGKEY + SETHASH +
// PKSIGN (Ed25519, unprotected key, builtin back end). Every part runs in its own process, as
// deployed: the relay (per-token rate limit raised so it does not cap the figure), the holder,
// the facade, and this process with the clients. Measured in one run:
//   - gpg-agent: the local socket of the real gpg-agent;
//   - relay, CLI processes: `keytether agent --relay` and `keytether connect` (sealed);
//   - relay sealed / unsealed (issue #6: sealing should cost at most 10% throughput): holder and
//     facade from bench/support/relay-holder.ts and relay-facade.ts, the same library calls as
//     the CLI; with `--unsealed` they skip the sealed channel through a symbol option of
//     startRelayClient that no keytether flag, config or environment variable can set. Both pairs
//     stay up for the whole run and are measured in alternating rounds (S U U S S U …), so drift
//     and noise on this machine fall on both alike; the summary is the median of the rounds.
// Beside ops/s and latency, each line shows CPU time per op of every process involved (from
// /proc, user + system, over the measured window): on a small shared machine it is much steadier
// than throughput, and it says what the seal costs where. For the relay pairs it also shows the
// WebSocket messages and bytes the facade sent and received per op.
// Then: the RSS of a relay (own process) holding 1,000 idle authenticated holders.
// BENCH_SECONDS (default 5) per measurement; BENCH_ROUNDS (default 4) rounds of each of sealed
// and unsealed (an even count gives both the same mean position in S U U S …, so a steady drift
// cancels); BENCH_IDLE_HOLDERS (default 1000); BENCH_CPU_PROF=DIR runs the relay, holders and
// facades under `node --cpu-prof` and leaves their profiles in DIR (summarize them with
// dist/bench/support/cpu-profile-summary.js).

import { existsSync, rmSync } from 'node:fs';
import { chmod, mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { randomBytes } from 'node:crypto';
import path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import type WebSocket from 'ws';
import type { AssuanClient } from '../protocol/assuan/index.js';
import {
  exportAllSecretKeys,
  addSigningSubkey,
  generateUnprotectedKey,
  makeBenchGnupg,
  type BenchGnupg,
} from './support/gnupg-home.js';
import { openIdleHolders, rssKiB } from './support/idle-holder.js';
import { cpuSeconds, initCpuClock } from './support/proc-cpu.js';
import { runTool, startDaemon, stderrLine, type Daemon } from './support/processes.js';
import { connectAgent, signOnce } from './support/sign-loop.js';
import type { WsCounts } from './support/ws-counters.js';
import { envNumber, cliPath, median } from './support/settings.js';

const here = path.dirname(fileURLToPath(import.meta.url));
const CLIENTS = 16;

/** A compiled bench/support script; the bench runs from dist/, where they are .js. */
function supportScript(name: string): string {
  const js = path.join(here, 'support', `${name}.js`);
  if (!existsSync(js)) throw new Error(`${js} is not built; run \`npm run build\` first`);
  return js;
}

function percentile(sorted: number[], p: number): number {
  if (sorted.length === 0) return NaN;
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))]!;
}

/** What one measured window of one setup gave. */
interface Round {
  rate: number;
  p50: number;
  p99: number;
  ops: number;
  seconds: number;
  /** CPU µs per op, by process name. */
  cpu: Record<string, number>;
  /** Facade WebSocket traffic per op, where the facade counts it. */
  ws?: { sent: number; recv: number; sentBytes: number; recvBytes: number };
}

/** One way to reach a signer: the socket to sign on and the processes doing the work. */
interface Target {
  label: string;
  socket: string;
  /** Processes whose CPU is charged to this target, by name (the clients are added). */
  pids: Record<string, number>;
  /** The facade process, when it counts its WebSocket traffic (bench/support/ws-counters.ts). */
  counters?: Daemon;
}

async function measureWindow(
  clients: AssuanClient[],
  grip: string,
  seconds: number,
): Promise<{ ops: number; seconds: number; lat: number[] }> {
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

/** Asks a child running ws-counters for its totals (SIGUSR2 → one `counters:` line). */
function readCounters(d: Daemon): Promise<WsCounts> {
  const out = d.child.stdout!;
  return new Promise((resolve, reject) => {
    let buf = '';
    const timer = setTimeout(() => {
      out.off('data', onData);
      reject(new Error('a bench child did not report its counters within 5 s'));
    }, 5000);
    const onData = (b: Buffer) => {
      buf += b.toString('utf8');
      const m = /^counters: (\{.*\})$/m.exec(buf);
      if (!m) return;
      clearTimeout(timer);
      out.off('data', onData);
      resolve(JSON.parse(m[1]!) as WsCounts);
    };
    out.on('data', onData);
    d.child.kill('SIGUSR2');
  });
}

function cpuNow(pids: Record<string, number>): Record<string, number> {
  const out: Record<string, number> = {};
  for (const [name, pid] of Object.entries(pids)) {
    const s = cpuSeconds(pid);
    if (s !== undefined) out[name] = s;
  }
  const self = process.cpuUsage();
  out.clients = (self.user + self.system) / 1e6;
  return out;
}

async function measureTarget(
  t: Target,
  grip: string,
  seconds: number,
  all: AssuanClient[],
): Promise<Round> {
  const conns: AssuanClient[] = [];
  try {
    for (let i = 0; i < CLIENTS; i++) {
      const c = await connectAgent(t.socket);
      all.push(c);
      conns.push(c);
    }
    await measureWindow(conns, grip, Math.min(1, seconds)); // warm-up
    const ws0 = t.counters ? await readCounters(t.counters) : undefined;
    const cpu0 = cpuNow(t.pids);
    const m = await measureWindow(conns, grip, seconds);
    const cpu1 = cpuNow(t.pids);
    const ws1 = t.counters ? await readCounters(t.counters) : undefined;
    const cpu: Record<string, number> = {};
    for (const k of Object.keys(cpu1)) {
      if (cpu0[k] !== undefined) cpu[k] = ((cpu1[k]! - cpu0[k]) * 1e6) / m.ops;
    }
    const round: Round = {
      rate: m.ops / m.seconds,
      p50: percentile(m.lat, 50),
      p99: percentile(m.lat, 99),
      ops: m.ops,
      seconds: m.seconds,
      cpu,
    };
    if (ws0 && ws1) {
      round.ws = {
        sent: (ws1.sent - ws0.sent) / m.ops,
        recv: (ws1.recv - ws0.recv) / m.ops,
        sentBytes: (ws1.sentBytes - ws0.sentBytes) / m.ops,
        recvBytes: (ws1.recvBytes - ws0.recvBytes) / m.ops,
      };
    }
    return round;
  } finally {
    for (const c of conns) c.close();
  }
}

const CPU_ORDER = ['gpg-agent', 'holder', 'relay', 'facade', 'clients'];

function line(label: string, r: Round): string {
  const cpu = CPU_ORDER.filter((k) => r.cpu[k] !== undefined)
    .map((k) => `${k} ${r.cpu[k]!.toFixed(0)}`)
    .join(', ');
  const total = Object.values(r.cpu).reduce((a, b) => a + b, 0);
  const ws = r.ws
    ? `  facade ws/op: ${r.ws.sent.toFixed(2)} out ${r.ws.sentBytes.toFixed(0)} B, ` +
      `${r.ws.recv.toFixed(2)} in ${r.ws.recvBytes.toFixed(0)} B`
    : '';
  return (
    `${label.padEnd(26)} ${r.rate.toFixed(0).padStart(6)} ops/s  ` +
    `p50 ${r.p50.toFixed(2).padStart(6)} ms  p99 ${r.p99.toFixed(2).padStart(6)} ms  ` +
    `CPU µs/op: ${cpu} (total ${total.toFixed(0)})${ws}`
  );
}

/** The median of each figure over the rounds (figure by figure, not one round's line). */
function medianRound(rs: Round[]): Round {
  const cpu: Record<string, number> = {};
  for (const k of Object.keys(rs[0]!.cpu)) cpu[k] = median(rs.map((r) => r.cpu[k] ?? NaN));
  const out: Round = {
    rate: median(rs.map((r) => r.rate)),
    p50: median(rs.map((r) => r.p50)),
    p99: median(rs.map((r) => r.p99)),
    ops: rs.reduce((n, r) => n + r.ops, 0),
    seconds: rs.reduce((n, r) => n + r.seconds, 0),
    cpu,
  };
  if (rs.every((r) => r.ws)) {
    out.ws = {
      sent: median(rs.map((r) => r.ws!.sent)),
      recv: median(rs.map((r) => r.ws!.recv)),
      sentBytes: median(rs.map((r) => r.ws!.sentBytes)),
      recvBytes: median(rs.map((r) => r.ws!.recvBytes)),
    };
  }
  return out;
}

async function idleHoldersRss(count: number): Promise<void> {
  const limits = { maxConnectionsPerAddress: count + 100 };
  const relay = await startDaemon(
    process.execPath,
    [supportScript('relay-process'), JSON.stringify(limits)],
    process.env,
    'listening: ',
  );
  const sockets: WebSocket[] = [];
  try {
    const url = relay.readyText.trim();
    const pid = relay.child.pid!;
    const before = rssKiB(pid);
    sockets.push(...(await openIdleHolders(url, count)));
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
  const rounds = Math.round(envNumber('BENCH_ROUNDS', 4, 1));
  const idleCount = Math.round(envNumber('BENCH_IDLE_HOLDERS', 1000, 0));
  const profDir = process.env.BENCH_CPU_PROF ? path.resolve(process.env.BENCH_CPU_PROF) : '';
  const cli = cliPath();
  const holderScript = supportScript('relay-holder');
  const facadeScript = supportScript('relay-facade');
  const relayScript = supportScript('relay-process');
  await initCpuClock();
  if (profDir) await mkdir(profDir, { recursive: true, mode: 0o700 });
  const nodeArgs = (name: string) =>
    profDir
      ? ['--cpu-prof', `--cpu-prof-dir=${profDir}`, `--cpu-prof-name=${name}.cpuprofile`]
      : [];

  const root = await mkdtemp('/tmp/ktr-');
  await chmod(root, 0o700);
  let gnupg: BenchGnupg | undefined;
  const daemons: Daemon[] = [];
  const clients: AssuanClient[] = [];
  const onSignal = () => process.exit(130);
  const onExit = () => {
    for (const d of daemons) d.child.kill('SIGKILL');
    rmSync(root, { recursive: true, force: true });
  };
  process.once('SIGINT', onSignal);
  process.once('exit', onExit);
  const daemon = async (...args: Parameters<typeof startDaemon>) => {
    const d = await startDaemon(...args);
    daemons.push(d);
    return d;
  };
  const stop = async (d: Daemon) => {
    await d.stop();
    daemons.splice(daemons.indexOf(d), 1);
  };
  try {
    gnupg = await makeBenchGnupg(path.join(root, 'g'));
    // A certify-only primary with a signing subkey: the holder's default policy signs blind
    // digests with the subkey (never with a certify-capable key), as PKSIGN here needs.
    const primary = await generateUnprotectedKey(
      gnupg,
      'Bench Relay <relay@bench>',
      'ed25519',
      'cert',
    );
    const key = await addSigningSubkey(gnupg, primary.fingerprint, 'ed25519');
    const secret = await exportAllSecretKeys(gnupg);
    const keyFile = path.join(root, 'secret.gpg');
    await writeFile(keyFile, secret, { mode: 0o600 });
    secret.fill(0);

    const relay = await daemon(
      process.execPath,
      [
        ...nodeArgs('relay'),
        relayScript,
        JSON.stringify({ tokenRatePerSecond: 1e6, tokenBurst: 1e6 }),
      ],
      process.env,
      'listening: ',
    );
    const url = relay.readyText.trim();
    const relayPid = relay.child.pid!;

    // Two holder homes, the same key in each: the CLI holder and then the sealed bench holder
    // use one; the unsealed bench holder, up at the same time, needs its own identity (the relay
    // keeps one connection per identity).
    const homes = { sealed: path.join(root, 'kt'), unsealed: path.join(root, 'ku') };
    const envOf = (home: string) => ({ ...process.env, KEYTETHER_HOME: home });
    const tokens: Record<string, string> = {};
    try {
      await Promise.all(
        Object.entries(homes).map(async ([name, home]) => {
          await mkdir(home, { mode: 0o700 });
          const imp = await runTool(
            process.execPath,
            [cli, 'keys', 'import', keyFile],
            envOf(home),
          );
          if (imp.code !== 0) throw new Error(`keytether keys import failed: ${imp.stderr}`);
          const tok = await runTool(
            process.execPath,
            [cli, 'token', 'create', '--key', primary.fingerprint, '--relay', url],
            envOf(home),
          );
          if (tok.code !== 0) throw new Error(`keytether token create failed: ${tok.stderr}`);
          tokens[name] = tok.stdout.toString('utf8').trim();
        }),
      );
    } finally {
      await rm(keyFile, { force: true });
    }

    console.log(
      `Ed25519 PKSIGN (SIGKEY + SETHASH + PKSIGN per op), ${CLIENTS} concurrent clients, ` +
        `${seconds} s each, all on 127.0.0.1, relay/holder/facade each in its own process; ` +
        `latency is one whole op; CPU is per op, user + system, of each process ` +
        `(clients: this process)`,
    );
    // Same key every way: Ed25519 is deterministic, so the same digest must give the same bytes.
    const digest = randomBytes(32);
    let reference: Buffer | undefined;
    const verify = async (t: Target) => {
      const c = await connectAgent(t.socket);
      clients.push(c);
      const sig = await signOnce(c, key.keygrip, digest);
      c.close();
      reference ??= sig;
      if (!sig.equals(reference)) {
        throw new Error(`${t.label} and gpg-agent gave different signatures for one digest`);
      }
    };
    const once = async (t: Target): Promise<Round> => {
      await verify(t);
      const r = await measureTarget(t, key.keygrip, seconds, clients);
      console.log(line(t.label, r));
      return r;
    };

    const gpgAgent = await once({
      label: 'gpg-agent',
      socket: await gnupg.agentSocket(),
      pids: { 'gpg-agent': await gnupg.agentPid() },
    });

    {
      const holder = await daemon(
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
        envOf(homes.sealed),
        'ready: ',
      );
      // `ready:` may come before the holder logged in to the relay; wait for the login.
      await stderrLine(holder, /^relay connected: /m, 'the CLI holder never connected');
      const facadeEnv: NodeJS.ProcessEnv = {
        ...process.env,
        KEYTETHER_HOME: path.join(root, 'facade-home'),
      };
      delete facadeEnv.KEYTETHER_TOKEN;
      const facade = await daemon(
        process.execPath,
        [
          cli,
          'connect',
          '--relay',
          url,
          '--token',
          tokens.sealed!,
          '--socket',
          path.join(root, 'S.connect'),
        ],
        facadeEnv,
        'ready: ',
      );
      await once({
        label: 'relay, CLI processes',
        socket: facade.readyText.trim(),
        pids: { holder: holder.child.pid!, relay: relayPid, facade: facade.child.pid! },
      });
      // The bench holder below has the same identity: the CLI one must be gone first, or the
      // relay would hand the connection back and forth between them.
      await stop(facade);
      await stop(holder);
    }

    const pair = async (variant: 'sealed' | 'unsealed'): Promise<Target> => {
      const flag = variant === 'unsealed' ? ['--unsealed'] : [];
      const holder = await daemon(
        process.execPath,
        [
          ...nodeArgs(`holder-${variant}`),
          holderScript,
          '--home',
          homes[variant],
          '--relay',
          url,
          ...flag,
        ],
        process.env,
        'ready: ',
      );
      const socket = path.join(root, `S.${variant}`);
      const facade = await daemon(
        process.execPath,
        [
          ...nodeArgs(`facade-${variant}`),
          facadeScript,
          '--relay',
          url,
          '--socket',
          socket,
          ...flag,
        ],
        { ...process.env, BENCH_RELAY_TOKEN: tokens[variant]! },
        'ready: ',
      );
      return {
        label: `relay ${variant}`,
        socket,
        pids: { holder: holder.child.pid!, relay: relayPid, facade: facade.child.pid! },
        counters: facade,
      };
    };
    const sealed = await pair('sealed');
    const unsealed = await pair('unsealed');
    await verify(sealed);
    await verify(unsealed);
    // Fresh processes run their first seconds slower (JIT); the first round must not pay that.
    for (const t of [sealed, unsealed])
      await measureTarget(t, key.keygrip, Math.min(2, seconds), []);
    const results: Record<string, Round[]> = { [sealed.label]: [], [unsealed.label]: [] };
    for (let i = 0; i < rounds; i++) {
      // S U, U S, S U, …: a steady drift of the machine's speed lands on both alike.
      const order = i % 2 === 0 ? [sealed, unsealed] : [unsealed, sealed];
      for (const t of order) {
        const r = await measureTarget(t, key.keygrip, seconds, clients);
        results[t.label]!.push(r);
        console.log(line(`${t.label} #${i + 1}`, r));
      }
    }
    const s = medianRound(results[sealed.label]!);
    const u = medianRound(results[unsealed.label]!);
    console.log(`median of ${rounds} rounds:`);
    console.log(line(sealed.label, s));
    console.log(line(unsealed.label, u));
    const pct = (x: number) => `${x >= 0 ? '+' : ''}${(x * 100).toFixed(1)}%`;
    const ratio = (a: number, b: number) => `${(a / b).toFixed(2)}x (${pct(a / b - 1)})`;
    const sumCpu = (r: Round, keys: string[]) => keys.reduce((n, k) => n + (r.cpu[k] ?? 0), 0);
    console.log(`throughput sealed / unsealed:  ${ratio(s.rate, u.rate)}`);
    console.log(`throughput sealed / gpg-agent: ${ratio(s.rate, gpgAgent.rate)}`);
    console.log(
      `CPU per op sealed - unsealed: holder ${pct(s.cpu.holder! / u.cpu.holder! - 1)} ` +
        `(${(s.cpu.holder! - u.cpu.holder!).toFixed(0)} µs), ` +
        `facade ${pct(s.cpu.facade! / u.cpu.facade! - 1)} ` +
        `(${(s.cpu.facade! - u.cpu.facade!).toFixed(0)} µs), ` +
        `relay ${pct(s.cpu.relay! / u.cpu.relay! - 1)}, ` +
        `holder + relay + facade ${pct(
          sumCpu(s, ['holder', 'relay', 'facade']) / sumCpu(u, ['holder', 'relay', 'facade']) - 1,
        )}`,
    );
    for (const t of [sealed, unsealed]) {
      // Holders and facades stop here, so that --cpu-prof profiles are written before cleanup.
      for (const d of daemons.filter((d) => Object.values(t.pids).includes(d.child.pid!))) {
        if (d !== relay) await stop(d);
      }
    }
    await stop(relay);
    if (profDir) console.log(`CPU profiles: ${profDir}`);

    if (idleCount > 0) await idleHoldersRss(idleCount);
  } finally {
    for (const c of clients) c.close();
    process.removeListener('SIGINT', onSignal);
    try {
      for (const d of [...daemons].reverse()) await d.stop();
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
