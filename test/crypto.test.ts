// Raw key operations of the builtin back end, on keys made by real gpg. Signatures are checked by
// OpenSSL (node:crypto) against the public keys gpg exported; RSA decryption is checked end to end
// on a message real gpg encrypted; ECDH against the shared secret computed from the sender's side.

import t, { type Test } from 'tap';
import {
  constants,
  createHash,
  createPublicKey,
  diffieHellman,
  generateKeyPairSync,
  publicEncrypt,
  verify,
  type KeyObject,
} from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import * as openpgp from 'openpgp';
import { atom, encodeSexp, findList, mpiStd, parseSexp, type Sexp } from '../protocol/sexp.js';
import { ErrorCode } from '../protocol/gpg-error.js';
import { Keystore } from '../workstation/keystore/index.js';
import type { UnlockedKey } from '../workstation/crypto/index.js';
import {
  exportPublicKey,
  exportSecretKey,
  generateKey,
  makeGnupgHome,
  type GeneratedKey,
  type TempGnupg,
} from './support/gnupg.js';

interface Made {
  g: TempGnupg;
  key: GeneratedKey;
  pass: string;
  pub: openpgp.Key;
}

const SPECS = [
  {
    name: 'ed',
    algo: 'ed25519',
    subkeys: [
      { algo: 'cv25519', usage: 'encr' },
      { algo: 'ed25519', usage: 'sign' },
    ],
  },
  { name: 'rsa', algo: 'rsa3072', subkeys: [{ algo: 'rsa3072', usage: 'encr' }] },
  { name: 'p256', algo: 'nistp256', subkeys: [{ algo: 'nistp256', usage: 'encr' }] },
  { name: 'p384', algo: 'nistp384', subkeys: [{ algo: 'nistp384', usage: 'encr' }] },
  { name: 'p521', algo: 'nistp521', subkeys: [{ algo: 'nistp521', usage: 'encr' }] },
  { name: 'bp256', algo: 'brainpoolP256r1', subkeys: [{ algo: 'brainpoolP256r1', usage: 'encr' }] },
];

const made = new Map<string, Made>();
let ks: Keystore;
let home: string;

t.before(async () => {
  home = await mkdtemp(path.join(tmpdir(), 'kt-crypto-'));
  // Each key in its own GNUPGHOME so that gpg generates them concurrently (RSA is slow).
  await Promise.all(
    SPECS.map(async (s) => {
      const g = await makeGnupgHome();
      const pass = `pass-${s.name}-ü`;
      const key = await generateKey(g, {
        uid: `${s.name} <${s.name}@example.org>`,
        algo: s.algo,
        usage: 'sign,cert',
        subkeys: s.subkeys,
        passphrase: pass,
      });
      const pub = await openpgp.readKey({ binaryKey: await exportPublicKey(g, key.fingerprint) });
      made.set(s.name, { g, key, pass, pub });
    }),
  );
  ks = await Keystore.open(home);
  for (const m of made.values()) {
    await ks.importKeys(await exportSecretKey(m.g, m.key.fingerprint, m.pass));
  }
});

t.teardown(async () => {
  await Promise.all([...made.values()].map((m) => m.g.cleanup()));
  await rm(home, { recursive: true, force: true });
});

function get(name: string): Made {
  const m = made.get(name);
  if (!m) throw new Error(`no key ${name}`);
  return m;
}

/** Public (sub)key params as gpg exported them, independent of the keystore's parsing. */
function exportedParams(m: Made, fpr: string): Record<string, unknown> {
  const k = m.pub.getKeys().find((x) => x.getFingerprint().toUpperCase() === fpr);
  if (!k) throw new Error(`no exported key ${fpr}`);
  return k.keyPacket.publicParams as Record<string, unknown>;
}

function parse(t: Test, b: Uint8Array): Sexp {
  const r = parseSexp(b);
  if (!r.ok) throw new Error(r.error);
  t.equal(r.end, b.length, 'canonical S-expression without trailing bytes');
  return r.value;
}

function value(list: Sexp, name: string): Buffer {
  const l = findList(list, name);
  const v = l?.[1];
  if (!v || !Buffer.isBuffer(v)) throw new Error(`no ${name}`);
  return v;
}

function pad(v: Buffer, n: number): Buffer {
  return Buffer.concat([Buffer.alloc(Math.max(0, n - v.length)), v]);
}

const HASHES: Record<number, string> = { 2: 'sha1', 8: 'sha256', 9: 'sha384', 10: 'sha512' };
const message = Buffer.from('keytether test message\n');
const digestOf = (id: number) => createHash(HASHES[id]!).update(message).digest();

async function unlock(m: Made, keygrip: string): Promise<UnlockedKey> {
  return ks.unlock(keygrip, Buffer.from(m.pass, 'utf8'));
}

function rsaPublic(params: Record<string, unknown>): KeyObject {
  return createPublicKey({
    format: 'jwk',
    key: {
      kty: 'RSA',
      n: Buffer.from(params.n as Uint8Array).toString('base64url'),
      e: Buffer.from(params.e as Uint8Array).toString('base64url'),
    },
  });
}

const NODE_CURVE: Record<string, string> = { p256: 'P-256', p384: 'P-384', p521: 'P-521' };

function ecPublic(name: string, q: Uint8Array): KeyObject {
  const size = (q.length - 1) / 2;
  return createPublicKey({
    format: 'jwk',
    key: {
      kty: 'EC',
      crv: NODE_CURVE[name]!,
      x: Buffer.from(q.subarray(1, 1 + size)).toString('base64url'),
      y: Buffer.from(q.subarray(1 + size)).toString('base64url'),
    },
  });
}

t.test('inventory holds every generated key with gpg keygrips', async (t) => {
  const grips = ks
    .inventory()
    .keys.map((k) => k.keygrip)
    .sort();
  const expected = [...made.values()]
    .flatMap((m) => [m.key.keygrip, ...m.key.subkeys.map((s) => s.keygrip)])
    .sort();
  t.same(grips, expected);
  t.ok(ks.inventory().keys.every((k) => k.protection === 'P'));
});

t.test('Ed25519 primary and signing subkey sign digests that verify', async (t) => {
  const m = get('ed');
  const signSub = m.key.subkeys.find((s) => s.usage === 's')!;
  for (const [grip, fpr] of [
    [m.key.keygrip, m.key.fingerprint],
    [signSub.keygrip, signSub.fingerprint],
  ] as const) {
    const key = await unlock(m, grip);
    t.equal(key.algorithm, 'ed25519');
    const q = exportedParams(m, fpr).Q as Uint8Array;
    const pub = createPublicKey({
      format: 'jwk',
      key: { kty: 'OKP', crv: 'Ed25519', x: Buffer.from(q.subarray(1)).toString('base64url') },
    });
    for (const id of [8, 10]) {
      const d = digestOf(id);
      const sv = key.sign(id, d);
      const tree = parse(t, sv);
      const r = value(tree, 'r');
      const s = value(tree, 's');
      t.equal(r.length, 32);
      t.equal(s.length, 32);
      t.match(sv.subarray(0, 25).toString('latin1'), '(7:sig-val(5:eddsa(1:r32:');
      t.ok(verify(null, d, pub, Buffer.concat([r, s])), `hash ${id} verifies`);
      t.notOk(verify(null, digestOf(2).subarray(0, 16), pub, Buffer.concat([r, s])));
    }
    key.destroy();
    t.throws(() => key.sign(8, digestOf(8)), 'a destroyed key refuses to sign');
  }
});

t.test('RSA-3072 PKCS#1 v1.5 signatures verify with OpenSSL', async (t) => {
  const m = get('rsa');
  const key = await unlock(m, m.key.keygrip);
  t.equal(key.algorithm, 'rsa3072');
  const pub = rsaPublic(exportedParams(m, m.key.fingerprint));
  for (const id of [2, 8, 10]) {
    const sv = key.sign(id, digestOf(id));
    t.match(sv.subarray(0, 22).toString('latin1'), '(7:sig-val(3:rsa(1:s');
    const s = value(parse(t, sv), 's');
    t.not(s[0], 0, 's is in USG form (no leading zero)');
    t.ok(verify(HASHES[id]!, message, pub, pad(s, 384)), `${HASHES[id]} verifies`);
  }
  t.throws(() => key.sign(8, digestOf(10)), { name: 'GpgError', code: ErrorCode.INV_LENGTH });
  t.throws(() => key.sign(77, digestOf(8)), { name: 'GpgError', code: ErrorCode.DIGEST_ALGO });
  key.destroy();
});

for (const [name, ids] of [
  ['p256', [8, 10]],
  ['p384', [9, 10]],
  ['p521', [10]],
] as const) {
  t.test(`ECDSA ${name} signatures verify with OpenSSL`, async (t) => {
    const m = get(name);
    const key = await unlock(m, m.key.keygrip);
    t.equal(key.algorithm, `nist${name}`);
    const q = exportedParams(m, m.key.fingerprint).Q as Uint8Array;
    const pub = ecPublic(name, q);
    const size = (q.length - 1) / 2;
    for (const id of ids) {
      const sv = key.sign(id, digestOf(id));
      const tree = parse(t, sv);
      const r = value(tree, 'r');
      const s = value(tree, 's');
      t.not(r[0], 0, 'r is USG');
      t.not(s[0], 0, 's is USG');
      // libgcrypt truncates to the curve size (capped at 64 bytes); OpenSSL does the same with
      // the full digest of the message, so both must agree on what was signed.
      t.ok(
        verify(
          HASHES[id]!,
          message,
          { key: pub, dsaEncoding: 'ieee-p1363' },
          Buffer.concat([pad(r, size), pad(s, size)]),
        ),
        `${HASHES[id]} verifies`,
      );
    }
    if (name !== 'p256') {
      t.throws(
        () => key.sign(8, digestOf(8)),
        { name: 'GpgError', code: ErrorCode.INV_LENGTH },
        'digest shorter than the curve',
      );
    }
    key.destroy();
  });
}

t.test('brainpoolP256r1 signatures verify with OpenSSL', async (t) => {
  const m = get('bp256');
  const key = await unlock(m, m.key.keygrip);
  t.equal(key.algorithm, 'brainpoolP256r1');
  const q = exportedParams(m, m.key.fingerprint).Q as Uint8Array;
  const size = (q.length - 1) / 2;
  const sv = key.sign(8, digestOf(8));
  const tree = parse(t, sv);
  const sig = Buffer.concat([pad(value(tree, 'r'), size), pad(value(tree, 's'), size)]);
  const pub = createPublicKey({
    key: Buffer.concat([
      // SubjectPublicKeyInfo for id-ecPublicKey / brainpoolP256r1 with an uncompressed point.
      Buffer.from('305a301406072a8648ce3d020106092b2403030208010107034200', 'hex'),
      Buffer.from(q),
    ]),
    format: 'der',
    type: 'spki',
  });
  t.ok(
    verify('sha256', message, { key: pub, dsaEncoding: 'ieee-p1363' }, sig),
    'verifies with OpenSSL',
  );
  key.destroy();
});

t.test('cv25519 decryption returns 40||X25519(d, e)', async (t) => {
  const m = get('ed');
  const sub = m.key.subkeys.find((s) => s.usage === 'e')!;
  const key = await unlock(m, sub.keygrip);
  t.equal(key.algorithm, 'cv25519');
  const q = exportedParams(m, sub.fingerprint).Q as Uint8Array;
  const recipient = createPublicKey({
    format: 'jwk',
    key: { kty: 'OKP', crv: 'X25519', x: Buffer.from(q.subarray(1)).toString('base64url') },
  });
  const eph = generateKeyPairSync('x25519');
  const ephX = Buffer.from(eph.publicKey.export({ format: 'jwk' }).x!, 'base64url');
  const encVal = encodeSexp([
    atom('enc-val'),
    [
      atom('ecdh'),
      [atom('s'), Buffer.alloc(49, 7)],
      [atom('e'), Buffer.concat([Buffer.of(0x40), ephX])],
    ],
  ]);
  const res = key.decrypt(encVal);
  const expected = diffieHellman({ privateKey: eph.privateKey, publicKey: recipient });
  t.same(Buffer.from(res.value), Buffer.concat([Buffer.of(0x40), expected]));
  t.equal(res.padding, undefined);
  t.throws(() => key.decrypt(Buffer.from('garbage')), {
    name: 'GpgError',
    code: ErrorCode.INV_SEXP,
  });
  t.throws(
    () => key.decrypt(encodeSexp([atom('enc-val'), [atom('ecdh'), [atom('e'), Buffer.alloc(12)]]])),
    { name: 'GpgError', code: ErrorCode.INV_DATA },
  );
  t.throws(() => key.sign(8, digestOf(8)), { name: 'GpgError' }, 'an encryption key does not sign');
  key.destroy();
});

for (const name of ['p256', 'p384', 'p521'] as const) {
  t.test(`ECDH ${name} decryption returns the shared point`, async (t) => {
    const m = get(name);
    const sub = m.key.subkeys[0]!;
    const key = await unlock(m, sub.keygrip);
    const q = exportedParams(m, sub.fingerprint).Q as Uint8Array;
    const eph = generateKeyPairSync('ec', { namedCurve: NODE_CURVE[name]! });
    const jwk = eph.publicKey.export({ format: 'jwk' });
    const size = (q.length - 1) / 2;
    const e = Buffer.concat([
      Buffer.of(4),
      pad(Buffer.from(jwk.x!, 'base64url'), size),
      pad(Buffer.from(jwk.y!, 'base64url'), size),
    ]);
    const res = key.decrypt(
      encodeSexp([atom('enc-val'), [atom('ecdh'), [atom('s'), Buffer.alloc(49)], [atom('e'), e]]]),
    );
    const x = diffieHellman({ privateKey: eph.privateKey, publicKey: ecPublic(name, q) });
    t.equal(res.value.length, q.length, '04||X||Y');
    t.equal(res.value[0], 4);
    t.same(Buffer.from(res.value.subarray(1, 1 + size)), pad(x, size), 'X equals the sender side');
    const offCurve = Buffer.from(e);
    offCurve[offCurve.length - 1]! ^= 1;
    t.throws(
      () => key.decrypt(encodeSexp([atom('enc-val'), [atom('ecdh'), [atom('e'), offCurve]]])),
      { name: 'GpgError', code: ErrorCode.INV_DATA },
    );
    key.destroy();
  });
}

t.test('RSA decryption of a message real gpg encrypted', async (t) => {
  const m = get('rsa');
  const sub = m.key.subkeys[0]!;
  const enc = await m.g.gpg(
    ['--batch', '--trust-model', 'always', '--encrypt', '-r', sub.fingerprint + '!'],
    {
      input: 'secret text from gpg\n',
    },
  );
  t.equal(enc.code, 0, enc.stderr);
  const msg = await openpgp.readMessage({ binaryMessage: enc.stdout });
  const pkesk = msg.packets.findPacket(
    openpgp.enums.packet.publicKeyEncryptedSessionKey,
  ) as unknown as {
    encrypted: { c: Uint8Array };
  };
  const encVal = encodeSexp([
    atom('enc-val'),
    [atom('rsa'), [atom('a'), mpiStd(pkesk.encrypted.c)]],
  ]);
  const key = await unlock(m, sub.keygrip);
  const res = key.decrypt(encVal);
  t.equal(res.value[0], 2, 'EME-PKCS1 block without its leading zero, like the real agent');
  const block = Buffer.from(res.value);
  const sep = block.indexOf(0, 1);
  const algo = block[sep + 1]!;
  const sessionKey = block.subarray(sep + 2, block.length - 2);
  const sum = sessionKey.reduce((a, b) => (a + b) & 0xffff, 0);
  t.equal(block.readUInt16BE(block.length - 2), sum, 'session key checksum matches');
  const out = await openpgp.decrypt({
    message: msg,
    sessionKeys: {
      data: sessionKey,
      algorithm: openpgp.enums.read(openpgp.enums.symmetric, algo) as 'aes256',
    },
  });
  t.equal(out.data, 'secret text from gpg\n', 'the recovered session key decrypts the message');
  t.throws(
    () =>
      key.decrypt(
        encodeSexp([atom('enc-val'), [atom('rsa'), [atom('a'), Buffer.alloc(385, 0xff)]]]),
      ),
    { name: 'GpgError', code: ErrorCode.INV_DATA },
    'ciphertext longer than the modulus',
  );
  t.throws(
    () =>
      key.decrypt(
        encodeSexp([atom('enc-val'), [atom('rsa'), [atom('a'), Buffer.alloc(384, 0xff)]]]),
      ),
    { name: 'GpgError', code: ErrorCode.INV_DATA },
    'ciphertext not below the modulus',
  );
  key.destroy();
});

t.test(
  'RSA decryption refuses blocks that are not encryption blocks (no signing oracle)',
  async (t) => {
    const m = get('rsa');
    // The primary key has sign,cert usage: the attack is to submit a signature block as ciphertext.
    const key = await unlock(m, m.key.keygrip);
    const digest = digestOf(8);
    const digestInfo = Buffer.from('3031300d060960864801650304020105000420', 'hex');
    const k = 384;
    const emSig = Buffer.concat([
      Buffer.from([0, 1]),
      Buffer.alloc(k - 3 - digestInfo.length - digest.length, 0xff),
      Buffer.from([0]),
      digestInfo,
      digest,
    ]);
    const asCiphertext = (em: Buffer) =>
      encodeSexp([atom('enc-val'), [atom('rsa'), [atom('a'), em.subarray(1)]]]);
    // Before the fix this returned emSig^d, i.e. a valid signature over digest.
    t.throws(() => key.decrypt(asCiphertext(emSig)), {
      name: 'GpgError',
      code: ErrorCode.INV_DATA,
    });
    // Encryption-shaped blocks with too little padding or no separator are refused the same way.
    const short = Buffer.concat([
      Buffer.from([0, 2]),
      Buffer.alloc(7, 0x11),
      Buffer.from([0]),
      Buffer.alloc(k - 10, 0x22),
    ]);
    const noSep = Buffer.concat([Buffer.from([0, 2]), Buffer.alloc(k - 2, 0x33)]);
    const pub = rsaPublic(exportedParams(m, m.key.fingerprint));
    for (const em of [short, noSep]) {
      // Raise the forged block to e so that the private operation yields exactly em.
      const c = publicEncrypt({ key: pub, padding: constants.RSA_NO_PADDING }, em);
      t.throws(() => key.decrypt(encodeSexp([atom('enc-val'), [atom('rsa'), [atom('a'), c]]])), {
        name: 'GpgError',
        code: ErrorCode.INV_DATA,
        message: /RSA decryption failed/,
      });
    }
    const okBlock = Buffer.concat([
      Buffer.from([0, 2]),
      Buffer.alloc(8, 0x11),
      Buffer.from([0]),
      Buffer.alloc(k - 11, 0x22),
    ]);
    const c = publicEncrypt({ key: pub, padding: constants.RSA_NO_PADDING }, okBlock);
    const res = key.decrypt(encodeSexp([atom('enc-val'), [atom('rsa'), [atom('a'), c]]]));
    t.same(Buffer.from(res.value), okBlock.subarray(1), 'minimal valid padding still decrypts');
    key.destroy();
  },
);

t.test('wrong passphrase and unknown keygrip', async (t) => {
  const m = get('p256');
  await t.rejects(ks.unlock(m.key.keygrip, Buffer.from('wrong')), {
    code: ErrorCode.BAD_PASSPHRASE,
  });
  await t.rejects(ks.unlock(m.key.keygrip, null), { code: ErrorCode.BAD_PASSPHRASE });
  await t.rejects(ks.unlock('00'.repeat(20), Buffer.from(m.pass)), { code: ErrorCode.NO_SECKEY });
  t.equal(ks.isProtected(m.key.keygrip), true);
});
