// Stock gpg (2.2, and 2.4 when cached) signs, decrypts and lists secret keys through
// `keytether agent`'s socket, with keys that were made by gpg, exported with their passphrases
// and imported into keytether. The client's GNUPGHOME holds public keys only.

import t from 'tap';
import { mkdtemp, readFile, readdir, rm, writeFile } from 'node:fs/promises';
import { existsSync } from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import type { ChildProcess } from 'node:child_process';
import {
  exportSecretKey,
  generateKey,
  makeGnupgHome,
  type GeneratedKey,
  type TempGnupg,
  clientHome,
} from './support/gnupg.js';
import { gpgClients } from './support/gpg-versions.js';
import { runCli, spawnCli, waitForLine } from './support/cli.js';
import { makePinentryScript, type PinentryScript } from './support/pinentry-script.js';

const PASS = 'correct horse';

interface Agent {
  child: ChildProcess;
  socket: string;
  stop(): Promise<number | null>;
}

async function startAgent(
  home: string,
  socket: string,
  pin: PinentryScript,
  extra: string[] = [],
): Promise<Agent> {
  const child = await spawnCli(
    ['agent', '--socket', socket, '--pinentry-program', pin.program, ...extra],
    { env: { KEYTETHER_HOME: home, ...pin.env } },
  );
  let stderr = '';
  child.stderr!.on('data', (b: Buffer) => (stderr += b.toString()));
  const exited = new Promise<number | null>((resolve) => child.on('exit', (c) => resolve(c)));
  try {
    await waitForLine(child.stdout!, /^ready: (.+)$/, 30_000);
  } catch (e) {
    child.kill('SIGKILL');
    throw new Error(`agent did not get ready: ${(e as Error).message}; stderr: ${stderr}`);
  }
  return {
    child,
    socket,
    async stop() {
      child.kill('SIGTERM');
      return exited;
    },
  };
}

/** A raw Assuan connection: `send` writes bytes and resolves with the reply up to OK/ERR. */
async function rawSession(socket: string) {
  const sock = net.connect(socket);
  let buf = '';
  let waiter: (() => void) | undefined;
  sock.on('data', (d: Buffer) => {
    buf += d.toString('latin1');
    waiter?.();
  });
  const next = () =>
    new Promise<string>((resolve, reject) => {
      const check = () => {
        const m = /^(?:[\s\S]*?\n)?(?:OK|ERR)[^\n]*\n/.exec(buf);
        if (!m) return;
        waiter = undefined;
        buf = buf.slice(m[0].length);
        resolve(m[0]);
      };
      waiter = check;
      sock.once('close', () => reject(new Error(`connection closed; got ${buf.slice(0, 200)}`)));
      check();
    });
  await next(); // greeting
  return {
    send: (data: Buffer) => {
      sock.write(data);
      return next();
    },
    write: (data: Buffer) => sock.write(data),
    close: () => sock.destroy(),
  };
}

async function auditRecords(home: string): Promise<Record<string, unknown>[]> {
  const text = await readFile(path.join(home, 'audit.jsonl'), 'utf8');
  return text
    .split('\n')
    .filter(Boolean)
    .map((l) => JSON.parse(l) as Record<string, unknown>);
}

t.test('stock gpg through keytether agent', async (t) => {
  const ws = await makeGnupgHome();
  t.teardown(() => ws.cleanup());
  const gen = (
    uid: string,
    algo: string,
    usage: string,
    subkeys: { algo: string; usage: string }[],
  ) => generateKey(ws, { uid, algo, usage, subkeys, passphrase: PASS });
  // Sequential: every generation rewrites the same keyring.
  const keys: Record<string, GeneratedKey> = {};
  keys.alice = await gen('Alice <alice@example.org>', 'ed25519', 'sign,cert', [
    { algo: 'cv25519', usage: 'encr' },
  ]);
  keys.sam = await gen('Sam Subkey <sam@example.org>', 'ed25519', 'cert', [
    { algo: 'ed25519', usage: 'sign' },
  ]);
  keys.rita = await gen('Rita RSA <rita@example.org>', 'rsa3072', 'sign,cert', [
    { algo: 'rsa3072', usage: 'encr' },
  ]);
  keys.nina = await gen('Nina Nist <nina@example.org>', 'nistp256', 'sign,cert', [
    { algo: 'nistp256', usage: 'encr' },
  ]);
  keys.p384 = await gen('Pia P384 <p384@example.org>', 'nistp384', 'sign,cert', [
    { algo: 'nistp384', usage: 'encr' },
  ]);
  keys.p521 = await gen('Pat P521 <p521@example.org>', 'nistp521', 'sign,cert', [
    { algo: 'nistp521', usage: 'encr' },
  ]);

  const tmp = await mkdtemp('/tmp/kte2e-');
  t.teardown(() => rm(tmp, { recursive: true, force: true }));
  const home = path.join(tmp, 'home');
  const secrets = path.join(tmp, 'secret.gpg');
  const parts: Buffer[] = [];
  for (const k of Object.values(keys)) parts.push(await exportSecretKey(ws, k.fingerprint, PASS));
  await writeFile(secrets, Buffer.concat(parts), { mode: 0o600 });
  const imp = await runCli(['keys', 'import', secrets], { env: { KEYTETHER_HOME: home } });
  t.equal(imp.code, 0, `keys import: ${imp.stderr}`);
  await rm(secrets);
  const exp = await runCli(['keys', 'export'], { env: { KEYTETHER_HOME: home } });
  t.equal(exp.code, 0, 'keys export');
  t.match(exp.stdout, /BEGIN PGP PUBLIC KEY BLOCK/);

  const pin = await makePinentryScript({ answers: Array(40).fill(PASS) });
  t.teardown(() => pin.cleanup());
  const socket = path.join(tmp, 'S.agent');
  const agent = await startAgent(home, socket, pin);
  t.teardown(async () => {
    if (agent.child.exitCode === null) await agent.stop();
  });

  const pinentryCalls = async () => (await pin.invocations()).length;
  let clientIndex = 0;
  // Each signature and decryption below is one request the holder must audit; counted as they
  // run, so the total holds for however many gpg versions this machine has.
  let requests = 0;
  for (const client of gpgClients()) {
    clientIndex++;
    await t.test(client.label, async (t) => {
      const g = await clientHome(socket, exp.stdout, client.gpg);
      t.teardown(() => g.cleanup());
      const gpg = (args: string[], input?: string | Buffer) =>
        g.gpg(['--batch', '--no-tty', ...args], input === undefined ? {} : { input });
      const msg = path.join(g.home, 'msg.txt');
      await writeFile(msg, `hello from ${client.label}\n`);

      await t.test('detach-sign with Ed25519, then again from the cache', async (t) => {
        const before = await pinentryCalls();
        const sig = path.join(g.home, 'msg.ed.sig');
        const r = await gpg(['-u', keys.alice!.fingerprint, '-o', sig, '--detach-sign', msg]);
        requests++;
        t.equal(r.code, 0, r.stderr);
        const v = await gpg(['--verify', sig, msg]);
        t.equal(v.code, 0, v.stderr);
        t.match(v.stderr, /Good signature from "Alice/);
        t.notMatch(r.stderr, /older than us/, 'no version warning');
        const afterFirst = await pinentryCalls();
        if (clientIndex === 1) t.equal(afterFirst, before + 1, 'first use asks the pinentry once');
        const r2 = await gpg([
          '-u',
          keys.alice!.fingerprint,
          '-o',
          `${sig}2`,
          '--detach-sign',
          msg,
        ]);
        requests++;
        t.equal(r2.code, 0, r2.stderr);
        t.equal(await pinentryCalls(), afterFirst, 'a second signature inside the TTL is cached');
      });

      for (const [name, label] of [
        ['sam', 'Ed25519 signing subkey'],
        ['rita', 'RSA-3072'],
        ['nina', 'NIST P-256'],
        ['p384', 'NIST P-384'],
        ['p521', 'NIST P-521'],
      ] as const) {
        await t.test(`detach-sign and verify with ${label}`, async (t) => {
          const sig = path.join(g.home, `msg.${name}.sig`);
          const r = await gpg(['-u', keys[name]!.fingerprint, '-o', sig, '--detach-sign', msg]);
          requests++;
          t.equal(r.code, 0, r.stderr);
          const v = await gpg(['--verify', sig, msg]);
          t.equal(v.code, 0, v.stderr);
          t.match(v.stderr, /Good signature/);
        });
      }

      await t.test('clearsign (RSA) and sign (P-256) verify', async (t) => {
        const cs = await gpg(['-u', keys.rita!.fingerprint, '--clearsign'], 'clear text\n');
        requests++;
        t.equal(cs.code, 0, cs.stderr);
        t.match(cs.stdout.toString(), /BEGIN PGP SIGNED MESSAGE[\s\S]*clear text/);
        const v1 = await gpg(['--verify'], cs.stdout);
        t.match(v1.stderr, /Good signature from "Rita/);
        const s = await gpg(['-u', keys.nina!.fingerprint, '--sign'], 'inline\n');
        requests++;
        t.equal(s.code, 0, s.stderr);
        const v2 = await gpg(['--decrypt'], s.stdout);
        t.equal(v2.code, 0, v2.stderr);
        t.equal(v2.stdout.toString(), 'inline\n');
        t.match(v2.stderr, /Good signature from "Nina/);
      });

      for (const name of ['alice', 'rita', 'nina', 'p384', 'p521'] as const) {
        await t.test(`decrypt to ${name}'s encryption subkey`, async (t) => {
          const plain = `secret for ${name} via ${client.label}\n`;
          const enc = await gpg(['-r', keys[name]!.fingerprint, '--encrypt'], plain);
          t.equal(enc.code, 0, enc.stderr);
          const dec = await gpg(['--decrypt'], enc.stdout);
          requests++;
          t.equal(dec.code, 0, dec.stderr);
          t.equal(dec.stdout.toString(), plain);
        });
      }

      await t.test('gpg -K shows sec, not sec#', async (t) => {
        const r = await gpg(['-K']);
        t.equal(r.code, 0, r.stderr);
        const out = r.stdout.toString();
        t.equal((out.match(/^sec /gm) ?? []).length, 6, 'six secret primaries');
        t.notMatch(out, /^(sec|ssb)#/m, 'no key is shown as unavailable');
      });

      await t.test('the client home holds no secret key material', async (t) => {
        const dir = path.join(g.home, 'private-keys-v1.d');
        const files = existsSync(dir) ? await readdir(dir) : [];
        t.same(files, []);
      });
    });
  }

  await t.test('forbidden commands answer Forbidden over the real socket', async (t) => {
    const g = await clientHome(socket, exp.stdout, '/usr/bin/gpg');
    t.teardown(() => g.cleanup());
    const r = await g.run('gpg-connect-agent', [
      '--no-autostart',
      '-S',
      socket,
      `EXPORT_KEY ${keys.alice!.keygrip}`,
      'PRESET_PASSPHRASE x -1 41',
      'GET_PASSPHRASE x',
      `DELETE_KEY ${keys.alice!.keygrip}`,
      '/bye',
    ]);
    const lines = r.stdout.toString().trim().split('\n');
    t.same(lines, Array(4).fill('ERR 67109115 Forbidden <GPG Agent>'));
  });

  await t.test('hostile input gets ERR lines and the agent keeps serving', async (t) => {
    const bad = await rawSession(socket);
    t.match(await bad.send(Buffer.from(`${'A'.repeat(2000)}\n`)), /^ERR 67109127 /);
    // 5 MiB without a newline: one ERR for the over-long line, memory stays bounded.
    t.match(
      await bad.send(Buffer.concat([Buffer.alloc(5 * 1024 * 1024, 0x44), Buffer.from('\n')])),
      /^ERR 67109127 /,
    );
    t.match(await bad.send(Buffer.from('D %zz\n')), /^ERR /);
    const noise = Buffer.from(Array.from({ length: 4096 }, (_, i) => (i * 131 + 7) % 256));
    bad.write(noise);
    // Another client is served normally while the hostile one is still connected.
    const good = await rawSession(socket);
    t.match(await good.send(Buffer.from('GETINFO version\n')), /^D \d+\.\d+\.\d+\nOK/);
    t.match(await good.send(Buffer.from(`HAVEKEY ${keys.alice!.keygrip}\n`)), /^OK/);
    good.close();
    bad.close();
  });

  await agent.stop();
  t.notOk(existsSync(socket), 'the socket is removed on exit');
  const recs = await auditRecords(home);
  t.equal(recs.length, requests, `audit has a record per request (${requests})`);
  t.ok(
    recs.every((r) => r.decision === 'allowed'),
    'every request was allowed',
  );
  t.ok(recs.some((r) => r.op === 'decrypt') && recs.some((r) => r.op === 'sign'));
  const ver = await runCli(['audit', 'verify'], { env: { KEYTETHER_HOME: home } });
  t.equal(ver.code, 0, ver.stderr);
  t.match(ver.stdout, /OK/);
});

t.test('a wrong passphrase three times fails gpg and is audited', async (t) => {
  const ws: TempGnupg = await makeGnupgHome();
  t.teardown(() => ws.cleanup());
  const k = await generateKey(ws, {
    uid: 'Wendy <wendy@example.org>',
    algo: 'ed25519',
    usage: 'sign,cert',
    passphrase: PASS,
  });
  const tmp = await mkdtemp('/tmp/kte2w-');
  t.teardown(() => rm(tmp, { recursive: true, force: true }));
  const home = path.join(tmp, 'home');
  const file = path.join(tmp, 'k.gpg');
  await writeFile(file, await exportSecretKey(ws, k.fingerprint, PASS), { mode: 0o600 });
  t.equal((await runCli(['keys', 'import', file], { env: { KEYTETHER_HOME: home } })).code, 0);
  const pub = await runCli(['keys', 'export'], { env: { KEYTETHER_HOME: home } });

  const pin = await makePinentryScript({ answers: ['nope1', 'nope2', 'nope3'] });
  t.teardown(() => pin.cleanup());
  const socket = path.join(tmp, 'S.agent');
  const agent = await startAgent(home, socket, pin);
  t.teardown(async () => {
    if (agent.child.exitCode === null) await agent.stop();
  });
  const g = await clientHome(socket, pub.stdout, '/usr/bin/gpg');
  t.teardown(() => g.cleanup());
  const r = await g.gpg(['--batch', '-u', k.fingerprint, '--detach-sign'], { input: 'data\n' });
  t.not(r.code, 0, 'gpg fails');
  t.match(r.stderr, /Bad passphrase/);
  const calls = await pin.calls();
  t.equal(calls.length, 3, 'the pinentry was asked three times');
  const seterr = calls[1]!.find((c) => c.cmd === 'SETERROR');
  t.match(seterr?.text ?? '', /try 2 of 3/);
  await agent.stop();
  const recs = await auditRecords(home);
  t.equal(recs.length, 1);
  t.equal(recs[0]!.decision, 'failed');
  t.match(String(recs[0]!.reason), /Bad passphrase/);
});
