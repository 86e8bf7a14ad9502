// `keytether serve --stdio` as `keytether ssh` runs it on a server: the test process is the
// workstation (a real holder over keys made by gpg and imported into keytether), the child's
// stdin/stdout is the tunnel, and stock gpg 2.2/2.4 and git use the facade's socket from a server
// GNUPGHOME that holds public keys only.

import t from 'tap';
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { existsSync, lstatSync } from 'node:fs';
import { mkdtemp, readFile, readdir, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { Duplex } from 'node:stream';
import { promisify } from 'node:util';
import { serveTunnel, type TunnelServerHandle } from '../protocol/tunnel/index.js';
import { loadConfig } from '../workstation/home/config.js';
import { openHolderRuntime } from '../workstation/holder/runtime.js';
import {
  exportSecretKey,
  generateKey,
  makeGnupgHome,
  redirectAgentSocket,
  type GeneratedKey,
  type TempGnupg,
} from './support/gnupg.js';
import { gpgClients } from './support/gpg-versions.js';
import { cliPath, runCli, spawnCli, waitForLine } from './support/cli.js';
import { ALLOW_BLIND_RULE } from './support/blind-signing.js';

const execFileP = promisify(execFile);

interface Served {
  child: ChildProcess;
  handle: TunnelServerHandle;
  socket: string;
  frames: string[];
  stderr: () => string;
  exited: Promise<number | null>;
}

t.test('keytether serve --stdio with stock gpg and git', async (t) => {
  const ws = await makeGnupgHome();
  t.teardown(() => ws.cleanup());
  const keys: Record<string, GeneratedKey> = {};
  keys.alice = await generateKey(ws, {
    uid: 'Alice <alice@example.org>',
    algo: 'ed25519',
    usage: 'sign,cert',
    subkeys: [{ algo: 'cv25519', usage: 'encr' }],
  });
  keys.sam = await generateKey(ws, {
    uid: 'Sam Subkey <sam@example.org>',
    algo: 'ed25519',
    usage: 'cert',
    subkeys: [{ algo: 'ed25519', usage: 'sign' }],
  });

  const tmp = await mkdtemp('/tmp/ktf-');
  t.teardown(() => rm(tmp, { recursive: true, force: true }));
  const home = path.join(tmp, 'home');
  const secrets = path.join(tmp, 'secret.gpg');
  const parts: Buffer[] = [];
  for (const k of Object.values(keys)) parts.push(await exportSecretKey(ws, k.fingerprint));
  await writeFile(secrets, Buffer.concat(parts), { mode: 0o600 });
  const imp = await runCli(['keys', 'import', secrets], { env: { KEYTETHER_HOME: home } });
  t.equal(imp.code, 0, `keys import: ${imp.stderr}`);
  await rm(secrets);

  // Remote decryption needs confirmation by default; this workstation allows it up front.
  const config = {
    ...(await loadConfig(home)),
    policy: [{ front: 'ssh' as const, action: 'allow' as const }, ALLOW_BLIND_RULE],
  };
  const rt = await openHolderRuntime(home, config);
  t.teardown(() => rt.close());

  // The server's GnuPG home: no keys at all until the facade imports the public ones.
  const srv = await makeGnupgHome();
  t.teardown(() => srv.cleanup());

  async function serve(args: string[], env: Record<string, string> = srv.env): Promise<Served> {
    const child = await spawnCli(['serve', '--stdio', ...args], { env });
    let stderr = '';
    child.stderr!.on('data', (b: Buffer) => (stderr += b.toString()));
    const exited = new Promise<number | null>((resolve) => child.on('exit', (c) => resolve(c)));
    child.stdin!.on('error', () => {});
    const frames: string[] = [];
    const handle = serveTunnel(
      rt.holder,
      Duplex.from({ readable: child.stdout!, writable: child.stdin! }),
      { software: 'keytether/test', onFrame: (dir, type) => frames.push(`${dir} ${type}`) },
    );
    try {
      const m = await waitForLine(child.stderr!, /^ready: (.+)$/, 30_000);
      return { child, handle, socket: m[1]!, frames, stderr: () => stderr, exited };
    } catch (e) {
      child.kill('SIGKILL');
      throw new Error(`serve did not get ready: ${(e as Error).message}; stderr: ${stderr}`);
    }
  }

  const socket = path.join(tmp, 'S.gpg-agent');
  const first = await serve(['--socket', socket, '--import-keys']);
  t.teardown(() => {
    if (first.child.exitCode === null) first.child.kill('SIGKILL');
  });
  t.equal(first.socket, socket, 'ready names the socket');
  t.ok(lstatSync(socket).isSocket(), 'the socket exists');
  t.equal(lstatSync(socket).mode & 0o777, 0o600, 'the socket is owner-only');
  t.match(first.stderr(), /imported 2 public key\(s\)/);
  t.match(first.stderr(), /no-autostart/, 'says that it added no-autostart');
  const conf = await readFile(path.join(srv.home, 'gpg.conf'), 'utf8');
  t.equal(conf.match(/^no-autostart$/gm)?.length, 1, 'gpg.conf has no-autostart once');

  // gpg finds the facade through a libassuan redirect file at its own agent-socket path.
  for (const client of gpgClients()) await redirectAgentSocket(srv, socket, client.gpgconf);

  for (const client of gpgClients()) {
    await t.test(client.label, async (t) => {
      const gpg = (args: string[], input?: string | Buffer) =>
        srv.run(client.gpg, ['--batch', '--no-tty', ...args], input === undefined ? {} : { input });
      const work = await mkdtemp(path.join(tmp, 'w-'));
      const msg = path.join(work, 'msg.txt');
      await writeFile(msg, `hello from ${client.label}\n`);

      await t.test('detach-sign is one tunnel request and one response', async (t) => {
        const sig = path.join(work, 'msg.sig');
        const before = first.frames.length;
        const r = await gpg(['-u', keys.alice!.fingerprint, '-o', sig, '--detach-sign', msg]);
        t.equal(r.code, 0, r.stderr);
        const during = first.frames.slice(before).filter((f) => !/ (ping|pong)$/.test(f));
        t.same(during, ['in sign', 'out sign-result'], 'exactly one round trip');
        t.notMatch(r.stderr, /older than us/, 'no version warning');
        const v = await gpg(['--verify', sig, msg]);
        t.equal(v.code, 0, v.stderr);
        t.match(v.stderr, /Good signature from "Alice/);
      });

      await t.test('clearsign', async (t) => {
        const cs = await gpg(['-u', keys.alice!.fingerprint, '--clearsign'], 'clear text\n');
        t.equal(cs.code, 0, cs.stderr);
        t.match(cs.stdout.toString(), /BEGIN PGP SIGNED MESSAGE[\s\S]*clear text/);
        const v = await gpg(['--verify'], cs.stdout);
        t.match(v.stderr, /Good signature from "Alice/);
      });

      await t.test('decrypt a message to the cv25519 subkey', async (t) => {
        const plain = `secret via ${client.label}\n`;
        const enc = await gpg(['-r', keys.alice!.fingerprint, '--encrypt'], plain);
        t.equal(enc.code, 0, enc.stderr);
        const dec = await gpg(['-d'], enc.stdout);
        t.equal(dec.code, 0, dec.stderr);
        t.equal(dec.stdout.toString(), plain);
      });

      await t.test('sign with the Ed25519 signing subkey', async (t) => {
        const s = await gpg(['-u', keys.sam!.fingerprint, '--sign'], 'by subkey\n');
        t.equal(s.code, 0, s.stderr);
        const v = await gpg(['-d'], s.stdout);
        t.equal(v.code, 0, v.stderr);
        t.match(v.stderr, /Good signature from "Sam Subkey/);
      });

      await t.test('-K shows sec, not sec#', async (t) => {
        const r = await gpg(['-K']);
        t.equal(r.code, 0, r.stderr);
        const out = r.stdout.toString();
        t.equal(out.match(/^sec /gm)?.length, 2, 'two secret primaries');
        t.notMatch(out, /^(sec|ssb)#/m, 'no key is shown as unavailable');
      });

      await t.test('git commit -S and git verify-commit', async (t) => {
        const repo = path.join(work, 'repo');
        const env = {
          ...srv.env,
          GIT_CONFIG_GLOBAL: '/dev/null',
          GIT_CONFIG_NOSYSTEM: '1',
          GIT_AUTHOR_NAME: 'Alice',
          GIT_AUTHOR_EMAIL: 'alice@example.org',
          GIT_COMMITTER_NAME: 'Alice',
          GIT_COMMITTER_EMAIL: 'alice@example.org',
        };
        const git = (...args: string[]) =>
          execFileP('git', ['-C', repo, ...args], { env, timeout: 60_000 });
        await execFileP('git', ['init', '-q', repo], { env });
        await git('config', 'user.signingkey', keys.alice!.fingerprint);
        await git('config', 'gpg.program', client.gpg);
        await writeFile(path.join(repo, 'file.txt'), 'content\n');
        await git('add', 'file.txt');
        await git('commit', '-q', '-S', '-m', 'signed through keytether');
        const v = await git('verify-commit', '-v', 'HEAD');
        t.match(v.stderr, /Good signature from "Alice/);
      });

      await t.test('the server home holds no secret key material', async (t) => {
        const dir = path.join(srv.home, 'private-keys-v1.d');
        t.same(existsSync(dir) ? await readdir(dir) : [], []);
      });
    });
  }

  await t.test('a second session shares the socket; either can end first', async (t) => {
    const second = await serve(['--socket', socket, '--import-keys']);
    t.teardown(() => {
      if (second.child.exitCode === null) second.child.kill('SIGKILL');
    });
    t.equal(second.socket, socket, 'ready names the shared socket');
    const sign = (text: string) =>
      srv.gpg(['--batch', '-u', keys.alice!.fingerprint, '--sign'], { input: text });
    const sent = (s: Served, from: number) => s.frames.slice(from).filter((f) => f === 'in sign');

    const f1 = first.frames.length;
    const f2 = second.frames.length;
    const s1 = await sign('both sessions\n');
    t.equal(s1.code, 0, s1.stderr);
    t.same(sent(second, f2), ['in sign'], 'the newest session answers');
    t.same(sent(first, f1), [], 'the other holder is not asked');

    // The serving session's own holder goes away; the socket stays up for the second one.
    const staying = waitForLine(first.child.stderr!, /stays up for the other sessions/);
    first.child.stdin!.end();
    await staying;
    const s2 = await sign('second only\n');
    t.equal(s2.code, 0, s2.stderr);
    t.equal(first.child.exitCode, null, 'the serving process keeps running');

    // The last session ends: everything goes away.
    second.child.stdin!.end();
    t.equal(await second.exited, 0, second.stderr());
    t.equal(await first.exited, 0, `clean exit: ${first.stderr()}`);
  });

  await t.test('after the last session: socket removed, gpg fails fast', async (t) => {
    t.notOk(existsSync(socket), 'the socket is removed');
    t.notOk(existsSync(`${socket}.kt-ctl`), 'the control socket is removed');
    const conf = await readFile(path.join(srv.home, 'gpg.conf'), 'utf8');
    t.notMatch(conf, /^no-autostart$/m, "keytether's no-autostart went with the last session");
    // That gpg would now start its own agent again, as before keytether; asked not to, it must
    // find nothing listening rather than hang on a dead socket.
    const started = Date.now();
    const r = await srv.gpg(
      ['--batch', '--no-autostart', '-u', keys.alice!.fingerprint, '--sign'],
      {
        input: 'nobody home\n',
        timeoutMs: 10_000,
      },
    );
    const took = Date.now() - started;
    t.not(r.code, 0);
    t.match(r.stderr, /no gpg-agent running|No agent running/);
    t.ok(took < 2000, `failed within 2 s (${took} ms)`);
  });

  await t.test('an attached session takes over when the serving one is killed', async (t) => {
    const a = await serve(['--socket', socket]);
    const b = await serve(['--socket', socket]);
    t.teardown(() => {
      for (const s of [a, b]) if (s.child.exitCode === null) s.child.kill('SIGKILL');
    });
    const again = waitForLine(b.child.stderr!, /now serving through .* again/);
    a.child.kill('SIGKILL');
    await again;
    const s = await srv.gpg(['--batch', '-u', keys.alice!.fingerprint, '--sign'], {
      input: 'taken over\n',
    });
    t.equal(s.code, 0, s.stderr);
    b.handle.close('test done');
    t.equal(await b.exited, 0, b.stderr());
    t.notOk(existsSync(socket), 'the socket is removed');
  });

  await t.test('a stale socket file is replaced', async (t) => {
    const stale = path.join(tmp, 'S.stale');
    // A listener killed without cleaning up leaves its socket file behind.
    const node = spawn(process.execPath, [
      '-e',
      `require('net').createServer().listen(${JSON.stringify(stale)}, () => process.kill(process.pid, 'SIGKILL'))`,
    ]);
    await new Promise((r) => node.on('exit', r));
    t.ok(lstatSync(stale).isSocket(), 'a stale socket is there');
    const s = await serve(['--socket', stale]);
    t.equal(s.socket, stale);
    s.handle.close('test done');
    t.equal(await s.exited, 0, s.stderr());
    t.notOk(existsSync(stale));
  });

  await t.test('a live gpg-agent is refused with the command that frees it', async (t) => {
    const other = await makeGnupgHome();
    t.teardown(() => other.cleanup());
    const start = await other.connectAgent([]);
    t.equal(start.code, 0, `gpg-agent started: ${start.stderr}`);
    const dirs = await other.run('gpgconf', ['--list-dirs', 'agent-socket']);
    const agentSocket = dirs.stdout.toString().trim();
    t.ok(lstatSync(agentSocket).isSocket(), 'gpg-agent is listening');

    const r = await runCli(['serve', '--stdio'], { env: other.env });
    t.equal(r.code, 1);
    t.match(r.stderr, /already listening on .*S\.gpg-agent.*gpgconf --kill gpg-agent/);
    t.notMatch(r.stderr, /\n./, 'one line');

    const s = await serve(['--replace'], other.env);
    t.equal(s.socket, agentSocket, 'the default path comes from gpgconf');
    const k = await other.gpg(['--batch', '--with-colons', '-K']);
    t.equal(k.code, 0, k.stderr);
    s.handle.close('test done');
    t.equal(await s.exited, 0, s.stderr());
    t.notOk(existsSync(agentSocket));
  });
});

t.test('serve without --stdio is a usage error', async (t) => {
  await cliPath();
  const r = await runCli(['serve']);
  t.equal(r.code, 2);
  t.match(r.stderr, /--stdio/);
});
