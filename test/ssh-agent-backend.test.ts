// The workstation's own ssh-agent as a back end: keys loaded into a real OpenSSH ssh-agent are
// offered by the holder's ssh-agent front, sign through it (Ed25519, ECDSA P-384, RSA with
// rsa-sha2-512) with the holder's policy and audit in front, and ssh-keygen verifies; an agent
// that goes away leaves an empty list and a one-line refusal, not a hang.

import t from 'tap';
import { execFile, spawn } from 'node:child_process';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { serveSshAgent, type SshAgentEvent } from '../protocol/ssh-agent/index.js';
import { AuditLog } from '../workstation/audit/audit.js';
import { SshAgentBackend } from '../workstation/backends/ssh-agent.js';
import type { UnlockedKey } from '../workstation/crypto/index.js';
import { Holder } from '../workstation/holder/holder.js';
import { UnlockCache } from '../workstation/holder/unlock-cache.js';
import { Keystore } from '../workstation/keystore/index.js';
import { ApprovalMemory } from '../workstation/policy/approvals.js';
import { parsePolicyFlag } from '../workstation/home/config.js';
import type { PolicyRule } from '../workstation/policy/policy.js';

const run = promisify(execFile);
const dir = await mkdtemp(path.join(tmpdir(), 'kt-sshab-'));
t.teardown(() => rm(dir, { recursive: true, force: true }));

// A real ssh-agent in the foreground (-D), on a socket of our choosing.
const agentSock = path.join(dir, 'openssh-agent.sock');
const agent = spawn('ssh-agent', ['-D', '-a', agentSock], { stdio: ['ignore', 'pipe', 'pipe'] });
await new Promise<void>((resolve, reject) => {
  agent.stdout.once('data', () => resolve());
  agent.once('exit', (c) => reject(new Error(`ssh-agent exited ${c}`)));
});
let agentAlive = true;
t.teardown(() => {
  if (agentAlive) agent.kill();
});
const agentEnv = { ...process.env, SSH_AUTH_SOCK: agentSock };
const keys: Record<string, string> = {};
for (const [name, args] of [
  ['ed25519', ['-t', 'ed25519']],
  ['ecdsa', ['-t', 'ecdsa', '-b', '384']],
  ['rsa', ['-t', 'rsa', '-b', '3072']],
] as const) {
  const file = path.join(dir, `id_${name}`);
  await run('ssh-keygen', ['-q', ...args, '-N', '', '-C', `${name}@workstation`, '-f', file]);
  await run('ssh-add', ['-q', file], { env: agentEnv });
  keys[name] = (await readFile(`${file}.pub`, 'utf8')).trim();
}

const rules: PolicyRule[] = [{ op: 'ssh-sign', action: 'allow' }];
const auditFile = path.join(dir, 'audit.jsonl');
const audit = await AuditLog.open(auditFile);
t.teardown(() => audit.close());
const holder = new Holder({
  keystore: await Keystore.open(path.join(dir, 'keys')),
  backends: [new SshAgentBackend({ socket: agentSock, listTtlMs: 0 })],
  policy: rules,
  pinentry: { getPassphrase: async () => Buffer.from(''), confirm: async () => false },
  audit,
  cache: new UnlockCache<UnlockedKey>({ defaultTtlMs: 0, maxTtlMs: 0 }),
  approvals: new ApprovalMemory(),
  knownHostsFiles: [],
});
const events: SshAgentEvent[] = [];
const front = path.join(dir, 'front.sock');
const server = createServer((s) => {
  void serveSshAgent(s, {
    holder,
    requester: { front: 'ssh', host: 'build.example' },
    onEvent: (e) => events.push(e),
  });
});
await new Promise<void>((r) => server.listen(front, r));
t.teardown(() => server.close());
const env = { ...process.env, SSH_AUTH_SOCK: front };

t.test('the front lists the workstation agent’s keys', async (t) => {
  const listed = (await run('ssh-add', ['-L'], { env })).stdout.trim().split('\n');
  t.equal(listed.length, 3);
  for (const pub of Object.values(keys)) {
    t.ok(
      listed.some((l) => l.startsWith(pub.split(' ').slice(0, 2).join(' '))),
      pub.split(' ')[0]!,
    );
  }
});

for (const name of ['ed25519', 'ecdsa', 'rsa']) {
  t.test(`${name}: ssh-keygen -Y sign through the holder verifies`, async (t) => {
    const pub = keys[name]!;
    const pubFile = path.join(dir, `front-${name}.pub`);
    await writeFile(pubFile, pub + '\n');
    const msg = path.join(dir, `${name}.msg`);
    await writeFile(msg, `${name} payload\n`);
    await run('ssh-keygen', ['-Y', 'sign', '-n', 'git', '-f', pubFile, msg], { env });
    const allowed = path.join(dir, 'allowed');
    await writeFile(allowed, `dev@example.org ${pub.split(' ').slice(0, 2).join(' ')}\n`);
    const v = execFile('ssh-keygen', [
      '-Y',
      'verify',
      '-f',
      allowed,
      '-I',
      'dev@example.org',
      '-n',
      'git',
      '-s',
      `${msg}.sig`,
    ]);
    v.stdin!.end(`${name} payload\n`);
    let out = '';
    v.stdout!.on('data', (d: Buffer) => (out += d.toString()));
    t.equal(await new Promise<number | null>((r) => v.on('close', r)), 0, out);
    t.match(out, /Good "git" signature/);
    const rec = JSON.parse((await readFile(auditFile, 'utf8')).trim().split('\n').at(-1)!) as {
      op: string;
      decision: string;
      fingerprint: string;
    };
    t.match(rec, { op: 'ssh-sign', decision: 'allowed', fingerprint: /^SHA256:/ });
    if (name === 'rsa') {
      const sig = (await readFile(`${msg}.sig`, 'utf8')).replace(/-----[^-]+-----|\s/g, '');
      t.ok(Buffer.from(sig, 'base64').includes(Buffer.from('rsa-sha2-512')), 'rsa-sha2-512');
    }
  });
}

t.test('a rule names an agent key by its SSH fingerprint', async (t) => {
  const fpr = (await run('ssh-keygen', ['-lf', path.join(dir, 'id_ecdsa.pub')])).stdout.split(
    ' ',
  )[1]!;
  rules.unshift(parsePolicyFlag(`op=ssh-sign,key=${fpr},action=deny`));
  t.teardown(() => rules.shift());
  const msg = path.join(dir, 'denied.msg');
  await writeFile(msg, 'no\n');
  const pubFile = path.join(dir, 'front-ecdsa.pub');
  await t.rejects(run('ssh-keygen', ['-Y', 'sign', '-n', 'git', '-f', pubFile, msg], { env }));
  const rec = JSON.parse((await readFile(auditFile, 'utf8')).trim().split('\n').at(-1)!) as {
    decision: string;
    fingerprint: string;
  };
  t.match(rec, { decision: 'denied', fingerprint: fpr });
});

t.test('an agent that went away: no keys listed, a signature refused, nothing hangs', async (t) => {
  const pubFile = path.join(dir, 'front-ed25519.pub');
  // Listed while the agent is up, then the agent dies before the signature.
  agent.kill();
  agentAlive = false;
  await new Promise((r) => agent.once('exit', r));
  const msg = path.join(dir, 'late.msg');
  await writeFile(msg, 'late\n');
  await t.rejects(run('ssh-keygen', ['-Y', 'sign', '-n', 'git', '-f', pubFile, msg], { env }));
  const listed = await run('ssh-add', ['-l'], { env }).catch((e: { stdout: string }) => e);
  t.match(listed.stdout, /no identities/);
});
