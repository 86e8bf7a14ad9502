// scripts/test-prerequisites.mjs (npm test's pretest) on fake machines: a fake root for the fixed
// paths, a PATH holding only the programs a scenario has, and a fake apt-get that records how it
// was called. Nothing on the real machine is installed, removed or fetched.

import { spawn } from 'node:child_process';
import { chmodSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import t, { type Test } from 'tap';
import { repoRoot } from './support/cli.js';

const SCRIPT = join(repoRoot, 'scripts', 'test-prerequisites.mjs');

// What a complete Debian test machine has, by where the script looks for it.
const FIXED = [
  '/usr/bin/gpg',
  '/usr/bin/gpg-agent',
  '/usr/bin/gpg-connect-agent',
  '/usr/bin/gpgconf',
  '/usr/sbin/sshd',
  '/usr/bin/pinentry-curses',
  '/usr/sbin/haproxy',
  '/usr/bin/chromium',
];
const ON_PATH = [
  'git',
  'ssh',
  'ssh-keygen',
  'python3',
  'openssl',
  'tmux',
  'iptables',
  'systemd-analyze',
  'systemd-socket-activate',
  'redis-server',
];
// Real tools scripts/fetch-gpg24.sh needs to get as far as its cache check or its dpkg check.
const BASICS = ['bash', 'sh', 'head', 'grep', 'dirname', 'mktemp', 'rm', 'mkdir', 'cat', 'chmod'];

interface Machine {
  root: string;
  bin: string;
  cache: string;
  aptLog: string;
  /** Everything apt-get was asked, one call a line. */
  aptCalls(): string[];
}

interface MachineSpec {
  missing?: string[];
  gitVersion?: string;
  /** Whether gpg 2.4 is already in the cache fetch-gpg24.sh uses. */
  gpg24Cached?: boolean;
  /** What the fake `apt-get install` creates: fixed paths, or programs on PATH (it records the
   * call either way). */
  aptInstalls?: string[];
  /** Where /usr/bin/pinentry points (default pinentry-curses). */
  pinentry?: string;
}

function executable(file: string, body: string): void {
  mkdirSync(dirname(file), { recursive: true });
  writeFileSync(file, `#!/bin/sh\n${body}\n`);
  chmodSync(file, 0o755);
}

function whichReal(program: string): string {
  for (const d of (process.env.PATH ?? '').split(':')) {
    if (d && existsSync(join(d, program))) return join(d, program);
  }
  throw new Error(`this machine has no ${program}, which the fake machines borrow`);
}

function fakeMachine(t: Test, spec: MachineSpec = {}): Machine {
  const dir = mkdtempSync(join(tmpdir(), 'kt-prereq-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const root = join(dir, 'root');
  const bin = join(dir, 'bin');
  const cache = join(dir, 'cache');
  const aptLog = join(dir, 'apt.log');
  mkdirSync(bin, { recursive: true });
  const missing = new Set(spec.missing ?? []);
  for (const p of FIXED) if (!missing.has(p)) executable(join(root, p), 'exit 0');
  symlinkSync(spec.pinentry ?? 'pinentry-curses', join(root, '/usr/bin/pinentry'));
  for (const p of ON_PATH) {
    if (missing.has(p)) continue;
    const body = p === 'git' ? `echo "git version ${spec.gitVersion ?? '2.39.5'}"` : 'exit 0';
    executable(join(bin, p), body);
  }
  for (const p of BASICS) symlinkSync(whichReal(p), join(bin, p));
  const creates = (spec.aptInstalls ?? [])
    .map((f) => (f.startsWith('/') ? join(root, f) : join(bin, f)))
    .map((f) => `  mkdir -p "${dirname(f)}"; echo 'exit 0' >"${f}"; chmod 755 "${f}"`);
  executable(
    join(bin, 'apt-get'),
    [
      `echo "DEBIAN_FRONTEND=$DEBIAN_FRONTEND $*" >>"${aptLog}"`,
      `if [ "$1" = install ]; then`,
      ...creates,
      '  :',
      'fi',
    ].join('\n'),
  );
  if (spec.gpg24Cached ?? true) {
    executable(join(cache, 'keytether/gpg24/bin/gpg'), 'echo "gpg (GnuPG) 2.4.7"');
  }
  return {
    root,
    bin,
    cache,
    aptLog,
    aptCalls: () =>
      existsSync(aptLog) ? readFileSync(aptLog, 'utf8').split('\n').filter(Boolean) : [],
  };
}

interface Run {
  code: number | null;
  stdout: string;
  stderr: string;
}

function prerequisites(m: Machine, opts: { uid: number; ci?: boolean }): Promise<Run> {
  // Built from nothing: the real PATH, CI or KEYTETHER_GPG24 of this run must not leak in.
  const env: Record<string, string> = {
    PATH: m.bin,
    HOME: join(m.cache, 'home'),
    XDG_CACHE_HOME: m.cache,
    KEYTETHER_PREREQ_ROOT: m.root,
    KEYTETHER_PREREQ_UID: String(opts.uid),
    ...(opts.ci ? { CI: 'true' } : {}),
  };
  return new Promise((resolve, reject) => {
    const c = spawn(process.execPath, [SCRIPT], { env, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    c.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    c.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    c.on('error', reject);
    c.on('close', (code) => resolve({ code, stdout, stderr }));
  });
}

const gpg24Line = (m: Machine) =>
  `keytether tests: prerequisites present; gpg 2.4: ${m.cache}/keytether/gpg24/bin/gpg\n`;

t.test('everything present: one line, apt never runs, /run/sshd made as root', async (t) => {
  const m = fakeMachine(t);
  const r = await prerequisites(m, { uid: 0 });
  t.equal(r.code, 0, r.stderr);
  t.equal(r.stdout, gpg24Line(m));
  t.equal(r.stderr, '');
  t.same(m.aptCalls(), [], 'apt-get was not called');
  t.ok(existsSync(join(m.root, '/run/sshd')), 'sshd’s privilege-separation directory exists');
});

t.test('root with apt: one update, one install of exactly the missing packages', async (t) => {
  const m = fakeMachine(t, {
    missing: ['/usr/sbin/sshd', 'python3', 'ssh', 'ssh-keygen'],
    aptInstalls: ['/usr/sbin/sshd', 'python3', 'ssh', 'ssh-keygen'],
  });
  const r = await prerequisites(m, { uid: 0 });
  t.equal(r.code, 0, r.stderr);
  t.same(m.aptCalls(), [
    'DEBIAN_FRONTEND=noninteractive update -q',
    'DEBIAN_FRONTEND=noninteractive install -y -q --no-install-recommends openssh-server openssh-client python3-minimal',
  ]);
  t.equal(
    r.stdout,
    'keytether tests: installing openssh-server openssh-client python3-minimal (apt-get)\n' +
      gpg24Line(m),
  );
});

t.test('root with apt, but the install leaves a piece missing: one sentence, exit 1', async (t) => {
  const m = fakeMachine(t, { missing: ['/usr/sbin/sshd'] });
  const r = await prerequisites(m, { uid: 0 });
  t.equal(r.code, 1);
  t.same(m.aptCalls().length, 2);
  t.equal(
    r.stderr,
    'keytether tests: after apt-get install, still missing: /usr/sbin/sshd; install them by hand and rerun npm test\n',
  );
});

t.test('not root: one line naming the packages, exit 1, apt never runs', async (t) => {
  const m = fakeMachine(t, { missing: ['/usr/sbin/sshd', 'ssh', '/usr/bin/gpg-agent'] });
  const r = await prerequisites(m, { uid: 1000 });
  t.equal(r.code, 1);
  t.equal(
    r.stderr,
    'keytether tests need: sudo apt-get install gpg-agent openssh-server openssh-client\n',
  );
  t.equal(r.stdout, '');
  t.same(m.aptCalls(), []);
});

t.test('no apt-get at all: names the programs and their Debian packages', async (t) => {
  const m = fakeMachine(t, { missing: ['python3'] });
  rmSync(join(m.bin, 'apt-get'));
  const r = await prerequisites(m, { uid: 0 });
  t.equal(r.code, 1);
  t.equal(r.stderr, 'keytether tests need: python3 (Debian: python3-minimal)\n');
});

t.test('not root, only an optional piece missing: a warning, and the tests go on', async (t) => {
  const m = fakeMachine(t, { missing: ['openssl'] });
  const r = await prerequisites(m, { uid: 1000 });
  t.equal(r.code, 0, r.stderr);
  t.equal(
    r.stdout,
    'keytether tests: without openssl the wss:// relay test is skipped; to run it: sudo apt-get install openssl\n' +
      gpg24Line(m),
  );
  t.same(m.aptCalls(), []);
  t.notOk(existsSync(join(m.root, '/run/sshd')), 'nothing made outside what a user may write');
});

t.test('CI=true requires the optional pieces too', async (t) => {
  const m = fakeMachine(t, { missing: ['openssl'] });
  const r = await prerequisites(m, { uid: 1000, ci: true });
  t.equal(r.code, 1);
  t.equal(r.stderr, 'keytether tests need: sudo apt-get install openssl\n');
});

t.test('CI=true requires root, which the other-user socket tests need', async (t) => {
  const m = fakeMachine(t);
  const r = await prerequisites(m, { uid: 1000, ci: true });
  t.equal(r.code, 1);
  t.match(r.stderr, /^keytether tests: CI runs the suite as root .*; run it as root\n$/);
  t.equal((await prerequisites(m, { uid: 0, ci: true })).code, 0, 'as root it passes');
});

t.test('gpg 2.4 cannot be fetched: a warning locally, a failure under CI', async (t) => {
  // No dpkg on the fake PATH: fetch-gpg24.sh stops at once, as it would on a non-Debian machine,
  // and no network is touched.
  const m = fakeMachine(t, { gpg24Cached: false });
  const local = await prerequisites(m, { uid: 0 });
  t.equal(local.code, 0, local.stderr);
  t.equal(
    local.stdout,
    'keytether tests: no gpg 2.4 (fetch-gpg24: dpkg is needed (Debian/Ubuntu only)); the suite runs against the system gpg only; rerun with network access to fetch it once\n',
  );
  const ci = await prerequisites(m, { uid: 0, ci: true });
  t.equal(ci.code, 1);
  t.match(
    ci.stderr,
    /^keytether tests: CI needs gpg 2\.4 and scripts\/fetch-gpg24\.sh failed \(fetch-gpg24: dpkg is needed/m,
  );
  t.same(m.aptCalls(), [], 'the fetch never reached apt-get');
});

t.test('a git older than 2.31 is refused with the reason', async (t) => {
  const m = fakeMachine(t, { gitVersion: '2.30.2' });
  const r = await prerequisites(m, { uid: 0 });
  t.equal(r.code, 1);
  t.equal(
    r.stderr,
    'keytether tests: git 2.30.2 is older than 2.31, which the tests need (GIT_CONFIG_COUNT); install a newer git\n',
  );
});

t.test(
  'a pinentry alternative other than curses: a note locally, a failure under CI',
  async (t) => {
    const m = fakeMachine(t, { pinentry: 'pinentry-gnome3' });
    const local = await prerequisites(m, { uid: 0 });
    t.equal(local.code, 0, local.stderr);
    t.match(
      local.stdout,
      /^keytether tests: \/usr\/bin\/pinentry is not pinentry-curses, so the real-pinentry test is skipped; to run it: update-alternatives --set pinentry \/usr\/bin\/pinentry-curses/,
    );
    const ci = await prerequisites(m, { uid: 0, ci: true });
    t.equal(ci.code, 1);
    t.match(ci.stderr, /CI runs every test: update-alternatives --set pinentry/);
  },
);
