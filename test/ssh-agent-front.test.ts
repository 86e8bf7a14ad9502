// The ssh-agent front against stock OpenSSH: ssh-add lists the holder's authentication key and
// is refused when it tries to change the agent; ssh-keygen -Y sign (git's SSH commit signing)
// signs through the front and ssh-keygen -Y verify accepts the signature; bad input is refused.

import t from 'tap';
import { execFile } from 'node:child_process';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { createServer, connect, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createHash, sign as cryptoSign } from 'node:crypto';
import { promisify } from 'node:util';
import type { SshSignRequest } from '../protocol/keyholder.js';
import { atom, encodeSexp } from '../protocol/sexp.js';
import { serveSshAgent, sshPublicKey, type SshAgentEvent } from '../protocol/ssh-agent/index.js';
import { SimpleHolder } from './support/simple-holder.js';
import { sshArgs, startSshd } from './support/sshd.js';

const run = promisify(execFile);

class SshHolder extends SimpleHolder {
  readonly sshRequests: SshSignRequest[] = [];
  refuse = false;
  async sshSign(req: SshSignRequest): Promise<Uint8Array> {
    this.sshRequests.push(req);
    if (this.refuse) throw new Error('policy: denied');
    const rs = cryptoSign(null, req.data, this.signKey.privateKey);
    return encodeSexp([
      atom('sig-val'),
      [atom('eddsa'), [atom('r'), rs.subarray(0, 32)], [atom('s'), rs.subarray(32)]],
    ]);
  }
}

const dir = mkdtempSync(join(tmpdir(), 'kt-sshagent-'));
t.teardown(() => run('rm', ['-rf', dir]));
const holder = new SshHolder();
holder.signKey.entry.usage = ['sign', 'auth'];
const events: SshAgentEvent[] = [];
const sock = join(dir, 'agent.sock');
const server = createServer((s) => {
  void serveSshAgent(s, {
    holder,
    requester: { front: 'ssh', host: 'test' },
    onEvent: (e) => events.push(e),
  });
});
await new Promise<void>((r) => server.listen(sock, r));
t.teardown(() => server.close());
const env = { ...process.env, SSH_AUTH_SOCK: sock };
const key = sshPublicKey(holder.signKey.entry.publicKey)!;
const pubLine = `${key.type} ${key.blob.toString('base64')} holder`;

t.test('ssh-add -L lists the authentication key only', async (t) => {
  const { stdout } = await run('ssh-add', ['-L'], { env });
  t.equal(stdout.trim(), `ssh-ed25519 ${key.blob.toString('base64')} ${'A'.repeat(40)}`);
});

t.test('ssh-add -D and adding a key are refused', async (t) => {
  await t.rejects(run('ssh-add', ['-D'], { env }));
  const keyFile = join(dir, 'id');
  await run('ssh-keygen', ['-q', '-t', 'ed25519', '-N', '', '-f', keyFile]);
  await t.rejects(run('ssh-add', [keyFile], { env }));
  const { stdout } = await run('ssh-add', ['-l'], { env });
  t.equal(stdout.trim().split('\n').length, 1, 'still exactly the holder key');
});

t.test('ssh-keygen -Y sign -n git signs through the front and verifies', async (t) => {
  const msg = join(dir, 'msg');
  writeFileSync(msg, 'tree 0000\n\ncommit message\n');
  const pubFile = join(dir, 'holder.pub');
  writeFileSync(pubFile, pubLine + '\n');
  await run('ssh-keygen', ['-Y', 'sign', '-n', 'git', '-f', pubFile, msg], { env });
  const allowed = join(dir, 'allowed');
  writeFileSync(allowed, `dev@example.org ${key.type} ${key.blob.toString('base64')}\n`);
  const child = execFile('ssh-keygen', [
    '-Y',
    'verify',
    '-f',
    allowed,
    '-I',
    'dev@example.org',
    '-n',
    'git',
    '-s',
    msg + '.sig',
  ]);
  child.stdin!.end('tree 0000\n\ncommit message\n');
  const out: string[] = [];
  child.stdout!.on('data', (d: Buffer) => out.push(d.toString()));
  const code = await new Promise<number | null>((r) => child.on('close', r));
  t.equal(code, 0, out.join(''));
  t.match(out.join(''), /Good "git" signature/);
  const req = holder.sshRequests.at(-1)!;
  t.equal(req.purpose, 'sshsig');
  t.equal(req.subject, 'git');
});

t.test('a holder refusal reaches ssh-keygen as a failure', async (t) => {
  holder.refuse = true;
  t.teardown(() => (holder.refuse = false));
  const msg = join(dir, 'msg2');
  writeFileSync(msg, 'x');
  const pubFile = join(dir, 'holder.pub');
  await t.rejects(run('ssh-keygen', ['-Y', 'sign', '-n', 'git', '-f', pubFile, msg], { env }));
  t.ok(events.some((e) => e.kind === 'refused' && /policy: denied/.test(e.detail)));
});

t.test('ssh logs in with the key only the holder has, bound to the host key', async (t) => {
  const sshd = await startSshd();
  t.teardown(() => sshd.stop());
  await sshd.authorize(pubLine);
  const base = sshArgs(sshd);
  const i = base.indexOf('-i');
  base.splice(i, 2);
  const args = base.map((a) =>
    a === 'IdentityAgent=none'
      ? `IdentityAgent=${sock}`
      : a === 'IdentitiesOnly=yes'
        ? 'IdentitiesOnly=no'
        : a,
  );
  const { stdout } = await run('ssh', [...args, 'echo', 'logged-in'], { env });
  t.equal(stdout.trim(), 'logged-in');
  const login = holder.sshRequests.find((r) => r.purpose === 'login');
  t.ok(login, 'the holder was asked for a login signature');
  t.equal(login?.subject, sshd.user);
  const hostKey = sshd.hostKeyPub.split(' ')[1]!;
  const fp =
    'SHA256:' +
    createHash('sha256').update(Buffer.from(hostKey, 'base64')).digest('base64').replace(/=+$/, '');
  t.equal(login?.destination, fp, 'session-bind named the destination host key');
});

async function exchange(bytes: Buffer): Promise<Buffer> {
  const s: Socket = connect(sock);
  const got: Buffer[] = [];
  s.on('data', (d: Buffer) => got.push(d));
  s.write(bytes);
  await new Promise((r) => s.once('data', r));
  s.destroy();
  return Buffer.concat(got);
}

t.test('malformed and oversize messages get SSH_AGENT_FAILURE', async (t) => {
  const failure = Buffer.from([0, 0, 0, 1, 5]);
  // A sign request whose key string runs past the message.
  t.same(await exchange(Buffer.from([0, 0, 0, 5, 13, 0, 0, 0, 9])), failure);
  // An unknown type.
  t.same(await exchange(Buffer.from([0, 0, 0, 1, 99])), failure);
  // Over 256 KiB announced: answered and closed without waiting for the body.
  t.same(await exchange(Buffer.from([0, 0x10, 0, 0, 13])), failure);
  // The query extension names session-bind.
  const q = Buffer.concat([Buffer.from([0, 0, 0, 10, 27, 0, 0, 0, 5]), Buffer.from('query')]);
  t.match((await exchange(q)).toString('latin1'), /session-bind@openssh\.com/);
});
