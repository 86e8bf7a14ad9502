#!/usr/bin/env node
// `npm test`'s pretest: makes sure the programs the suite spawns are on this machine before tap
// starts, so a missing one is one sentence here instead of a dozen ENOENT failures later.
//   - As root with apt-get: installs what is missing (one `apt-get update`, then one install).
//   - Otherwise: prints one line naming the packages to install and exits 1.
//   - Fetches gpg 2.4 into its cache with scripts/fetch-gpg24.sh (once; later runs reuse it).
// Optional pieces (their tests skip without them) only warn, except under CI=true, where every
// piece is required and anything missing exits 1: CI must run every test.
// .ci/run uses this script too, so this is the only list of the suite's system packages.
//
// Node built-ins only: it runs before `npm ci` in CI.
// Seams for test/prerequisites.test.ts: KEYTETHER_PREREQ_ROOT (default /) prefixes every fixed
// path checked or created, KEYTETHER_PREREQ_UID stands in for the real uid; PATH decides which
// programs (apt-get included) are found.

import { spawn, spawnSync } from 'node:child_process';
import { accessSync, constants, mkdirSync, realpathSync } from 'node:fs';
import { delimiter, dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const MIN_GIT = [2, 31]; // GIT_CONFIG_COUNT, which the git signing tests set
const MIN_NODE = 20;

// `at`: a fixed path (the tests spawn it by that path); `program`: looked up on PATH.
// The gpg tools are fixed because test/support/gnupg.ts runs /usr/bin/gpg and its siblings.
const PIECES = [
  { at: '/usr/bin/gpg', pkg: 'gpg' },
  { at: '/usr/bin/gpg-agent', pkg: 'gpg-agent' },
  { at: '/usr/bin/gpg-connect-agent', pkg: 'gpgconf' },
  { at: '/usr/bin/gpgconf', pkg: 'gpgconf' },
  { program: 'git', pkg: 'git' },
  { at: '/usr/sbin/sshd', pkg: 'openssh-server' },
  { program: 'ssh', pkg: 'openssh-client' },
  { program: 'ssh-keygen', pkg: 'openssh-client' },
  // socket-ownership.test.ts: a unix listener that never accepts, which node cannot make.
  { program: 'python3', pkg: 'python3-minimal' },
  // relay-tls.test.ts makes its CA and certificates with it, and skips without it.
  { program: 'openssl', pkg: 'openssl', optional: 'the wss:// relay test is skipped' },
  // pinentry.test.ts runs the real /usr/bin/pinentry and skips unless it is pinentry-curses.
  {
    at: '/usr/bin/pinentry-curses',
    pkg: 'pinentry-curses',
    optional: 'the real-pinentry test is skipped',
  },
  // faults-link.test.ts cuts the relay port with REJECT --reject-with tcp-reset (as root).
  { program: 'iptables', pkg: 'iptables', optional: 'the iptables link-cut test is skipped' },
  // dialog-fit.test.ts draws pinentry-curses in an 80×24 tmux pane and presses its keys.
  { program: 'tmux', pkg: 'tmux', optional: 'the 80×24 pinentry-curses test is skipped' },
  // systemd-units.test.ts checks deploy/systemd/ and socket-activates a real keytether agent.
  {
    program: 'systemd-analyze',
    pkg: 'systemd',
    optional: 'the systemd unit checks are skipped',
  },
  // relay-redis.test.ts starts its own redis-server instances on 127.0.0.1.
  {
    program: 'redis-server',
    pkg: 'redis-server',
    optional: 'the multi-instance relay tests are skipped',
  },
  // deploy-relay-cluster.test.ts runs deploy/relay-cluster's HAProxy front in front of two relays.
  {
    at: '/usr/sbin/haproxy',
    pkg: 'haproxy',
    optional: 'the load-balanced relay example is skipped',
  },
  // web-*.test.ts drive the approval page in Debian's headless Chromium through playwright-core.
  {
    at: '/usr/bin/chromium',
    pkg: 'chromium',
    optional: 'the browser tests of the web page are skipped',
  },
  {
    program: 'systemd-socket-activate',
    pkg: 'systemd',
    optional: 'the socket activation test is skipped',
  },
];

const env = process.env;
const ci = env.CI === 'true' || env.CI === '1';
const root = env.KEYTETHER_PREREQ_ROOT || '/';
const uid =
  env.KEYTETHER_PREREQ_UID !== undefined ? Number(env.KEYTETHER_PREREQ_UID) : process.getuid?.();
const here = dirname(fileURLToPath(import.meta.url));

const say = (line) => console.log(`keytether tests: ${line}`);
function fail(line, prefix = 'keytether tests: ') {
  console.error(`${prefix}${line}`);
  process.exit(1);
}

function executable(p) {
  try {
    accessSync(p, constants.X_OK);
    return true;
  } catch {
    return false;
  }
}

const rooted = (p) => join(root, p);

function onPath(program) {
  for (const d of (env.PATH ?? '').split(delimiter)) {
    if (d && executable(join(d, program))) return join(d, program);
  }
  return undefined;
}

const present = (piece) =>
  piece.at ? executable(rooted(piece.at)) : onPath(piece.program) !== undefined;
const label = (piece) => piece.at ?? piece.program;
const unique = (xs) => [...new Set(xs)];

function missingPieces() {
  return PIECES.filter((p) => !present(p));
}

/** Runs apt-get quietly; on failure shows its output and stops with a sentence. */
function apt(args) {
  const r = spawnSync('apt-get', args, {
    env: { ...env, DEBIAN_FRONTEND: 'noninteractive' },
    encoding: 'utf8',
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  if (r.status !== 0) {
    process.stderr.write(`${r.stdout ?? ''}${r.stderr ?? r.error?.message ?? ''}`);
    fail(`apt-get ${args.join(' ')} failed (above); fix apt and rerun npm test`);
  }
}

function checkNode() {
  const major = Number(process.versions.node.split('.')[0]);
  if (major < MIN_NODE)
    fail(`node ${process.versions.node} is too old; install Node ${MIN_NODE} or later`);
}

function checkGit() {
  const r = spawnSync('git', ['--version'], { encoding: 'utf8' });
  const v = /(\d+)\.(\d+)(?:\.(\d+))?/.exec(r.stdout ?? '');
  if (!v)
    fail(
      `git --version printed no version (${(r.stderr || r.stdout || '').trim()}); reinstall git`,
    );
  const [major, minor] = [Number(v[1]), Number(v[2])];
  if (major < MIN_GIT[0] || (major === MIN_GIT[0] && minor < MIN_GIT[1])) {
    fail(
      `git ${v[0]} is older than ${MIN_GIT.join('.')}, which the tests need (GIT_CONFIG_COUNT); install a newer git`,
    );
  }
}

/** The real-pinentry test needs the `pinentry` alternative to be curses, not just installed. */
function checkPinentryAlternative(notes) {
  let target = '';
  try {
    target = realpathSync(rooted('/usr/bin/pinentry'));
  } catch {
    // no /usr/bin/pinentry at all
  }
  if (target.endsWith('pinentry-curses')) return;
  const advice =
    'update-alternatives --set pinentry /usr/bin/pinentry-curses (the real-pinentry test needs it)';
  if (ci) fail(`/usr/bin/pinentry is not pinentry-curses; CI runs every test: ${advice}`);
  notes.push(
    `/usr/bin/pinentry is not pinentry-curses, so the real-pinentry test is skipped; to run it: ${advice}`,
  );
}

function installMissing() {
  let missing = missingPieces();
  if (missing.length === 0) return [];
  const packages = unique(missing.map((p) => p.pkg));
  const canInstall = uid === 0 && onPath('apt-get') !== undefined;
  if (canInstall) {
    say(`installing ${packages.join(' ')} (apt-get)`);
    apt(['update', '-q']);
    apt(['install', '-y', '-q', '--no-install-recommends', ...packages]);
    missing = missingPieces();
    if (missing.length > 0) {
      fail(
        `after apt-get install, still missing: ${missing.map(label).join(', ')}; install them by hand and rerun npm test`,
      );
    }
    return [];
  }
  const required = missing.filter((p) => !p.optional);
  const install = onPath('apt-get')
    ? `sudo apt-get install ${packages.join(' ')}`
    : `${missing.map((p) => `${label(p)} (Debian: ${p.pkg})`).join(', ')}`;
  if (required.length > 0 || ci) fail(install, 'keytether tests need: ');
  return missing.map((p) => `without ${label(p)} ${p.optional}; to run it: ${install}`);
}

/** Runs scripts/fetch-gpg24.sh; its own `fetch-gpg24: ` lines are shown as they come (a first
 * fetch takes a while), all but the last, which success prints and failure folds into one line. */
function fetchGpg24() {
  return new Promise((resolve) => {
    const c = spawn('bash', [join(here, 'fetch-gpg24.sh')], { stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    let held;
    let partial = '';
    c.stdout.on('data', (d) => (stdout += d));
    c.stderr.on('data', (d) => {
      stderr += d;
      const lines = (partial + d).split('\n');
      partial = lines.pop();
      for (const l of lines.filter((l) => l.startsWith('fetch-gpg24: '))) {
        if (held !== undefined) console.log(held);
        held = l;
      }
    });
    const done = (status, error) => {
      const path = stdout.trim().split('\n').pop();
      if (status === 0 && path) {
        if (held !== undefined) console.log(held);
        resolve({ path });
      } else {
        resolve({ why: held ?? error?.message ?? `exit ${status}`, stderr });
      }
    };
    c.on('error', (e) => done(null, e));
    c.on('close', (status) => done(status));
  });
}

/** gpg 2.4 via its cache; returns the path, or undefined (with a note) when it is optional. */
async function gpg24(notes) {
  if (env.KEYTETHER_GPG24) return env.KEYTETHER_GPG24; // test/support/gpg-versions.ts checks it
  const r = await fetchGpg24();
  if (r.path) return r.path;
  if (ci) {
    process.stderr.write(r.stderr);
    fail(
      `CI needs gpg 2.4 and scripts/fetch-gpg24.sh failed (${r.why}); give it network access to the Debian mirror`,
    );
  }
  notes.push(
    `no gpg 2.4 (${r.why}); the suite runs against the system gpg only; rerun with network access to fetch it once`,
  );
  return undefined;
}

checkNode();
const notes = installMissing();
checkGit();
checkPinentryAlternative(notes);
if (uid === 0) {
  // sshd refuses to start without its privilege-separation directory (/run is a tmpfs).
  mkdirSync(rooted('/run/sshd'), { recursive: true, mode: 0o755 });
} else if (ci) {
  fail('CI runs the suite as root (the tests of other users’ sockets need it); run it as root');
}
const fetched = await gpg24(notes);
for (const n of notes) say(n);
if (fetched) say(`prerequisites present; gpg 2.4: ${fetched}`);
