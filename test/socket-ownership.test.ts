// Unix sockets keytether attaches to, replaces or removes must be this user's (security review
// #18.2, #18.9). Real processes of another user (as root, the test runs a listener as `nobody`),
// real directories with bad modes, and a real listener whose backlog is full.

import t, { type Test } from 'tap';
import { spawn, type ChildProcess } from 'node:child_process';
import { chmod, lstat, mkdtemp, rm, symlink } from 'node:fs/promises';
import net from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { listenUnix } from '../workstation/holder/local-socket.js';
import { runCli } from './support/cli.js';
import { testNeeding } from './support/ci.js';

const NOBODY = 65534;

/** A node process as USER listening on P; prints "listening" then "connection" per connection. */
async function listenAs(t: Test, p: string, uid: number): Promise<{ connections: () => number }> {
  const script =
    "const s=require('net').createServer(c=>{process.stdout.write('connection\\n');c.destroy()});" +
    's.listen(process.argv[1],()=>process.stdout.write("listening\\n"));';
  const child: ChildProcess = spawn(process.execPath, ['-e', script, p], {
    uid,
    gid: uid,
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  t.teardown(() => {
    child.kill('SIGKILL');
  });
  let out = '';
  await new Promise<void>((resolve, reject) => {
    child.stdout!.on('data', (b: Buffer) => {
      out += b.toString();
      if (out.includes('listening\n')) resolve();
    });
    child.once('exit', (c) => reject(new Error(`listener exited ${c}`)));
  });
  return { connections: () => out.split('\n').filter((l) => l === 'connection').length };
}

const asRoot = process.getuid?.() === 0;
testNeeding(
  t,
  "serve --stdio never attaches to another user's control socket",
  !asRoot && 'needs root to run a listener as another user: run the suite as root',
  async (t) => {
    // The review's reproduction: /tmp is shared; nobody got there first.
    const sock = path.join('/tmp', `S.kt-victim-${process.pid}`);
    const ctl = `${sock}.kt-ctl`;
    t.teardown(() => rm(ctl, { force: true }));
    const attacker = await listenAs(t, ctl, NOBODY);
    t.equal((await lstat(ctl)).uid, NOBODY, "the control socket is nobody's");
    const r = await runCli(['serve', '--stdio', '--socket', sock]);
    t.equal(r.code, 1);
    t.match(
      r.stderr,
      new RegExp(
        `^keytether serve: ${ctl.replace(/\./g, '\\.')} belongs to another user \\(uid ${NOBODY}\\); keytether never talks to or removes it; choose another path with --socket\\n$`,
      ),
    );
    t.equal(attacker.connections(), 0, 'not even probed: nothing reached the other user');
    t.ok((await lstat(ctl)).isSocket(), 'and it was not removed');
  },
);

t.test('sockets only in a directory no one else can write', async (t) => {
  const dir = await mkdtemp(path.join(tmpdir(), 'kt-sockdir-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  await chmod(dir, 0o777);
  const r = await runCli(['serve', '--stdio', '--socket', path.join(dir, 'S.gpg-agent')]);
  t.equal(r.code, 1);
  t.equal(
    r.stderr,
    `keytether serve: ${dir} can be written by other users, so its sockets cannot be trusted; run 'chmod go-w ${dir}' or choose another path with --socket\n`,
  );
  await chmod(dir, 0o700);

  const target = path.join(dir, 'elsewhere');
  await symlink(target, path.join(dir, 'S.link'));
  const link = await runCli(['serve', '--stdio', '--socket', path.join(dir, 'S.link')]);
  t.equal(link.code, 1);
  t.match(link.stderr, /S\.link is a symlink; remove it or choose another path with --socket\n$/);

  await chmod(dir, 0o757);
  const ag = await runCli(['agent', '--socket', path.join(dir, 'S.local')]);
  t.equal(ag.code, 1, 'the holder refuses the same directory');
  t.match(ag.stderr, /can be written by other users/);
});

t.test('a busy live listener is never taken for stale and deleted', async (t) => {
  const dir = await mkdtemp(path.join(tmpdir(), 'kt-busy-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  const p = path.join(dir, 'S.busy');
  // A listener that never accepts, with a backlog of one: further connects fail with EAGAIN,
  // which the old holder helper called stale and unlinked.
  const py = spawn(
    'python3',
    [
      '-c',
      'import socket,sys\ns=socket.socket(socket.AF_UNIX)\ns.bind(sys.argv[1])\ns.listen(0)\nprint("listening",flush=True)\nsys.stdin.read()',
      p,
    ],
    { stdio: ['pipe', 'pipe', 'inherit'] },
  );
  t.teardown(() => py.kill('SIGKILL'));
  await new Promise<void>((resolve) => py.stdout!.once('data', () => resolve()));
  // Fill the backlog; each connect that gets in stays pending in the kernel queue.
  const held: net.Socket[] = [];
  t.teardown(() => held.forEach((s) => s.destroy()));
  let refusedWith: string | undefined;
  for (let i = 0; i < 8 && refusedWith === undefined; i++) {
    refusedWith = await new Promise<string | undefined>((resolve) => {
      const s = net.connect(p);
      s.once('connect', () => {
        held.push(s);
        resolve(undefined);
      });
      s.once('error', (e: NodeJS.ErrnoException) => resolve(e.code));
    });
  }
  t.equal(refusedWith, 'EAGAIN', 'the kernel now answers EAGAIN: busy, not dead');
  await t.rejects(
    listenUnix(p, () => {}),
    { message: /another agent is already listening on .*S\.busy/ },
    'refused with the live-agent sentence',
  );
  t.ok((await lstat(p)).isSocket(), 'the busy socket is still there');
});
