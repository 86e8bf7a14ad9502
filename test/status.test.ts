// The agent's control socket: `keytether status` against a holder that real gpg just signed
// with, the socket's request protocol, and `keytether ssh` borrowing the running agent's holder
// (through a real sshd) so that the agent decides, caches and audits the server's requests.
//
// The agent here is a harness in the test process doing what `keytether agent` does around its
// socket (openHolderRuntime, the gpg-agent socket, startControlServer); the CLI commands under
// test run as real child processes against it.

import t, { type Test } from 'tap';
import net from 'node:net';
import { createHash } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, readFile, rm, stat, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { spawn, type ChildProcess } from 'node:child_process';
import { serveAgent } from '../protocol/agent/index.js';
import { loadConfig, mergeFlags } from '../workstation/home/config.js';
import {
  controlSocketPath,
  openAgentTunnel,
  startControlServer,
  type ControlServer,
  type StatusDocument,
} from '../workstation/control/control.js';
import { listenUnix } from '../workstation/holder/local-socket.js';
import { openHolderRuntime, type HolderRuntime } from '../workstation/holder/runtime.js';
import { shellQuote } from '../workstation/ssh/connect.js';
import { cliPath, runCli, spawnCli, waitForLine } from './support/cli.js';
import {
  exportPublicKey,
  exportSecretKey,
  generateKey,
  makeGnupgHome,
  type GeneratedKey,
} from './support/gnupg.js';
import { startSshd } from './support/sshd.js';
import { ALLOW_BLIND_FLAG, ALLOW_BLIND_RULE } from './support/blind-signing.js';

interface HarnessAgent {
  rt: HolderRuntime;
  socket: string;
  control: ControlServer;
  close(): Promise<void>;
}

async function startHarnessAgent(home: string, socket: string): Promise<HarnessAgent> {
  const loaded = mergeFlags(await loadConfig(home), { backend: 'builtin' });
  const config = { ...loaded, policy: [...loaded.policy, ALLOW_BLIND_RULE] };
  const rt = await openHolderRuntime(home, config);
  const open = new Set<net.Socket>();
  const server = await listenUnix(socket, (sock) => {
    open.add(sock);
    sock.on('close', () => open.delete(sock));
    sock.on('error', () => sock.destroy());
    void serveAgent(sock, { holder: rt.holder, requester: { front: 'local' } });
  });
  const control = await startControlServer(rt, { home, agentSocket: socket, version: '9.9.9' });
  return {
    rt,
    socket,
    control,
    async close() {
      await control.close();
      await new Promise<void>((resolve) => {
        server.close(() => resolve());
        for (const s of open) s.destroy();
      });
      await rt.close();
    },
  };
}

async function auditRecords(home: string): Promise<Record<string, unknown>[]> {
  const text = await readFile(path.join(home, 'audit.jsonl'), 'utf8');
  return text
    .split('\n')
    .filter(Boolean)
    .map((l) => JSON.parse(l) as Record<string, unknown>);
}

/** Sends raw bytes to the control socket and returns everything it answers until it closes. */
function rawRequest(sockPath: string, data: string | Buffer): Promise<string> {
  return new Promise((resolve, reject) => {
    const s = net.connect(sockPath);
    let out = '';
    s.on('data', (d: Buffer) => (out += d.toString()));
    s.on('error', reject);
    s.on('close', () => resolve(out));
    s.write(data);
  });
}

async function statusJson(home: string): Promise<StatusDocument> {
  const r = await runCli(['status', '--json'], { env: { KEYTETHER_HOME: home } });
  if (r.code !== 0) throw new Error(`status --json failed (${r.code}): ${r.stderr}`);
  return JSON.parse(r.stdout) as StatusDocument;
}

t.test('status without an agent says how to start one', async (t) => {
  const tmp = await mkdtemp('/tmp/ktst-');
  t.teardown(() => rm(tmp, { recursive: true, force: true }));
  const home = path.join(tmp, 'home');
  for (const args of [['status'], ['status', '--json']]) {
    const r = await runCli(args, { env: { KEYTETHER_HOME: home } });
    t.equal(r.code, 1, args.join(' '));
    t.equal(
      r.stderr,
      `keytether status: no keytether agent is running for ${home}; start one with keytether agent\n`,
    );
    t.equal(r.stdout, '');
  }
  t.notOk(existsSync(home), 'asking for the status creates nothing');
});

t.test('the control socket of a running agent', async (t) => {
  const ws = await makeGnupgHome();
  t.teardown(() => ws.cleanup());
  const key: GeneratedKey = await generateKey(ws, {
    uid: 'Stella Status <stella@example.org>',
    algo: 'ed25519',
    usage: 'sign,cert',
  });
  const tmp = await mkdtemp('/tmp/ktst-');
  t.teardown(() => rm(tmp, { recursive: true, force: true }));
  const home = path.join(tmp, 'kt');
  const secrets = path.join(tmp, 'secret.gpg');
  await writeFile(secrets, await exportSecretKey(ws, key.fingerprint), { mode: 0o600 });
  const imp = await runCli(['keys', 'import', secrets], { env: { KEYTETHER_HOME: home } });
  t.equal(imp.code, 0, `keys import: ${imp.stderr}`);
  await rm(secrets);

  const agent = await startHarnessAgent(home, path.join(tmp, 'S.gpg-agent'));
  let closed = false;
  const closeAgent = async () => {
    if (closed) return;
    closed = true;
    await agent.close();
  };
  t.teardown(closeAgent);
  const ctl = controlSocketPath(home);
  t.equal(((await stat(ctl)).mode & 0o777).toString(8), '600', 'the control socket is 0600');
  t.equal(((await stat(home)).mode & 0o777).toString(8), '700', 'in a 0700 home');

  await t.test('before any request: nothing unlocked, nothing recent', async (t) => {
    const doc = await statusJson(home);
    t.equal(doc.pid, process.pid);
    t.equal(doc.version, '9.9.9');
    t.equal(doc.agentSocket, agent.socket);
    t.same(doc.unlocked, []);
    t.same(doc.recent, []);
    t.match(doc.fronts, [{ front: 'local', requests: 0 }]);
  });

  // Real gpg, public keys only, pointed at the agent's socket.
  const client = await makeGnupgHome({ gpgConf: ['no-autostart'] });
  t.teardown(() => client.cleanup());
  const dirs = await client.run('gpgconf', ['--list-dirs', 'agent-socket']);
  await writeFile(dirs.stdout.toString().trim(), `%Assuan%\nsocket=${agent.socket}\n`);
  const pubImp = await client.gpg(['--batch', '--import'], {
    input: await exportPublicKey(ws, key.fingerprint),
  });
  t.equal(pubImp.code, 0, pubImp.stderr);
  const sig = await client.gpg(['--batch', '-u', key.fingerprint, '--detach-sign'], {
    input: 'status me\n',
  });
  t.equal(sig.code, 0, `gpg signs through the agent: ${sig.stderr}`);

  await t.test('status --json shows the unlocked key and the signature', async (t) => {
    const doc = await statusJson(home);
    t.equal(doc.unlocked.length, 1, 'one key unlocked');
    const u = doc.unlocked[0]!;
    t.equal(u.keygrip, key.keygrip);
    t.equal(u.fingerprint, key.fingerprint);
    t.ok(u.expiresInS > 0 && u.expiresInS <= 600, `expires in ${u.expiresInS} s (default 600)`);
    t.equal(doc.recent.length, 1, 'one recent operation');
    t.match(doc.recent[0], {
      front: 'local',
      op: 'sign',
      keygrip: key.keygrip,
      fingerprint: key.fingerprint,
      decision: 'allowed',
    });
    t.ok(Number.isFinite(Date.parse(doc.recent[0]!.time)), 'with a time');
    t.match(doc.fronts, [{ front: 'local', requests: 1 }]);
    const recs = await auditRecords(home);
    t.equal(recs.length, 1, 'the audit log agrees');
  });

  await t.test('status prints a readable summary', async (t) => {
    const r = await runCli(['status'], { env: { KEYTETHER_HOME: home } });
    t.equal(r.code, 0, r.stderr);
    t.match(r.stdout, new RegExp(`^agent: pid ${process.pid}, keytether 9\\.9\\.9`));
    t.match(r.stdout, `gpg-agent socket: ${agent.socket}`);
    t.match(r.stdout, /^fronts:\n {2}local: since \S+, 1 request$/m);
    t.match(r.stdout, /^relays:\n {2}none$/m);
    t.match(
      r.stdout,
      new RegExp(
        `^ {2}${key.fingerprint} \\(keygrip ${key.keygrip}\\): forgotten in \\d+m \\d\\ds$`,
        'm',
      ),
    );
    t.match(r.stdout, new RegExp(`^ {2}\\S+ sign ${key.fingerprint} for local: allowed$`, 'm'));
  });

  await t.test('the request line is strict', async (t) => {
    t.match(await rawRequest(ctl, 'hello\n'), /^ERR unknown request; expected "status"/);
    t.match(await rawRequest(ctl, 'status \n'), /^ERR unknown request/, 'no trailing space');
    t.match(await rawRequest(ctl, 'tunnel ssh a%0Ab\n'), /^ERR .*invalid host/);
    t.match(await rawRequest(ctl, 'tunnel relay x\n'), /^ERR unknown request/);
    t.match(await rawRequest(ctl, Buffer.from('st\u0000tus\n')), /^ERR .*printable ASCII/);
    t.match(await rawRequest(ctl, 'x'.repeat(600)), /^ERR .*longer than 512 bytes/);
    const ok = await rawRequest(ctl, 'status\n');
    t.match(ok, new RegExp(`^OK ${process.pid}\\n\\{`), 'status answers OK <pid> then JSON');
  });

  await t.test('a second agent for the same home is refused', async (t) => {
    await t.rejects(
      startControlServer(agent.rt, {
        home,
        agentSocket: path.join(tmp, 'other'),
        version: '9.9.9',
      }),
      /another keytether agent is already running for .*; stop it first/,
    );
    const doc = await statusJson(home);
    t.equal(doc.pid, process.pid, 'the first agent still answers');
  });

  await t.test('a tunnel over the control socket signs as the ssh front', async (t) => {
    const tunnel = await openAgentTunnel(home, 'build.example.org', {
      software: 'keytether/test',
    });
    t.ok(tunnel, 'the running agent is found');
    t.equal(tunnel!.pid, process.pid);
    const inv = await tunnel!.holder.inventory();
    t.ok(inv.keys.some((k) => k.keygrip === key.keygrip));
    const digest = createHash('sha256').update('over the control socket').digest();
    const sexp = await tunnel!.holder.sign({
      keygrip: key.keygrip,
      hashAlgo: 8,
      digest,
      // The agent pins front and host to what the tunnel declared, whatever a request says.
      requester: { front: 'local', host: 'elsewhere', command: 'gpg' },
    });
    t.match(Buffer.from(sexp).toString('latin1'), /^\(7:sig-val/);
    const doc = await statusJson(home);
    t.match(
      doc.fronts.find((f) => f.front === 'ssh'),
      { host: 'build.example.org', requests: 1 },
      'the tunnel is a connected front',
    );
    t.match(doc.recent.at(-1), { front: 'ssh', host: 'build.example.org', op: 'sign' });
    const recs = await auditRecords(home);
    t.match(recs.at(-1), {
      front: 'ssh',
      host: 'build.example.org',
      op: 'sign',
      decision: 'allowed',
    });
    tunnel!.holder.close('done');
    await tunnel!.holder.closed;
  });

  await t.test(
    'closing the agent removes the control socket; a stale one is replaced',
    async (t) => {
      await closeAgent();
      t.notOk(existsSync(ctl), 'the socket file is gone');
      const r = await runCli(['status'], { env: { KEYTETHER_HOME: home } });
      t.equal(r.code, 1);
      t.match(r.stderr, /no keytether agent is running/);

      // A socket file without a listener, as a killed agent leaves behind.
      const holder = spawn(
        process.execPath,
        [
          '-e',
          `require('net').createServer().listen(process.argv[1], () => console.log('up'))`,
          ctl,
        ],
        { stdio: ['ignore', 'pipe', 'inherit'] },
      );
      const gone = new Promise((resolve) => holder.once('exit', resolve));
      await waitForLine(holder.stdout!, /^up$/, 30_000);
      holder.kill('SIGKILL');
      await gone;
      t.ok(existsSync(ctl), 'a stale socket file is left');
      const again = await startHarnessAgent(home, path.join(tmp, 'S.gpg-agent2'));
      t.teardown(() => again.close());
      const doc = await statusJson(home);
      t.equal(doc.agentSocket, path.join(tmp, 'S.gpg-agent2'), 'the new agent answers');
    },
  );
});

/** A workstation home holding a new key, and a server: its GnuPG home behind a test sshd. */
async function sshWorld(t: Test, uid: string, prefix: string) {
  const ws = await makeGnupgHome();
  t.teardown(() => ws.cleanup());
  const key = await generateKey(ws, { uid, algo: 'ed25519', usage: 'sign,cert' });
  const tmp = await mkdtemp(prefix);
  t.teardown(() => rm(tmp, { recursive: true, force: true }));
  const home = path.join(tmp, 'kt');
  const userHome = path.join(tmp, 'user');
  await mkdir(userHome, { mode: 0o700 });
  const secrets = path.join(tmp, 'secret.gpg');
  await writeFile(secrets, await exportSecretKey(ws, key.fingerprint), { mode: 0o600 });
  const imp = await runCli(['keys', 'import', secrets], { env: { KEYTETHER_HOME: home } });
  t.equal(imp.code, 0, `keys import: ${imp.stderr}`);
  await rm(secrets);
  const server = await makeGnupgHome();
  t.teardown(() => server.cleanup());
  const sshd = await startSshd({ env: { GNUPGHOME: server.home } });
  t.teardown(() => sshd.stop());
  const remoteSocket = (await server.run('gpgconf', ['--list-dirs', 'agent-socket'])).stdout
    .toString()
    .trim();
  return { key, tmp, home, userHome, server, sshd, remoteSocket };
}

/** `keytether ssh` from W's home to its sshd with EXTRA options, once it says `ready:`. */
async function startSsh(t: Test, w: Awaited<ReturnType<typeof sshWorld>>, extra: string[]) {
  const cli = await cliPath();
  const child: ChildProcess = await spawnCli(
    [
      'ssh',
      '-p',
      String(w.sshd.port),
      '-i',
      w.sshd.clientKey,
      '-o',
      `UserKnownHostsFile=${w.sshd.knownHostsFile}`,
      '-o',
      'GlobalKnownHostsFile=/dev/null',
      `${w.sshd.user}@127.0.0.1`,
      '--remote-command',
      `${shellQuote(process.execPath)} ${shellQuote(cli)}`,
      ...extra,
    ],
    { env: { KEYTETHER_HOME: w.home, HOME: w.userHome, SSH_AUTH_SOCK: undefined } },
  );
  let stderr = '';
  child.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
  const exited = new Promise<number | null>((resolve) => child.once('exit', (c) => resolve(c)));
  t.teardown(() => {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
  });
  try {
    await waitForLine(child.stdout!, /^ready: (.+)$/, 60_000);
  } catch (e) {
    child.kill('SIGKILL');
    throw new Error(`keytether ssh did not get ready: ${(e as Error).message}; stderr: ${stderr}`);
  }
  return { child, stderr: () => stderr, exited };
}

t.test('keytether ssh reuses the running agent', async (t) => {
  const w = await sshWorld(t, 'Rhea Reuse <rhea@example.org>', '/tmp/ktsr-');
  const { key, home, server } = w;
  const agent = await startHarnessAgent(home, path.join(w.tmp, 'S.gpg-agent'));
  t.teardown(() => agent.close());
  const ssh = await startSsh(t, w, [
    ...ALLOW_BLIND_FLAG,
    '--remote-socket',
    w.remoteSocket,
    '--import-keys',
    '--pinentry-program',
    '/usr/bin/pinentry',
  ]);
  const { child, exited } = ssh;
  const stderr = ssh.stderr();
  t.match(stderr, `keytether ssh: using the running keytether agent (pid ${process.pid})\n`);
  // The agent's pinentry asks for gpg's keys; ssh's own still unlocks encrypted identity files.
  t.match(
    stderr,
    "keytether ssh: the running agent's own settings apply to gpg's requests, not --pinentry-program, --policy (--pinentry-program still applies to SSH identity passphrases); pass --no-agent to use them for gpg too\n",
  );

  const s = await server.gpg(['--batch', '--no-tty', '-u', key.fingerprint, '--detach-sign'], {
    input: 'signed on the server through the agent\n',
  });
  t.equal(s.code, 0, `gpg on the server signs: ${s.stderr}`);

  const recs = await auditRecords(home);
  t.match(
    recs,
    [{ front: 'ssh', host: '127.0.0.1', op: 'sign', decision: 'allowed' }],
    "the agent's audit log has the server's request",
  );
  const doc = await statusJson(home);
  t.match(
    doc.fronts.find((f) => f.front === 'ssh'),
    { host: '127.0.0.1', requests: 1 },
  );
  t.match(doc.recent.at(-1), { front: 'ssh', host: '127.0.0.1', op: 'sign', decision: 'allowed' });
  t.match(doc.unlocked, [{ keygrip: key.keygrip }], 'the agent holds the key unlocked');

  child.kill('SIGTERM');
  t.equal(await exited, 0, stderr);
});

t.test("keytether ssh's in-process holder answers keytether status", async (t) => {
  const w = await sshWorld(t, 'Ivo Inproc <ivo@example.org>', '/tmp/ktsi-');
  const { key, home, server } = w;
  // No agent runs for this home: ssh holds the keys itself.
  const ssh = await startSsh(t, w, [
    ...ALLOW_BLIND_FLAG,
    '--backend',
    'builtin',
    '--remote-socket',
    w.remoteSocket,
    '--import-keys',
  ]);
  const { child, exited } = ssh;
  const stderr = ssh.stderr();
  t.notMatch(stderr, /using the running keytether agent/);

  const before = await statusJson(home);
  t.match(before, { pid: child.pid, command: 'keytether ssh 127.0.0.1', recent: [] });
  t.equal(before.agentSocket, undefined, 'it serves no gpg-agent socket of its own');
  t.same(
    before.fronts.map((f) => [f.front, f.host, f.requests]),
    [['ssh', '127.0.0.1', 0]],
    'its one front is the SSH session',
  );

  const s = await server.gpg(['--batch', '--no-tty', '-u', key.fingerprint, '--detach-sign'], {
    input: 'signed on the server by the in-process holder\n',
  });
  t.equal(s.code, 0, `gpg on the server signs: ${s.stderr}`);

  const doc = await statusJson(home);
  t.match(doc.fronts, [{ front: 'ssh', host: '127.0.0.1', requests: 1 }]);
  t.match(doc.recent.at(-1), { front: 'ssh', host: '127.0.0.1', op: 'sign', decision: 'allowed' });
  const text = await runCli(['status'], { env: { KEYTETHER_HOME: home } });
  t.equal(text.code, 0, text.stderr);
  t.match(text.stdout, `holder of keytether ssh 127.0.0.1: pid ${child.pid}, keytether `);
  t.notMatch(text.stdout, /gpg-agent socket/);
  t.match(text.stdout, /^ {2}\S+ sign \S+ blind for ssh 127\.0\.0\.1( by .*)?: allowed$/m);

  // A second session finds the first's holder and says whose it is, and for how long.
  const second = await startSsh(t, w, ['--remote-socket', path.join(server.home, 'S.second')]);
  t.match(
    second.stderr(),
    `keytether ssh: using the holder of 'keytether ssh 127.0.0.1' (pid ${child.pid}); this session ends when that one does`,
  );
  second.child.kill('SIGTERM');
  await second.exited;

  child.kill('SIGTERM');
  t.equal(await exited, 0, stderr);
  const after = await runCli(['status'], { env: { KEYTETHER_HOME: home } });
  t.equal(after.code, 1, 'the status went with the session');
  t.match(after.stderr, /no keytether agent is running/);
});
