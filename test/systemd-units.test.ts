// deploy/systemd/: each unit passes `systemd-analyze verify`, the relay's hardening is measured
// by `systemd-analyze security`, and the agent's socket unit works for real: systemd's own
// socket activator (systemd-socket-activate: sd_listen_fds passing without a user manager,
// which this machine does not run) listens on the unit's paths, the first gpg connection starts
// `keytether agent`, which takes the passed sockets, signs, and answers `keytether status` on the
// control socket, and leaves the socket files to the manager when it stops.

import t from 'tap';
import { spawn, execFile } from 'node:child_process';
import { copyFile, lstat, mkdtemp, readFile, readdir, rm, writeFile } from 'node:fs/promises';
import { existsSync } from 'node:fs';
import path from 'node:path';
import { promisify } from 'node:util';
import { testNeeding } from './support/ci.js';
import { cliPath, importIntoKeytether, repoRoot, runCli, waitForLine } from './support/cli.js';
import { clientHome, exportSecretKey, generateKey, makeGnupgHome } from './support/gnupg.js';
import { parseConfig } from '../workstation/home/config.js';

const execFileP = promisify(execFile);
const unitsDir = path.join(repoRoot, 'deploy', 'systemd');

function lacking(program: string): string | false {
  const found = (process.env.PATH ?? '')
    .split(':')
    .some((d) => d && existsSync(path.join(d, program)));
  return found ? false : `needs ${program}: apt-get install systemd`;
}

async function analyze(args: string[]): Promise<{ code: number; out: string }> {
  try {
    const r = await execFileP('systemd-analyze', args, { encoding: 'utf8' });
    return { code: 0, out: `${r.stdout}${r.stderr}` };
  } catch (e) {
    const err = e as { code?: number; stdout?: string; stderr?: string };
    return { code: err.code ?? 1, out: `${err.stdout ?? ''}${err.stderr ?? ''}` };
  }
}

testNeeding(
  t,
  'every unit passes systemd-analyze verify',
  lacking('systemd-analyze'),
  async (t) => {
    const tmp = await mkdtemp('/tmp/ktunits-');
    t.teardown(() => rm(tmp, { recursive: true, force: true }));
    const units = (await readdir(unitsDir)).filter((f) => /\.(service|socket)$/.test(f));
    t.same(units.sort(), [
      'keytether-agent.service',
      'keytether-agent.socket',
      'keytether-relay.service',
      'keytether-ssh@.service',
    ]);
    for (const unit of units) {
      await copyFile(path.join(unitsDir, unit), path.join(tmp, unit.replace('@.', '@example.')));
    }
    for (const unit of await readdir(tmp)) {
      const r = await analyze(['verify', path.join(tmp, unit)]);
      t.equal(r.code, 0, `${unit}: ${r.out}`);
      t.equal(r.out.trim(), '', `${unit}: no warnings`);
    }
    // The check can fail: a unit whose ExecStart is not an absolute path is refused.
    const bad = path.join(tmp, 'broken.service');
    await writeFile(bad, '[Service]\nExecStart=keytether agent\n');
    t.not((await analyze(['verify', bad])).out.trim(), '', 'a broken unit is reported');
  },
);

t.test(
  "the signing box recipe's config.toml is valid and allows only through tokens",
  async (t) => {
    const readme = await readFile(path.join(unitsDir, 'README.md'), 'utf8');
    const toml = /```toml\n([\s\S]*?)```/.exec(readme)?.[1];
    t.ok(toml, 'the recipe has a config.toml');
    const c = parseConfig(toml!, 'deploy/systemd/README.md');
    t.same(c.relay, ['https://relay.example:7878']);
    t.match(c.policy, [{ front: 'relay', op: 'sign', action: 'allow' }, { action: 'deny' }]);
  },
);

testNeeding(t, "the relay's system unit is hardened", lacking('systemd-analyze'), async (t) => {
  const r = await analyze([
    'security',
    '--offline=yes',
    path.join(unitsDir, 'keytether-relay.service'),
  ]);
  const level = Number(/Overall exposure level for \S+: ([0-9.]+)/.exec(r.out)?.[1]);
  // systemd's scale: 0 is fully locked down, 10 is none; below 2 it says "OK".
  t.ok(level <= 2, `exposure ${level} (systemd-analyze security)`);
  const unit = await readFile(path.join(unitsDir, 'keytether-relay.service'), 'utf8');
  for (const line of [
    'DynamicUser=yes',
    'NoNewPrivileges=yes',
    'ProtectSystem=strict',
    'PrivateTmp=yes',
    'RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX',
    'SystemCallFilter=@system-service',
  ]) {
    t.ok(unit.split('\n').includes(line), line);
  }
});

testNeeding(
  t,
  "keytether agent takes the sockets the agent's .socket unit passes",
  lacking('systemd-socket-activate'),
  async (t) => {
    const ws = await makeGnupgHome();
    t.teardown(() => ws.cleanup());
    const key = await generateKey(ws, {
      uid: 'Sam Socket <sam@example.org>',
      algo: 'ed25519',
      usage: 'sign',
    });
    const tmp = await mkdtemp('/tmp/ktsa-');
    t.teardown(() => rm(tmp, { recursive: true, force: true }));
    // HOME is the unit's %h; KEYTETHER_HOME is left to its default, which the unit's paths name.
    const env = { HOME: tmp, KEYTETHER_HOME: undefined, XDG_DATA_HOME: undefined };
    await importIntoKeytether(await exportSecretKey(ws, key.fingerprint), env);

    const socketUnit = await readFile(path.join(unitsDir, 'keytether-agent.socket'), 'utf8');
    const paths = [...socketUnit.matchAll(/^ListenStream=(.+)$/gm)].map((m) =>
      m[1]!.replace('%h', tmp),
    );
    t.equal(paths.length, 2);
    const agentSocket = paths.find((p) => p.endsWith('/S.gpg-agent'))!;
    const activator = spawn(
      'systemd-socket-activate',
      [
        ...paths.flatMap((p) => ['-l', p]),
        '-E',
        `HOME=${tmp}`,
        '-E',
        `PATH=${process.env.PATH}`,
        '-E',
        'GNUPGHOME=/tmp/keytether-tests-no-gnupg',
        process.execPath,
        await cliPath(),
        'agent',
        '--backend',
        'builtin',
      ],
      { stdio: ['ignore', 'pipe', 'pipe'] },
    );
    let activatorErr = '';
    activator.stderr.on('data', (b: Buffer) => (activatorErr += b.toString()));
    // It announces each socket in order; the last line means all are listening.
    const listening = waitForLine(activator.stderr, new RegExp(`Listening on ${paths.at(-1)} `));
    t.teardown(() => activator.kill('SIGKILL'));
    await listening;
    t.notMatch(activatorErr, /Execing/, 'no agent runs before the first connection');

    const pub = (await ws.gpg(['--batch', '--export', key.fingerprint])).stdout;
    const g = await clientHome(agentSocket, pub);
    t.teardown(() => g.cleanup());
    const data = path.join(tmp, 'data.txt');
    await writeFile(data, 'activated\n');
    const sign = async (n: number) => {
      const sig = path.join(tmp, `data-${n}.sig`);
      const r = await g.gpg(['--batch', '-u', key.fingerprint, '-o', sig, '--detach-sign', data]);
      t.equal(r.code, 0, `gpg signs through the activated socket: ${r.stderr}`);
      const v = await g.gpg(['--batch', '--verify', sig, data]);
      t.match(v.stderr.toString(), /Good signature from "Sam Socket/);
    };
    const status = async () => {
      const r = await runCli(['status'], { env });
      t.equal(r.code, 0, r.stderr);
      t.match(r.stdout, `gpg-agent socket: ${agentSocket}`);
      return Number(/^agent: pid (\d+)/m.exec(r.stdout)?.[1]);
    };

    await sign(1);
    t.match(activatorErr, /Execing/, 'the first connection started the agent');
    // The activator execs the agent in place, as systemd does: LISTEN_PID names that process.
    t.equal(await status(), activator.pid, 'the agent is the process the sockets were passed to');
    await sign(2);

    // Stopped, the agent leaves the socket files alone: they are the service manager's.
    const exited = new Promise((resolve) => activator.once('exit', resolve));
    activator.kill('SIGTERM');
    await exited;
    for (const p of paths) t.ok((await lstat(p)).isSocket(), `${p} is left to the manager`);
  },
);
