// Load (issue #12): WORKERS concurrent stock `gpg --batch -bsau KEY` processes (git's way of
// asking) signing back to back for SECONDS on a "server" (this machine, its own GNUPGHOME with
// the public key only), each front in its own window:
//   - anchor: the same gpg against the real gpg-agent holding the same key, locally;
//   - keytether ssh: a real sshd on 127.0.0.1, `keytether ssh` with its in-process holder;
//   - keytether relay: `keytether relay`, `keytether agent --relay`, `keytether connect --socket`
//     with a token from `keytether token create` — every one the CLI, with its default limits.
// The key is an Ed25519 certify-only primary with a signing subkey, so the default policy
// allows every signature without a prompt. Printed per front: signatures, failures (the first
// few in gpg's words), signatures/s and wall latency per gpg process (p50/p90/p99/max), each as
// a ratio to the anchor; a sample of each front's signatures is checked with `gpg --verify`.
// Then the relay's memory per idle holder: RSS of a `keytether relay` before and after HOLDERS
// holders have authenticated the way the real one does (challenge signed with an identity key)
// and gone quiet; they come from many 127.0.x.y source addresses, at most 60 from each, so the
// default per-address limit (64) is not what is measured. Goal ≤ 20 KiB per holder.
//   npm run bench -- load [--seconds 60] [--workers 100] [--holders 5000] [--only anchor,ssh,relay,idle]
// (or BENCH_LOAD_SECONDS, BENCH_LOAD_WORKERS, BENCH_LOAD_HOLDERS). BENCH_CPU_PROF=DIR runs the
// keytether processes of the ssh and relay fronts under `node --cpu-prof` and leaves their
// profiles in DIR (summarize them with dist/bench/support/cpu-profile-summary.js).

import { rmSync } from 'node:fs';
import { appendFile, chmod, mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { pathToFileURL } from 'node:url';
import {
  addSigningSubkey,
  exportAllSecretKeys,
  generateUnprotectedKey,
  makeBenchGnupg,
  type BenchGnupg,
} from './support/gnupg-home.js';
import { gpgLoad, percentile, verifySamples, type LoadRun } from './support/gpg-load.js';
import { relayRssPerIdleHolder } from './support/idle-holder.js';
import {
  auditLines,
  auditRequesters,
  cpuNow,
  cpuPerSig,
  findServe,
  formatCpu,
} from './support/load-accounting.js';
import { initCpuClock } from './support/proc-cpu.js';
import { DEFAULT_LIMITS } from '../server/relay/limits.js';
import { runTool, startDaemon, stderrLine, type Daemon } from './support/processes.js';
import { startBenchSshd, type BenchSshd } from './support/sshd.js';
import { cliPath, envNumber } from './support/settings.js';

const SAMPLES = 20;
const FRONTS = ['anchor', 'ssh', 'relay', 'idle'] as const;
type Front = (typeof FRONTS)[number];

interface Measured {
  run: LoadRun;
  cpu: Record<string, number>;
  audit?: Awaited<ReturnType<typeof auditRequesters>>;
}

interface Settings {
  seconds: number;
  workers: number;
  holders: number;
  only: Set<Front>;
}

function settings(options: string[]): Settings {
  const { values } = parseArgs({
    args: options,
    options: {
      seconds: { type: 'string' },
      workers: { type: 'string' },
      holders: { type: 'string' },
      only: { type: 'string' },
    },
    strict: true,
    allowPositionals: false,
  });
  const num = (flag: string | undefined, env: string, fallback: number, min: number) => {
    if (flag === undefined) return envNumber(env, fallback, min);
    const n = Number(flag);
    if (!Number.isFinite(n) || n < min)
      throw new Error(`load: expected a number ≥ ${min}, got ${flag}`);
    return n;
  };
  const only = new Set<Front>();
  for (const f of (values.only ?? FRONTS.join(',')).split(',')) {
    if (!(FRONTS as readonly string[]).includes(f)) {
      throw new Error(`load: --only takes ${FRONTS.join(',')}; got ${f}`);
    }
    only.add(f as Front);
  }
  return {
    seconds: num(values.seconds, 'BENCH_LOAD_SECONDS', 60, 1),
    workers: Math.round(num(values.workers, 'BENCH_LOAD_WORKERS', 100, 1)),
    holders: Math.round(num(values.holders, 'BENCH_LOAD_HOLDERS', 5000, 1)),
    only,
  };
}

const widths = [28, 8, 6, 8, 8, 8, 8, 8];
const row = (cols: (string | number)[]) =>
  cols
    .map((c, i) => (i === 0 ? String(c).padEnd(widths[i]!) : String(c).padStart(widths[i]!)))
    .join(' ');

function resultRow(label: string, r: LoadRun): string {
  const ms = (p: number) => percentile(r.latency, p).toFixed(0);
  return row([
    label,
    r.sigs,
    r.failures,
    (r.sigs / r.seconds).toFixed(1),
    ms(50),
    ms(90),
    ms(99),
    (r.latency.at(-1) ?? NaN).toFixed(0),
  ]);
}

function ratioLine(label: string, r: LoadRun, anchor: LoadRun): string {
  const x = (a: number, b: number) => `${(a / b).toFixed(2)}×`;
  return (
    `${label} / anchor: signatures/s ${x(r.sigs / r.seconds, anchor.sigs / anchor.seconds)}, ` +
    `p50 ${x(percentile(r.latency, 50), percentile(anchor.latency, 50))}, ` +
    `p90 ${x(percentile(r.latency, 90), percentile(anchor.latency, 90))}, ` +
    `p99 ${x(percentile(r.latency, 99), percentile(anchor.latency, 99))}`
  );
}

/** The relay's request and refusal counters, from its /metrics. */
async function relayCounters(base: string): Promise<{ requests: number; refusals: number }> {
  const text = await (await fetch(`${base}/metrics`)).text();
  const sum = (name: string) =>
    [...text.matchAll(new RegExp(`^${name}(?:\\{[^}]*\\})? (\\d+)$`, 'gm'))].reduce(
      (n, m) => n + Number(m[1]),
      0,
    );
  return {
    requests: sum('keytether_relay_requests_total'),
    refusals: sum('keytether_relay_refusals_total'),
  };
}

export async function run(options: string[]): Promise<void> {
  const s = settings(options);
  const cli = cliPath();
  await initCpuClock();
  const profDir = process.env.BENCH_CPU_PROF ? path.resolve(process.env.BENCH_CPU_PROF) : '';
  if (profDir) await mkdir(profDir, { recursive: true, mode: 0o700 });
  const prof = (name: string) =>
    profDir
      ? ['--cpu-prof', `--cpu-prof-dir=${profDir}`, `--cpu-prof-name=${name}.cpuprofile`]
      : [];
  const root = await mkdtemp('/tmp/ktbl-');
  await chmod(root, 0o700);
  const daemons: Daemon[] = [];
  let ws: BenchGnupg | undefined;
  let server: BenchGnupg | undefined;
  let sshd: BenchSshd | undefined;
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
  const stopAll = async () => {
    for (const d of daemons.splice(0).reverse()) await d.stop();
  };
  try {
    console.log(
      `stock gpg --batch -bsau KEY (Ed25519 signing subkey, default policy: allowed without a ` +
        `prompt), ${s.workers} concurrent workers, ${s.seconds} s per front, all on 127.0.0.1; ` +
        `this machine: ${os.cpus().length} cores, shared with other work; ` +
        `latency is wall ms per gpg process`,
    );
    // Workstation: a real gpg-agent with the key, and the same key in a keytether home.
    ws = await makeBenchGnupg(path.join(root, 'w'));
    const key = await generateUnprotectedKey(ws, 'Bench Load <load@bench>', 'ed25519', 'cert');
    const subkey = await addSigningSubkey(ws, key.fingerprint, 'ed25519');
    await ws.agentSocket();
    const ktHome = path.join(root, 'kt');
    const userHome = path.join(root, 'u');
    await mkdir(ktHome, { mode: 0o700 });
    await mkdir(userHome, { mode: 0o700 });
    const ktEnv: NodeJS.ProcessEnv = { ...process.env, KEYTETHER_HOME: ktHome, HOME: userHome };
    delete ktEnv.SSH_AUTH_SOCK;
    delete ktEnv.KEYTETHER_TOKEN;
    const imp = await runTool(process.execPath, [cli, 'keys', 'import'], ktEnv, {
      input: await exportAllSecretKeys(ws),
    });
    if (imp.code !== 0) throw new Error(`keytether keys import: ${imp.stderr}`);

    // Server: public key only; gpg there must never start an agent of its own.
    server = await makeBenchGnupg(path.join(root, 's'));
    await appendFile(path.join(server.home, 'gpg.conf'), 'no-autostart\n');
    const pub = await ws.gpg(['--batch', '--export', key.fingerprint]);
    const pubImp = await runTool('/usr/bin/gpg', ['--batch', '--import'], server.env, {
      input: pub.stdout,
    });
    if (pubImp.code !== 0)
      throw new Error(`importing the public key on the server: ${pubImp.stderr}`);
    await server.tool('gpgconf', ['--create-socketdir']);
    const sock = await server.tool('gpgconf', ['--list-dirs', 'agent-socket']);
    const serverSocket = sock.stdout.toString('utf8').trim();
    if (!serverSocket.startsWith('/')) throw new Error(`no server socket path: ${sock.stderr}`);

    const gpgArgs = ['--batch', '-bsau', key.fingerprint];
    const results = new Map<string, Measured>();
    let relayNote = '';
    const auditFile = path.join(ktHome, 'audit.jsonl');
    const measure = async (
      label: string,
      env: NodeJS.ProcessEnv,
      pids: Record<string, number | undefined>,
      audited: boolean,
    ) => {
      // One signature first, alone: a front that cannot sign at all fails here, plainly.
      const first = await gpgLoad({
        gpg: '/usr/bin/gpg',
        args: gpgArgs,
        env,
        workers: 1,
        seconds: 0,
        label: `${label} check`,
        sampleSize: 1,
      });
      if (first.sigs !== 1)
        throw new Error(`${label}: the first signature failed: ${first.failureMessages[0]}`);
      const known: Record<string, number> = {};
      for (const [k, v] of Object.entries(pids)) if (v !== undefined) known[k] = v;
      const auditFrom = audited ? await auditLines(auditFile) : 0;
      const cpu0 = cpuNow(known);
      const r = await gpgLoad({
        gpg: '/usr/bin/gpg',
        args: gpgArgs,
        env,
        workers: s.workers,
        seconds: s.seconds,
        label,
        sampleSize: SAMPLES,
      });
      const cpu = cpuPerSig(cpu0, cpuNow(known), r.sigs);
      await verifySamples(r.samples, env, key.fingerprint, subkey.fingerprint);
      results.set(label, {
        run: r,
        cpu,
        ...(audited ? { audit: await auditRequesters(auditFile, auditFrom) } : {}),
      });
    };

    if (s.only.has('anchor')) {
      await measure('anchor: local gpg-agent', ws.env, { 'gpg-agent': await ws.agentPid() }, false);
    }

    if (s.only.has('ssh')) {
      sshd = await startBenchSshd(path.join(root, 'sshd'), {
        PATH: `${path.dirname(process.execPath)}:/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin`,
        LANG: 'C',
        GNUPGHOME: server.home,
      });
      const knownHosts = path.join(root, 'known_hosts');
      await sshd.knownHosts(knownHosts, [sshd.port]);
      const shq = (x: string) => `'${x.replace(/'/g, `'\\''`)}'`;
      const session = await daemon(
        process.execPath,
        [
          ...prof('ssh'),
          cli,
          'ssh',
          '-p',
          String(sshd.port),
          '-i',
          sshd.clientKey,
          '-o',
          `UserKnownHostsFile=${knownHosts}`,
          '-o',
          'GlobalKnownHostsFile=/dev/null',
          '--remote-command',
          [process.execPath, ...prof('serve'), cli].map(shq).join(' '),
          `${sshd.user}@127.0.0.1`,
        ],
        ktEnv,
        'ready: ',
        60_000,
      );
      const pids = { 'keytether ssh': session.child.pid, serve: findServe(server.home) };
      await measure('keytether ssh', server.env, pids, true);
      await stopAll();
      await sshd.stop();
      sshd = undefined;
    }

    if (s.only.has('relay')) {
      const relay = await daemon(
        process.execPath,
        [...prof('relay'), cli, 'relay', '--listen', '127.0.0.1:0'],
        process.env,
        'listening: ',
      );
      const url = relay.readyText.trim();
      const tok = await runTool(
        process.execPath,
        [cli, 'token', 'create', '--key', key.fingerprint, '--relay', url, '--label', 'load'],
        ktEnv,
      );
      if (tok.code !== 0) throw new Error(`keytether token create: ${tok.stderr}`);
      const token = tok.stdout.toString('utf8').trim();
      const holder = await daemon(
        process.execPath,
        [
          ...prof('agent'),
          cli,
          'agent',
          '--backend',
          'builtin',
          '--socket',
          path.join(root, 'S.local'),
          '--relay',
          url,
        ],
        ktEnv,
        'ready: ',
      );
      await stderrLine(holder, /^relay connected: /m, 'the holder never connected to the relay');
      const facadeHome = path.join(root, 'facade');
      await mkdir(facadeHome, { mode: 0o700 });
      const connect = await daemon(
        process.execPath,
        [...prof('connect'), cli, 'connect', '--relay', url, '--socket', serverSocket],
        { ...process.env, KEYTETHER_HOME: facadeHome, KEYTETHER_TOKEN: token },
        'ready: ',
      );
      const pids = {
        relay: relay.child.pid,
        agent: holder.child.pid,
        connect: connect.child.pid,
      };
      const before = await relayCounters(url);
      await measure('keytether relay + connect', server.env, pids, true);
      const after = await relayCounters(url);
      const r = results.get('keytether relay + connect')!.run;
      const msgs = after.requests - before.requests;
      relayNote =
        `relay: ${msgs} facade messages in the window (${(msgs / r.sigs).toFixed(2)} per ` +
        `signature, ${(msgs / r.seconds).toFixed(1)}/s on the one token; its default limit is ` +
        `${DEFAULT_LIMITS.tokenRatePerSecond}/s), refusals ${after.refusals - before.refusals}`;
      await stopAll();
    }

    if (results.size > 0) {
      console.log(row(['front', 'sigs', 'fail', 'sigs/s', 'p50', 'p90', 'p99', 'max']));
      for (const [label, m] of results) console.log(resultRow(label, m.run));
      const anchor = results.get('anchor: local gpg-agent');
      for (const [label, m] of results) {
        if (anchor && m !== anchor) console.log(ratioLine(label, m.run, anchor.run));
      }
      for (const [label, { run: r, cpu, audit }] of results) {
        const names = audit
          ? [...audit.names].map(([n, c]) => `${n} ${c}`).join(', ') || 'none'
          : '';
        console.log(
          `${label}: ${r.samples.length} sampled signatures verified with gpg --verify; ` +
            `CPU ms per signature: ${formatCpu(cpu)}` +
            (audit
              ? `; audit records ${audit.records}, naming the requesting process ` +
                `${audit.named} (${names})`
              : '') +
            (r.failures > 0 ? `; first failures:\n  ${r.failureMessages.join('\n  ')}` : ''),
        );
      }
      if (relayNote) console.log(relayNote);
      const failed = [...results.values()].reduce((n, m) => n + m.run.failures, 0);
      console.log(`failures in all: ${failed} (goal 0: ${failed === 0 ? 'met' : 'not met'})`);
    }

    if (s.only.has('idle')) await relayRssPerIdleHolder(cli, s.holders);
  } finally {
    process.removeListener('SIGINT', onSignal);
    try {
      await stopAll();
      await sshd?.stop();
    } finally {
      process.removeListener('exit', onExit);
      try {
        await server?.cleanup();
        await ws?.cleanup();
      } finally {
        await rm(root, { recursive: true, force: true });
      }
    }
  }
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  await run(process.argv.slice(2));
}
