// Issue 19: gpg 2.4's Ed448 signing and X448 (cv448) encryption keys, held by the workstation's
// real gpg-agent 2.4, are listed with gpg's own keygrips and served through `keytether agent
// --backend gpg-agent`: stock gpg 2.4 detach-signs, clearsigns and decrypts with them (the agent
// does the math). openpgp.js cannot read these v5 certificates, so before this the keys were not
// in the inventory at all and gpg said "No secret key". (The builtin store reads them with its own
// v5 packet reader: test/ed448-keystore.test.ts.)

import t from 'tap';
import { writeFile, mkdtemp, rm } from 'node:fs/promises';
import path from 'node:path';
import type { ChildProcess } from 'node:child_process';
import { clientHome, exportSecretKey, generateKey, makeGnupgHome } from './support/gnupg.js';
import { gpgClients } from './support/gpg-versions.js';
import { runCli, spawnCli, waitForLine } from './support/cli.js';
import { GpgAgentBackend } from '../workstation/backends/index.js';

const gpg24 = gpgClients().find((c) => c.version.startsWith('2.4.') && c.gpgconf);

t.test('Ed448 + X448 through --backend gpg-agent (gpg 2.4)', { skip: !gpg24 }, async (t) => {
  const client = gpg24!;
  const bin = path.dirname(client.gpg);
  const ws = await makeGnupgHome({
    gpgBin: client.gpg,
    gpgConf: [`agent-program ${path.join(bin, 'gpg-agent')}`, 'compliance gnupg'],
  });
  t.teardown(() => ws.cleanup());
  const pass = ['--batch', '--pinentry-mode', 'loopback', '--passphrase', ''];
  const gen = await ws.gpg([
    ...pass,
    '--status-fd',
    '1',
    '--quick-gen-key',
    'Ed Four <ed448@example.org>',
    'ed448',
    'sign,cert',
    'never',
  ]);
  const fpr = /KEY_CREATED [BP] ([0-9A-F]{64})/.exec(gen.stdout.toString())?.[1];
  t.ok(fpr, `gpg 2.4 made a v5 Ed448 key: ${gen.stderr}`);
  const add = await ws.gpg([...pass, '--quick-add-key', fpr!, 'cv448', 'encr', 'never']);
  t.equal(add.code, 0, add.stderr);
  const listing = await ws.gpg(['--batch', '--with-colons', '--with-keygrip', '-K']);
  const grips = listing.stdout
    .toString()
    .split('\n')
    .filter((l) => l.startsWith('grp:'))
    .map((l) => l.split(':')[9]);
  t.equal(grips.length, 2);
  const pub = await ws.gpg(['--batch', '--export', fpr!]);

  const tmp = await mkdtemp('/tmp/kted448-');
  t.teardown(() => rm(tmp, { recursive: true, force: true }));
  // The workstation's gpg is 2.4: the one that can read its own keyring.
  const env = {
    KEYTETHER_HOME: path.join(tmp, 'home'),
    PATH: `${bin}:${process.env.PATH ?? ''}`,
  };

  const backend = await GpgAgentBackend.open({
    gnupgHome: ws.home,
    gpg: client.gpg,
    gpgconf: client.gpgconf!,
  });
  const inv = await backend.inventory();
  await backend.close();
  t.same(
    inv.keys.map((k) => [k.keygrip, k.algorithm, k.usage]),
    [
      [grips[0], 'ed448', ['sign', 'certify']],
      [grips[1], 'cv448', ['encrypt']],
    ],
    'the back end names them with gpg’s keygrips',
  );
  t.same(
    inv.certificates.map((c) => [c.fingerprint, c.userIds]),
    [[fpr, ['Ed Four <ed448@example.org>']]],
  );
  const socket = path.join(tmp, 'S.agent');
  const child: ChildProcess = await spawnCli(
    ['agent', '--socket', socket, '--backend', 'gpg-agent', '--gnupg-home', ws.home],
    { env },
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

  const cl = await clientHome(socket, pub.stdout, client.gpg);
  t.teardown(() => cl.cleanup());
  const gpg = (args: string[], input?: string | Buffer) =>
    cl.gpg(['--batch', '--no-tty', ...args], input === undefined ? {} : { input });
  const msg = path.join(cl.home, 'msg.txt');
  await writeFile(msg, 'hello, Ed448\n');
  const s = await gpg(['-u', fpr!, '-o', `${msg}.sig`, '--detach-sign', msg]);
  t.equal(s.code, 0, s.stderr);
  t.match((await gpg(['--verify', `${msg}.sig`, msg])).stderr, /Good signature from "Ed Four/);
  const cs = await gpg(['-u', fpr!, '--clearsign'], 'clear text\n');
  t.equal(cs.code, 0, cs.stderr);
  t.match((await gpg(['--verify'], cs.stdout)).stderr, /Good signature from "Ed Four/);
  const plain = 'secret for X448\n';
  const enc = await gpg(['--trust-model', 'always', '-r', fpr!, '-e'], plain);
  t.equal(enc.code, 0, enc.stderr);
  const dec = await gpg(['-d'], enc.stdout);
  t.equal(dec.code, 0, dec.stderr);
  t.equal(dec.stdout.toString(), plain);
});
