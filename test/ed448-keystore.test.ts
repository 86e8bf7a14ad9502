// Issue 19: gpg 2.4's Ed448 signing and X448 (cv448) encryption keys, exported as version 5
// packets (which openpgp.js cannot read), imported into the builtin keystore with `keytether keys
// import` — in the clear and passphrase-protected — listed with gpg's own keygrips, and served to
// stock gpg 2.4 on the server side of `keytether serve --stdio` (what `keytether ssh` runs):
// detach-sign, clearsign, decrypt and `git commit -S`. gpg 2.2 can neither make nor use these
// keys, so only gpg 2.4 runs on both sides. Malformed v5 packets are refused in one line.

import t from 'tap';
import { Duplex } from 'node:stream';
import { execFile } from 'node:child_process';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { promisify } from 'node:util';
import { serveTunnel } from '../protocol/tunnel/index.js';
import { loadConfig } from '../workstation/home/config.js';
import { openHolderRuntime } from '../workstation/holder/runtime.js';
import {
  exportSecretKey,
  listKeygrips,
  makeGnupgHome,
  redirectAgentSocket,
  type TempGnupg,
} from './support/gnupg.js';
import { gpgClients } from './support/gpg-versions.js';
import { runCli, spawnCli, waitForLine } from './support/cli.js';
import { ALLOW_BLIND_FLAG, ALLOW_BLIND_RULE } from './support/blind-signing.js';
import { makePinentryScript } from './support/pinentry-script.js';
import { makeRepo } from './support/git-repo.js';

const gpg24 = gpgClients().find((c) => c.version.startsWith('2.4.') && c.gpgconf);
const PASSPHRASE = 'correct horse 448';

async function makeKey(ws: TempGnupg, name: string, passphrase: string): Promise<string> {
  const pass = ['--batch', '--pinentry-mode', 'loopback', '--passphrase', passphrase];
  const gen = await ws.gpg([
    ...pass,
    '--status-fd',
    '1',
    '--quick-gen-key',
    `${name} <${name.toLowerCase()}@example.org>`,
    'ed448',
    'sign,cert',
    'never',
  ]);
  const fpr = /KEY_CREATED [BP] ([0-9A-F]{64})/.exec(gen.stdout.toString())?.[1];
  if (!fpr) throw new Error(`gpg 2.4 made no v5 Ed448 key: ${gen.stderr}`);
  const add = await ws.gpg([...pass, '--quick-add-key', fpr, 'cv448', 'encr', 'never']);
  if (add.code !== 0) throw new Error(`adding the cv448 subkey failed: ${add.stderr}`);
  return fpr;
}

t.test('Ed448 + X448 in the builtin store, served to gpg 2.4', { skip: !gpg24 }, async (t) => {
  const client = gpg24!;
  const bin = path.dirname(client.gpg);
  const gnupg24 = {
    gpgBin: client.gpg,
    gpgConf: [`agent-program ${path.join(bin, 'gpg-agent')}`, 'compliance gnupg'],
  };
  const ws = await makeGnupgHome(gnupg24);
  t.teardown(() => ws.cleanup());
  const clear = await makeKey(ws, 'Clara', '');
  const locked = await makeKey(ws, 'Loki', PASSPHRASE);
  const clearExport = await exportSecretKey(ws, clear);
  const lockedExport = await exportSecretKey(ws, locked, PASSPHRASE);
  const packets = await ws.gpg(['--batch', '--list-packets'], { input: lockedExport });
  t.match(
    packets.stdout.toString(),
    /version 5, algo 22[\s\S]*iter\+salt S2K, algo: (7|9), SHA1 protection/,
    'gpg 2.4 exports the protected key as v5 packets with S2K usage 254 and AES',
  );

  const tmp = await mkdtemp('/tmp/kted448b-');
  t.teardown(() => rm(tmp, { recursive: true, force: true }));
  const home = path.join(tmp, 'home');
  const env = { KEYTETHER_HOME: home };

  await t.test('malformed v5 packets are refused in one line, nothing stored', async (t) => {
    // The first packet (old-format, 1-byte length) is the Ed448 secret key packet.
    const body = clearExport.subarray(2, 2 + clearExport[1]!);
    const oversize = Buffer.from(clearExport);
    oversize.writeUInt32BE(0xfffffff0, 2 + 6); // the 4-octet key material length
    const cases: [string, Buffer, RegExp][] = [
      ['truncated', clearExport.subarray(0, 2 + body.length - 20), /is truncated/],
      ['oversize length', oversize, /announces 4294967280 bytes of key material/],
    ];
    for (const [label, input, why] of cases) {
      const imp = await runCli(['keys', 'import'], { env, input });
      t.equal(imp.code, 1, `${label}: import fails`);
      t.match(
        imp.stderr,
        /^keytether keys import: stdin holds a malformed gpg 2\.4 \(version 5\) key: .*; export it again with gpg --export-secret-keys\n$/,
        `${label}: one line`,
      );
      t.match(imp.stderr, why, label);
    }
    const list = await runCli(['keys', 'list', '--json'], { env });
    t.same(JSON.parse(list.stdout), [], 'nothing was stored');
  });

  const secrets = path.join(tmp, 'secret.gpg');
  await writeFile(secrets, Buffer.concat([clearExport, lockedExport]), { mode: 0o600 });
  const imp = await runCli(['keys', 'import', secrets], { env });
  t.equal(imp.code, 0, `keys import: ${imp.stderr}`);
  await rm(secrets);

  await t.test('keys list --json keygrips equal gpg --with-keygrip', async (t) => {
    const list = await runCli(['keys', 'list', '--json'], { env });
    t.equal(list.code, 0, list.stderr);
    const json = JSON.parse(list.stdout) as {
      fingerprint: string;
      algorithm: string;
      keygrip: string;
      usage: string[];
      subkeys: { fingerprint: string; algorithm: string; keygrip: string; usage: string[] }[];
    }[];
    const got = json
      .flatMap((k) => [
        [k.fingerprint, k.algorithm, k.keygrip, k.usage.join(',')],
        ...k.subkeys.map((s) => [s.fingerprint, s.algorithm, s.keygrip, s.usage.join(',')]),
      ])
      .sort();
    const usage = (u: string) => (u === 'e' ? 'encrypt' : 'certify,sign');
    const want = (await listKeygrips(ws))
      .map((r) => [r.fingerprint, r.curve, r.keygrip, usage(r.usage)])
      .sort();
    t.equal(want.length, 4, 'gpg lists two primaries and two subkeys');
    t.same(got, want);
  });

  await t.test('keys export gives both certificates, no secret packet', async (t) => {
    const exp = await runCli(['keys', 'export', clear, locked], { env });
    t.equal(exp.code, 0, exp.stderr);
    const dump = (await ws.gpg(['--batch', '--list-packets'], { input: exp.stdout })).stdout;
    const text = dump.toString();
    t.equal(text.match(/^:public key packet:/gm)?.length, 2, 'two v5 primary keys');
    t.equal(text.match(/^:public sub key packet:/gm)?.length, 2, 'two v5 subkeys');
    t.notMatch(text, /secret/, 'no secret packet');
    // Without it, gpg 2.4 refuses an armor block whose length is a multiple of 3 as "no valid
    // OpenPGP data found", so one random key in three failed to import on a server.
    t.match(
      exp.stdout.toString(),
      /^=[A-Za-z0-9+/]{4}\n-----END PGP PUBLIC KEY BLOCK-----$/m,
      'the CRC24 line',
    );
  });

  const pin = await makePinentryScript({ answers: Array(8).fill(PASSPHRASE) });
  t.teardown(() => pin.cleanup());
  const config = {
    ...(await loadConfig(home)),
    pinentryProgram: await pin.standaloneProgram(),
    policy: [{ front: 'ssh' as const, action: 'allow' as const }, ALLOW_BLIND_RULE],
  };
  const rt = await openHolderRuntime(home, config);
  t.teardown(() => rt.close());
  const srv = await makeGnupgHome(gnupg24);
  t.teardown(() => srv.cleanup());
  const socket = path.join(tmp, 'S.gpg-agent');
  // The facade imports the holder's certificates with the gpg on its PATH: 2.4, which reads v5.
  const srvEnv = { ...srv.env, PATH: `${bin}:${process.env.PATH ?? ''}` };
  const child = await spawnCli(['serve', '--stdio', '--socket', socket, '--import-keys'], {
    env: srvEnv,
  });
  let stderr = '';
  child.stderr!.on('data', (b: Buffer) => (stderr += b.toString()));
  const exited = new Promise<number | null>((resolve) => child.on('exit', (c) => resolve(c)));
  child.stdin!.on('error', () => {});
  const handle = serveTunnel(
    rt.holder,
    Duplex.from({ readable: child.stdout!, writable: child.stdin! }),
    { software: 'keytether/test' },
  );
  t.teardown(async () => {
    if (child.exitCode === null) {
      handle.close('test done');
      await exited;
    }
  });
  await waitForLine(child.stderr!, /^imported 2 public key\(s\)/, 30_000).catch((e: Error) => {
    throw new Error(`serve did not import the keys: ${e.message}; stderr: ${stderr}`);
  });
  await redirectAgentSocket(srv, socket, client.gpgconf);
  const gpg = (args: string[], input?: string | Buffer) =>
    srv.gpg(['--batch', '--no-tty', ...args], input === undefined ? {} : { input });

  for (const [label, fpr, name] of [
    ['in the clear', clear, 'Clara'],
    ['passphrase-protected', locked, 'Loki'],
  ] as const) {
    await t.test(`${label}: detach-sign, clearsign, decrypt`, async (t) => {
      const msg = path.join(srv.home, `${name}.txt`);
      await writeFile(msg, `hello, Ed448 from ${name}\n`);
      const s = await gpg(['-u', fpr, '-o', `${msg}.sig`, '--detach-sign', msg]);
      t.equal(s.code, 0, s.stderr);
      const v = await gpg(['--verify', `${msg}.sig`, msg]);
      t.match(v.stderr, new RegExp(`Good signature from "${name}`), 'detached signature is Good');
      const cs = await gpg(['-u', fpr, '--clearsign'], 'clear text\n');
      t.equal(cs.code, 0, cs.stderr);
      t.match(
        (await gpg(['--verify'], cs.stdout)).stderr,
        new RegExp(`Good signature from "${name}`),
      );
      const plain = `secret for X448 (${name})\n`;
      const enc = await gpg(['-r', fpr, '-e'], plain);
      t.equal(enc.code, 0, enc.stderr);
      const dec = await gpg(['-d'], enc.stdout);
      t.equal(dec.code, 0, dec.stderr);
      t.equal(dec.stdout.toString(), plain, 'gpg -d gives the plaintext');
    });
  }

  await t.test('git commit -S and git verify-commit', async (t) => {
    const repo = await makeRepo();
    t.teardown(() => repo.cleanup());
    const cfg = ['-c', `gpg.program=${client.gpg}`, '-c', `user.signingkey=${locked}`];
    const git = (args: string[]) =>
      promisify(execFile)('git', [...cfg, ...args], {
        cwd: repo.dir,
        env: { ...repo.env, GNUPGHOME: srv.home },
      }).then(
        (r) => ({ code: 0, stderr: r.stderr }),
        (e: { code?: number; stderr?: string }) => ({ code: e.code ?? 1, stderr: e.stderr ?? '' }),
      );
    const c = await git(['commit', '-q', '-S', '--allow-empty', '-m', 'signed with Ed448']);
    t.equal(c.code, 0, `git commit -S: ${c.stderr}`);
    const vc = await git(['verify-commit', 'HEAD']);
    t.equal(vc.code, 0, vc.stderr);
    t.match(vc.stderr, /Good signature from "Loki/, 'git verify-commit is Good');
  });

  await t.test('through a relay: a token names the v5 key, CI signs and decrypts', async (t) => {
    // A holder of its own (this file's runtime already holds HOME), with the clear key only.
    const relayHome = path.join(tmp, 'relay-home');
    const relayEnv = { KEYTETHER_HOME: relayHome };
    t.equal((await runCli(['keys', 'import'], { env: relayEnv, input: clearExport })).code, 0);
    const stops: (() => void)[] = [];
    t.teardown(() => stops.forEach((s) => s()));
    const relay = await spawnCli(['relay', '--listen', '127.0.0.1:0']);
    stops.push(() => relay.kill('SIGKILL'));
    const url = (await waitForLine(relay.stdout!, /^listening: (\S+)$/, 30_000))[1]!;
    const agent = await spawnCli(
      [
        'agent',
        ...ALLOW_BLIND_FLAG,
        // A relayed decryption is confirmed by default; nobody is here to confirm.
        '--policy',
        'front=relay,op=decrypt,action=allow',
        '--socket',
        path.join(tmp, 'S.relay-holder'),
        '--relay',
        url,
      ],
      { env: relayEnv },
    );
    stops.push(() => agent.kill('SIGKILL'));
    await waitForLine(agent.stderr!, /^relay connected: /, 30_000);
    const made = await runCli(
      ['token', 'create', '--relay', url, '--key', clear, '--ops', 'sign,decrypt'],
      { env: relayEnv },
    );
    t.equal(made.code, 0, `token create --key <64-digit fingerprint>: ${made.stderr}`);
    const ci = {
      KEYTETHER_TOKEN: made.stdout.trim(),
      PATH: `${bin}:${process.env.PATH ?? ''}`,
    };
    const file = path.join(tmp, 'artifact.txt');
    await writeFile(file, 'built by CI, signed with Ed448\n');
    const batch = ['gpg', '--batch', '--no-tty'];
    const signed = await runCli(
      ['connect', '--relay', url, '--', ...batch, '-u', clear, '-o', `${file}.sig`, '-b', file],
      { env: ci },
    );
    t.equal(signed.code, 0, signed.stderr);
    const v = await gpg(['--verify', `${file}.sig`, file]);
    t.match(v.stderr, /Good signature from "Clara/, 'the relayed Ed448 signature is Good');
    const plain = 'for the CI job only\n';
    await writeFile(`${file}.gpg`, (await gpg(['-r', clear, '-e'], plain)).stdout);
    const dec = await runCli(['connect', '--relay', url, '--', ...batch, '-d', `${file}.gpg`], {
      env: ci,
    });
    t.equal(dec.code, 0, dec.stderr);
    t.equal(dec.stdout, plain, 'the relayed X448 decryption gives the plaintext');
  });

  await t.test('the pinentry asked for the protected key only', async (t) => {
    const calls = (await pin.calls()).flat();
    t.ok(
      calls.some((c) => c.cmd === 'SETDESC' && /Loki/.test(c.text ?? '')),
      'the prompt names the protected key',
    );
    t.notOk(
      calls.some((c) => c.cmd === 'SETDESC' && /Clara/.test(c.text ?? '')),
      'the key stored in the clear needs no passphrase',
    );
  });
});
