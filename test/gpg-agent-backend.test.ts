// The gpg-agent back end: keys generated in a workstation GNUPGHOME, held by a real gpg-agent
// (its pinentry a scripted one), never imported into keytether. Stock gpg signs, clearsigns,
// decrypts and lists `sec` through `keytether agent --backend gpg-agent`; a Cancel in gpg-agent's
// pinentry reaches gpg as "Operation cancelled" and the audit log; and every command the back end
// sends to gpg-agent is on the allow-list (nothing that could export secret material).

import t from 'tap';
import { chmod, mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { existsSync } from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import type { ChildProcess } from 'node:child_process';
import { serveAgent } from '../protocol/agent/index.js';
import { DEFAULT_CONFIG, type Config } from '../workstation/config.js';
import { openHolderRuntime } from '../workstation/runtime.js';
import {
  AgentConnection,
  ALLOWED_AGENT_COMMANDS,
  plusPercentEscape,
} from '../workstation/backends/index.js';
import { generateKey, makeGnupgHome, type TempGnupg, clientHome } from './support/gnupg.js';
import { gpgClients } from './support/gpg-versions.js';
import { runCli, spawnCli, waitForLine } from './support/cli.js';
import { makePinentryScript, SCRIPTED_PINENTRY } from './support/pinentry-script.js';

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
  const wrapper = path.join(pin.dir, 'pinentry.sh');
  const exports = Object.entries(pin.env)
    .map(([k, v]) => `export ${k}='${v}'`)
    .join('\n');
  await writeFile(
    wrapper,
    `#!/bin/sh\n${exports}\nexec '${process.execPath}' '${SCRIPTED_PINENTRY}' "$@"\n`,
  );
  await chmod(wrapper, 0o700);

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

  for (const client of gpgClients()) {
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
  t.ok(
    recs.slice(1).every((r) => r.decision === 'allowed'),
    'everything after it was allowed',
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
    t.same(
      sent.filter((c) => c.socket === 'normal').map((c) => c.line),
      sent.filter((c) => c.socket === 'normal').map(() => 'KEYINFO --list'),
      'the normal socket is only asked for the key list',
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
