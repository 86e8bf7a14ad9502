// deploy/ci/*.yml run as their CI would run them: the job scripts are read out of the YAML and
// executed (GitHub: bash -e per `run:` step with the step's env; GitLab: each `script:` entry)
// in a checkout with a tag, against a real relay and holder on this machine. Only the steps that
// install packages are left out. The artifact signature and the re-signed tag must verify, and
// the holder must have checked both signatures (clear signing).

import t, { type Test } from 'tap';
import { spawn, type ChildProcess } from 'node:child_process';
import { chmod, mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { parse } from 'yaml';
import { cliPath, repoRoot, runCli, spawnCli, waitForLine } from './support/cli.js';
import {
  exportPublicKey,
  exportSecretKey,
  generateKey,
  makeGnupgHome,
  type KeySpec,
} from './support/gnupg.js';

interface Step {
  uses?: string;
  run?: string;
  env?: Record<string, string>;
}

function run(
  shell: string,
  script: string,
  opts: { cwd: string; env: NodeJS.ProcessEnv },
): Promise<{ code: number | null; out: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(shell, ['-e', '-c', script], {
      ...opts,
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let out = '';
    child.stdout.on('data', (b: Buffer) => (out += b.toString()));
    child.stderr.on('data', (b: Buffer) => (out += b.toString()));
    const timer = setTimeout(() => child.kill('SIGKILL'), 90_000);
    child.on('error', reject);
    child.on('close', (code) => {
      clearTimeout(timer);
      resolve({ code, out });
    });
  });
}

const installs = (script: string) => /\b(apt-get|npm install -g)\b/.test(script);

function stop(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve();
  const exited = new Promise<void>((r) => child.once('exit', () => r()));
  child.kill('SIGTERM');
  return exited;
}

/** A holder with KEY on a relay, a token for it, and a checkout with tag v1.0 to run a job in. */
async function setUp(t: Test, spec: KeySpec) {
  const ws = await makeGnupgHome();
  t.teardown(() => ws.cleanup());
  const key = await generateKey(ws, spec);
  const tmp = await mkdtemp('/tmp/ktci-');
  t.teardown(() => rm(tmp, { recursive: true, force: true }));
  const env = { KEYTETHER_HOME: path.join(tmp, 'home') };
  const imported = await runCli(['keys', 'import'], {
    env,
    input: await exportSecretKey(ws, key.fingerprint),
  });
  t.equal(imported.code, 0, imported.stderr);

  const relay = await spawnCli(['relay', '--listen', '127.0.0.1:0']);
  t.teardown(() => stop(relay));
  const url = (await waitForLine(relay.stdout!, /^listening: (\S+)$/))[1]!;
  const holder = await spawnCli(['agent', '--socket', path.join(tmp, 'S.local'), '--relay', url], {
    env,
  });
  t.teardown(() => stop(holder));
  const linked = waitForLine(holder.stderr!, /^relay connected: /);
  linked.catch(() => {});
  await waitForLine(holder.stdout!, /^ready: /);
  await linked;
  // As the example's comment says, with this relay's URL.
  const made = await runCli(
    [
      'token',
      'create',
      '--key',
      key.fingerprint,
      '--ttl',
      '2h',
      '--max-uses',
      '10',
      '--relay',
      url,
    ],
    { env },
  );
  t.equal(made.code, 0, made.stderr);

  // The runner: `keytether` on PATH is this build; a checkout with a commit and a tag.
  const bin = path.join(tmp, 'bin');
  await mkdir(bin);
  await writeFile(
    path.join(bin, 'keytether'),
    `#!/bin/sh\nexec '${process.execPath}' '${await cliPath()}' "$@"\n`,
  );
  await chmod(path.join(bin, 'keytether'), 0o755);
  const repo = path.join(tmp, 'checkout');
  const runnerHome = path.join(tmp, 'runner-home');
  await mkdir(runnerHome);
  const runnerEnv: NodeJS.ProcessEnv = {
    PATH: `${bin}:${process.env.PATH ?? '/usr/bin:/bin'}`,
    HOME: runnerHome,
    LANG: 'C.UTF-8',
    GIT_CONFIG_NOSYSTEM: '1',
  };
  const git = (...args: string[]) =>
    run('sh', `git ${args.map((a) => `'${a}'`).join(' ')}`, {
      cwd: repo,
      env: runnerEnv,
    });
  await mkdir(repo);
  await writeFile(path.join(repo, 'README'), 'a project\n');
  const id = ['-c', 'user.name=dev', '-c', 'user.email=dev@example.org'];
  for (const step of [
    ['init', '-q', '-b', 'main'],
    ['add', 'README'],
    [...id, 'commit', '-q', '-m', 'first'],
    [...id, 'tag', '-a', 'v1.0', '-m', 'v1.0'],
  ]) {
    const r = await git(...step);
    t.equal(r.code, 0, r.out);
  }

  const verifyHome = await makeGnupgHome();
  t.teardown(() => verifyHome.cleanup());
  await verifyHome.gpg(['--batch', '--import'], {
    input: await exportPublicKey(ws, key.fingerprint),
  });

  const audit = async () =>
    (await readFile(path.join(env.KEYTETHER_HOME, 'audit.jsonl'), 'utf8'))
      .split('\n')
      .filter(Boolean)
      .map((l) => JSON.parse(l) as { op: string; decision: string; verification?: string })
      .filter((r) => r.op === 'sign');

  /** Asserts what a release manager checks after the job. */
  const checkResults = async (t: Test) => {
    const v = await verifyHome.gpg([
      '--batch',
      '--verify',
      path.join(repo, 'dist.tar.gz.asc'),
      path.join(repo, 'dist.tar.gz'),
    ]);
    t.equal(v.code, 0, v.stderr);
    t.match(v.stderr, /Good signature from "/, 'the artifact signature is Good');
    const vt = await run('sh', 'git verify-tag v1.0', {
      cwd: repo,
      env: { ...runnerEnv, GNUPGHOME: verifyHome.home },
    });
    t.equal(vt.code, 0, vt.out);
    t.match(vt.out, /Good signature from "/, 'the re-signed tag is Good');
    t.match(
      await audit(),
      [
        { decision: 'allowed', verification: 'verified' },
        { decision: 'allowed', verification: 'verified' },
      ],
      'the holder saw and checked both signatures',
    );
  };
  return { key, token: made.stdout.trim(), repo, runnerEnv, checkResults };
}

t.test('deploy/ci/github-actions.yml signs the artifact and the tag', async (t) => {
  const s = await setUp(t, {
    uid: 'Release Key <release@example.org>',
    algo: 'ed25519',
    usage: 'cert',
    subkeys: [{ algo: 'ed25519', usage: 'sign' }],
  });
  const doc = parse(await readFile(path.join(repoRoot, 'deploy/ci/github-actions.yml'), 'utf8'));
  const steps = doc.jobs.sign.steps as Step[];
  const expressions: Record<string, string> = {
    'secrets.KEYTETHER_TOKEN': s.token,
    'vars.SIGNING_KEY': s.key.fingerprint,
  };
  let ran = 0;
  for (const step of steps) {
    if (step.run === undefined || installs(step.run)) continue;
    const env: NodeJS.ProcessEnv = { ...s.runnerEnv, GITHUB_REF_NAME: 'v1.0', CI: 'true' };
    for (const [name, value] of Object.entries(step.env ?? {})) {
      env[name] = String(value).replace(/\$\{\{\s*([\w.]+)\s*\}\}/g, (_m, e: string) => {
        const v = expressions[e];
        if (v === undefined) throw new Error(`the example uses \${{ ${e} }}, unknown to this test`);
        return v;
      });
    }
    const r = await run('bash', step.run, { cwd: s.repo, env });
    t.equal(r.code, 0, `step ${JSON.stringify(step.run.slice(0, 40))}: ${r.out}`);
    ran++;
  }
  t.equal(ran, 2, 'the build step and the signing step ran');
  await s.checkResults(t);
});

t.test('deploy/ci/gitlab-ci.yml signs the artifact and the tag', async (t) => {
  // gpg's default key: a sign+certify primary and an encryption subkey; no signing subkey.
  const s = await setUp(t, {
    uid: 'Release Key <release@example.org>',
    algo: 'ed25519',
    usage: 'sign,cert',
    subkeys: [{ algo: 'cv25519', usage: 'encr' }],
  });
  const doc = parse(await readFile(path.join(repoRoot, 'deploy/ci/gitlab-ci.yml'), 'utf8'));
  const script = doc['sign-release'].script as string[];
  const env: NodeJS.ProcessEnv = {
    ...s.runnerEnv,
    CI_COMMIT_TAG: 'v1.0',
    CI: 'true',
    KEYTETHER_TOKEN: s.token,
    SIGNING_KEY: s.key.fingerprint,
  };
  let ran = 0;
  for (const line of script) {
    if (installs(line)) continue;
    const r = await run('sh', line, { cwd: s.repo, env });
    t.equal(r.code, 0, `script ${JSON.stringify(line.slice(0, 40))}: ${r.out}`);
    ran++;
  }
  t.equal(ran, 2, 'the build entry and the signing entry ran');
  await s.checkResults(t);
});
