// The SSH connection layer against a real OpenSSH sshd, cross-checked with the real ssh client.

import { spawnSync } from 'node:child_process';
import { mkdtemp, readFile, rm, stat, writeFile } from 'node:fs/promises';
import path from 'node:path';
import t from 'tap';
import type { Test } from 'tap';
import type { Client } from 'ssh2';
import { resolveSshTarget } from '../workstation/ssh/config.js';
import type { SshTarget } from '../workstation/ssh/config.js';
import {
  connectSsh,
  execCapture,
  execChannel,
  remoteAgentSocket,
} from '../workstation/ssh/connect.js';
import type { ConnectSshOptions } from '../workstation/ssh/connect.js';
import { checkHostKey } from '../workstation/ssh/known-hosts.js';
import { freePort, sshExec, startSshd } from './support/sshd.js';

const GNUPGHOME = '/tmp/kt-sshd-gnupg-test';
const h = await startSshd({ env: { KEYTETHER_HOME: '/tmp/kt home', GNUPGHOME } });
t.teardown(() => h.stop());
const work = await mkdtemp('/tmp/kt-sshc-');
t.teardown(() => rm(work, { recursive: true, force: true }));

function keygen(name: string, passphrase = ''): string {
  const file = path.join(work, name);
  const r = spawnSync('ssh-keygen', [
    '-q',
    '-t',
    'ed25519',
    '-N',
    passphrase,
    '-C',
    name,
    '-f',
    file,
  ]);
  if (r.status !== 0) throw new Error(String(r.stderr));
  return file;
}

function sshKeygenFingerprint(pubFile: string): string {
  const out = spawnSync('ssh-keygen', ['-l', '-E', 'sha256', '-f', pubFile], { encoding: 'utf8' });
  return out.stdout.split(' ')[1] ?? '';
}

function target(
  opts: { knownHosts?: string; identities?: string[]; options?: string[] } = {},
): SshTarget {
  return resolveSshTarget({
    target: `${h.user}@${h.host}`,
    port: h.port,
    identities: opts.identities ?? [h.clientKey],
    options: [
      `UserKnownHostsFile=${opts.knownHosts ?? h.knownHostsFile}`,
      'GlobalKnownHostsFile=none',
      ...(opts.options ?? []),
    ],
    configFile: null,
    systemConfigFile: null,
    home: work,
    env: {},
  });
}

async function connected(tt: Test, tg: SshTarget, opts?: ConnectSshOptions): Promise<Client> {
  const c = await connectSsh(tg, opts);
  tt.teardown(() => c.end());
  return c;
}

async function rejection(p: Promise<unknown>): Promise<Error> {
  try {
    await p;
  } catch (e) {
    return e as Error;
  }
  throw new Error('expected a rejection');
}

t.test('the harness sshd serves the real OpenSSH client with the test environment', async (t) => {
  const r = await sshExec(h, 'echo ok; printf "%s\\n" "$KEYTETHER_HOME"; node -p process.version');
  t.equal(r.code, 0, r.stderr);
  t.equal(r.stdout, `ok\n/tmp/kt home\n${process.version}\n`);
  t.match(h.log(), `Accepted publickey for ${h.user} from 127.0.0.1`);
});

t.test('connectSsh with a key file runs a command', async (t) => {
  const c = await connected(t, target());
  const r = await execCapture(c, 'echo hello');
  t.same(r, { code: 0, signal: undefined, stdout: 'hello\n', stderr: '' });
});

t.test('an exec channel carries bytes both ways (what the tunnel uses)', async (t) => {
  const c = await connected(t, target());
  const ch = await execChannel(c, 'cat');
  const chunks: Buffer[] = [];
  ch.on('data', (d: Buffer) => chunks.push(d));
  const closed = new Promise<number | null>((resolve) =>
    ch.on('exit', (code: number | null) => resolve(code)),
  );
  // 'exit' is emitted as the request arrives, while data may still sit in the stream's buffer.
  const ended = new Promise<void>((resolve) => ch.on('end', () => resolve()));
  const payload = Buffer.from(Array.from({ length: 100_000 }, (_, i) => i % 251));
  ch.end(payload);
  t.equal(await closed, 0);
  await ended;
  t.ok(Buffer.concat(chunks).equals(payload));
});

t.test('the remote agent socket is what gpgconf prints on the server', async (t) => {
  const c = await connected(t, target());
  const local = spawnSync('gpgconf', ['--list-dirs', 'agent-socket'], {
    env: { ...process.env, GNUPGHOME },
    encoding: 'utf8',
  }).stdout.trim();
  t.equal(await remoteAgentSocket(c), local);
  const err = await rejection(remoteAgentSocket(c, { gpgconf: 'no-such-gpgconf' }));
  t.match(
    err.message,
    /could not find gpg's agent socket on the server: .*was not found.*--remote-socket/,
  );
});

t.test('an unknown host key is refused with its fingerprint, as ssh refuses it', async (t) => {
  const empty = path.join(work, 'empty_known_hosts');
  await writeFile(empty, '');
  const err = await rejection(connectSsh(target({ knownHosts: empty })));
  const fpr = sshKeygenFingerprint(path.join(h.dir, 'host_ed25519.pub'));
  t.match(fpr, /^SHA256:[A-Za-z0-9+/]{43}$/);
  t.equal(err.name, 'UserError');
  t.match(err.message, `the authenticity of 127.0.0.1 port ${h.port} cannot be established`);
  t.match(err.message, `ED25519 key ${fpr}`);
  t.match(err.message, '--accept-new');
  t.notMatch(err.message, /\n/);
  const ssh = await sshExec({ ...h, knownHostsFile: empty }, 'true');
  t.not(ssh.code, 0);
  t.match(ssh.stderr, 'Host key verification failed');
});

t.test('acceptNew records the key where ssh finds it, then it matches', async (t) => {
  const file = path.join(work, 'new', 'sub', 'known_hosts');
  const notices: string[] = [];
  await connected(t, target({ knownHosts: file }), {
    acceptNew: true,
    onNotice: (s) => notices.push(s),
  });
  t.equal((await stat(file)).mode & 0o777, 0o600);
  t.equal((await stat(path.dirname(file))).mode & 0o777, 0o700);
  const hostKey = h.hostKeyPub.split(' ').slice(0, 2).join(' ');
  t.equal(await readFile(file, 'utf8'), `[127.0.0.1]:${h.port} ${hostKey}\n`);
  t.match(notices.join('\n'), `permanently added [127.0.0.1]:${h.port}`);
  // Stock OpenSSH accepts what we recorded.
  const ssh = await sshExec({ ...h, knownHostsFile: file }, 'echo ok');
  t.equal(ssh.stdout, 'ok\n', ssh.stderr);
  // And now it is known, without acceptNew.
  await connected(t, target({ knownHosts: file }));
  t.equal((await readFile(file, 'utf8')).split('\n').length, 2, 'recorded once');
});

t.test('a changed host key is refused loudly, naming the file and line', async (t) => {
  const other = keygen('other_host');
  const file = path.join(work, 'changed_known_hosts');
  const otherPub = (await readFile(other + '.pub', 'utf8')).split(' ').slice(0, 2).join(' ');
  await writeFile(file, `# a comment\n[127.0.0.1]:${h.port} ${otherPub}\n`);
  const err = await rejection(connectSsh(target({ knownHosts: file }), { acceptNew: true }));
  t.match(err.message, `REFUSING to connect to 127.0.0.1 port ${h.port}: its host key has CHANGED`);
  t.match(err.message, `${file} line 2`);
  t.match(err.message, `ssh-keygen -R '[127.0.0.1]:${h.port}'`);
  const ssh = await sshExec({ ...h, knownHostsFile: file }, 'true');
  t.not(ssh.code, 0);
  t.match(ssh.stderr, 'REMOTE HOST IDENTIFICATION HAS CHANGED');
});

t.test('hashed known_hosts entries (ssh-keygen -H) match', async (t) => {
  const file = path.join(work, 'hashed_known_hosts');
  await writeFile(file, h.knownHostsLine + '\n');
  const r = spawnSync('ssh-keygen', ['-H', '-f', file], { encoding: 'utf8' });
  t.equal(r.status, 0, r.stderr);
  const text = await readFile(file, 'utf8');
  t.match(text, /^\|1\|[A-Za-z0-9+/=]+\|[A-Za-z0-9+/=]+ ssh-ed25519 /);
  t.notMatch(text, '127.0.0.1');
  const c = await connected(t, target({ knownHosts: file }));
  t.equal((await execCapture(c, 'echo hashed')).stdout, 'hashed\n');
});

t.test(
  'a port-less entry vouches for a non-22 port only if it matches, as in OpenSSH',
  async (t) => {
    const file = path.join(work, 'portless_known_hosts');
    await writeFile(file, `127.0.0.1 ${h.hostKeyPub}\n`);
    const c = await connected(t, target({ knownHosts: file }));
    t.equal((await execCapture(c, 'echo portless')).stdout, 'portless\n');
    t.equal((await sshExec({ ...h, knownHostsFile: file }, 'true')).code, 0);

    const other = keygen('portless_other');
    const otherPub = (await readFile(other + '.pub', 'utf8')).split(' ').slice(0, 2).join(' ');
    await writeFile(file, `127.0.0.1 ${otherPub}\n`);
    const err = await rejection(connectSsh(target({ knownHosts: file })));
    t.match(err.message, 'cannot be established', 'a different port-less key is not a change');
    t.not((await sshExec({ ...h, knownHostsFile: file }, 'true')).code, 0);
  },
);

t.test('a revoked host key is refused', async (t) => {
  const file = path.join(work, 'revoked_known_hosts');
  await writeFile(file, `${h.knownHostsLine}\n@revoked * ${h.hostKeyPub}\n`);
  const err = await rejection(connectSsh(target({ knownHosts: file })));
  t.match(err.message, `marked @revoked in ${file} line 2`);
  const blob = Buffer.from(h.hostKeyPub.split(' ')[1] ?? '', 'base64');
  t.equal((await checkHostKey([file], '127.0.0.1', h.port, 'ssh-ed25519', blob)).status, 'revoked');
});

t.test('a key the server does not accept gives a clear authentication failure', async (t) => {
  const wrong = keygen('wrong_key');
  const missing = path.join(work, 'no_such_key');
  const err = await rejection(connectSsh(target({ identities: [missing, wrong] })));
  t.equal(err.name, 'UserError');
  t.match(err.message, `SSH login as ${h.user} to 127.0.0.1 port ${h.port} failed`);
  t.match(err.message, `identity files ${wrong}`);
  t.match(err.message, `${missing} not found`);
  t.match(err.message, 'authorized_keys');
  t.notMatch(err.message, /\n/);
  const ssh = await sshExec(h, 'true', { key: wrong });
  t.not(ssh.code, 0);
  t.match(ssh.stderr, 'Permission denied');
});

t.test(
  'an encrypted identity asks for its passphrase only when the server accepts it',
  async (t) => {
    const accepted = keygen('enc_accepted', 'right horse');
    const refused = keygen('enc_refused', 'other horse');
    await h.authorize(await readFile(accepted + '.pub', 'utf8'));
    const asked: string[] = [];
    const c = await connected(t, target({ identities: [refused, accepted] }), {
      askPassphrase: async ({ file }) => {
        asked.push(file);
        return Buffer.from('right horse');
      },
    });
    t.same(asked, [accepted]);
    t.equal((await execCapture(c, 'echo unlocked')).stdout, 'unlocked\n');
  },
);

t.test('connection refused names host and port', async (t) => {
  const port = await freePort();
  const tg = { ...target(), port };
  const err = await rejection(connectSsh(tg));
  t.equal(
    err.message,
    `cannot connect to 127.0.0.1:${port}: connection refused; check that sshd runs there and that the port is right (-p)`,
  );
});
