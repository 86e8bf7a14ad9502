// PKSIGN throughput of `keytether agent` against the real gpg-agent, same keys, same client, same
// run: Ed25519 and RSA-3072 on one connection each, and Ed25519 on 4 concurrent connections.
// Both agents hold unprotected keys, so the figures are protocol + key handling + signing.
// The two agents are measured alternately (A B A B …) and each reports its median, because on a
// small shared box a background burst would otherwise land on one side only.
// Besides wall-clock ops/s, each agent's own CPU time per op (from /proc) is shown: on a busy
// machine that figure depends far less than ops/s on what else is running.
// BENCH_SECONDS (default 3) per measurement, BENCH_ROUNDS (default 3) measurements per agent.

import { rmSync } from 'node:fs';
import { mkdir, mkdtemp, chmod, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import { randomBytes } from 'node:crypto';
import type { AssuanClient } from '../protocol/assuan/index.js';
import {
  exportAllSecretKeys,
  generateUnprotectedKey,
  makeBenchGnupg,
  type BenchGnupg,
} from './support/gnupg-home.js';
import { runTool, startDaemon, type Daemon } from './support/processes.js';
import { connectAgent, signLoop, signOnce } from './support/sign-loop.js';
import { cpuSeconds, initCpuClock } from './support/proc-cpu.js';
import { envNumber, cliPath, median } from './support/settings.js';

interface Scenario {
  key: 'ed25519' | 'rsa3072';
  conns: number;
}

const SCENARIOS: Scenario[] = [
  { key: 'ed25519', conns: 1 },
  { key: 'rsa3072', conns: 1 },
  { key: 'ed25519', conns: 4 },
];

const AGENTS = ['gpg-agent', 'keytether'] as const;
type AgentName = (typeof AGENTS)[number];

function row(cols: (string | number)[], widths: number[]): string {
  return cols.map((c, i) => String(c).padEnd(widths[i] ?? 10)).join(' ');
}

async function startKeytether(root: string, secretKeys: Buffer): Promise<Daemon> {
  const cli = cliPath();
  const home = path.join(root, 'kt');
  await mkdir(home, { mode: 0o700 });
  const env = { ...process.env, KEYTETHER_HOME: home };
  const keyFile = path.join(root, 'secret.gpg');
  await writeFile(keyFile, secretKeys, { mode: 0o600 });
  try {
    const imp = await runTool(process.execPath, [cli, 'keys', 'import', keyFile], env);
    if (imp.code !== 0) throw new Error(`keytether keys import failed: ${imp.stderr}`);
  } finally {
    await rm(keyFile, { force: true });
  }
  const socket = path.join(root, 'S.kt');
  return startDaemon(process.execPath, [cli, 'agent', '--socket', socket], env, 'ready: ');
}

export async function run(): Promise<void> {
  const seconds = envNumber('BENCH_SECONDS', 3, 0.1);
  const rounds = Math.round(envNumber('BENCH_ROUNDS', 3, 1));
  const root = await mkdtemp('/tmp/ktb-');
  await chmod(root, 0o700);
  let gnupg: BenchGnupg | undefined;
  let keytether: Daemon | undefined;
  const clients: AssuanClient[] = [];
  // Ctrl-C must still take the gpg-agent daemon down: exiting runs the exit hooks that do so.
  const onSignal = () => process.exit(130);
  const onExit = () => {
    keytether?.child.kill('SIGKILL');
    rmSync(root, { recursive: true, force: true });
  };
  process.once('SIGINT', onSignal);
  process.once('exit', onExit);
  try {
    gnupg = await makeBenchGnupg(path.join(root, 'g'));
    const grips = {
      ed25519: (await generateUnprotectedKey(gnupg, 'Bench Ed25519 <ed@bench>', 'ed25519')).keygrip,
      rsa3072: (await generateUnprotectedKey(gnupg, 'Bench RSA <rsa@bench>', 'rsa3072')).keygrip,
    };
    const secret = await exportAllSecretKeys(gnupg);
    keytether = await startKeytether(root, secret);
    secret.fill(0);
    const sockets: Record<AgentName, string> = {
      'gpg-agent': await gnupg.agentSocket(),
      keytether: keytether.readyText.trim(),
    };
    await initCpuClock();
    const pids: Record<AgentName, number | undefined> = {
      'gpg-agent': await gnupg.agentPid(),
      keytether: keytether.child.pid,
    };

    // Both agents must hold the same keys: both signature schemes are deterministic, so the
    // same digest has to give byte-identical signatures.
    for (const key of ['ed25519', 'rsa3072'] as const) {
      const digest = randomBytes(32);
      const sigs: Buffer[] = [];
      for (const agent of AGENTS) {
        const c = await connectAgent(sockets[agent]);
        clients.push(c);
        sigs.push(await signOnce(c, grips[key], digest));
        c.close();
      }
      if (!sigs[0]!.equals(sigs[1]!)) {
        throw new Error(`${key}: keytether and gpg-agent signatures differ for the same digest`);
      }
    }

    console.log(
      `PKSIGN (SIGKEY + SETHASH sha256 + PKSIGN, random digest each) over unix sockets; ` +
        `${rounds} × ${seconds} s per agent, alternating, median shown`,
    );
    const widths = [10, 8, 6, 9, 8, 12, 30];
    console.log(
      row(['agent', 'key', 'conns', 'ops/s', 'µs/op', 'cpu µs/op', 'runs (ops/s)'], widths),
    );
    const ratios: { label: string; ratio: number }[] = [];
    for (const sc of SCENARIOS) {
      const conns: Record<AgentName, AssuanClient[]> = { 'gpg-agent': [], keytether: [] };
      for (const agent of AGENTS) {
        for (let i = 0; i < sc.conns; i++) {
          const c = await connectAgent(sockets[agent]);
          clients.push(c);
          conns[agent].push(c);
        }
        // Warm-up: first use loads and caches the key, and lets V8 optimise the hot path.
        await signLoop(conns[agent], grips[sc.key], Math.min(0.5, seconds));
      }
      const rates: Record<AgentName, number[]> = { 'gpg-agent': [], keytether: [] };
      const cpus: Record<AgentName, number[]> = { 'gpg-agent': [], keytether: [] };
      for (let r = 0; r < rounds; r++) {
        for (const agent of AGENTS) {
          const pid = pids[agent];
          const cpu0 = pid === undefined ? undefined : cpuSeconds(pid);
          const res = await signLoop(conns[agent], grips[sc.key], seconds);
          const cpu1 = pid === undefined ? undefined : cpuSeconds(pid);
          rates[agent].push(res.ops / res.seconds);
          if (cpu0 !== undefined && cpu1 !== undefined && res.ops > 0) {
            cpus[agent].push(((cpu1 - cpu0) / res.ops) * 1e6);
          }
        }
      }
      for (const agent of AGENTS) {
        const m = median(rates[agent]);
        const cpu = cpus[agent].length > 0 ? median(cpus[agent]).toFixed(0) : '-';
        console.log(
          row(
            [
              agent,
              sc.key,
              sc.conns,
              m.toFixed(0),
              (1e6 / m).toFixed(0),
              cpu,
              rates[agent].map((x) => x.toFixed(0)).join(' '),
            ],
            widths,
          ),
        );
      }
      const ratio = median(rates.keytether) / median(rates['gpg-agent']);
      const label = sc.conns === 1 ? sc.key : `${sc.key}×${sc.conns}`;
      ratios.push({ label, ratio });
      const cpuNote =
        cpus.keytether.length > 0 && cpus['gpg-agent'].length > 0
          ? ` (agent CPU per op: keytether ${(median(cpus.keytether) / median(cpus['gpg-agent'])).toFixed(2)}× gpg-agent's)`
          : '';
      console.log(`  keytether/gpg-agent ${label}: ${ratio.toFixed(2)}x${cpuNote}`);
      for (const c of [...conns['gpg-agent'], ...conns.keytether]) c.close();
    }
    console.log(`ratio ${ratios.map((r) => `${r.label} ${r.ratio.toFixed(2)}x`).join(', ')}`);
  } finally {
    for (const c of clients) c.close();
    process.removeListener('SIGINT', onSignal);
    try {
      await keytether?.stop();
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
