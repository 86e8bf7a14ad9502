// deploy/container/Containerfile, checked two ways on a machine without a container engine:
// lint rules a reviewer would apply (pinned bases, non-root, exec forms, a health check, npm ci),
// and its runtime stage played for real: the production-only install it copies, started as an
// unprivileged user on a read-only root file system, answering the HEALTHCHECK command it names.

import t from 'tap';
import { execFile, spawn } from 'node:child_process';
import { chmod, cp, mkdtemp, readFile, rm } from 'node:fs/promises';
import path from 'node:path';
import { promisify } from 'node:util';
import { repoRoot, waitForLine } from './support/cli.js';
import { testNeeding } from './support/ci.js';

const execFileP = promisify(execFile);
const file = path.join(repoRoot, 'deploy', 'container', 'Containerfile');
const text = await readFile(file, 'utf8');

interface Instruction {
  op: string;
  args: string;
}

/** Instructions with continuation lines joined and comments dropped, as a builder reads them. */
function instructions(src: string): Instruction[] {
  const joined = src.replace(/\\\n/g, ' ');
  return joined
    .split('\n')
    .map((l) => l.trim())
    .filter((l) => l && !l.startsWith('#'))
    .map((l) => {
      const m = /^(\w+)\s+(.*)$/.exec(l)!;
      return { op: m[1]!.toUpperCase(), args: m[2]! };
    });
}

const all = instructions(text);
const lastFrom = all.map((i) => i.op).lastIndexOf('FROM');
const runtime = all.slice(lastFrom);
const exec = (op: string): string[] => {
  const i = runtime.find((x) => x.op === op);
  if (!i) return [];
  const json = i.args.replace(/^.*?(\[.*\])$/, '$1');
  return JSON.parse(json) as string[];
};

t.test('lint: what a reviewer checks in a Containerfile', async (t) => {
  for (const from of all.filter((i) => i.op === 'FROM')) {
    const image = from.args.split(/\s+/)[0]!;
    t.match(image, /^[\w./-]+:[\w.-]+(@sha256:[0-9a-f]{64})?$/, `${image} has a tag`);
    t.notMatch(image, /:latest\b/, `${image} is not :latest`);
  }
  t.notOk(
    all.some((i) => i.op === 'ADD'),
    'COPY, never ADD (no remote URLs or archives unpacked)',
  );
  t.notOk(/curl[^\n]*\|\s*(ba)?sh/.test(text), 'nothing piped into a shell');
  for (const run of all.filter((i) => i.op === 'RUN')) {
    t.notMatch(run.args, /npm install\b/, 'npm ci (the lock file), not npm install');
  }
  const user = runtime.filter((i) => i.op === 'USER').at(-1);
  t.ok(user, 'the runtime stage sets USER');
  t.notMatch(user?.args ?? 'root', /^(root|0)(:|$)/, 'and it is not root');
  const health = runtime.find((i) => i.op === 'HEALTHCHECK');
  t.match(health?.args, /--timeout=\d+s/, 'HEALTHCHECK has a timeout');
  t.equal(exec('HEALTHCHECK')[0], 'node', 'HEALTHCHECK in exec form');
  t.same(exec('ENTRYPOINT').slice(0, 2), ['node', 'dist/cli/main.js'], 'ENTRYPOINT in exec form');
  const cmd = exec('CMD');
  t.equal(cmd[0], 'relay');
  const listen = cmd[cmd.indexOf('--listen') + 1]!;
  const expose = runtime.find((i) => i.op === 'EXPOSE')?.args;
  t.equal(listen.split(':').at(-1), expose, 'EXPOSE is the port CMD listens on');
  t.notOk(
    runtime.some((i) => i.op === 'VOLUME'),
    'no VOLUME: the relay writes nothing, so the root can be read-only',
  );
  // Every source directory the compiler needs is copied into the build stage.
  const build = JSON.parse(await readFile(path.join(repoRoot, 'tsconfig.build.json'), 'utf8')) as {
    include: string[];
  };
  const copied = all.filter((i) => i.op === 'COPY').map((i) => i.args.split(/\s+/)[0]);
  for (const dir of build.include) t.ok(copied.includes(dir), `${dir}/ is copied to the build`);
});

const canIsolate = await execFileP('unshare', ['--mount', 'true']).then(
  () => true,
  () => false,
);

testNeeding(
  t,
  'the runtime stage: production dependencies only, unprivileged, read-only root, healthy',
  !canIsolate && 'needs unshare --mount (root, util-linux)',
  async (t) => {
    const app = await mkdtemp('/tmp/kt-image-');
    t.teardown(() => rm(app, { recursive: true, force: true }));
    // What the runtime stage COPYs: package files, the pruned node_modules, dist/.
    await cp(path.join(repoRoot, 'package.json'), path.join(app, 'package.json'));
    await cp(path.join(repoRoot, 'package-lock.json'), path.join(app, 'package-lock.json'));
    await execFileP('npm', ['ci', '--omit=dev', '--ignore-scripts', '--offline', '--no-audit'], {
      cwd: app,
      env: { ...process.env, NODE_ENV: 'production' },
      timeout: 180_000,
    });
    await cp(path.join(repoRoot, 'dist'), path.join(app, 'dist'), { recursive: true });
    await chmod(app, 0o755);
    const { stdout: devDeps } = await execFileP('ls', [path.join(app, 'node_modules')]);
    t.notMatch(devDeps, /^(typescript|tap|fast-check)$/m, 'no dev dependency is installed');

    const [node] = exec('ENTRYPOINT');
    const entry = exec('ENTRYPOINT').slice(1);
    const cmd = exec('CMD').map((a) => (a === '0.0.0.0:7878' ? '127.0.0.1:0' : a));
    // A root file system remounted read-only in a private mount namespace, as `--read-only`
    // gives a container; the relay runs as nobody, as USER gives it a user that owns nothing.
    const script = 'mount -o bind,remount,ro / && exec "$@"';
    const relay = spawn(
      'unshare',
      ['--mount', 'sh', '-c', script, 'sh'].concat(
        ['setpriv', '--reuid=65534', '--regid=65534', '--clear-groups', '--'],
        [node === 'node' ? process.execPath : node!, ...entry, ...cmd],
      ),
      { cwd: app, env: { PATH: process.env.PATH, HOME: '/nonexistent', NODE_ENV: 'production' } },
    );
    let stderr = '';
    relay.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    const exited = new Promise<void>((resolve) => relay.on('exit', () => resolve()));
    t.teardown(async () => {
      relay.kill('SIGKILL');
      await exited;
    });
    const base = (
      await waitForLine(relay.stdout, /^listening: (\S+)$/, 30_000).catch((e) => {
        throw new Error(`${(e as Error).message}; stderr: ${stderr}`);
      })
    )[1]!;

    const health = exec('HEALTHCHECK');
    const check = () =>
      execFileP(health[0]!, health.slice(1), {
        cwd: app,
        env: { ...process.env, KEYTETHER_RELAY_HEALTH_URL: `${base}/healthz` },
      }).then(
        () => 0,
        (e: { code?: number; stderr?: string }) => ({ code: e.code, stderr: e.stderr }),
      );
    t.equal(await check(), 0, 'HEALTHCHECK passes while the relay runs');
    relay.kill('SIGTERM');
    await exited;
    t.match(await check(), { code: 1, stderr: /^unhealthy: http:\/\/127\.0\.0\.1:\d+\/healthz: / });
    // tap's process-info hook, which tap injects into every child, writes under .tap/ at exit;
    // that write failing is the read-only root working. Nothing of the relay's own may appear.
    const writes = [...stderr.matchAll(/(EROFS|EACCES): [^\n]*?'([^'\n]+)'/g)].map((m) => m[2]!);
    t.same(
      writes.filter((p) => !p.includes('/.tap/processinfo/')),
      [],
      'the relay never tried to write',
    );
  },
);
