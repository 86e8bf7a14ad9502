// The real holder behind the ssh-agent front: OpenPGP authentication subkeys (Ed25519, NIST
// P-256, RSA 3072) from the builtin keystore log in to a real sshd and make SSHSIG signatures
// that ssh-keygen verifies; policy decides by the destination the client proved, named through
// the workstation's known_hosts; the confirmation says what is signed and where it logs in; each
// signature and refusal is in the audit log.

import t from 'tap';
import { execFile } from 'node:child_process';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { AuditLog } from '../workstation/audit/audit.js';
import { Keystore } from '../workstation/keystore/index.js';
import type { PolicyRule } from '../workstation/policy/policy.js';
import { exportSecretKey, generateKey, makeGnupgHome } from './support/gnupg.js';
import { sshArgs, startSshd } from './support/sshd.js';
import { rigHolder, serveFront, sshsigSign, sshsigVerify } from './support/ssh-agent-rig.js';

const run = promisify(execFile);

const g = await makeGnupgHome();
t.teardown(() => g.cleanup());
const key = await generateKey(g, {
  uid: 'Dev <dev@example.org>',
  algo: 'ed25519',
  usage: 'sign',
  subkeys: [
    { algo: 'ed25519', usage: 'auth' },
    { algo: 'nistp256/ecdsa', usage: 'auth' },
    { algo: 'rsa3072', usage: 'auth' },
  ],
});
const dir = await mkdtemp(path.join(tmpdir(), 'kt-holder-ssh-'));
t.teardown(() => rm(dir, { recursive: true, force: true }));
const ks = await Keystore.open(path.join(dir, 'keys'));
await ks.importKeys(await exportSecretKey(g, key.fingerprint));
const auditFile = path.join(dir, 'audit.jsonl');
const audit = await AuditLog.open(auditFile);
t.teardown(() => audit.close());

const sshd = await startSshd();
t.teardown(() => sshd.stop());
// The workstation's known_hosts names the sshd's host key; the holder reads it, not the server.
const knownHosts = path.join(dir, 'known_hosts');
await writeFile(knownHosts, sshd.knownHostsLine + '\n');
const destName = `[127.0.0.1]:${sshd.port}`;

/** What the confirmation asked, and what it answers next. */
const prompts: string[] = [];
let answer = true;
const rules: PolicyRule[] = [];
const holder = rigHolder({
  keystore: ks,
  policy: rules,
  audit,
  confirm: (description) => {
    prompts.push(description);
    return answer;
  },
  knownHostsFiles: [knownHosts],
});
const front = await serveFront(holder, dir);
t.teardown(() => front.close());
const { socket: sock, env } = front;

interface Rec {
  op: string;
  decision: string;
  reason?: string;
  fingerprint?: string;
  ssh?: { purpose: string; subject?: string; destination?: string; destinationName?: string };
}
async function records(): Promise<Rec[]> {
  return (await readFile(auditFile, 'utf8'))
    .trim()
    .split('\n')
    .filter(Boolean)
    .map((l) => JSON.parse(l) as Rec);
}

const listed = (await run('ssh-add', ['-L'], { env })).stdout.trim().split('\n');
const pubOf = (type: RegExp): string => listed.find((l) => type.test(l))!;
const authSubs = key.subkeys.filter((s) => s.usage.includes('a'));

t.test('ssh-add -L lists the three authentication subkeys, not the signing primary', async (t) => {
  t.equal(listed.length, 3, listed.join('\n'));
  t.ok(pubOf(/^ssh-ed25519 /));
  t.ok(pubOf(/^ecdsa-sha2-nistp256 /));
  t.ok(pubOf(/^ssh-rsa /));
  t.equal(authSubs.length, 3);
});

/** ssh to the test sshd with the holder's socket as its only agent. */
function login(): Promise<{ stdout: string }> {
  const args = sshArgs(sshd);
  args.splice(args.indexOf('-i'), 2);
  const through = args.map((a) =>
    a === 'IdentityAgent=none'
      ? `IdentityAgent=${sock}`
      : a === 'IdentitiesOnly=yes'
        ? 'IdentitiesOnly=no'
        : a,
  );
  return run('ssh', [...through, 'echo', 'logged-in'], { env });
}

t.test('a login with no rule asks, naming the user and the destination', async (t) => {
  await sshd.authorize(pubOf(/^ssh-ed25519 /));
  prompts.length = 0;
  answer = true;
  const { stdout } = await login();
  t.equal(stdout.trim(), 'logged-in');
  t.equal(prompts.length, 1, 'one confirmation for one login');
  t.match(prompts[0], /allow ssh build\.example to make an SSH signature with key [0-9A-F]{40}\?/);
  t.match(prompts[0], new RegExp(`login as ${sshd.user} to \\[127\\.0\\.0\\.1\\]:${sshd.port}`));
  t.match(prompts[0], /host key is \[127\.0\.0\.1\]:\d+ \(SHA256:/);
  const rec = (await records()).at(-1)!;
  t.match(rec, {
    op: 'ssh-sign',
    decision: 'confirmed',
    ssh: { purpose: 'login', subject: sshd.user, destinationName: destName },
  });
  t.match(rec.ssh?.destination, /^SHA256:/);
});

t.test('declined at the prompt: ssh is refused and the refusal audited', async (t) => {
  answer = false;
  t.teardown(() => (answer = true));
  await t.rejects(login(), /Permission denied/);
  t.match((await records()).at(-1), {
    op: 'ssh-sign',
    decision: 'denied',
    reason: 'not confirmed at the pinentry',
  });
});

t.test('a rule allows logins to that destination only', async (t) => {
  rules.splice(0, rules.length, { op: 'ssh-sign', destination: destName, action: 'allow' });
  t.teardown(() => rules.splice(0));
  prompts.length = 0;
  t.equal((await login()).stdout.trim(), 'logged-in');
  t.equal(prompts.length, 0, 'no prompt for an allowed destination');
  t.match((await records()).at(-1), { decision: 'allowed', ssh: { destinationName: destName } });

  // The same key, a destination the rule does not name: the default (confirm) applies again.
  rules.splice(0, rules.length, {
    op: 'ssh-sign',
    destination: 'github.com',
    action: 'allow',
  });
  answer = false;
  await t.rejects(login(), /Permission denied/);
  t.equal(prompts.length, 1, 'github.com is not what known_hosts records for this key');
  answer = true;
});

t.test('a deny rule for a destination refuses without a prompt, audited', async (t) => {
  rules.splice(0, rules.length, {
    op: 'ssh-sign',
    destination: '[127.0.0.1]:*',
    action: 'deny',
    origin: 'test rule',
  });
  t.teardown(() => rules.splice(0));
  prompts.length = 0;
  await t.rejects(login(), /Permission denied/);
  t.equal(prompts.length, 0);
  t.match((await records()).at(-1), { op: 'ssh-sign', decision: 'denied', reason: /policy:/ });
});

for (const [label, type, sigType] of [
  ['Ed25519', /^ssh-ed25519 /, 'ssh-ed25519'],
  ['NIST P-256', /^ecdsa-sha2-nistp256 /, 'ecdsa-sha2-nistp256'],
  ['RSA 3072', /^ssh-rsa /, 'rsa-sha2-512'],
] as const) {
  t.test(`${label}: ssh-keygen -Y sign -n git verifies, shown as a git signature`, async (t) => {
    prompts.length = 0;
    const pub = pubOf(type);
    const body = `tree 4b825dc642cb6eb9a060e54bf8d69288fbee4904\n\n${label} commit\n`;
    const sigFile = await sshsigSign(env, dir, sigType, pub, body);
    const [code, out] = await sshsigVerify(dir, pub, sigFile, body);
    t.equal(code, 0, out);
    t.match(out, /Good "git" signature for dev@example\.org/);
    t.match(prompts[0], /git SSH signature \(commit or tag\)/);
    const sig = (await readFile(sigFile, 'utf8')).replace(/-----[^-]+-----|\s/g, '');
    t.ok(Buffer.from(sig, 'base64').includes(Buffer.from(sigType)), `a ${sigType} signature`);
    t.match((await records()).at(-1), {
      op: 'ssh-sign',
      decision: 'confirmed',
      ssh: { purpose: 'sshsig', subject: 'git' },
    });
  });
}

t.test('git commit -S with gpg.format=ssh, then git verify-commit', async (t) => {
  rules.splice(0, rules.length, { op: 'ssh-sign', action: 'allow' });
  t.teardown(() => rules.splice(0));
  const repo = path.join(dir, 'repo');
  const pub = pubOf(/^ssh-ed25519 /)
    .split(' ')
    .slice(0, 2)
    .join(' ');
  const allowed = path.join(dir, 'git_allowed_signers');
  await writeFile(allowed, `dev@example.org ${pub}\n`);
  const gitEnv = { ...env, GIT_CONFIG_NOSYSTEM: '1', HOME: dir };
  const git = (...args: string[]) =>
    run(
      'git',
      [
        '-C',
        repo,
        '-c',
        'gpg.format=ssh',
        '-c',
        `user.signingkey=key::${pub}`,
        '-c',
        `gpg.ssh.allowedSignersFile=${allowed}`,
        '-c',
        'user.name=Dev',
        '-c',
        'user.email=dev@example.org',
        ...args,
      ],
      { env: gitEnv },
    );
  await run('git', ['init', '-q', repo], { env: gitEnv });
  await writeFile(path.join(repo, 'README'), 'signed over ssh-agent\n');
  await git('add', 'README');
  await git('commit', '-q', '-S', '-m', 'first signed commit');
  const v = await git('verify-commit', 'HEAD');
  t.match(v.stderr, /Good "git" signature for dev@example\.org/);
  t.match((await records()).at(-1), {
    op: 'ssh-sign',
    decision: 'allowed',
    ssh: { purpose: 'sshsig', subject: 'git' },
  });
});
