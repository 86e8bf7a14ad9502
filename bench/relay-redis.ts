// Relay instances sharing holders through a real redis-server (`keytether relay --redis`, issue
// #16): Ed25519 PKSIGN (SIGKEY + SETHASH + PKSIGN per op) from 16 concurrent clients per facade,
// every part in its own process (bench/support/relay-holder.ts and relay-facade.ts, the library
// calls of the CLI; relays from relay-process.ts with the per-token rate raised).
//   1. One holder on instance A; its facade on A (same instance) or on B (the stream carried
//      through Redis), measured in alternating rounds in the same run: cross / same (goal ≥ 0.8).
//   2. Three holders with a facade each: every pair on its own instance (3 instances) against all
//      three pairs on one instance, alternating rounds: 3 instances / 1.
// BENCH_SECONDS (default 3) per window, BENCH_ROUNDS (default 4); needs /usr/bin/redis-server.

import { chmod, mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { rmSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import type { AssuanClient } from '../protocol/assuan/index.js';
import {
  addSigningSubkey,
  exportAllSecretKeys,
  generateUnprotectedKey,
  makeBenchGnupg,
} from './support/gnupg-home.js';
import { runTool, startDaemon, type Daemon } from './support/processes.js';
import { redisMissing, startRedis } from './support/redis-server.js';
import { cliPath, envNumber, median } from './support/settings.js';
import { connectAgent, signLoop } from './support/sign-loop.js';

const here = path.dirname(fileURLToPath(import.meta.url));
const CLIENTS = 16;
const script = (name: string) => path.join(here, 'support', `${name}.js`);

export async function run(): Promise<void> {
  const missing = redisMissing();
  if (missing) throw new Error(`relay-redis: ${missing}`);
  const seconds = envNumber('BENCH_SECONDS', 3, 0.1);
  const rounds = Math.round(envNumber('BENCH_ROUNDS', 4, 1));
  const cli = cliPath();
  const root = await mkdtemp('/tmp/ktrr-');
  await chmod(root, 0o700);
  const daemons: Daemon[] = [];
  const onExit = () => {
    for (const d of daemons) d.child.kill('SIGKILL');
    rmSync(root, { recursive: true, force: true });
  };
  process.once('exit', onExit);
  const daemon = async (args: string[], env: NodeJS.ProcessEnv = process.env) => {
    const d = await startDaemon(
      process.execPath,
      args,
      env,
      args[0] === script('relay-process') ? 'listening: ' : 'ready: ',
    );
    daemons.push(d);
    return d;
  };
  const redis = await startRedis();
  try {
    const gnupg = await makeBenchGnupg(path.join(root, 'g'));
    const primary = await generateUnprotectedKey(
      gnupg,
      'Bench Cluster <c@bench>',
      'ed25519',
      'cert',
    );
    const key = await addSigningSubkey(gnupg, primary.fingerprint, 'ed25519');
    const keyFile = path.join(root, 'secret.gpg');
    await writeFile(keyFile, await exportAllSecretKeys(gnupg), { mode: 0o600 });

    const limits = JSON.stringify({ tokenRatePerSecond: 1e6, tokenBurst: 1e6 });
    const relays: string[] = [];
    for (let i = 0; i < 3; i++) {
      const d = await daemon([script('relay-process'), limits, redis.url]);
      relays.push(d.readyText.trim());
    }
    // Three holder identities (one connection per identity), the same key in each.
    const homes: string[] = [];
    const tokens: string[] = [];
    for (let i = 0; i < 3; i++) {
      const home = path.join(root, `h${i}`);
      await mkdir(home, { mode: 0o700 });
      const env = { ...process.env, KEYTETHER_HOME: home };
      const imp = await runTool(process.execPath, [cli, 'keys', 'import', keyFile], env);
      if (imp.code !== 0) throw new Error(`keys import: ${imp.stderr}`);
      const tok = await runTool(
        process.execPath,
        [cli, 'token', 'create', '--key', primary.fingerprint, '--relay', relays[0]!],
        env,
      );
      if (tok.code !== 0) throw new Error(`token create: ${tok.stderr}`);
      homes.push(home);
      tokens.push(tok.stdout.toString('utf8').trim());
    }
    await rm(keyFile, { force: true });

    let sockets = 0;
    const holder = (i: number, relay: string) =>
      daemon([script('relay-holder'), '--home', homes[i]!, '--relay', relay, '--unlimited']);
    const facade = async (i: number, relay: string) => {
      const socket = path.join(root, `S.${++sockets}`);
      await daemon([script('relay-facade'), '--relay', relay, '--socket', socket], {
        ...process.env,
        BENCH_RELAY_TOKEN: tokens[i]!,
      });
      const clients: AssuanClient[] = [];
      for (let c = 0; c < CLIENTS; c++) clients.push(await connectAgent(socket));
      return clients;
    };
    const stopAll = async (keep: number) => {
      for (const d of daemons.splice(keep)) await d.stop();
    };
    /** ops/s of all CLIENT groups signing at once for one window. */
    const rate = async (groups: AssuanClient[][]) => {
      const rs = await Promise.all(groups.map((g) => signLoop(g, key.keygrip, seconds)));
      return rs.reduce((n, r) => n + r.ops / r.seconds, 0);
    };
    const alternate = async (a: () => Promise<number>, b: () => Promise<number>) => {
      const ra: number[] = [];
      const rb: number[] = [];
      for (let i = 0; i < rounds; i++) {
        const order = i % 2 === 0 ? [a, b] : [b, a];
        for (const f of order) (f === a ? ra : rb).push(await f());
      }
      return { a: median(ra), b: median(rb), ra, rb };
    };
    const fmt = (xs: number[]) => xs.map((x) => x.toFixed(0)).join(' ');

    console.log(
      `Ed25519 PKSIGN, ${CLIENTS} clients per facade, ${seconds} s windows, ${rounds} alternating ` +
        'rounds, medians; relays, holders and facades each in its own process on 127.0.0.1',
    );
    // 1. Same instance vs across instances.
    await holder(0, relays[0]!);
    const same = await facade(0, relays[0]!);
    const cross = await facade(0, relays[1]!);
    await rate([same]);
    await rate([cross]); // warm-up (JIT) for both paths
    const p1 = await alternate(
      () => rate([same]),
      () => rate([cross]),
    );
    console.log(`facade and holder on one instance:      ${p1.a.toFixed(0)} ops/s (${fmt(p1.ra)})`);
    console.log(`facade and holder on different ones:    ${p1.b.toFixed(0)} ops/s (${fmt(p1.rb)})`);
    console.log(
      `throughput different / same instance:   ${(p1.b / p1.a).toFixed(2)}x (goal >= 0.80)`,
    );
    for (const c of [...same, ...cross]) c.close();
    await stopAll(3);

    // 2. Three holder/facade pairs on three instances vs all on one.
    const spread: AssuanClient[][] = [];
    const packed: AssuanClient[][] = [];
    for (let i = 0; i < 3; i++) {
      await holder(i, relays[i]!);
      spread.push(await facade(i, relays[i]!));
    }
    await rate(spread);
    // The packed setup needs the same identities connected to instance 0, so the two setups run
    // one after the other rather than interleaved: measure spread, packed, spread, packed…
    const measure = async (groups: AssuanClient[][]) => rate(groups);
    const spreadRates: number[] = [];
    const packedRates: number[] = [];
    for (let i = 0; i < Math.max(2, Math.round(rounds / 2)); i++) {
      spreadRates.push(await measure(spread));
      for (const g of spread) for (const c of g) c.close();
      spread.length = 0;
      await stopAll(3);
      for (let h = 0; h < 3; h++) {
        await holder(h, relays[0]!);
        packed.push(await facade(h, relays[0]!));
      }
      await rate(packed);
      packedRates.push(await measure(packed));
      for (const g of packed) for (const c of g) c.close();
      packed.length = 0;
      await stopAll(3);
      for (let h = 0; h < 3; h++) {
        await holder(h, relays[h]!);
        spread.push(await facade(h, relays[h]!));
      }
      await rate(spread);
    }
    const s = median(spreadRates);
    const p = median(packedRates);
    console.log(
      `3 pairs on 3 instances:                 ${s.toFixed(0)} ops/s (${fmt(spreadRates)})`,
    );
    console.log(
      `3 pairs on 1 instance:                  ${p.toFixed(0)} ops/s (${fmt(packedRates)})`,
    );
    console.log(`aggregate throughput 3 instances / 1:   ${(s / p).toFixed(2)}x`);
    for (const g of spread) for (const c of g) c.close();
    await stopAll(0);
  } finally {
    await redis.stop();
    process.removeListener('exit', onExit);
    onExit();
  }
}
