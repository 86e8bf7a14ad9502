// deploy/ci/*.yml run as their CI would run them: the job scripts are read out of the YAML and
// executed (GitHub: bash -e per `run:` step with the step's env; GitLab: each `script:` entry)
// in a checkout with a tag, against a real relay and holder on this machine. Only apt-get is left
// out: the keytether install line runs as written, with the package at the examples' default
// path an `npm pack` of this build (npm's -g prefix in the test's directory), so the jobs run the
// keytether that line installed. The artifact signature and the re-signed tag must verify, and
// the holder must have checked both signatures (clear signing).

import t, { type Test } from 'tap';
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { copyFile, cp, mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { homedir } from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
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

// How this machine reaches the npm registry, which a CI runner has its own way of too: a proxy
// and its CA in the environment, and npm's cafile/registry settings. The runner's own prefix
// moves npm's global npmrc (PREFIX/etc/npmrc) and its HOME moves ~/.npmrc, so settings made
// there would be lost and an HTTPS proxy with its own CA fails every fetch
// (SELF_SIGNED_CERT_IN_CHAIN) after retries.
const PASSED_THROUGH = [
  'NODE_EXTRA_CA_CERTS',
  'SSL_CERT_FILE',
  'SSL_CERT_DIR',
  'HTTPS_PROXY',
  'https_proxy',
  'HTTP_PROXY',
  'http_proxy',
  'NO_PROXY',
  'no_proxy',
];
let access: Promise<NodeJS.ProcessEnv> | undefined;
function registryAccess(): Promise<NodeJS.ProcessEnv> {
  access ??= (async () => {
    const env: NodeJS.ProcessEnv = {};
    for (const k of PASSED_THROUGH) if (process.env[k] !== undefined) env[k] = process.env[k];
    for (const [key, name] of [
      ['cafile', 'npm_config_cafile'],
      ['registry', 'npm_config_registry'],
      ['proxy', 'npm_config_proxy'],
      ['https-proxy', 'npm_config_https_proxy'],
    ] as const) {
      const { stdout } = await execFileP('npm', ['config', 'get', key]);
      const value = stdout.trim();
      if (value !== '' && value !== 'null' && value !== 'undefined') env[name] = value;
    }
    return env;
  })();
  return access;
}

const systemPackages = (script: string) => /\bapt-get\b/.test(script);

const execFileP = promisify(execFile);
let packed: Promise<string> | undefined;

/** What `npm pack` in a checkout gives a user, made from the test build (built once per file). */
function keytetherPackage(): Promise<string> {
  packed ??= (async () => {
    // Inside the checkout so the build's man step resolves node_modules.
    const stage = await mkdtemp(path.join(repoRoot, '.cache', 'ci-package-'));
    t.teardown(() => rm(stage, { recursive: true, force: true }));
    await cp(path.dirname(path.dirname(await cliPath())), path.join(stage, 'dist'), {
      recursive: true,
    });
    await execFileP(process.execPath, [
      path.join(repoRoot, 'scripts', 'build-man.mjs'),
      path.join(stage, 'dist'),
    ]);
    await mkdir(path.join(stage, 'docs'));
    for (const f of ['package.json', 'README.md', 'docs/config.example.toml']) {
      await copyFile(path.join(repoRoot, f), path.join(stage, f));
    }
    const { stdout } = await execFileP('npm', ['pack', '--ignore-scripts', '--silent'], {
      cwd: stage,
    });
    return path.join(stage, stdout.trim());
  })();
  return packed;
}

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

  // The runner: `npm install -g` goes to a prefix of its own, whose bin/ comes first on PATH
  // (dependencies from this machine's npm cache where it has them); a checkout with a commit and
  // a tag.
  const prefix = path.join(tmp, 'npm-global');
  const repo = path.join(tmp, 'checkout');
  const runnerHome = path.join(tmp, 'runner-home');
  await mkdir(runnerHome);
  const runnerEnv: NodeJS.ProcessEnv = {
    PATH: `${path.join(prefix, 'bin')}:${process.env.PATH ?? '/usr/bin:/bin'}`,
    HOME: runnerHome,
    LANG: 'C.UTF-8',
    GIT_CONFIG_NOSYSTEM: '1',
    npm_config_prefix: prefix,
    npm_config_cache: process.env.npm_config_cache ?? path.join(homedir(), '.npm'),
    ...(await registryAccess()),
    npm_config_prefer_offline: 'true',
    npm_config_audit: 'false',
    npm_config_fund: 'false',
    npm_config_update_notifier: 'false',
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
  /** Puts the package where the example's KEYTETHER_PACKAGE points by default. */
  const placePackage = async (where: string) => {
    t.match(where, /^\.\/ci\/keytether-[\d.]+\.tgz$/, 'the default is a path in the repository');
    await mkdir(path.join(repo, path.dirname(where)), { recursive: true });
    await copyFile(await keytetherPackage(), path.join(repo, where));
  };
  /** After the install line: keytether and its man page come from the package. */
  const checkInstalled = async (t: Test) => {
    const which = await run('sh', 'command -v keytether', { cwd: repo, env: runnerEnv });
    t.equal(
      which.out.trim(),
      path.join(prefix, 'bin', 'keytether'),
      'keytether is the installed one',
    );
    await readFile(path.join(prefix, 'share', 'man', 'man1', 'keytether.1'), 'utf8').then((page) =>
      t.match(page, /^\.TH KEYTETHER 1 /, 'npm linked the man page'),
    );
  };
  return {
    key,
    token: made.stdout.trim(),
    repo,
    runnerEnv,
    checkResults,
    placePackage,
    checkInstalled,
  };
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
  const expressions: Record<string, string | undefined> = {
    'secrets.KEYTETHER_TOKEN': s.token,
    'vars.SIGNING_KEY': s.key.fingerprint,
    // Not set: the example's default applies.
    'vars.KEYTETHER_PACKAGE': undefined,
  };
  let ran = 0;
  for (const step of steps) {
    if (step.run === undefined || systemPackages(step.run)) continue;
    const env: NodeJS.ProcessEnv = { ...s.runnerEnv, GITHUB_REF_NAME: 'v1.0', CI: 'true' };
    for (const [name, value] of Object.entries(step.env ?? {})) {
      env[name] = String(value).replace(
        /\$\{\{\s*([\w.]+)\s*(?:\|\|\s*'([^']*)'\s*)?\}\}/g,
        (_m, e: string, fallback: string | undefined) => {
          if (!(e in expressions)) {
            throw new Error(`the example uses \${{ ${e} }}, unknown to this test`);
          }
          const v = expressions[e] ?? fallback;
          if (v === undefined) throw new Error(`\${{ ${e} }} has no value and no default`);
          return v;
        },
      );
    }
    if (env.KEYTETHER_PACKAGE !== undefined) await s.placePackage(env.KEYTETHER_PACKAGE);
    const r = await run('bash', step.run, { cwd: s.repo, env });
    t.equal(r.code, 0, `step ${JSON.stringify(step.run.slice(0, 40))}: ${r.out}`);
    t.notMatch(r.out, /EBADENGINE/, 'no dependency refuses this Node');
    ran++;
  }
  t.equal(ran, 3, 'the install, build and signing steps ran');
  await s.checkInstalled(t);
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
  const job = doc['sign-release'] as {
    variables: Record<string, string>;
    before_script: string[];
    script: string[];
  };
  await s.placePackage(job.variables.KEYTETHER_PACKAGE!);
  const env: NodeJS.ProcessEnv = {
    ...s.runnerEnv,
    ...job.variables,
    CI_COMMIT_TAG: 'v1.0',
    CI: 'true',
    KEYTETHER_TOKEN: s.token,
    SIGNING_KEY: s.key.fingerprint,
  };
  let ran = 0;
  for (const line of [...job.before_script, ...job.script]) {
    if (systemPackages(line)) continue;
    const r = await run('sh', line, { cwd: s.repo, env });
    t.equal(r.code, 0, `script ${JSON.stringify(line.slice(0, 40))}: ${r.out}`);
    t.notMatch(r.out, /EBADENGINE/, 'no dependency refuses this Node');
    ran++;
  }
  t.equal(ran, 3, 'the install, build and signing entries ran');
  await s.checkInstalled(t);
  await s.checkResults(t);
});
