// `gpg --detach-sign` on a server, wall time, through `keytether ssh` (facade on the server, one
// request per signature over the tunnel) against OpenSSH `RemoteForward` of the real gpg-agent's
// extra socket (every Assuan line crosses the link), over the same emulated link: a TCP proxy
// that delays each direction by 10 ms (20 ms round trip) in front of a real sshd. The "server" is
// this machine as this user, with its own GNUPGHOME holding only the public key.
// A no-delay baseline runs the same gpg against each agent's local socket directly, so the
// difference is what the link costs; gpg's own start-up is in every figure.
// BENCH_RUNS (default 20) measured signatures per path, in alternating blocks of BENCH_BLOCK
// (default 5); each block starts its path afresh and signs once unmeasured first.

import { spawn, type ChildProcess } from 'node:child_process';
import { rmSync } from 'node:fs';
import {
  appendFile,
  chmod,
  mkdir,
  mkdtemp,
  rm,
  symlink,
  unlink,
  writeFile,
} from 'node:fs/promises';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import { startDelayProxy, type DelayProxy } from './support/delay-proxy.js';
import {
  exportAllSecretKeys,
  generateUnprotectedKey,
  makeBenchGnupg,
  type BenchGnupg,
} from './support/gnupg-home.js';
import { runTool, startDaemon, type Daemon } from './support/processes.js';
import { startBenchSshd, type BenchSshd } from './support/sshd.js';
import { cliPath, median } from './support/settings.js';

const ONE_WAY_DELAY_MS = 10;
const READY_DEADLINE_MS = 30_000;
const POLL_MS = 25;
const GOAL_RATIO = 0.15;

const PATHS = ['keytether', 'openssh'] as const;
type PathName = (typeof PATHS)[number];

function envInt(name: string, fallback: number, min: number): number {
  const raw = process.env[name];
  if (raw === undefined || raw === '') return fallback;
  const n = Number(raw);
  if (!Number.isInteger(n) || n < min) throw new Error(`${name} must be an integer ≥ ${min}`);
  return n;
}

function shq(s: string): string {
  return `'${s.replace(/'/g, `'\\''`)}'`;
}

/** A running way for the server's gpg to reach an agent; stop() takes it down again. */
interface Path {
  stop(): Promise<void>;
}

async function stopChild(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise<void>((r) => child.once('exit', () => r()));
  child.kill('SIGTERM');
  const kill = setTimeout(() => child.kill('SIGKILL'), 5_000);
  await exited;
  clearTimeout(kill);
}

export async function run(): Promise<void> {
  const runs = envInt('BENCH_RUNS', 20, 1);
  const block = Math.min(envInt('BENCH_BLOCK', 5, 1), runs);
  const cli = cliPath();
  const root = await mkdtemp('/tmp/ktbs-');
  await chmod(root, 0o700);

  const children = new Set<ChildProcess>();
  const track = (c: ChildProcess): ChildProcess => {
    children.add(c);
    c.once('exit', () => children.delete(c));
    return c;
  };
  let ws: BenchGnupg | undefined;
  let server: BenchGnupg | undefined;
  let sshd: BenchSshd | undefined;
  let proxy: DelayProxy | undefined;
  // Ctrl-C must still take every daemon down: exiting runs the exit hooks that do so.
  const onSignal = () => process.exit(130);
  const onExit = () => {
    for (const c of children) c.kill('SIGKILL');
    rmSync(root, { recursive: true, force: true });
  };
  process.once('SIGINT', onSignal);
  process.once('exit', onExit);
  try {
    // Workstation: a real gpg-agent with the key, and the same key in a keytether home.
    ws = await makeBenchGnupg(path.join(root, 'w'));
    const key = await generateUnprotectedKey(ws, 'Bench SSH <ssh@bench>', 'ed25519');
    await ws.agentSocket();
    const extra = await ws.tool('gpgconf', ['--list-dirs', 'agent-extra-socket']);
    const extraSocket = extra.stdout.toString('utf8').trim();
    if (extra.code !== 0 || !extraSocket.startsWith('/')) {
      throw new Error(`gpgconf --list-dirs agent-extra-socket: ${extra.stderr}`);
    }
    const ktHome = path.join(root, 'kt');
    await mkdir(ktHome, { mode: 0o700 });
    const userHome = path.join(root, 'u');
    await mkdir(userHome, { mode: 0o700 });
    const ktEnv: NodeJS.ProcessEnv = { ...process.env, KEYTETHER_HOME: ktHome, HOME: userHome };
    delete ktEnv.SSH_AUTH_SOCK;
    const secret = await exportAllSecretKeys(ws);
    const keyFile = path.join(root, 'secret.gpg');
    try {
      await writeFile(keyFile, secret, { mode: 0o600 });
      const imp = await runTool(process.execPath, [cli, 'keys', 'import', keyFile], ktEnv);
      if (imp.code !== 0) throw new Error(`keytether keys import: ${imp.stderr}`);
    } finally {
      secret.fill(0);
      await rm(keyFile, { force: true });
    }

    // Server: public key only; gpg there must never start an agent of its own.
    server = await makeBenchGnupg(path.join(root, 's'));
    await appendFile(path.join(server.home, 'gpg.conf'), 'no-autostart\n');
    const pub = await ws.gpg(['--batch', '--export', key.fingerprint]);
    const imp = await runTool('/usr/bin/gpg', ['--batch', '--import'], server.env, {
      input: pub.stdout,
    });
    if (imp.code !== 0) throw new Error(`importing the public key on the server: ${imp.stderr}`);
    await server.tool('gpgconf', ['--create-socketdir']);
    const sock = await server.tool('gpgconf', ['--list-dirs', 'agent-socket']);
    const serverSocket = sock.stdout.toString('utf8').trim();
    if (!serverSocket.startsWith('/')) throw new Error(`no server socket path: ${sock.stderr}`);
    const serverEnv = server.env;

    sshd = await startBenchSshd(path.join(root, 'sshd'), {
      PATH: `${path.dirname(process.execPath)}:/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin`,
      LANG: 'C',
      GNUPGHOME: server.home,
    });
    proxy = await startDelayProxy(sshd.port, ONE_WAY_DELAY_MS);
    const knownHosts = path.join(root, 'known_hosts');
    await sshd.knownHosts(knownHosts, [proxy.port, sshd.port]);
    const dest = `${sshd.user}@127.0.0.1`;

    const removeServerSocket = async () => {
      await unlink(serverSocket).catch(() => undefined);
    };

    /** Polls the server socket until an agent answers there (sshd binds it some time after). */
    const waitForAgent = async (child: ChildProcess, stderr: () => string) => {
      const deadline = Date.now() + READY_DEADLINE_MS;
      for (;;) {
        if (child.exitCode !== null || child.signalCode !== null) {
          throw new Error(`ssh -R exited (${child.exitCode ?? child.signalCode}): ${stderr()}`);
        }
        const r = await server!.tool('gpg-connect-agent', [
          '--no-autostart',
          'GETINFO version',
          '/bye',
        ]);
        if (r.code === 0 && /^OK/m.test(r.stdout.toString('utf8'))) return;
        if (Date.now() > deadline) {
          throw new Error(`the forwarded socket never answered; ssh: ${stderr()}`);
        }
        await new Promise((resolve) => setTimeout(resolve, POLL_MS));
      }
    };

    const start: Record<PathName, (delayed: boolean) => Promise<Path>> = {
      async keytether(delayed) {
        await removeServerSocket();
        if (!delayed) {
          // The holder's own socket as the server's: keytether's no-link figure.
          const d: Daemon = await startDaemon(
            process.execPath,
            [cli, 'agent', '--socket', serverSocket],
            ktEnv,
            'ready: ',
          );
          track(d.child);
          return { stop: () => d.stop() };
        }
        const d = await startDaemon(
          process.execPath,
          [
            cli,
            'ssh',
            '-p',
            String(proxy!.port),
            '-i',
            sshd!.clientKey,
            '-o',
            `UserKnownHostsFile=${knownHosts}`,
            '-o',
            'GlobalKnownHostsFile=/dev/null',
            '--remote-socket',
            serverSocket,
            '--remote-command',
            `${shq(process.execPath)} ${shq(cli)}`,
            dest,
          ],
          ktEnv,
          'ready: ',
          READY_DEADLINE_MS,
        );
        track(d.child);
        return { stop: () => d.stop() };
      },
      async openssh(delayed) {
        await removeServerSocket();
        if (!delayed) {
          // The extra socket itself where the server's gpg looks: gpg-agent's no-link figure.
          await symlink(extraSocket, serverSocket);
          return { stop: removeServerSocket };
        }
        const child = track(
          spawn(
            'ssh',
            [
              '-F',
              '/dev/null',
              '-N',
              '-o',
              'ExitOnForwardFailure=yes',
              '-o',
              `UserKnownHostsFile=${knownHosts}`,
              '-o',
              'GlobalKnownHostsFile=/dev/null',
              '-o',
              'StrictHostKeyChecking=yes',
              '-o',
              'BatchMode=yes',
              '-o',
              'IdentitiesOnly=yes',
              '-o',
              'IdentityAgent=none',
              '-o',
              'LogLevel=ERROR',
              '-i',
              sshd!.clientKey,
              '-p',
              String(proxy!.port),
              '-R',
              `${serverSocket}:${extraSocket}`,
              dest,
            ],
            { stdio: ['ignore', 'ignore', 'pipe'], env: ktEnv },
          ),
        );
        let stderr = '';
        child.stderr!.on('data', (d: Buffer) => (stderr = (stderr + d.toString()).slice(-4096)));
        try {
          await waitForAgent(child, () => stderr);
        } catch (e) {
          await stopChild(child);
          throw e;
        }
        return {
          stop: async () => {
            await stopChild(child);
            await removeServerSocket();
          },
        };
      },
    };

    const message = Buffer.from('a line signed on the server\n');
    const msgFile = path.join(root, 'msg.txt');
    await writeFile(msgFile, message);
    const sigFile = path.join(root, 'msg.sig');
    /** One `gpg --detach-sign` on the server, wall time in ms; checks the signature verifies. */
    const signOnce = async (verify: boolean): Promise<number> => {
      const t0 = performance.now();
      const r = await runTool(
        '/usr/bin/gpg',
        ['--batch', '-u', key.fingerprint, '--detach-sign'],
        serverEnv,
        { input: message, timeoutMs: 60_000 },
      );
      const ms = performance.now() - t0;
      if (r.code !== 0 || r.stdout.length === 0) throw new Error(`gpg --detach-sign: ${r.stderr}`);
      if (verify) {
        await writeFile(sigFile, r.stdout);
        const v = await runTool(
          '/usr/bin/gpg',
          ['--batch', '--verify', sigFile, msgFile],
          serverEnv,
        );
        if (v.code !== 0 || !/Good signature/.test(v.stderr)) {
          throw new Error(`the signature did not verify: ${v.stderr}`);
        }
      }
      return ms;
    };

    const measure = async (delayed: boolean): Promise<Record<PathName, number[]>> => {
      const times: Record<PathName, number[]> = { keytether: [], openssh: [] };
      while (times.keytether.length < runs || times.openssh.length < runs) {
        for (const name of PATHS) {
          const n = Math.min(block, runs - times[name].length);
          if (n === 0) continue;
          const p = await start[name](delayed);
          try {
            await signOnce(true);
            for (let i = 0; i < n; i++) times[name].push(await signOnce(false));
          } finally {
            await p.stop();
          }
        }
      }
      return times;
    };

    console.log(
      `gpg --batch --detach-sign on the server, wall ms per signature, ${runs} runs per path ` +
        `(blocks of ${block}, alternating), Ed25519`,
    );
    const widths = [44, 10, 10, 10];
    const row = (cols: (string | number)[]) =>
      cols.map((c, i) => String(c).padEnd(widths[i] ?? 10)).join(' ');
    console.log(row(['path', 'median', 'min', 'max']));
    const show = (label: string, xs: number[]) =>
      console.log(
        row([label, median(xs).toFixed(1), Math.min(...xs).toFixed(1), Math.max(...xs).toFixed(1)]),
      );

    const base = await measure(false);
    show('no link: keytether agent socket', base.keytether);
    show('no link: gpg-agent extra socket', base.openssh);
    const linked = await measure(true);
    show(`${2 * ONE_WAY_DELAY_MS} ms RTT: keytether ssh`, linked.keytether);
    show(`${2 * ONE_WAY_DELAY_MS} ms RTT: OpenSSH -R of the extra socket`, linked.openssh);

    const kt = median(linked.keytether);
    const os = median(linked.openssh);
    const rtt = 2 * ONE_WAY_DELAY_MS;
    const ktNet = median(linked.keytether) - median(base.keytether);
    const osNet = median(linked.openssh) - median(base.openssh);
    console.log(
      `link cost (median minus no-link median): keytether ssh ${ktNet.toFixed(1)} ms ` +
        `(≈ ${(ktNet / rtt).toFixed(1)} round trips), OpenSSH -R ${osNet.toFixed(1)} ms ` +
        `(≈ ${(osNet / rtt).toFixed(1)} round trips)`,
    );
    const ratio = kt / os;
    console.log(
      `ratio keytether/OpenSSH ${ratio.toFixed(2)} (goal ≤ ${GOAL_RATIO}: ${ratio <= GOAL_RATIO ? 'met' : 'not met'})`,
    );
  } finally {
    process.removeListener('SIGINT', onSignal);
    try {
      for (const c of [...children]) await stopChild(c);
      await proxy?.close();
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
  await run();
}
