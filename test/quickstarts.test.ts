// The quickstarts in docs/ run as scripts: each document's ```sh blocks are executed verbatim
// (test/support/doc-script.ts says how) from a clean HOME, so a document cannot drift from what
// works. What the test provides is only what the documents tell their reader to have:
//   - `keytether` (this build) and gpg 2.2 on PATH, on the workstation and on the server;
//   - for the SSH documents, a server: a real sshd on 127.0.0.1 whose sessions get their own HOME,
//     named `kt-server` in the workstation's ~/.ssh/config with its host key in known_hosts, and
//     $KT_SERVER set to that name;
//   - the person at the keyboard: a scripted pinentry, as gpg-agent's pinentry-program and as
//     `pinentry` on PATH (keytether's default), answering the passphrase.
// Each test then checks what the reader is told to look at: a Good signature, the audit record.

import t, { type Test } from 'tap';
import { existsSync, readFileSync } from 'node:fs';
import { chmod, chown, mkdir, mkdtemp, readdir, rm, writeFile } from 'node:fs/promises';
import { spawnSync } from 'node:child_process';
import path from 'node:path';
import { cliPath, repoRoot } from './support/cli.js';
import { testNeeding } from './support/ci.js';
import { runDoc } from './support/doc-script.js';
import { makePinentryScript } from './support/pinentry-script.js';
import { freePort, startSshd } from './support/sshd.js';

const PASSPHRASE = 'correct horse battery staple';
const doc = (name: string) => path.join(repoRoot, 'docs', name);

interface World {
  tmp: string;
  home: string;
  bin: string;
  env: NodeJS.ProcessEnv;
  /** How many times the pinentry asked for a passphrase. */
  asked: () => Promise<number>;
  /** The description of each confirmation a pinentry showed. */
  confirmations: () => Promise<string[]>;
}

function killAgents(home: string): void {
  spawnSync('gpgconf', ['--kill', 'all'], {
    env: { PATH: process.env.PATH, HOME: home },
    stdio: 'ignore',
  });
}

/** Whether gpg on the server has any secret key file (keytether never puts one there). */
async function secretKeysIn(home: string): Promise<boolean> {
  const dir = path.join(home, '.gnupg', 'private-keys-v1.d');
  return existsSync(dir) && (await readdir(dir)).length > 0;
}

/** An empty home with keytether, gpg and a scripted pinentry, as a new user's workstation. */
async function workstation(t: Test): Promise<World> {
  const tmp = await mkdtemp('/tmp/ktdoc-');
  const home = path.join(tmp, 'home');
  const bin = path.join(tmp, 'bin');
  await mkdir(home, { mode: 0o700 });
  await mkdir(bin);
  t.teardown(async () => {
    killAgents(home);
    await rm(tmp, { recursive: true, force: true });
  });
  const cli = await cliPath();
  await writeFile(
    path.join(bin, 'keytether'),
    `#!/bin/sh\nexec '${process.execPath}' '${cli}' "$@"\n`,
  );
  await chmod(path.join(bin, 'keytether'), 0o755);
  const pinentry = await makePinentryScript({
    answers: Array(12).fill(PASSPHRASE),
    confirm: Array(8).fill('ok'),
  });
  t.teardown(() => pinentry.cleanup());
  const program = await pinentry.standaloneProgram();
  await writeFile(path.join(bin, 'pinentry'), `#!/bin/sh\nexec '${program}' "$@"\n`);
  await chmod(path.join(bin, 'pinentry'), 0o755);
  await mkdir(path.join(home, '.gnupg'), { mode: 0o700 });
  await writeFile(path.join(home, '.gnupg', 'gpg-agent.conf'), `pinentry-program ${program}\n`);
  const env: NodeJS.ProcessEnv = {
    HOME: home,
    PATH: `${bin}:${path.dirname(process.execPath)}:/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin`,
    LANG: 'C.UTF-8',
    GIT_CONFIG_NOSYSTEM: '1',
  };
  const asked = async () =>
    (await pinentry.calls()).filter((c) => c.some((x) => x.cmd === 'GETPIN')).length;
  const confirmations = async () =>
    (await pinentry.calls())
      .filter((c) => c.some((x) => x.cmd === 'CONFIRM'))
      .map((c) =>
        c
          .filter((x) => x.cmd === 'SETDESC')
          .map((x) => x.text ?? '')
          .join('\n'),
      );
  return { tmp, home, bin, env, asked, confirmations };
}

/** A server reachable as $KT_SERVER, with its own (empty) home. */
async function server(t: Test, w: World): Promise<{ home: string }> {
  const home = path.join(w.tmp, 'server-home');
  await mkdir(home, { mode: 0o700 });
  t.teardown(() => killAgents(home));
  const sshd = await startSshd({
    env: { HOME: home, PATH: `${w.bin}:${path.dirname(process.execPath)}:/usr/bin:/bin` },
  });
  t.teardown(() => sshd.stop());
  const ssh = path.join(w.home, '.ssh');
  await mkdir(ssh, { mode: 0o700 });
  await writeFile(path.join(ssh, 'known_hosts'), sshd.knownHostsLine + '\n', { mode: 0o600 });
  await writeFile(
    path.join(ssh, 'config'),
    [
      'Host kt-server',
      '  HostName 127.0.0.1',
      `  Port ${sshd.port}`,
      `  User ${sshd.user}`,
      `  IdentityFile ${sshd.clientKey}`,
      '  IdentitiesOnly yes',
      `  UserKnownHostsFile ${path.join(ssh, 'known_hosts')}`,
      '  BatchMode yes',
      '',
    ].join('\n'),
    { mode: 0o600 },
  );
  w.env.KT_SERVER = 'kt-server';
  return { home };
}

t.test('docs/quickstart-ssh.md: zero to a signed commit on a server', async (t) => {
  const w = await workstation(t);
  const srv = await server(t, w);
  const out = await runDoc(t, doc('quickstart-ssh.md'), {
    '': { env: w.env },
    'the server': { env: w.env, ssh: true },
  });
  const [, , commit, status] = out;
  t.match(commit, /Good signature from "Your Name <you@example\.org>"/, 'git verify-commit: Good');
  t.match(
    status,
    /sign [0-9A-F]{40} verified for ssh kt-server .*← git ← .*\(commit: A signed commit\)/,
    'keytether status: the commit, verified, and who asked on the server',
  );
  t.match(status, /audit log OK: 1 record/);
  t.ok((await w.asked()) >= 1, 'the passphrase was asked on the workstation');
  t.notOk(await secretKeysIn(srv.home), 'the server holds no secret key');
});

t.test('docs/quickstart-ci.md: relay, token, a job, a verified signature', async (t) => {
  const w = await workstation(t);
  const port = await freePort();
  w.env.KT_RELAY_LISTEN = `127.0.0.1:${port}`;
  w.env.KT_RELAY = `ws://127.0.0.1:${port}`;
  const out = await runDoc(t, doc('quickstart-ci.md'), { '': { env: w.env } });
  const status = out[out.length - 1] ?? '';
  t.match(status, /Good signature from "Release Key <release@example\.org>"/, 'gpg --verify: Good');
  t.match(
    status,
    /sign [0-9A-F]{40} verified for relay .*release job/,
    'keytether status: the signature, verified, by the token labelled "release job"',
  );
  t.match(status, /audit log OK/);
});

t.test(
  'docs/migrating-from-gpg-agent-forwarding.md: the same gpg commands, through keytether',
  async (t) => {
    const w = await workstation(t);
    const srv = await server(t, w);
    const out = await runDoc(t, doc('migrating-from-gpg-agent-forwarding.md'), {
      '': { env: w.env },
      'the server': { env: w.env, ssh: true },
    });
    const [, , onServer, decrypted, status] = out;
    t.match(onServer, /^D 2\.\d+\.\d+/m, 'gpg-connect-agent reaches an agent (keytether)');
    t.match(
      onServer,
      /Good signature from "Your Name <you@example\.org>"/,
      'the signature is Good',
    );
    t.match(decrypted, /^a release$/m, 'the decryption gives the plaintext');
    // (gpg-agent's own CONFIRM, its warning about the test's passphrase, is not keytether's.)
    t.match(
      (await w.confirmations()).filter((d) => d.startsWith('keytether:')),
      [/^keytether: allow ssh kt-server .* to decrypt/],
      'the decryption was confirmed on the workstation, naming the server',
    );
    t.match(status, /decrypt [0-9A-F]{40} for ssh kt-server .*confirmed/);
    t.notOk(await secretKeysIn(srv.home), 'the server holds no secret key');
  },
);

const SIGNER = 'keytether-signer';

/** The signing box's account (made once, left in place like sshd.ts's test user), or why not. */
function signerAccount(): { uid: number; gid: number } | string {
  if (process.getuid?.() !== 0) return 'needs root to run the box as its own account';
  if (spawnSync('id', ['-u', SIGNER], { stdio: 'ignore' }).status !== 0) {
    const r = spawnSync('useradd', ['--system', '--no-create-home', '-s', '/bin/sh', SIGNER]);
    // 9: made at the same moment by another run.
    if (r.status !== 0 && r.status !== 9) return `useradd failed: ${r.stderr}`;
  }
  const id = (flag: string) =>
    Number(spawnSync('id', [flag, SIGNER], { encoding: 'utf8' }).stdout.trim());
  return { uid: id('-u'), gid: id('-g') };
}

const account = signerAccount();
testNeeding(
  t,
  'docs/headless-signing-box.md: policy-only approvals under its own account, no pinentry',
  typeof account === 'string' && account,
  async (t) => {
    const { uid, gid } = account as { uid: number; gid: number };
    const w = await workstation(t);
    const port = await freePort();
    const relayUrl = `ws://127.0.0.1:${port}`;
    // What the box's account must reach: the temp dir, and this build (made private by mkdtemp).
    await chmod(w.tmp, 0o711);
    await chmod(path.dirname(path.dirname(await cliPath())), 0o755);
    const boxHome = path.join(w.tmp, 'keysign');
    await mkdir(boxHome, { mode: 0o700 });
    await chown(boxHome, uid, gid);
    t.teardown(() => {
      spawnSync('gpgconf', ['--kill', 'all'], {
        env: { PATH: process.env.PATH, HOME: boxHome },
        uid,
        gid,
        stdio: 'ignore',
      });
    });
    // A pinentry that leaves a mark: the box must never need one.
    const boxBin = path.join(w.tmp, 'box-bin');
    await mkdir(boxBin, { mode: 0o755 });
    const called = path.join(boxHome, 'pinentry-was-called');
    await writeFile(
      path.join(boxBin, 'pinentry'),
      `#!/bin/sh\necho called > '${called}'\nexit 1\n`,
      { mode: 0o755 },
    );
    const boxEnv: NodeJS.ProcessEnv = {
      ...w.env,
      HOME: boxHome,
      PATH: `${boxBin}:${w.env.PATH}`,
      KT_RELAY: relayUrl,
    };
    const runnerHome = path.join(w.tmp, 'runner');
    await mkdir(runnerHome, { mode: 0o700 });
    const runnerEnv: NodeJS.ProcessEnv = { ...w.env, HOME: runnerHome, KT_RELAY: relayUrl };
    // The runner gets the token as its CI secret once the box has issued it (read when a block
    // starts, as a CI system reads its secrets when the job starts).
    const tokenFile = path.join(boxHome, 'release-token');
    Object.defineProperty(runnerEnv, 'KEYTETHER_TOKEN', {
      enumerable: true,
      get: () => (existsSync(tokenFile) ? readFileSync(tokenFile, 'utf8').trim() : undefined),
    });
    const out = await runDoc(t, doc('headless-signing-box.md'), {
      '': { env: boxEnv, uid, gid },
      'the relay host': { env: { ...w.env, KT_RELAY_LISTEN: `127.0.0.1:${port}` } },
      'a CI runner': { env: runnerEnv },
    });
    const job = out[out.length - 2] ?? '';
    const status = out[out.length - 1] ?? '';
    t.match(job, /Good signature from "Release Key <release@example\.org>"/, 'the job: Good');
    t.match(
      status,
      /sign [0-9A-F]{40} verified for relay .*release pipeline.*allowed/,
      'the box: the signature, verified, allowed by policy',
    );
    t.match(status, /audit log OK/);

    // What the doc says is refused: a blind signature, without any prompt.
    const blind = spawnSync(
      'keytether',
      ['connect', '--relay', relayUrl, '--', 'gpg', '--batch', '--detach-sign', 'dist.txt'],
      { cwd: path.join(runnerHome, 'job'), env: runnerEnv, encoding: 'utf8', timeout: 60_000 },
    );
    t.not(blind.status, 0, 'a blind signature is refused');
    t.match(
      blind.stderr,
      /signing failed: Forbidden/,
      'gpg on the runner: signing failed: Forbidden',
    );
    t.notOk(existsSync(called), 'no pinentry was ever started on the box');
  },
);
