// OpenSSH private keys in the builtin store, as a user moves them in: `keytether keys import
// ~/.ssh/id_ed25519` keeps the file under its own passphrase, lists it by the fingerprint
// `ssh-keygen -l` prints, and `keytether agent`'s ssh-agent socket signs with it — asking that
// passphrase through the pinentry — for `ssh-keygen -Y sign` and for a login to a real sshd.
// Files that are not usable private keys are refused with one line and store nothing.

import t from 'tap';
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { copyFile, mkdtemp, readFile, readdir, rm, stat, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { monitorEventLoopDelay, performance } from 'node:perf_hooks';
import { promisify } from 'node:util';
import { readSshKeyInput, unlockSshKey } from '../workstation/keystore/ssh-key.js';
import { runCli, spawnCli, waitForLine } from './support/cli.js';
import { makePinentryScript } from './support/pinentry-script.js';
import { sshArgs, startSshd } from './support/sshd.js';
import { sshsigVerify } from './support/ssh-agent-rig.js';

const exec = promisify(execFile);
const PASS = 'correct horse';

const tmp = await mkdtemp('/tmp/ktsshimport-');
t.teardown(() => rm(tmp, { recursive: true, force: true }));
const home = path.join(tmp, 'home');
const env = { KEYTETHER_HOME: home };

async function keygen(name: string, args: string[], pass = ''): Promise<string> {
  const file = path.join(tmp, name);
  await exec('ssh-keygen', ['-q', ...args, '-N', pass, '-C', `${name}@ws`, '-f', file]);
  return file;
}

async function fingerprint(pubFile: string): Promise<string> {
  return (await exec('ssh-keygen', ['-l', '-f', pubFile])).stdout.split(' ')[1]!;
}

async function storedFiles(): Promise<string[]> {
  return (await readdir(path.join(home, 'keys')).catch(() => [])).sort();
}

const keys = {
  clearEd: await keygen('clear-ed25519', ['-t', 'ed25519']),
  encEd: await keygen('enc-ed25519', ['-t', 'ed25519'], PASS),
  encEc: await keygen('enc-ecdsa384', ['-t', 'ecdsa', '-b', '384'], PASS),
  rsa: await keygen('rsa3072', ['-t', 'rsa', '-b', '3072']),
  pemRsa: await keygen('pem-rsa2048', ['-t', 'rsa', '-b', '2048', '-m', 'PEM']),
  pemEncEc: await keygen('pem-enc-ecdsa', ['-t', 'ecdsa', '-m', 'PEM'], PASS),
};

t.test('keys import stores each key as it is and lists it as ssh-keygen -l does', async (t) => {
  for (const [what, file] of Object.entries(keys)) {
    const r = await runCli(['keys', 'import', file], { env });
    t.equal(r.code, 0, `${what}: ${r.stderr}`);
    const fpr = await fingerprint(`${file}.pub`);
    t.equal(r.stdout, `imported ${fpr} ${path.basename(file)}@ws\n`, `${what}: fingerprint`);
  }
  const files = await storedFiles();
  t.equal(files.length, 6);
  for (const f of files) {
    t.match(f, /^[0-9A-F]{40}\.ssh$/);
    t.equal((await stat(path.join(home, 'keys', f))).mode & 0o777, 0o600, `${f} is 0600`);
  }
  // The passphrase stays the key's own: the stored private part is the imported file itself.
  const original = await readFile(keys.encEd, 'utf8');
  const stored = await Promise.all(
    files.map(async (f) => JSON.parse(await readFile(path.join(home, 'keys', f), 'utf8'))),
  );
  t.ok(
    stored.some(
      (s: { private: string; protection: string }) =>
        s.private === original && s.protection === 'P',
    ),
    'the encrypted key is stored encrypted, byte for byte',
  );

  const list = JSON.parse((await runCli(['keys', 'list', '--json'], { env })).stdout) as {
    fingerprint: string;
    format: string;
    algorithm: string;
    usage: string[];
    uids: string[];
  }[];
  const ed = list.find((k) => k.uids[0] === 'enc-ed25519@ws')!;
  t.match(ed, { format: 'openssh', algorithm: 'ed25519', usage: ['auth'] });
  t.equal(ed.fingerprint, await fingerprint(`${keys.encEd}.pub`));
  t.same(list.map((k) => k.algorithm).sort(), [
    'ed25519',
    'ed25519',
    'nistp256',
    'nistp384',
    'rsa2048',
    'rsa3072',
  ]);

  const exported = await runCli(['keys', 'export', ed.fingerprint], { env });
  t.equal(exported.stdout, await readFile(`${keys.encEd}.pub`, 'utf8'), 'export is the .pub line');

  const again = await runCli(['keys', 'import', keys.encEd], { env });
  t.equal(again.code, 0);
  t.equal((await storedFiles()).length, 6, 're-import does not duplicate');
});

t.test('files that are no usable private key: one line each, nothing stored', async (t) => {
  const before = await storedFiles();
  const cases: [string, string, RegExp][] = [];
  cases.push([
    'a .pub file',
    `${keys.clearEd}.pub`,
    /is an SSH public key; import the private key file/,
  ]);

  const text = await readFile(keys.rsa, 'utf8');
  const lines = text.trimEnd().split('\n');
  const truncated = path.join(tmp, 'truncated');
  await writeFile(truncated, [...lines.slice(0, lines.length / 2), lines.at(-1)].join('\n') + '\n');
  cases.push(['a truncated key', truncated, /is not a readable OpenSSH private key \(/]);

  const slow = await keygen('many-rounds', ['-t', 'ed25519', '-a', '2000'], PASS);
  cases.push([
    'a KDF of 2000 rounds',
    slow,
    /asks for 2000 bcrypt rounds at each unlock \(at most 1024\); lower them with ssh-keygen -p -a 100 -f /,
  ]);

  const lonePem = path.join(tmp, 'lone-pem');
  await copyFile(keys.pemEncEc, lonePem);
  cases.push(['an encrypted PEM key without its .pub', lonePem, /ssh-keygen -p -f /]);

  const pkcs8 = path.join(tmp, 'pkcs8.pem');
  await exec('openssl', ['genpkey', '-algorithm', 'ed25519', '-out', pkcs8]);
  cases.push(['a PKCS#8 file', pkcs8, /is a PKCS#8 key file; rewrite it in OpenSSH's format/]);

  for (const [what, file, want] of cases) {
    const r = await runCli(['keys', 'import', file], { env });
    t.equal(r.code, 1, what);
    t.match(r.stderr, want, what);
    t.equal(r.stderr.trim().split('\n').length, 1, `${what}: one line`);
    t.notMatch(r.stderr, /PRIVATE KEY|AAAA/, `${what}: no key text in the message`);
  }
  t.same(await storedFiles(), before, 'nothing was stored');
});

function stopper(child: ChildProcess): () => Promise<void> {
  const exited = new Promise<void>((r) => child.once('exit', () => r()));
  return async () => {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGTERM');
    await exited;
  };
}

function run(bin: string, args: string[], runEnv: NodeJS.ProcessEnv) {
  return new Promise<{ code: number | null; stdout: string; stderr: string }>((resolve) => {
    const c = spawn(bin, args, { env: runEnv, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    c.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    c.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    c.on('close', (code) => resolve({ code, stdout, stderr }));
  });
}

t.test('keytether agent signs with them, asking the passphrase through the pinentry', async (t) => {
  // The encrypted Ed25519 key: a wrong passphrase first; then the ECDSA key's.
  const pin = await makePinentryScript({ answers: ['wrong', PASS, PASS] });
  t.teardown(() => pin.cleanup());
  const agent = await spawnCli(
    ['agent', '--socket', path.join(tmp, 'S.local'), '--pinentry-program', pin.program],
    { env: { ...env, ...pin.env } },
  );
  const stopAgent = stopper(agent);
  t.teardown(stopAgent);
  const sock = (await waitForLine(agent.stdout!, /^ssh-agent: (\/\S+)$/, 30_000))[1]!;
  const sshEnv = { ...process.env, SSH_AUTH_SOCK: sock };

  // Imported while the agent runs: offered without a restart.
  const late = await keygen('late-ed25519', ['-t', 'ed25519']);
  t.equal((await runCli(['keys', 'import', late], { env })).code, 0);
  const listed = await run('ssh-add', ['-l'], sshEnv);
  t.equal(listed.code, 0, listed.stderr);
  for (const file of [...Object.values(keys), late]) {
    const name = path.basename(file);
    t.ok(
      listed.stdout.includes(`${await fingerprint(`${file}.pub`)} ${name}@ws (`),
      `ssh-add -l lists ${name} with its own comment`,
    );
  }

  const body = 'tree 4b825dc642cb6eb9a060e54bf8d69288fbee4904\n\nsigned by an imported key\n';
  const msg = path.join(tmp, 'commit.txt');
  await writeFile(msg, body);
  for (const file of [keys.encEd, keys.rsa, keys.pemRsa]) {
    await rm(`${msg}.sig`, { force: true });
    const s = await run(
      'ssh-keygen',
      ['-Y', 'sign', '-n', 'git', '-f', `${file}.pub`, msg],
      sshEnv,
    );
    t.equal(s.code, 0, `${path.basename(file)} signs: ${s.stderr}`);
    const pub = (await readFile(`${file}.pub`, 'utf8')).trim();
    const [code, out] = await sshsigVerify(tmp, pub, `${msg}.sig`, body);
    t.equal(code, 0, `${path.basename(file)}: ssh-keygen -Y verify: ${out}`);
  }
  const asked = (await pin.calls()).flat().filter((c) => c.cmd === 'GETPIN');
  t.equal(asked.length, 2, 'asked twice for the encrypted key (one wrong try), not for clear keys');
  const desc = (await pin.calls()).flat().find((c) => c.cmd === 'SETDESC')?.text ?? '';
  t.match(desc, /unlock the SSH key\nSHA256:/, 'the prompt names the SSH key');

  // It also takes plain ssh-rsa (SHA-1), as servers older than OpenSSH 7.2 only do.
  const sshd = await startSshd({ extraConfig: ['PubkeyAcceptedAlgorithms +ssh-rsa'] });
  t.teardown(() => sshd.stop());
  await sshd.authorize((await readFile(`${keys.encEc}.pub`, 'utf8')).trim());
  // IdentitiesOnly with the .pub file: ssh offers just that agent key, as a user's config would.
  const through = (key: string, agentSock: string, extra: string[] = []) => [
    ...extra,
    ...sshArgs(sshd, { key: `${key}.pub` }).map((a) =>
      a === 'IdentityAgent=none' ? `IdentityAgent=${agentSock}` : a,
    ),
    'echo',
    'logged-in',
  ];
  const login = await run('ssh', through(keys.encEc, sock), sshEnv);
  t.equal(
    login.stdout.trim(),
    'logged-in',
    `ssh login with the encrypted ECDSA key: ${login.stderr}`,
  );
  t.equal(
    (await pin.calls()).flat().filter((c) => c.cmd === 'GETPIN').length,
    3,
    'its passphrase was asked once',
  );

  const audit = (await readFile(path.join(home, 'audit.jsonl'), 'utf8'))
    .trim()
    .split('\n')
    .map((l) => JSON.parse(l) as { op?: string; key?: string; ssh?: { purpose?: string } });
  const ecFpr = await fingerprint(`${keys.encEc}.pub`);
  t.ok(
    audit.some(
      (r) => r.op === 'ssh-sign' && JSON.stringify(r).includes(ecFpr) && r.ssh?.purpose === 'login',
    ),
    'the login signature is audited with the SSH fingerprint',
  );

  await t.test('plain ssh-rsa (SHA-1) only where a policy rule allows it', async (t) => {
    await sshd.authorize((await readFile(`${keys.rsa}.pub`, 'utf8')).trim());
    const sha1 = ['-o', 'PubkeyAcceptedAlgorithms=ssh-rsa'];
    const refused = await run('ssh', through(keys.rsa, sock, sha1), sshEnv);
    t.not(refused.stdout.trim(), 'logged-in', 'refused by default');
    t.match(refused.stderr, /Permission denied/);
    const last = (await readFile(path.join(home, 'audit.jsonl'), 'utf8'))
      .trim()
      .split('\n')
      .at(-1)!;
    t.match(JSON.parse(last), {
      op: 'ssh-sign',
      decision: 'denied',
      reason: /plain ssh-rsa \(SHA-1\)/,
    });
    // The same login with rsa-sha2 still works.
    const sha2 = await run('ssh', through(keys.rsa, sock), sshEnv);
    t.equal(sha2.stdout.trim(), 'logged-in', sha2.stderr);

    // The same key, with a rule for it: the agent restarted with that policy signs SHA-1.
    await stopAgent();
    const rsaFpr = await fingerprint(`${keys.rsa}.pub`);
    const again = await spawnCli(
      [
        'agent',
        '--socket',
        path.join(tmp, 'S.local'),
        '--policy',
        `key=${rsaFpr},ssh-rsa-sha1=true`,
      ],
      { env },
    );
    t.teardown(stopper(again));
    const sock2 = (await waitForLine(again.stdout!, /^ssh-agent: (\/\S+)$/, 30_000))[1]!;
    const allowed = await run('ssh', through(keys.rsa, sock2, sha1), sshEnv);
    t.equal(allowed.stdout.trim(), 'logged-in', `allowed by the rule: ${allowed.stderr}`);
    t.match(sshd.log(), /Accepted publickey for \S+ from \S+ port \d+ ssh2: RSA SHA256:/);
  });
});

t.test(
  'an unlock runs its bcrypt KDF off the main thread: the holder keeps answering',
  async (t) => {
    // 64 rounds: over a second of KDF, which run inline would stall every timer for that long.
    const file = await keygen('rounds-64', ['-t', 'ed25519', '-a', '64'], PASS);
    const stored = readSshKeyInput(await readFile(file), file);
    const delay = monitorEventLoopDelay({ resolution: 10 });
    delay.enable();
    const started = performance.now();
    const material = await unlockSshKey(stored, Buffer.from(PASS));
    const took = performance.now() - started;
    delay.disable();
    t.equal(material.kind, 'eddsa', 'the key is unlocked');
    const worstMs = delay.max / 1e6;
    t.ok(took > 300, `the KDF took ${Math.round(took)} ms`);
    t.ok(
      worstMs < took / 4,
      `the event loop waited at most ${Math.round(worstMs)} ms during a ${Math.round(took)} ms unlock`,
    );
    await t.rejects(
      unlockSshKey(stored, Buffer.from('wrong')),
      { code: 11 },
      'a wrong one: Bad passphrase',
    );
  },
);
