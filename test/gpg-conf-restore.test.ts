// The `no-autostart` that `keytether serve --stdio` puts in the server's gpg.conf is gone again
// once the last session using the socket ends (issue #17.11), and a user's own stays. Real serve
// processes, each with a holder on the other end of its stdin/stdout, sharing one socket.

import t, { type Test } from 'tap';
import { type ChildProcess } from 'node:child_process';
import { chmod, mkdir, mkdtemp, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { existsSync } from 'node:fs';
import path from 'node:path';
import { Duplex } from 'node:stream';
import { serveTunnel } from '../protocol/tunnel/index.js';
import { spawnCli, waitForLine } from './support/cli.js';
import { SimpleHolder } from './support/simple-holder.js';

interface Session {
  child: ChildProcess;
  stderr: () => string;
  exited: Promise<number | null>;
}

const tmp = await mkdtemp('/tmp/kt-conf-');
t.teardown(() => rm(tmp, { recursive: true, force: true }));
const holder = new SimpleHolder();

async function home(t: Test, name: string): Promise<{ home: string; socket: string }> {
  const dir = path.join(tmp, name);
  await mkdir(dir, { mode: 0o700 });
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  return { home: dir, socket: path.join(dir, 'S.agent') };
}

async function serve(t: Test, h: { home: string; socket: string }): Promise<Session> {
  const child = await spawnCli(['serve', '--stdio', '--socket', h.socket], {
    env: { GNUPGHOME: h.home },
  });
  t.teardown(() => {
    if (child.exitCode === null) child.kill('SIGKILL');
  });
  let stderr = '';
  child.stderr!.on('data', (b: Buffer) => (stderr += b.toString()));
  const exited = new Promise<number | null>((resolve) => child.on('exit', (c) => resolve(c)));
  child.stdin!.on('error', () => {});
  serveTunnel(holder, Duplex.from({ readable: child.stdout!, writable: child.stdin! }), {
    software: 'keytether/test',
  });
  await waitForLine(child.stderr!, /^ready: /).catch((e: Error) => {
    throw new Error(`serve did not get ready: ${e.message}; stderr: ${stderr}`);
  });
  return { child, stderr: () => stderr, exited };
}

async function end(t: Test, s: Session): Promise<void> {
  s.child.stdin!.end();
  t.equal(await s.exited, 0, `clean exit: ${s.stderr()}`);
}

const USER_CONF = '# my settings\nkeyid-format long\n\nuse-agent\n';

t.test('the last session leaves gpg.conf byte for byte as it found it', async (t) => {
  const h = await home(t, 'shared');
  const conf = path.join(h.home, 'gpg.conf');
  await writeFile(conf, USER_CONF);
  await chmod(conf, 0o640);

  const a = await serve(t, h);
  const during = await readFile(conf, 'utf8');
  t.match(
    during,
    /^# added by keytether serve; removed when its last session ends\nno-autostart$/m,
  );
  t.ok(during.startsWith(USER_CONF), "the user's lines are untouched");
  t.equal((await stat(conf)).mode & 0o777, 0o640, 'the mode is kept');

  const b = await serve(t, h);
  t.equal(await readFile(conf, 'utf8'), during, 'a second session adds nothing');

  // The serving session's holder goes first; the socket stays up for the attached one.
  const staying = waitForLine(a.child.stderr!, /stays up for the other sessions/);
  a.child.stdin!.end();
  await staying;
  t.equal(await readFile(conf, 'utf8'), during, 'kept while a session still uses the socket');

  await end(t, b);
  t.equal(await a.exited, 0, `clean exit: ${a.stderr()}`);
  t.equal(await readFile(conf, 'utf8'), USER_CONF, 'restored after the last session');
  t.equal((await stat(conf)).mode & 0o777, 0o640, 'with its mode');
  t.match(a.stderr(), /removed the 'no-autostart' keytether added/);
});

t.test('an attached session ending first keeps it for the serving one', async (t) => {
  const h = await home(t, 'attached-first');
  const conf = path.join(h.home, 'gpg.conf');
  await writeFile(conf, USER_CONF);
  const a = await serve(t, h);
  const b = await serve(t, h);
  const during = await readFile(conf, 'utf8');
  await end(t, b);
  t.equal(await readFile(conf, 'utf8'), during, 'still there for the serving session');
  await end(t, a);
  t.equal(await readFile(conf, 'utf8'), USER_CONF);
});

t.test(
  'a gpg.conf keytether created goes away; one without a final newline comes back so',
  async (t) => {
    const h = await home(t, 'created');
    const conf = path.join(h.home, 'gpg.conf');
    await end(t, await serve(t, h));
    t.notOk(existsSync(conf), 'no gpg.conf before, none after');

    await writeFile(conf, 'keyid-format long');
    await end(t, await serve(t, h));
    t.equal(await readFile(conf, 'utf8'), 'keyid-format long');
  },
);

t.test("a user's own no-autostart is never removed", async (t) => {
  const h = await home(t, 'own');
  const conf = path.join(h.home, 'gpg.conf');
  const own = 'no-autostart\nkeyid-format long\n';
  await writeFile(conf, own);
  const s = await serve(t, h);
  t.equal(await readFile(conf, 'utf8'), own, 'nothing added');
  await end(t, s);
  t.equal(await readFile(conf, 'utf8'), own, 'nothing removed');
  t.notMatch(s.stderr(), /no-autostart/, 'and nothing said about it');
});

t.test("a killed session leaves it; the next session's end removes it", async (t) => {
  const h = await home(t, 'killed');
  const conf = path.join(h.home, 'gpg.conf');
  await writeFile(conf, USER_CONF);
  const a = await serve(t, h);
  a.child.kill('SIGKILL');
  await a.exited;
  t.match(await readFile(conf, 'utf8'), /^no-autostart$/m, 'a crash cannot clean up');
  const b = await serve(t, h);
  t.equal((await readFile(conf, 'utf8')).match(/^no-autostart$/gm)?.length, 1, 'not added twice');
  await end(t, b);
  t.equal(await readFile(conf, 'utf8'), USER_CONF);
});
