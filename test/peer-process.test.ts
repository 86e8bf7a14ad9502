// The facade's "who is asking": real unix socket servers, real client processes (node, python3,
// gpg-connect-agent under sh), with and without ss on PATH.

import t, { type Test } from 'tap';
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { accessSync, constants } from 'node:fs';
import { mkdtemp, mkdir, readFile, rm, symlink, writeFile } from 'node:fs/promises';
import net from 'node:net';
import { tmpdir, userInfo } from 'node:os';
import path from 'node:path';
import {
  commandLine,
  findPeerProcess,
  parseSsPeers,
  parseStat,
  type PeerLookupOptions,
  type PeerProcess,
} from '../system/peer-process.js';
import { listenAt } from '../system/unix-socket.js';

const dir = await mkdtemp(path.join(tmpdir(), 'kt-peer-'));
t.teardown(() => rm(dir, { recursive: true, force: true }));

/** A PATH offering only TOOLS (of ss, perl, python3): a directory of links to the real ones. */
async function pathWith(tools: string[]): Promise<string> {
  const bin = path.join(dir, `bin-${tools.join('-') || 'none'}`);
  await mkdir(bin, { recursive: true });
  for (const tool of tools) {
    // pyenv's python3 is a shim that needs pyenv on PATH; link the interpreter itself.
    const real =
      tool === 'python3'
        ? execFileSync('python3', ['-c', 'import sys; print(sys.executable)'], {
            encoding: 'utf8',
          }).trim()
        : (process.env.PATH ?? '')
            .split(':')
            .map((d) => path.join(d, tool))
            .find((p) => {
              try {
                accessSync(p, constants.X_OK);
                return true;
              } catch {
                return false;
              }
            });
    if (real) await symlink(real, path.join(bin, tool)).catch(() => {});
  }
  return bin;
}

let n = 0;
/** A listening socket; each connection's lookup (started on accept) is handed to ON. */
async function serverFor(
  t: Test,
  opts: PeerLookupOptions,
): Promise<{ path: string; next: () => Promise<{ peer: PeerProcess | undefined; ms: number }> }> {
  const p = path.join(dir, `s${n++}.sock`);
  const waiting: ((r: { peer: PeerProcess | undefined; ms: number }) => void)[] = [];
  const results: { peer: PeerProcess | undefined; ms: number }[] = [];
  const conns = new Set<net.Socket>();
  const server = await listenAt(p, (sock) => {
    conns.add(sock);
    sock.on('error', () => {});
    const started = performance.now();
    void findPeerProcess(sock, opts).then((peer) => {
      const r = { peer, ms: performance.now() - started };
      const w = waiting.shift();
      if (w) w(r);
      else results.push(r);
      // The client waits for a byte before it exits, so the lookup sees a live peer.
      sock.end('x');
    });
  });
  t.teardown(() => {
    for (const c of conns) c.destroy();
    server.close();
  });
  return {
    path: p,
    next: () =>
      results.length > 0
        ? Promise.resolve(results.shift()!)
        : new Promise((resolve) => waiting.push(resolve)),
  };
}

const NODE_CLIENT =
  'const s = require("net").connect(process.argv[1]); s.on("data", () => s.destroy()); s.on("error", () => {})';

function nodeClient(socketPath: string, marker: string): ChildProcess {
  return spawn(process.execPath, ['-e', NODE_CLIENT, socketPath, marker], { stdio: 'ignore' });
}

/** Connects when told to on stdin (after saying it is up), then waits for a byte. */
const GATED_CLIENT =
  'process.stdout.write("up\\n"); process.stdin.once("data", () => { const s = require("net").connect(process.argv[1]); s.on("data", () => s.destroy()); s.on("error", () => {}) })';

const PY_CLIENT =
  'import socket, sys\ns = socket.socket(socket.AF_UNIX)\ns.connect(sys.argv[1])\ns.recv(1)';

const measured: Record<string, number[]> = {};
t.teardown(() => {
  for (const [what, ms] of Object.entries(measured)) {
    const sorted = [...ms].sort((a, b) => a - b);
    t.comment(
      `lookup cost ${what}: median ${sorted[Math.floor(sorted.length / 2)]!.toFixed(1)} ms, max ${sorted.at(-1)!.toFixed(1)} ms over ${sorted.length}`,
    );
  }
});

t.test('finds a node client: pid, uid, command, parents up to this test', async (t) => {
  const srv = await serverFor(t, {});
  for (let i = 0; i < 5; i++) {
    const child = nodeClient(srv.path, `marker-${i}`);
    const { peer, ms } = await srv.next();
    (measured['with ss'] ??= []).push(ms);
    await once(child, 'exit');
    t.ok(peer, 'found');
    if (!peer) return;
    t.equal(peer.pid, child.pid, 'the client pid');
    t.equal(peer.uid, userInfo().uid, 'its uid');
    t.equal(peer.name, 'node');
    t.match(peer.command, new RegExp(`marker-${i}$`), 'its command line, blanks for NULs');
    t.equal(peer.parents[0]?.pid, process.pid, 'its parent is this test');
    t.equal(peer.parents[0]?.command?.split(' ')[0], process.execPath, "the parent's command line");
    t.ok((peer.parents[0]?.command?.length ?? 0) <= 256, 'cut to 256 characters');
    t.ok(peer.parents.length <= 8, 'depth is capped');
    t.notOk(
      peer.parents.some((p) => p.pid === 1),
      'init is never named',
    );
  }
});

t.test('a python3 client and a gpg-connect-agent under sh are told apart', async (t) => {
  const srv = await serverFor(t, {});
  const py = spawn('python3', ['-c', PY_CLIENT, srv.path], { stdio: 'ignore' });
  const a = await srv.next();
  await once(py, 'exit');
  t.equal(a.peer?.pid, py.pid);
  t.match(a.peer?.name, /^python/);
  t.equal(a.peer?.parents[0]?.pid, process.pid, 'started by this test, not by sh');

  // gpg-connect-agent started by sh: the shell is its parent.
  const sh = spawn(
    'sh',
    ['-c', `gpg-connect-agent -S "$0" --no-autostart /bye >/dev/null 2>&1; true`, srv.path],
    { stdio: 'ignore' },
  );
  const b = await srv.next();
  await once(sh, 'exit');
  t.equal(b.peer?.name, 'gpg-connect-age', 'comm is cut to 15 bytes by the kernel');
  t.match(b.peer?.command, /^gpg-connect-agent -S /);
  t.equal(b.peer?.parents[0]?.pid, sh.pid, 'sh is the parent');
  t.equal(b.peer?.parents[0]?.name, 'sh');
  t.equal(b.peer?.parents[1]?.pid, process.pid, 'then this test');
});

t.test('without ss on PATH the SO_PEERCRED helper finds it', async (t) => {
  for (const tools of [['perl'], ['python3']]) {
    const bin = await pathWith(tools);
    const srv = await serverFor(t, { env: { ...process.env, PATH: bin } });
    for (let i = 0; i < 3; i++) {
      const child = nodeClient(srv.path, `fallback-${i}`);
      const { peer, ms } = await srv.next();
      (measured[`without ss (${tools[0]})`] ??= []).push(ms);
      await once(child, 'exit');
      t.equal(peer?.pid, child.pid, `${tools[0]} found the client`);
      t.equal(peer?.parents[0]?.pid, process.pid);
    }
  }
});

t.test('with no tool at all the answer is undefined, quickly', async (t) => {
  const srv = await serverFor(t, { env: { ...process.env, PATH: await pathWith([]) } });
  const child = nodeClient(srv.path, 'none');
  const { peer, ms } = await srv.next();
  await once(child, 'exit');
  t.equal(peer, undefined);
  t.ok(ms < 1000, `gave up in ${ms.toFixed(0)} ms`);
});

// gpg's start connects once per process: a hundred gpg at once are a hundred lookups at once.
t.test('many clients at once: every one is found, and they share a few ss runs', async (t) => {
  const CLIENTS = 24;
  const real = execFileSync('sh', ['-c', 'command -v ss'], { encoding: 'utf8' }).trim();
  const bin = path.join(dir, 'bin-counting-ss');
  const runs = path.join(dir, 'ss-runs');
  await mkdir(bin, { recursive: true });
  await writeFile(path.join(bin, 'ss'), `#!/bin/sh\necho >> '${runs}'\nexec '${real}' "$@"\n`, {
    mode: 0o700,
  });
  // The budget is generous: this is about sharing ss runs and dropping no one, and a loaded test
  // machine can take longer than the facade's 1 s for one ss over many processes.
  const srv = await serverFor(t, {
    env: { ...process.env, PATH: `${bin}:${process.env.PATH}` },
    timeoutMs: 15_000,
  });
  // Every client is started and waiting before any connects, so the connections come at once.
  const clients = Array.from({ length: CLIENTS }, () =>
    spawn(process.execPath, ['-e', GATED_CLIENT, srv.path], { stdio: ['pipe', 'pipe', 'ignore'] }),
  );
  await Promise.all(clients.map((c) => once(c.stdout!, 'data')));
  for (const c of clients) c.stdin!.end('go');
  const found: (number | undefined)[] = [];
  for (let i = 0; i < CLIENTS; i++) found.push((await srv.next()).peer?.pid);
  await Promise.all(clients.map((c) => (c.exitCode === null ? once(c, 'exit') : undefined)));
  t.same(
    [...found].sort(),
    clients.map((c) => c.pid).sort(),
    `all ${CLIENTS} clients found, none dropped`,
  );
  const ssRuns = (await readFile(runs, 'utf8')).split('\n').length - 1;
  t.ok(ssRuns <= CLIENTS / 2, `${ssRuns} ss runs for ${CLIENTS} connections at once`);
});

t.test('a socket that is not a connected unix socket, or already closed', async (t) => {
  const loose = new net.Socket();
  t.equal(await findPeerProcess(loose), undefined, 'never connected');
  const srv = await serverFor(t, {});
  const child = nodeClient(srv.path, 'x');
  await srv.next();
  await once(child, 'exit');
});

t.test('ss output parsing', async (t) => {
  const out = [
    'Netid State Recv-Q Send-Q Local Address:Port Peer Address:Port Process',
    'u_str ESTAB 0 0 * 24945 * 24944 users:(("python3",pid=9194,fd=0))',
    'u_str ESTAB 0 0 * 24958 * 24496 users:(("x\\",pid=1,fd=3)",pid=9194,fd=3),("gpg",pid=9300,fd=4))',
    'u_str ESTAB 0 0 /tmp/a b.sock 24496 * 24958 users:(("node",pid=9176,fd=21))',
  ].join('\n');
  t.same(parseSsPeers(out, 24496), { inode: 24958, pids: [1, 9194, 9300] }, 'candidates only');
  t.equal(parseSsPeers(out, 1), undefined);
  t.same(parseSsPeers('u_str ESTAB 0 0 * 5 * 7\n', 7), { inode: 5, pids: [] }, 'no users');
});

t.test('/proc parsing', async (t) => {
  t.same(parseStat('42 (a) b (c)) S 7 42 40 0 -1'), { name: 'a) b (c)', ppid: 7, session: 40 });
  t.equal(parseStat('garbage'), undefined);
  t.equal(commandLine(Buffer.from('git\0commit\0-S\0'), 100), 'git commit -S');
  t.equal(commandLine(Buffer.from('abcdef'), 4), 'abc…');
  t.equal(commandLine(Buffer.alloc(0), 4), undefined);
});
