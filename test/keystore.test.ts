// The keystore and KEYTETHER_HOME handling, with keys exported by real gpg.

import t from 'tap';
import { chmod, mkdtemp, readdir, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir, homedir } from 'node:os';
import path from 'node:path';
import * as openpgp from 'openpgp';
import { UserError } from '../system/user-error.js';
import {
  ensureHome,
  readSecretFile,
  resolveHome,
  writeSecretFile,
} from '../workstation/home/home.js';
import { Keystore } from '../workstation/keystore/index.js';
import {
  exportPublicKey,
  exportSecretKey,
  generateKey,
  listKeygrips,
  makeGnupgHome,
  type GeneratedKey,
  type TempGnupg,
} from './support/gnupg.js';

const PASS = 'correct horse';
let g: TempGnupg;
let ed: GeneratedKey;
let p256: GeneratedKey;
let scratch: string;

t.before(async () => {
  scratch = await mkdtemp(path.join(tmpdir(), 'kt-ks-'));
  g = await makeGnupgHome();
  ed = await generateKey(g, {
    uid: 'Alice <alice@example.org>',
    algo: 'ed25519',
    usage: 'sign,cert',
    subkeys: [
      { algo: 'cv25519', usage: 'encr' },
      { algo: 'ed25519', usage: 'sign' },
    ],
    passphrase: PASS,
  });
  p256 = await generateKey(g, {
    uid: 'Bob <bob@example.org>',
    algo: 'nistp256',
    usage: 'sign,cert',
    subkeys: [{ algo: 'nistp256', usage: 'encr' }],
    passphrase: PASS,
  });
});

t.teardown(async () => {
  await g.cleanup();
  await rm(scratch, { recursive: true, force: true });
});

let n = 0;
const freshHome = () => path.join(scratch, `home${n++}`, 'nested');

t.test('resolveHome', async (t) => {
  t.equal(resolveHome({ KEYTETHER_HOME: '/x/y' }), '/x/y');
  t.equal(resolveHome({ XDG_DATA_HOME: '/d' }), '/d/keytether');
  t.equal(
    resolveHome({ XDG_DATA_HOME: 'relative' }),
    path.join(homedir(), '.local/share/keytether'),
  );
  t.equal(resolveHome({}), path.join(homedir(), '.local/share/keytether'));
});

t.test('home and secret files are private; looser ones are refused', async (t) => {
  const home = freshHome();
  await ensureHome(home);
  t.equal((await stat(home)).mode & 0o777, 0o700, 'created 0700 with parents');
  await ensureHome(home);
  const f = path.join(home, 'secret');
  await writeSecretFile(f, 'one');
  await writeSecretFile(f, Buffer.from('two'));
  t.equal((await stat(f)).mode & 0o777, 0o600);
  t.equal((await readSecretFile(f)).toString(), 'two');
  t.same((await readdir(home)).sort(), ['secret'], 'no temp files left behind');
  await chmod(f, 0o644);
  await t.rejects(readSecretFile(f), { name: 'UserError', message: /chmod 600/ });
  await chmod(home, 0o750);
  await t.rejects(ensureHome(home), {
    name: 'UserError',
    message: `${home} is accessible by other users (mode 750); run: chmod 700 ${home}`,
  });
  await t.rejects(Keystore.open(home), UserError);
});

t.test('import keeps protection, keygrips equal gpg, inventory and list agree', async (t) => {
  const home = freshHome();
  const ks = await Keystore.open(home);
  const armored = await g.gpg([
    '--batch',
    '--pinentry-mode',
    'loopback',
    '--passphrase',
    PASS,
    '--armor',
    '--export-secret-keys',
  ]);
  const res = await ks.importKeys(armored.stdout);
  t.same(
    res.map((r) => [r.fingerprint, r.uid, r.created]).sort(),
    [
      [ed.fingerprint, 'Alice <alice@example.org>', true],
      [p256.fingerprint, 'Bob <bob@example.org>', true],
    ].sort(),
  );
  const files = (await readdir(path.join(home, 'keys'))).sort();
  t.same(files, [`${ed.fingerprint}.key`, `${p256.fingerprint}.key`].sort());
  for (const f of files) t.equal((await stat(path.join(home, 'keys', f))).mode & 0o777, 0o600);
  t.equal((await stat(path.join(home, 'keys'))).mode & 0o777, 0o700);

  // Stored still encrypted: openpgp sees the secret packets as not decrypted.
  const stored = await openpgp.readPrivateKey({
    armoredKey: (await readSecretFile(path.join(home, 'keys', `${ed.fingerprint}.key`))).toString(),
  });
  t.notOk(stored.isDecrypted(), 'secret key material stays passphrase-protected');

  const gpgGrips = await listKeygrips(g);
  const listed = ks.list();
  const listedGrips = listed.flatMap((k) => [k.keygrip, ...k.subkeys.map((s) => s.keygrip)]).sort();
  t.same(listedGrips, gpgGrips.map((r) => r.keygrip).sort());
  const alice = listed.find((k) => k.fingerprint === ed.fingerprint)!;
  t.equal(alice.algorithm, 'ed25519');
  t.same(alice.usage, ['certify', 'sign']);
  t.same(
    alice.subkeys.map((s) => [s.algorithm, s.usage]),
    [
      ['cv25519', ['encrypt']],
      ['ed25519', ['sign']],
    ],
  );
  const inv = ks.inventory();
  t.equal(inv.keys.length, 5);
  t.equal(inv.certificates.length, 2);
  const grip = inv.keys.find((k) => k.keygrip === ed.keygrip)!;
  t.equal(grip.primaryFingerprint, ed.fingerprint);
  t.equal(grip.protection, 'P');
  t.match(
    Buffer.from(grip.publicKey).toString('latin1'),
    /^\(10:public-key\(3:ecc\(5:curve7:Ed25519\)\(5:flags5:eddsa\)\(1:q33:@/,
  );
  const cert = inv.certificates.find((c) => c.fingerprint === ed.fingerprint)!;
  t.same(cert.userIds, ['Alice <alice@example.org>']);
  t.notOk((await openpgp.readKey({ armoredKey: cert.armored })).isPrivate());

  // Re-import (binary this time) updates instead of duplicating.
  const again = await ks.importKeys(await exportSecretKey(g, ed.fingerprint, PASS));
  t.same(again, [
    { fingerprint: ed.fingerprint, uid: 'Alice <alice@example.org>', created: false },
  ]);
  t.equal((await readdir(path.join(home, 'keys'))).length, 2);
  const reopened = await Keystore.open(home);
  t.equal(reopened.inventory().keys.length, 5, 'a reopened store sees the same keys');

  // Public export: readable, nothing secret.
  const pub = reopened.exportPublic();
  t.match(pub, /^-----BEGIN PGP PUBLIC KEY BLOCK-----/);
  const keys = await openpgp.readKeys({ armoredKeys: pub });
  t.equal(keys.length, 2);
  t.ok(
    keys.every((k) => !k.isPrivate()),
    'no secret packets',
  );
  t.equal(
    (
      await openpgp.readKeys({
        armoredKeys: reopened.exportPublic([p256.fingerprint.toLowerCase()]),
      })
    ).length,
    1,
  );
  t.throws(() => reopened.exportPublic(['AB'.repeat(20)]), {
    name: 'UserError',
    message: /no key with fingerprint/,
  });

  t.equal(await reopened.remove(p256.fingerprint), p256.fingerprint);
  t.same(await readdir(path.join(home, 'keys')), [`${ed.fingerprint}.key`]);
  await t.rejects(reopened.remove(p256.fingerprint), {
    name: 'UserError',
    message: /no key with fingerprint/,
  });
});

t.test('stubs from --export-secret-subkeys are listed but not served', async (t) => {
  const ks = await Keystore.open(freshHome());
  const r = await g.gpg([
    '--batch',
    '--pinentry-mode',
    'loopback',
    '--passphrase',
    PASS,
    '--export-secret-subkeys',
    ed.fingerprint,
  ]);
  t.equal(r.code, 0);
  await ks.importKeys(r.stdout);
  const [k] = ks.list();
  t.equal(k!.secret, false, 'primary is a stub');
  t.ok(k!.subkeys.every((s) => s.secret));
  const grips = ks.inventory().keys.map((e) => e.keygrip);
  t.notOk(grips.includes(ed.keygrip));
  t.equal(grips.length, 2);
  await t.rejects(ks.unlock(ed.keygrip, Buffer.from(PASS)), { code: 17 });
  // A later full export fills the stub in.
  await ks.importKeys(await exportSecretKey(g, ed.fingerprint, PASS));
  t.equal(ks.list()[0]!.secret, true);
  // And a stub export afterwards does not take the secret away again.
  await ks.importKeys(r.stdout);
  t.equal(ks.list()[0]!.secret, true);
  t.equal(ks.inventory().keys.length, 3);
});

t.test('bad input is refused with a sentence', async (t) => {
  const ks = await Keystore.open(freshHome());
  await t.rejects(ks.importKeys(await exportPublicKey(g, ed.fingerprint), 'pub.gpg'), {
    name: 'UserError',
    message: 'pub.gpg holds only public keys; export with gpg --export-secret-keys',
  });
  await t.rejects(ks.importKeys(Buffer.from('hello world, not a key'), 'x.txt'), {
    name: 'UserError',
    message: /^x\.txt is not a readable OpenPGP key export/,
  });
  await t.rejects(ks.importKeys(Buffer.alloc(0), 'stdin'), {
    name: 'UserError',
    message: /stdin is empty/,
  });
  // Armor framing around four bytes of junk (built up so no key-block header sits in the repo).
  const block = ['PGP', 'PRIVATE', 'KEY', 'BLOCK'].join(' ');
  const armoredJunk = `-----BEGIN ${block}-----\n\nAAAA\n-----END ${block}-----\n`;
  await t.rejects(ks.importKeys(Buffer.from(armoredJunk), 'k.asc'), {
    name: 'UserError',
    message: /^k\.asc/,
  });
  t.same(ks.list(), [], 'nothing was stored');
  // A key file damaged on disk names the file.
  const home = freshHome();
  const ks2 = await Keystore.open(home);
  await ks2.importKeys(await exportSecretKey(g, p256.fingerprint, PASS));
  await writeFile(path.join(home, 'keys', `${p256.fingerprint}.key`), 'junk', { mode: 0o600 });
  await t.rejects(Keystore.open(home), {
    name: 'UserError',
    message: new RegExp(`${p256.fingerprint}\\.key is not a readable key file`),
  });
});
