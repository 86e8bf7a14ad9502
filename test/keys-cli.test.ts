// `keytether keys …` run as a user would: the built CLI in a child process, keys from real gpg.

import t from 'tap';
import { chmod, mkdtemp, readdir, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { runCli } from './support/cli.js';
import {
  exportSecretKey,
  generateKey,
  listKeygrips,
  makeGnupgHome,
  type GeneratedKey,
  type TempGnupg,
} from './support/gnupg.js';

const PASS = 'pw for cli';
let g: TempGnupg;
let other: TempGnupg;
let ed: GeneratedKey;
let p256: GeneratedKey;
let scratch: string;

t.before(async () => {
  scratch = await mkdtemp(path.join(tmpdir(), 'kt-cli-'));
  [g, other] = await Promise.all([makeGnupgHome(), makeGnupgHome()]);
  ed = await generateKey(g, {
    uid: 'Carol <carol@example.org>',
    algo: 'ed25519',
    usage: 'sign,cert',
    subkeys: [{ algo: 'cv25519', usage: 'encr' }],
    passphrase: PASS,
  });
  p256 = await generateKey(g, {
    uid: 'Dave <dave@example.org>',
    algo: 'nistp256',
    usage: 'sign,cert',
    subkeys: [{ algo: 'nistp256', usage: 'encr' }],
    passphrase: PASS,
  });
});

t.teardown(async () => {
  await Promise.all([g.cleanup(), other.cleanup()]);
  await rm(scratch, { recursive: true, force: true });
});

t.test('import, list, export, remove', async (t) => {
  const home = path.join(scratch, 'home');
  const env = { KEYTETHER_HOME: home };
  const file = path.join(scratch, 'carol.gpg');
  await writeFile(file, await exportSecretKey(g, ed.fingerprint, PASS));

  const imp = await runCli(['keys', 'import', file], { env });
  t.equal(imp.code, 0, imp.stderr);
  t.equal(imp.stdout, `imported ${ed.fingerprint} Carol <carol@example.org>\n`);

  const armored = await g.gpg([
    '--batch',
    '--pinentry-mode',
    'loopback',
    '--passphrase',
    PASS,
    '--armor',
    '--export-secret-keys',
    p256.fingerprint,
  ]);
  const fromStdin = await runCli(['keys', 'import'], { env, input: armored.stdout });
  t.equal(fromStdin.code, 0, fromStdin.stderr);
  t.equal(fromStdin.stdout, `imported ${p256.fingerprint} Dave <dave@example.org>\n`);

  t.equal((await stat(home)).mode & 0o777, 0o700);
  const files = await readdir(path.join(home, 'keys'));
  t.equal(files.length, 2);
  for (const f of files) t.equal((await stat(path.join(home, 'keys', f))).mode & 0o777, 0o600);

  const again = await runCli(['keys', 'import', file], { env });
  t.equal(again.code, 0);
  t.equal((await readdir(path.join(home, 'keys'))).length, 2, 're-import does not duplicate');

  const list = await runCli(['keys', 'list', '--json'], { env });
  t.equal(list.code, 0, list.stderr);
  const json = JSON.parse(list.stdout) as {
    fingerprint: string;
    uids: string[];
    algorithm: string;
    keygrip: string;
    usage: string[];
    subkeys: { fingerprint: string; algorithm: string; keygrip: string; usage: string[] }[];
  }[];
  t.equal(json.length, 2);
  const gpgList = await listKeygrips(g);
  for (const k of json) {
    const want = gpgList.find((r) => r.fingerprint === k.fingerprint)!;
    t.equal(k.keygrip, want.keygrip, `${k.algorithm} primary keygrip equals gpg's`);
    for (const s of k.subkeys) {
      t.equal(
        s.keygrip,
        gpgList.find((r) => r.fingerprint === s.fingerprint)!.keygrip,
        `${s.algorithm} subkey keygrip`,
      );
    }
  }
  const dave = json.find((k) => k.fingerprint === p256.fingerprint)!;
  t.same(
    {
      algorithm: dave.algorithm,
      uids: dave.uids,
      usage: dave.usage,
      sub: dave.subkeys.map((s) => [s.algorithm, s.usage]),
    },
    {
      algorithm: 'nistp256',
      uids: ['Dave <dave@example.org>'],
      usage: ['certify', 'sign'],
      sub: [['nistp256', ['encrypt']]],
    },
  );

  const text = await runCli(['keys', 'list'], { env });
  t.equal(text.code, 0);
  t.match(text.stdout, ed.fingerprint);
  t.match(text.stdout, ed.keygrip);
  t.match(text.stdout, 'uid   Carol <carol@example.org>');

  // The export imports into a stock gpg as public keys only.
  const exp = await runCli(['keys', 'export'], { env });
  t.equal(exp.code, 0, exp.stderr);
  t.match(exp.stdout, /^-----BEGIN PGP PUBLIC KEY BLOCK-----/);
  const gi = await other.gpg(['--batch', '--import'], { input: exp.stdout });
  t.equal(gi.code, 0, gi.stderr);
  const pubs = await other.gpg(['--batch', '--with-colons', '--list-keys']);
  t.equal((pubs.stdout.toString().match(/^pub:/gm) ?? []).length, 2);
  const secs = await other.gpg(['--batch', '--with-colons', '--list-secret-keys']);
  t.equal(secs.stdout.toString().match(/^sec/m), null, 'no secret key reached gpg');

  const one = await runCli(['keys', 'export', ed.fingerprint], { env });
  t.equal(one.code, 0);
  const unknown = await runCli(['keys', 'export', 'AB'.repeat(20)], { env });
  t.equal(unknown.code, 1);
  t.match(unknown.stderr, /^keytether keys export: no key with fingerprint/);

  const rm1 = await runCli(['keys', 'remove', p256.fingerprint], { env });
  t.equal(rm1.code, 0, rm1.stderr);
  const rm2 = await runCli(['keys', 'remove', p256.fingerprint], { env });
  t.equal(rm2.code, 1);
  t.match(rm2.stderr, `keytether keys remove: no key with fingerprint ${p256.fingerprint}`);
  t.notMatch(rm2.stderr, /\n\s+at /, 'no stack trace');
  const after = JSON.parse((await runCli(['keys', 'list', '--json'], { env })).stdout) as unknown[];
  t.equal(after.length, 1);
});

t.test('failures explain themselves', async (t) => {
  const home = path.join(scratch, 'home2');
  const env = { KEYTETHER_HOME: home };
  const pub = await g.gpg(['--batch', '--export', ed.fingerprint]);
  const r = await runCli(['keys', 'import'], { env, input: pub.stdout });
  t.equal(r.code, 1);
  t.equal(
    r.stderr,
    'keytether keys import: stdin holds only public keys; export with gpg --export-secret-keys\n',
  );

  const missing = await runCli(['keys', 'import', path.join(scratch, 'nope.gpg')], { env });
  t.equal(missing.code, 1);
  t.match(missing.stderr, /^keytether keys import: cannot read .*nope\.gpg/);

  await chmod(home, 0o755);
  const loose = await runCli(['keys', 'list'], { env });
  t.equal(loose.code, 1);
  t.equal(
    loose.stderr,
    `keytether keys list: ${home} is accessible by other users (mode 755); run: chmod 700 ${home}\n`,
  );
  const usage = await runCli(['keys', 'remove'], { env });
  t.equal(usage.code, 2);
});
