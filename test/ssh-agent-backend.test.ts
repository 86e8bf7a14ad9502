// The workstation's own ssh-agent as a back end: keys loaded into a real OpenSSH ssh-agent are
// offered by the holder's ssh-agent front, sign through it (Ed25519, ECDSA P-384, RSA with
// rsa-sha2-512) with the holder's policy and audit in front, and ssh-keygen verifies; an agent
// that goes away leaves an empty list and a one-line refusal, not a hang.

import t from 'tap';
import { execFile, spawn } from 'node:child_process';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { AuditLog } from '../workstation/audit/audit.js';
import { SshAgentBackend } from '../workstation/backends/ssh-agent.js';
import { Keystore } from '../workstation/keystore/index.js';
import { parsePolicyFlag } from '../workstation/home/config.js';
import type { PolicyRule } from '../workstation/policy/policy.js';
import { rigHolder, serveFront, sshsigSign, sshsigVerify } from './support/ssh-agent-rig.js';

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
const holder = rigHolder({
  keystore: await Keystore.open(path.join(dir, 'keys')),
  backends: [new SshAgentBackend({ socket: agentSock, listTtlMs: 0 })],
  policy: rules,
  audit,
});
const front = await serveFront(holder, dir);
t.teardown(() => front.close());
const { env } = front;

t.test('the front lists the workstation agent’s keys', async (t) => {
  const listed = (await run('ssh-add', ['-L'], { env })).stdout.trim().split('\n');
  t.equal(listed.length, 3);
  for (const pub of Object.values(keys)) {
    t.ok(listed.includes(pub), `${pub.split(' ')[0]!}, with the workstation agent's comment`);
  }
});

for (const name of ['ed25519', 'ecdsa', 'rsa']) {
  t.test(`${name}: ssh-keygen -Y sign through the holder verifies`, async (t) => {
    const pub = keys[name]!;
    const body = `${name} payload\n`;
    const sig = await sshsigSign(env, dir, `front-${name}`, pub, body);
    const [code, out] = await sshsigVerify(dir, pub, sig, body);
    t.equal(code, 0, out);
    t.match(out, /Good "git" signature/);
    const rec = JSON.parse((await readFile(auditFile, 'utf8')).trim().split('\n').at(-1)!) as {
      op: string;
      decision: string;
      fingerprint: string;
    };
    t.match(rec, { op: 'ssh-sign', decision: 'allowed', fingerprint: /^SHA256:/ });
    if (name === 'rsa') {
      const armored = (await readFile(sig, 'utf8')).replace(/-----[^-]+-----|\s/g, '');
      t.ok(Buffer.from(armored, 'base64').includes(Buffer.from('rsa-sha2-512')), 'rsa-sha2-512');
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
