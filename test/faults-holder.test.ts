// The holder (or the sshd carrying it) dies mid-operation (issue #12.3), every part a real
// process: a signature waits at the holder's confirmation dialog when the holder is SIGKILLed,
// or the sshd serving its session is. Stock gpg on the "server" must fail within 2 s (the
// contract's bound), never hang, and the same socket must work again once a holder is back;
// whatever kill -9 left behind (sockets, the audit lock) is stale and replaced by itself.

import t, { type Test } from 'tap';
import { spawnSync } from 'node:child_process';
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { shellQuote } from '../workstation/ssh/connect.js';
import { clientHome, makeGnupgHome, type TempGnupg } from './support/gnupg.js';
import { cliPath, runCli } from './support/cli.js';
import { makePinentryScript, type PinentryScript } from './support/pinentry-script.js';
import { ALLOW_BLIND_FLAG } from './support/blind-signing.js';
import { startSshd } from './support/sshd.js';
import {
  auditRecords,
  keyWorld,
  startCli,
  startRelay,
  timedSign,
  tokenId,
  type KeyWorld,
} from './support/fault-rig.js';

const FAIL_MS = 2000;
const RECONNECT_MS = 5000;

/** Resolves once the holder's pinentry shows a confirmation dialog (the request is at the holder). */
function confirming(pin: PinentryScript, n: number) {
  return pin.waitFor(
    (inv) => inv.flatMap((i) => i.calls).filter((c) => c.cmd === 'CONFIRM').length >= n,
  );
}

/** Ends the pinentries a killed holder left (a real one would see its stdin close and quit). */
function reapPinentries(t: Test, pin: PinentryScript) {
  t.teardown(async () => {
    for (const inv of await pin.invocations().catch(() => [])) {
      try {
        process.kill(inv.pid, 'SIGKILL');
      } catch {
        // gone
      }
    }
  });
}

t.test('relay: the holder is SIGKILLed while a signature waits for confirmation', async (t) => {
  const w = await keyWorld(t, 'Hal Holder <hal@example.org>');
  const relay = await startRelay(t);
  const pin = await makePinentryScript({ confirm: ['hang', 'ok', 'ok', 'ok'] });
  t.teardown(() => pin.cleanup());
  reapPinentries(t, pin);
  const holderArgs = [
    'agent',
    ...ALLOW_BLIND_FLAG,
    '--backend',
    'builtin',
    '--socket',
    path.join(w.tmp, 'S.local'),
    '--pinentry-program',
    pin.program,
    '--policy',
    'front=relay,op=sign,action=confirm',
    '--relay',
    relay.url,
  ];
  const holderEnv = { ...w.env, ...pin.env };
  const holder = await startCli(t, holderArgs, holderEnv);
  await holder.anyStderr(/^relay connected: /);
  const tok = await runCli(['token', 'create', '--key', w.fingerprint, '--relay', relay.url], {
    env: w.env,
  });
  if (tok.code !== 0) throw new Error(`token create: ${tok.stderr}`);
  const token = tok.stdout.trim();
  const sock = path.join(w.tmp, 'S.facade');
  const connectArgs = ['connect', '--relay', relay.url, '--token', token, '--socket', sock];
  let facade = await startCli(t, connectArgs);
  const client = await clientHome(sock, w.publicKey);
  t.teardown(() => client.cleanup());

  const pending = timedSign(client, w.fingerprint, 'killed mid-way\n');
  await confirming(pin, 1);
  const killed = Date.now();
  await holder.stop('SIGKILL');
  const r = await pending;
  const failedIn = Date.now() - killed;
  t.not(r.code, 0, 'gpg fails');
  t.match(r.stderr, /signing failed/i, 'with an agent error');
  t.ok(failedIn < FAIL_MS, `gpg got its error ${failedIn} ms after the holder died`);
  t.comment(`holder SIGKILL (relay): gpg failed after ${failedIn} ms`);

  // The holder comes back on the same home: its socket, control socket and audit lock are stale.
  const facadeBack = facade.nextStderr(/reconnected to the holder/, 60_000);
  const again = await startCli(t, holderArgs, holderEnv);
  const holderUp = (await again.anyStderr(/^relay connected: /)).at;
  const back = (await facadeBack).at - holderUp;
  t.ok(back < RECONNECT_MS, `the facade was back ${back} ms after the holder reached the relay`);
  t.comment(`holder back (relay): facade reconnected after ${back} ms`);
  const ok = await timedSign(client, w.fingerprint, 'after the holder came back\n');
  t.equal(ok.code, 0, `the same socket signs again: ${ok.stderr}`);

  // kill -9 of the facade leaves its socket behind, stale: a new facade on the path replaces it.
  await facade.stop('SIGKILL');
  facade = await startCli(t, connectArgs);
  const ok2 = await timedSign(client, w.fingerprint, 'after the facade came back\n');
  t.equal(ok2.code, 0, `a new facade on the stale socket signs: ${ok2.stderr}`);

  const signs = (await auditRecords(w.home)).filter((x) => x.tokenId === tokenId(token));
  t.same(
    signs.map((x) => x.decision),
    ['confirmed', 'confirmed'],
    'the killed holder wrote nothing for the request it died on; each later one once',
  );
  const confirms = (await pin.calls()).flat().filter((c) => c.cmd === 'CONFIRM').length;
  t.equal(confirms, 3, 'three dialogs: the one the holder died in, then one per signature');
  t.equal((await runCli(['audit', 'verify'], { env: w.env })).code, 0, 'the chain verifies');
});

interface SshWorld {
  w: KeyWorld;
  server: TempGnupg;
  sshd: Awaited<ReturnType<typeof startSshd>>;
  remoteSocket: string;
  pin: PinentryScript;
  sshArgs: string[];
  env: Record<string, string | undefined>;
}

async function sshWorld(t: Test, confirm: ('ok' | 'hang')[]): Promise<SshWorld> {
  const w = await keyWorld(t, 'Sam Session <sam@example.org>');
  // no-autostart: between sessions nothing may start a real gpg-agent on the socket.
  const server = await makeGnupgHome({ gpgConf: ['no-autostart'] });
  t.teardown(() => server.cleanup());
  const sshd = await startSshd({ env: { GNUPGHOME: server.home } });
  t.teardown(() => sshd.stop());
  const remoteSocket = (await server.run('gpgconf', ['--list-dirs', 'agent-socket'])).stdout
    .toString()
    .trim();
  const imp = await server.gpg(['--batch', '--import'], { input: w.publicKey });
  if (imp.code !== 0) throw new Error(`importing the public key on the server: ${imp.stderr}`);
  const pin = await makePinentryScript({ confirm });
  t.teardown(() => pin.cleanup());
  reapPinentries(t, pin);
  const cli = await cliPath();
  const sshArgs = [
    'ssh',
    ...ALLOW_BLIND_FLAG,
    '--no-agent',
    '--backend',
    'builtin',
    '--pinentry-program',
    pin.program,
    '--policy',
    'front=ssh,op=sign,action=confirm',
    '-p',
    String(sshd.port),
    '-i',
    sshd.clientKey,
    '-o',
    `UserKnownHostsFile=${sshd.knownHostsFile}`,
    '-o',
    'GlobalKnownHostsFile=/dev/null',
    `${sshd.user}@127.0.0.1`,
    '--remote-command',
    `${shellQuote(process.execPath)} ${shellQuote(cli)}`,
    '--remote-socket',
    remoteSocket,
  ];
  const env = { ...w.env, ...pin.env, HOME: w.tmp, SSH_AUTH_SOCK: undefined };
  return { w, server, sshd, remoteSocket, pin, sshArgs, env };
}

function serverSign(s: SshWorld, text: string) {
  return timedSign(s.server, s.w.fingerprint, text);
}

t.test('ssh: keytether ssh is SIGKILLed while a signature waits for confirmation', async (t) => {
  const s = await sshWorld(t, ['hang', 'ok']);
  const session = await startCli(t, s.sshArgs, s.env);
  const pending = serverSign(s, 'killed mid-way\n');
  await confirming(s.pin, 1);
  const killed = Date.now();
  await session.stop('SIGKILL');
  const r = await pending;
  const failedIn = Date.now() - killed;
  t.not(r.code, 0, 'gpg on the server fails');
  t.ok(failedIn < FAIL_MS, `gpg got its error ${failedIn} ms after keytether ssh died`);
  t.comment(`keytether ssh SIGKILL: gpg failed after ${failedIn} ms`);

  const started = Date.now();
  await startCli(t, s.sshArgs, s.env);
  const ok = await serverSign(s, 'after the session came back\n');
  t.equal(ok.code, 0, `the server's socket works again with the next session: ${ok.stderr}`);
  t.comment(`new keytether ssh session: ready and signed after ${Date.now() - started} ms`);
  const signs = (await auditRecords(s.w.home)).filter((x) => x.op === 'sign');
  t.same(
    signs.map((x) => [x.front, x.decision]),
    [['ssh', 'confirmed']],
    'one record: the signature that left',
  );
});

t.test('ssh: the sshd serving the session is SIGKILLed mid-operation', async (t) => {
  const s = await sshWorld(t, ['hang', 'ok']);
  const session = await startCli(t, s.sshArgs, s.env);
  const pending = serverSign(s, 'sshd killed mid-way\n');
  await confirming(s.pin, 1);
  // The per-connection sshd processes are the listener's children.
  const listener = (await readFile(path.join(s.sshd.dir, 'sshd.pid'), 'utf8')).trim();
  const children = spawnSync('pgrep', ['-P', listener], { encoding: 'utf8' })
    .stdout.split('\n')
    .filter(Boolean)
    .map(Number);
  t.ok(children.length > 0, `the session's sshd processes: ${children.join(' ')}`);
  const killed = Date.now();
  for (const pid of children) process.kill(pid, 'SIGKILL');
  const r = await pending;
  const failedIn = Date.now() - killed;
  t.not(r.code, 0, 'gpg on the server fails');
  t.ok(failedIn < FAIL_MS, `gpg got its error ${failedIn} ms after sshd died`);
  t.comment(`sshd SIGKILL: gpg failed after ${failedIn} ms`);
  const ended = await session.exited;
  const endedIn = Date.now() - killed;
  t.equal(ended.code, 1, 'keytether ssh ends, status 1');
  t.match(session.stderr(), /^keytether ssh: .+$/m, 'saying why in a sentence');
  t.notMatch(session.stderr(), /at .*\.js:\d+|TypeError|unhandled/i, 'no stack trace');
  t.ok(endedIn < RECONNECT_MS, `keytether ssh noticed in ${endedIn} ms`);

  await startCli(t, s.sshArgs, s.env);
  const ok = await serverSign(s, 'after a new session\n');
  t.equal(ok.code, 0, `a new session serves the same socket: ${ok.stderr}`);
});
