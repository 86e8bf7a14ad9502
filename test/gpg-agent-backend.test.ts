// The gpg-agent back end: keys generated in a workstation GNUPGHOME, held by a real gpg-agent
// (its pinentry a scripted one), never imported into keytether. Stock gpg signs, clearsigns,
// decrypts and lists `sec` through `keytether agent --backend gpg-agent`; a Cancel in gpg-agent's
// pinentry reaches gpg as "Operation cancelled" and the audit log; and every command the back end
// sends to gpg-agent is on the allow-list (nothing that could export secret material).

import t from 'tap';
import { mkdir, mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { randomBytes } from 'node:crypto';
import { ed25519 } from '@noble/curves/ed25519.js';
import { existsSync } from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import type { ChildProcess } from 'node:child_process';
import { serveAgent } from '../protocol/agent/index.js';
import { DEFAULT_CONFIG, type Config } from '../workstation/home/config.js';
import { openHolderRuntime } from '../workstation/holder/runtime.js';
import {
  AgentConnection,
  ALLOWED_AGENT_COMMANDS,
  GpgAgentBackend,
  plusPercentEscape,
} from '../workstation/backends/index.js';
import type { KeyEntry } from '../protocol/keyholder.js';
import { findList, parseSexp } from '../protocol/sexp.js';
import {
  clientHome,
  exportPublicKey,
  generateKey,
  makeGnupgHome,
  type TempGnupg,
} from './support/gnupg.js';
import { gpgClients } from './support/gpg-versions.js';
import { runCli, spawnCli, waitForLine } from './support/cli.js';
import { makePinentryScript } from './support/pinentry-script.js';

const PASS = 'correct horse';

async function auditRecords(home: string): Promise<Record<string, unknown>[]> {
  const text = await readFile(path.join(home, 'audit.jsonl'), 'utf8');
  return text
    .split('\n')
    .filter(Boolean)
    .map((l) => JSON.parse(l) as Record<string, unknown>);
}

t.test('plus-percent escaping of SETKEYDESC text', async (t) => {
  t.equal(plusPercentEscape('a b+c%d\n"e"'), 'a+b%2Bc%25d%0A%22e%22');
  t.equal(plusPercentEscape('ü'), '%C3%BC');
  t.ok(plusPercentEscape('x'.repeat(5000)).length <= 900, 'fits one Assuan line');
  t.notOk(/%.?$/.test(plusPercentEscape('%'.repeat(400))), 'never cuts an escape in half');
});

t.test('stock gpg through keytether agent --backend gpg-agent', async (t) => {
  // gpg-agent starts its pinentry with its own environment, so a wrapper carries the script's.
  const pin = await makePinentryScript({ answers: [{ cancel: true }, ...Array(20).fill(PASS)] });
  t.teardown(() => pin.cleanup());
  const wrapper = await pin.standaloneProgram();

  const ws = await makeGnupgHome({ agentConf: [`pinentry-program ${wrapper}`] });
  t.teardown(() => ws.cleanup());
  const alice = await generateKey(ws, {
    uid: 'Alice <alice@example.org>',
    algo: 'ed25519',
    usage: 'sign,cert',
    subkeys: [{ algo: 'cv25519', usage: 'encr' }],
    passphrase: PASS,
  });
  const pub = await ws.gpg(['--batch', '--export']);
  t.equal(pub.code, 0, pub.stderr);

  const tmp = await mkdtemp('/tmp/ktgab-');
  t.teardown(() => rm(tmp, { recursive: true, force: true }));
  const home = path.join(tmp, 'home');
  const socket = path.join(tmp, 'S.agent');
  const child: ChildProcess = await spawnCli(
    [
      'agent',
      '--socket',
      socket,
      '--backend',
      'gpg-agent',
      '--gnupg-home',
      ws.home,
      '--pinentry-program',
      pin.program,
    ],
    { env: { KEYTETHER_HOME: home, ...pin.env } },
  );
  let stderr = '';
  child.stderr!.on('data', (b: Buffer) => (stderr += b.toString()));
  const exited = new Promise<number | null>((resolve) => child.on('exit', (c) => resolve(c)));
  t.teardown(async () => {
    if (child.exitCode === null) {
      child.kill('SIGTERM');
      await exited;
    }
  });
  await waitForLine(child.stdout!, /^ready: /, 30_000).catch((e: Error) => {
    throw new Error(`agent did not get ready: ${e.message}; stderr: ${stderr}`);
  });
  const said = await waitForLine(
    child.stderr!,
    /^serving (\d+) keys? of the gpg-agent in (.+) too \(--backend builtin/,
    30_000,
  );
  t.same([said[1], said[2]], ['2', ws.home], 'the agent says whose keys it serves');

  const sys = gpgClients()[0]!;
  const g = await clientHome(socket, pub.stdout, sys.gpg);
  t.teardown(() => g.cleanup());
  const gpg = (cl: TempGnupg, args: string[], input?: string | Buffer) =>
    cl.gpg(['--batch', '--no-tty', ...args], input === undefined ? {} : { input });

  await t.test('Cancel in gpg-agent pinentry → Operation cancelled', async (t) => {
    const r = await gpg(g, ['-u', alice.fingerprint, '--detach-sign'], 'data\n');
    t.not(r.code, 0, 'gpg fails');
    t.match(r.stderr, /Operation cancelled/);
    const inv = await pin.invocations();
    t.equal(inv.length, 1, "gpg-agent's pinentry was asked once");
    const desc = inv[0]!.calls.find((c) => c.cmd === 'SETDESC')?.text ?? '';
    t.match(desc, /keytether: request from local gpg/, 'names the requester');
    t.match(desc, /Note: Request from a remote site/, "gpg-agent's own remote note");
    t.match(desc, /Please enter the passphrase to unlock the OpenPGP secret key/, "gpg's text");
    t.ok(
      desc.indexOf('keytether:') < desc.indexOf('Please enter'),
      "the requester comes before gpg's text",
    );
  });

  await t.test('--pinentry-mode error: a locked key fails at once, no pinentry', async (t) => {
    const before = (await pin.invocations()).length;
    const r = await gpg(
      g,
      ['--pinentry-mode', 'error', '-u', alice.fingerprint, '--detach-sign'],
      'data\n',
    );
    t.not(r.code, 0, 'gpg fails');
    t.match(r.stderr, /No pinentry/, "gpg-agent's own answer for pinentry-mode error");
    t.equal((await pin.invocations()).length, before, "gpg-agent's pinentry was not started");
  });

  // gpg 2.4's gpgconf names the system's agent, so its own agent is found beside its gpg.
  for (const client of gpgClients().filter((c) => c.gpgconf)) {
    await t.test(`${client.label}: sign, clearsign, decrypt, list`, async (t) => {
      const cl = client === sys ? g : await clientHome(socket, pub.stdout, client.gpg);
      if (cl !== g) t.teardown(() => cl.cleanup());
      const msg = path.join(cl.home, 'msg.txt');
      await writeFile(msg, `hello via ${client.label}\n`);
      const sig = `${msg}.sig`;
      const s = await gpg(cl, ['-u', alice.fingerprint, '-o', sig, '--detach-sign', msg]);
      t.equal(s.code, 0, s.stderr);
      const v = await gpg(cl, ['--verify', sig, msg]);
      t.equal(v.code, 0, v.stderr);
      t.match(v.stderr, /Good signature from "Alice/);

      const cs = await gpg(cl, ['-u', alice.fingerprint, '--clearsign'], 'clear text\n');
      t.equal(cs.code, 0, cs.stderr);
      const v2 = await gpg(cl, ['--verify'], cs.stdout);
      t.match(v2.stderr, /Good signature from "Alice/);

      const plain = `secret for alice via ${client.label}\n`;
      const enc = await gpg(cl, ['-r', alice.fingerprint, '--encrypt'], plain);
      t.equal(enc.code, 0, enc.stderr);
      const dec = await gpg(cl, ['--decrypt'], enc.stdout);
      t.equal(dec.code, 0, dec.stderr);
      t.equal(dec.stdout.toString(), plain);

      const k = await gpg(cl, ['-K']);
      t.equal(k.code, 0, k.stderr);
      const out = k.stdout.toString();
      t.match(out, /^sec /m, 'sec');
      t.match(out, /^ssb /m, 'ssb');
      t.notMatch(out, /^(sec|ssb)#/m, 'no key shown as unavailable');
    });
  }

  child.kill('SIGTERM');
  t.equal(await exited, 0, 'agent exits cleanly');
  const keysDir = path.join(home, 'keys');
  t.same(existsSync(keysDir) ? await readdir(keysDir) : [], [], 'keytether stored no key');
  const recs = await auditRecords(home);
  t.equal(recs[0]?.decision, 'canceled', 'the cancel is audited');
  t.equal(recs[0]?.op, 'sign');
  t.match(String(recs[0]?.reason), /Operation cancelled/);
  t.match(recs[1], { decision: 'failed', reason: /pinentry-mode=error: unlocking the key/ });
  t.ok(
    recs.slice(2).every((r) => r.decision === 'allowed'),
    'everything after them was allowed',
  );
  t.ok(recs.some((r) => r.op === 'decrypt' && r.fingerprint !== undefined));
  const ver = await runCli(['audit', 'verify'], { env: { KEYTETHER_HOME: home } });
  t.equal(ver.code, 0, ver.stderr);

  await t.test('the back end sends gpg-agent only allow-listed commands', async (t) => {
    const sent: { socket: string; line: string }[] = [];
    const config: Config = { ...DEFAULT_CONFIG, relay: [], policy: [], backend: 'gpg-agent' };
    const rt = await openHolderRuntime(path.join(tmp, 'home2'), config, {
      gnupgHome: ws.home,
      onGpgAgentCommand: (socket, line) => sent.push({ socket, line }),
    });
    t.teardown(() => rt.close());
    const sock2 = path.join(tmp, 'S.agent2');
    const server = net.createServer((s) => {
      s.on('error', () => s.destroy());
      void serveAgent(s, { holder: rt.holder, requester: { front: 'local' } });
    });
    await new Promise<void>((resolve) => server.listen(sock2, resolve));
    t.teardown(() => new Promise<void>((resolve) => server.close(() => resolve())));
    const cl = await clientHome(sock2, pub.stdout, sys.gpg);
    t.teardown(() => cl.cleanup());

    const s = await gpg(cl, ['-u', alice.fingerprint, '--clearsign'], 'x\n');
    t.equal(s.code, 0, s.stderr);
    const enc = await gpg(cl, ['-r', alice.fingerprint, '--encrypt'], 'y\n');
    const dec = await gpg(cl, ['--decrypt'], enc.stdout);
    t.equal(dec.stdout.toString(), 'y\n', dec.stderr);
    t.equal((await gpg(cl, ['-K'])).code, 0);

    const words = sent.map((c) => `${c.socket}:${c.line.split(' ')[0]}`);
    t.ok(words.includes('extra:PKSIGN') && words.includes('extra:PKDECRYPT'), 'ops were seen');
    t.ok(words.includes('normal:KEYINFO'), 'inventory from the normal socket');
    t.ok(
      sent.every((c) => ALLOWED_AGENT_COMMANDS.has(c.line.split(' ')[0]!)),
      `only allow-listed commands: ${[...new Set(words)].join(' ')}`,
    );
    t.notOk(
      sent.some((c) => /^(EXPORT_KEY|KEYWRAP_KEY|GET_PASSPHRASE)\b/i.test(c.line)),
      'nothing that hands out secrets',
    );
    t.ok(
      sent
        .filter((c) => c.socket === 'normal')
        .every((c) => c.line === 'KEYINFO --list' || c.line === 'GETINFO version'),
      'the normal socket is only asked for the key list and the version',
    );

    // The guard itself: a forbidden command fails before it is written.
    const seen: string[] = [];
    const conn = await AgentConnection.open(rt.gpgAgent!.dirs.extraSocket, 'extra', (_k, l) =>
      seen.push(l),
    );
    t.teardown(() => conn.close());
    for (const cmd of [
      `EXPORT_KEY ${alice.keygrip}`,
      `KEYWRAP_KEY --export`,
      'GET_PASSPHRASE x',
      'PRESET_PASSPHRASE x -1 41',
    ]) {
      await t.rejects(conn.transact(cmd), { code: 251 }, `${cmd.split(' ')[0]} refused`);
    }
    t.same(seen, [], 'none of them was sent');
    const ver = await conn.transact('GETINFO version');
    t.match(ver.data.toString(), /^\d+\.\d+/, 'the connection is still in sync');
  });
});

/** The Ed25519 signature in a sig-val checks against the key's public `q` over DIGEST. */
function verifiesEd25519(sigVal: Uint8Array, publicKey: Uint8Array, digest: Uint8Array): boolean {
  const sig = parseSexp(sigVal);
  const pub = parseSexp(publicKey);
  if (!sig.ok || !pub.ok) return false;
  const r = findList(sig.value, 'r')?.[1];
  const s = findList(sig.value, 's')?.[1];
  const q = findList(pub.value, 'q')?.[1];
  if (!Buffer.isBuffer(r) || !Buffer.isBuffer(s) || !Buffer.isBuffer(q)) return false;
  const pad = (b: Buffer) => Buffer.concat([Buffer.alloc(Math.max(0, 32 - b.length)), b]);
  // gpg keeps Ed25519 points with a 0x40 prefix.
  const point = q.length === 33 && q[0] === 0x40 ? q.subarray(1) : q;
  return ed25519.verify(Buffer.concat([pad(r), pad(s)]), digest, point);
}

// gpg 2.4's gpgconf names the system's agent, so its own agent is found beside its gpg.
for (const client of gpgClients().filter((c) => c.gpgconf)) {
  t.test(`${client.label} agent: pipelined operations on one pooled connection`, async (t) => {
    const is24 = client.version.startsWith('2.4.');
    const ws = await makeGnupgHome({
      gpgBin: client.gpg,
      gpgConf: is24 ? [`agent-program ${path.join(path.dirname(client.gpg), 'gpg-agent')}`] : [],
    });
    t.teardown(() => ws.cleanup());
    const key = await generateKey(ws, { uid: 'P <p@example.org>', algo: 'ed25519', usage: 'sign' });
    const ver = await ws.connectAgent(['GETINFO version']);
    t.match(ver.stdout.toString(), new RegExp(`^D ${client.version.replace(/\./g, '\\.')}$`, 'm'));

    const sent: { line: string; conn: number }[] = [];
    const backend = await GpgAgentBackend.open({
      gnupgHome: ws.home,
      gpg: client.gpg,
      ...(client.gpgconf ? { gpgconf: client.gpgconf } : {}),
      onCommand: (kind, line, conn) => {
        if (kind === 'extra') sent.push({ line, conn });
      },
    });
    t.teardown(() => backend.close());
    const listed = await backend.inventory();
    // Facades report it to gpg when it is newer than keytether's own floor.
    t.equal(listed.agentVersion, client.version, "the inventory names the agent's version");
    const entry = listed.keys.find((k) => k.keygrip === key.keygrip);
    if (!entry) throw new Error('the key is not in the inventory');
    const ctx = {
      description: 'pipelined',
      requester: { front: 'local' as const },
      signal: undefined,
    };
    const sign = async (e: KeyEntry, digest: Buffer) =>
      (await backend.open(e, ctx)).sign(8, digest);
    const ecdhEncVal = Buffer.concat([
      Buffer.from('(7:enc-val(4:ecdh(1:s8:'),
      randomBytes(8),
      Buffer.from(')(1:e33:'),
      Buffer.from([0x40]),
      randomBytes(32),
      Buffer.from(')))'),
    ]);
    const missing: KeyEntry = { ...entry, keygrip: randomBytes(20).toString('hex').toUpperCase() };

    const d1 = randomBytes(32);
    t.ok(verifiesEd25519(await sign(entry, d1), entry.publicKey, d1), 'first signature verifies');
    const d2 = randomBytes(32);
    t.ok(verifiesEd25519(await sign(entry, d2), entry.publicKey, d2), 'second signature verifies');
    // After a good signature the agent still holds that key and digest; an operation whose key
    // it lacks must fail rather than sign with what the previous one left behind.
    await t.rejects(sign(missing, randomBytes(32)), { code: 17 }, 'No secret key');
    // 2.2 says No secret key; 2.4 asks scdaemon whether a card has it (none here).
    const decErr = await Promise.resolve()
      .then(async () => (await backend.open(missing, ctx)).decrypt(ecdhEncVal))
      .then(
        () => undefined,
        (e: unknown) => e as { code?: number },
      );
    t.ok(decErr && [17, 119].includes(decErr.code ?? 0), `PKDECRYPT fails: ${decErr?.code}`);
    const d3 = randomBytes(32);
    t.ok(verifiesEd25519(await sign(entry, d3), entry.publicKey, d3), 'signs again after errors');
    const before = sent.length;
    await t.rejects(sign(entry, randomBytes(31)), { code: 280 }, 'a bad digest length is refused');
    t.equal(sent.length, before, '… before anything is sent');

    t.same(new Set(sent.map((s) => s.conn)).size, 1, 'every operation used one pooled connection');
    const words = sent.map((s) => s.line.split(' ')[0]);
    const signOp = ['RESET', 'SIGKEY', 'SETKEYDESC', 'SETHASH', 'PKSIGN'];
    t.same(
      words,
      [...signOp, ...signOp, ...signOp, 'RESET', 'SETKEY', 'SETKEYDESC', 'PKDECRYPT', ...signOp],
      'each operation is RESET, the key, its description, the data, the operation',
    );
    t.equal(sent[3]!.line, `SETHASH 8 ${d1.toString('hex').toUpperCase()}`);
  });
}

t.test('backend auto: a GnuPG home without secret keys is left alone', async (t) => {
  const ws = await makeGnupgHome();
  t.teardown(() => ws.cleanup());
  const sent: string[] = [];
  const backend = await GpgAgentBackend.open({
    gnupgHome: ws.home,
    onlyWithKeys: true,
    changeCheckMs: 0,
    onCommand: (_k, line) => sent.push(line),
  });
  t.teardown(() => backend.close());
  t.same((await backend.inventory()).keys, [], 'no keys');
  t.same(sent, [], 'nothing was sent to an agent');
  t.notOk(existsSync(backend.dirs.agentSocket), 'no agent was started');

  // Keys created while keytether runs show up at the next check.
  const key = await generateKey(ws, { uid: 'L <l@example.org>', algo: 'ed25519', usage: 'sign' });
  const inv = await backend.inventory();
  t.same(
    inv.keys.map((k) => k.keygrip),
    [key.keygrip],
    'the new key is served',
  );

  // Now that there are keys, an agent that went away is started again, as gpg would.
  const kill = await ws.run('gpgconf', ['--kill', 'gpg-agent']);
  t.equal(kill.code, 0, kill.stderr);
  const again = await GpgAgentBackend.open({ gnupgHome: ws.home, onlyWithKeys: true });
  t.teardown(() => again.close());
  t.same(
    (await again.inventory()).keys.map((k) => k.keygrip),
    [key.keygrip],
    'the agent was started',
  );
});

t.test('keytether agent (default backend auto) in a HOME without GnuPG', async (t) => {
  const tmp = await mkdtemp('/tmp/ktgan-');
  t.teardown(() => rm(tmp, { recursive: true, force: true }));
  const home = path.join(tmp, 'h');
  await mkdir(home, { mode: 0o700 });
  const socket = path.join(tmp, 'S.a');
  const child = await spawnCli(['agent', '--socket', socket], {
    env: { HOME: home, KEYTETHER_HOME: path.join(tmp, 'kt'), GNUPGHOME: undefined },
  });
  let stderr = '';
  child.stderr!.on('data', (b: Buffer) => (stderr += b.toString()));
  const exited = new Promise<number | null>((resolve) => child.on('exit', (c) => resolve(c)));
  t.teardown(async () => {
    if (child.exitCode === null) {
      child.kill('SIGTERM');
      await exited;
    }
  });
  await waitForLine(child.stdout!, /^ready: /, 30_000);
  // A client asks for keys, which makes the holder look at every back end.
  const cl = await makeGnupgHome();
  t.teardown(() => cl.cleanup());
  const c = await AgentConnection.open(socket, 'normal');
  const r = await c.transact('KEYINFO --list');
  c.close();
  t.same(r.status, [], 'no keys');
  child.kill('SIGTERM');
  t.equal(await exited, 0, 'exits cleanly');
  t.equal(stderr, '', 'said nothing');
  t.same(await readdir(home), [], 'created nothing in HOME (no ~/.gnupg)');
});

t.test(
  'a refresh asks the agent only; the keyring is read again only when it changed',
  async (t) => {
    const ws = await makeGnupgHome();
    t.teardown(() => ws.cleanup());
    const mine = await generateKey(ws, {
      uid: 'M <m@example.org>',
      algo: 'ed25519',
      usage: 'sign',
    });
    // Someone else's certificate in the keyring: public only, never exported for the inventory.
    const other = await makeGnupgHome();
    t.teardown(() => other.cleanup());
    const theirs = await generateKey(other, { uid: 'O <o@example.org>', algo: 'ed25519' });
    const imp = await ws.gpg(['--batch', '--import'], {
      input: await exportPublicKey(other, theirs.fingerprint),
    });
    t.equal(imp.code, 0, imp.stderr);

    const exports: string[][] = [];
    const backend = await GpgAgentBackend.open({
      gnupgHome: ws.home,
      requireAgent: true,
      refreshMs: 0,
      changeCheckMs: 0,
      onExport: (specs) => exports.push(specs),
    });
    t.teardown(() => backend.close());
    for (let i = 0; i < 5; i++) {
      const inv = await backend.inventory();
      t.same(
        inv.certificates.map((c) => c.fingerprint),
        [mine.fingerprint],
        'only the certificate with a secret key',
      );
    }
    t.same(exports, [[`&${mine.keygrip}`]], 'five refreshes, one export, of our keygrip only');

    const added = await generateKey(ws, {
      uid: 'N <n@example.org>',
      algo: 'ed25519',
      usage: 'sign',
    });
    const inv = await backend.inventory();
    t.same(inv.keys.map((k) => k.keygrip).sort(), [mine.keygrip, added.keygrip].sort());
    t.equal(exports.length, 2, 'a new key: the keyring is read again');
  },
);
