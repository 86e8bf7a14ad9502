import t from 'tap';
import { createHash, ECDH } from 'node:crypto';
import * as openpgp from 'openpgp';
import { p256, p384, p521 } from '@noble/curves/nist.js';
import { brainpoolP256r1, brainpoolP384r1, brainpoolP512r1 } from '@noble/curves/misc.js';
import { ed25519 } from '@noble/curves/ed25519.js';
import { ed448 } from '@noble/curves/ed448.js';
import {
  curveBits,
  curveFromOid,
  keygrip,
  keygripBytes,
  publicKeySexp,
  oidToDotted,
  type CurveName,
  type PublicKeyParams,
} from '../protocol/keygrip.js';
import { CURVES, curveFromName } from '../protocol/curves.js';
import { parseSexp, findList, atomText } from '../protocol/sexp.js';
import {
  agentData,
  exportPublicKey,
  generateKey,
  listKeygrips,
  makeGnupgHome,
  type KeySpec,
  type TempGnupg,
} from './support/gnupg.js';

const hex = (s: string) => Buffer.from(s.replace(/\s+/g, ''), 'hex');
const big = (h: string) => BigInt('0x' + h);

t.test('curve constants agree with @noble/curves', async (t) => {
  const weierstrass = {
    'NIST P-256': p256,
    'NIST P-384': p384,
    'NIST P-521': p521,
    brainpoolP256r1,
    brainpoolP384r1,
    brainpoolP512r1,
  } as const;
  for (const [name, impl] of Object.entries(weierstrass)) {
    const c = CURVES[name as CurveName];
    const ref = impl.Point.CURVE();
    t.equal(big(c.p), ref.p, `${name} p`);
    t.equal(big(c.a), ref.a, `${name} a`);
    t.equal(big(c.b), ref.b, `${name} b`);
    t.equal(big(c.gx), ref.Gx, `${name} Gx`);
    t.equal(big(c.gy), ref.Gy, `${name} Gy`);
    t.equal(big(c.n), ref.n, `${name} n`);
    t.equal(c.fieldBytes, Math.ceil(ref.p.toString(2).length / 8), `${name} field size`);
  }
  const ed = ed25519.Point.CURVE();
  const e = CURVES.Ed25519;
  t.equal(big(e.p), ed.p);
  t.equal(big(e.a), ed.p - ed.a, 'Ed25519 a is the magnitude of -1');
  t.equal(big(e.b), ed.p - ed.d, 'Ed25519 b is the magnitude of -d');
  t.equal(big(e.gx), ed.Gx);
  t.equal(big(e.gy), ed.Gy);
  t.equal(big(e.n), ed.n);
  const m = CURVES.Curve25519;
  const p = big(m.p);
  const [x, y] = [big(m.gx), big(m.gy)];
  t.equal(p, ed.p);
  t.equal(big(m.n), ed.n);
  t.equal(big(m.a), (486662n - 2n) / 4n, 'Curve25519 a = (A-2)/4');
  t.equal(
    (y * y) % p,
    (x ** 3n + 486662n * x * x + x) % p,
    'Curve25519 base point is on the curve',
  );
  const ed4 = ed448.Point.CURVE();
  const e4 = CURVES.Ed448;
  t.equal(big(e4.p), ed4.p, 'Ed448 p');
  t.equal(big(e4.a), ed4.a, 'Ed448 a');
  t.equal(big(e4.b), ed4.d, 'Ed448 b holds d');
  t.equal(big(e4.gx), ed4.Gx, 'Ed448 Gx');
  t.equal(big(e4.gy), ed4.Gy, 'Ed448 Gy');
  t.equal(big(e4.n), ed4.n, 'Ed448 n');
  const x4 = CURVES.X448;
  const p4 = big(x4.p);
  const [u, v] = [big(x4.gx), big(x4.gy)];
  t.equal(p4, ed4.p);
  t.equal(big(x4.n), ed4.n);
  t.equal(big(x4.a), (156326n - 2n) / 4n, 'X448 a = (A-2)/4');
  t.equal((v * v) % p4, (u ** 3n + 156326n * u * u + u) % p4, 'X448 base point is on the curve');
});

t.test('curve lookups', async (t) => {
  const oids: [string, CurveName][] = [
    ['1.3.6.1.4.1.11591.15.1', 'Ed25519'],
    ['1.3.6.1.4.1.3029.1.5.1', 'Curve25519'],
    ['1.2.840.10045.3.1.7', 'NIST P-256'],
    ['1.3.132.0.34', 'NIST P-384'],
    ['1.3.132.0.35', 'NIST P-521'],
    ['1.3.36.3.3.2.8.1.1.7', 'brainpoolP256r1'],
    ['1.3.36.3.3.2.8.1.1.11', 'brainpoolP384r1'],
    ['1.3.36.3.3.2.8.1.1.13', 'brainpoolP512r1'],
    ['1.3.101.112', 'Ed25519'],
    ['1.3.101.110', 'Curve25519'],
    ['1.3.101.113', 'Ed448'],
    ['1.3.101.111', 'X448'],
  ];
  for (const [oid, name] of oids) t.equal(curveFromOid(oid), name, oid);
  t.equal(curveFromOid('1.3.132.0.10'), undefined, 'secp256k1 is not supported');
  t.equal(curveFromOid(''), undefined);
  t.same(
    [255, 255, 448, 448, 256, 384, 521, 256, 384, 512],
    (Object.keys(CURVES) as CurveName[]).map(curveBits),
  );
  t.equal(oidToDotted(hex('2b06010401da470f01')), '1.3.6.1.4.1.11591.15.1');
  t.equal(oidToDotted(hex('2a8648ce3d030107')), '1.2.840.10045.3.1.7');
  t.equal(oidToDotted(hex('2b2403030208010107')), '1.3.36.3.3.2.8.1.1.7');
  t.equal(oidToDotted(hex('2b86')), undefined, 'truncated arc');
  t.equal(oidToDotted(new Uint8Array()), undefined);
  t.equal(curveFromName('cv25519'), 'Curve25519');
  t.equal(curveFromName('nistp384'), 'NIST P-384');
  t.equal(curveFromName('brainpoolP512r1'), 'brainpoolP512r1');
  t.equal(curveFromName('NIST P-256'), 'NIST P-256');
  t.equal(curveFromName('secp256k1'), undefined);
});

t.test('reference vectors (§4.6, §5)', async (t) => {
  const edQ = hex('406922fad946cc6de0ec85977cceaa12ebf7077331d39ae26aec77be804498952c');
  const ed: PublicKeyParams = { kind: 'ecc', curve: 'Ed25519', q: edQ };
  t.equal(keygrip(ed), '610839D8AD00C787E27DBCA223B563BD95B8CFA6');
  t.equal(keygripBytes(ed).length, 20);
  t.equal(
    keygrip({ kind: 'ecc', curve: 'Ed25519', q: edQ.subarray(1) }),
    '610839D8AD00C787E27DBCA223B563BD95B8CFA6',
    'a bare 32-byte Ed25519 point hashes the same',
  );
  t.equal(
    keygrip({
      kind: 'ecc',
      curve: 'Curve25519',
      q: hex('400ac19be2e58cf37c1d1295187757929f373f2f8ca77bce11b5a63458a864ed19'),
    }),
    '21A5253683B4E6E2B41E6705B2CE94818D12DE4C',
  );
  t.same(
    publicKeySexp(ed),
    hex(
      '2831303a7075626c69632d6b657928333a65636328353a6375727665373a456432353531392928353a666c616773353a' +
        '65646473612928313a7133333a406922fad946cc6de0ec85977cceaa12ebf7077331d39ae26aec77be804498952c292929',
    ),
    'Ed25519 READKEY bytes',
  );
  const cv = publicKeySexp({ kind: 'ecc', curve: 'Curve25519', q: Buffer.alloc(33, 0x40) });
  t.equal(cv.length, 105, 'cv25519 READKEY is 105 bytes');
  t.match(
    cv.toString('latin1'),
    /^\(10:public-key\(3:ecc\(5:curve10:Curve25519\)\(5:flags9:djb-tweak\)\(1:q33:@/,
  );
  const nist = publicKeySexp({ kind: 'ecc', curve: 'NIST P-256', q: Buffer.alloc(65, 4) });
  t.equal(nist.length, 117, 'P-256 READKEY is 117 bytes');
  t.match(nist.toString('latin1'), /^\(10:public-key\(3:ecc\(5:curve10:NIST P-256\)\(1:q65:\x04/);

  // RSA: the modulus is hashed with its sign byte; e is not hashed.
  const n = Buffer.concat([Buffer.of(0xd1), Buffer.alloc(255, 0x5a)]);
  const rsa: PublicKeyParams = { kind: 'rsa', n, e: hex('010001') };
  const expected = createHash('sha1')
    .update(Buffer.concat([Buffer.of(0), n]))
    .digest('hex');
  t.equal(keygrip(rsa), expected.toUpperCase());
  t.equal(keygrip({ ...rsa, e: hex('03') }), keygrip(rsa));
  t.equal(
    keygrip({ kind: 'rsa', n: Buffer.concat([Buffer.alloc(2), n]), e: hex('010001') }),
    keygrip(rsa),
    'leading zeros in the input do not matter',
  );
  const small = Buffer.concat([Buffer.of(0x51), Buffer.alloc(255, 0x5a)]);
  t.equal(
    keygrip({ kind: 'rsa', n: small, e: hex('010001') }),
    createHash('sha1').update(small).digest('hex').toUpperCase(),
    'no sign byte when the top bit is clear',
  );
  const rsaSexp = publicKeySexp(rsa);
  t.equal(rsaSexp.length, 298, 'RSA-2048 READKEY is 298 bytes');
  t.same(rsaSexp.subarray(0, 29), Buffer.from('(10:public-key(3:rsa(1:n257:\0', 'latin1'));
  t.same(rsaSexp.subarray(-12), Buffer.from('(1:e3:\x01\x00\x01)))', 'latin1'));

  t.throws(() => keygrip({ kind: 'ecc', curve: 'Ed25519', q: Buffer.alloc(31) }));
  t.throws(() => keygrip({ kind: 'ecc', curve: 'NIST P-256', q: Buffer.alloc(64, 4) }));
  t.throws(() => keygrip({ kind: 'ecc', curve: 'NIST P-256', q: Buffer.alloc(33, 5) }));
  t.throws(
    () =>
      keygrip({
        kind: 'ecc',
        curve: 'NIST P-256',
        q: Buffer.concat([Buffer.of(2), Buffer.alloc(32, 0xff)]),
      }),
    'compressed x outside the field',
  );
  t.throws(() => keygrip({ kind: 'rsa', n: Buffer.alloc(3), e: hex('03') }));
});

// --- Real gpg: every key type gpg 2.2 can create, primary and subkeys. ---------------------

interface Expect {
  fingerprint: string;
  keygrip: string;
}

/** Public parameters of every key packet (primary first) of an exported key, via openpgp.js. */
async function packetsOf(binary: Buffer) {
  const key = await openpgp.readKey({ binaryKey: binary });
  const packets = [key.keyPacket, ...key.subkeys.map((s) => s.keyPacket)];
  return packets.map((p) => {
    const pp = p.publicParams as Record<string, unknown>;
    const fingerprint = p.getFingerprint().toUpperCase();
    if ('n' in pp) {
      return {
        fingerprint,
        pk: { kind: 'rsa', n: pp.n as Uint8Array, e: pp.e as Uint8Array } as const,
      };
    }
    const oid = oidToDotted((pp.oid as { oid: Uint8Array }).oid);
    const curve = oid === undefined ? undefined : curveFromOid(oid);
    if (curve === undefined) throw new Error(`unexpected curve OID ${oid} in ${fingerprint}`);
    return { fingerprint, pk: { kind: 'ecc', curve, q: pp.Q as Uint8Array } as const };
  });
}

// A key gpg 2.4.7 made (`--quick-gen-key … ed448`, `--quick-add-key … cv448`): its public points
// as the v5 packets carry them, and the keygrips `gpg --with-keygrip` printed.
t.test('Ed448 and X448 keygrips and READKEY forms are gpg 2.4’s', async (t) => {
  const ed = {
    kind: 'ecc' as const,
    curve: 'Ed448' as const,
    q: hex(
      '63a37032e341f3a3219cdba44128ac3babf57d7aa9706733d0d4c92ea3a14cb9ee50cd5514628e4b02d31999df2f43f4d0650d0640a0513400',
    ),
  };
  const x = {
    kind: 'ecc' as const,
    curve: 'X448' as const,
    q: hex(
      'd441595fba8e466725c7881ad163f41cbadd405a45a6b42c5a1ec02a8480dd1f9d725a79299d2dbe609d04685b67917636f8e4959c7e86be',
    ),
  };
  t.equal(keygrip(ed), '77EC5DAF9EE5A88671534353333C7DA38D27EE81');
  t.equal(keygrip(x), 'A8548B477D4495077E4D7DB3B73CC796D23B88FC');
  // gpg-agent 2.4's READKEY: no flags list for these curves, the point bare.
  t.equal(
    publicKeySexp(ed).toString('latin1'),
    `(10:public-key(3:ecc(5:curve5:Ed448)(1:q57:${ed.q.toString('latin1')})))`,
  );
  t.equal(
    publicKeySexp(x).toString('latin1'),
    `(10:public-key(3:ecc(5:curve4:X448)(1:q56:${x.q.toString('latin1')})))`,
  );
  t.throws(
    () => keygrip({ ...ed, q: ed.q.subarray(0, 56) }),
    /Ed448 public point must be 57 bytes/,
  );
});

t.test('keygrips match gpg for every key type', async (t) => {
  const homes: TempGnupg[] = [];
  t.teardown(() => Promise.all(homes.map((h) => h.cleanup())));
  const home = async () => {
    const h = await makeGnupgHome();
    homes.push(h);
    return h;
  };

  // RSA generation takes seconds, so each RSA key gets its own home and runs alongside the
  // ECC keys, which share one home (and one keyring lock) in sequence.
  const [ecc, rsa2048, rsa3072] = await Promise.all([home(), home(), home()]);
  const eccSpecs: KeySpec[] = [
    {
      uid: 'Ed <ed@example.org>',
      algo: 'ed25519',
      usage: 'sign,cert',
      subkeys: [
        { algo: 'cv25519', usage: 'encr' },
        { algo: 'ed25519', usage: 'sign' },
      ],
    },
    ...(
      [
        'nistp256',
        'nistp384',
        'nistp521',
        'brainpoolP256r1',
        'brainpoolP384r1',
        'brainpoolP512r1',
      ] as const
    ).map((algo): KeySpec => ({
      uid: `${algo} <${algo}@example.org>`,
      algo,
      usage: 'sign',
      subkeys: [{ algo, usage: 'encr' }],
    })),
  ];
  const generateEcc = async () => {
    const out = [];
    for (const spec of eccSpecs) out.push(await generateKey(ecc, spec));
    return out;
  };
  const [eccKeys, rsaA, rsaB] = await Promise.all([
    generateEcc(),
    generateKey(rsa2048, { uid: 'R2 <r2@example.org>', algo: 'rsa2048', usage: 'sign' }),
    generateKey(rsa3072, {
      uid: 'R3 <r3@example.org>',
      algo: 'rsa3072',
      usage: 'sign',
      passphrase: 'correct horse',
    }),
  ]);
  const generated: [TempGnupg, (typeof eccKeys)[number]][] = [
    ...eccKeys.map((k) => [ecc, k] as [TempGnupg, typeof k]),
    [rsa2048, rsaA],
    [rsa3072, rsaB],
  ];

  const seenCurves = new Set<string>();
  const seenAlgos = new Set<number>();
  let compared = 0;
  let readkeys = 0;
  for (const [g, key] of generated) {
    const listing = await listKeygrips(g, key.fingerprint);
    const expected: Expect[] = listing.map((r) => ({
      fingerprint: r.fingerprint,
      keygrip: r.keygrip,
    }));
    for (const r of listing) {
      seenAlgos.add(r.algo);
      if (r.curve) seenCurves.add(`${r.curve}/${r.algo}`);
    }
    t.equal(expected.length, 1 + (key.subkeys.length ?? 0), `${key.algo}: listing covers all keys`);

    const packets = await packetsOf(await exportPublicKey(g, key.fingerprint));
    t.same(
      packets.map((p) => p.fingerprint),
      expected.map((e) => e.fingerprint),
      `${key.algo}: openpgp.js sees the same keys as gpg`,
    );
    for (const [i, p] of packets.entries()) {
      const want = expected[i]!;
      const got = keygrip(p.pk);
      t.equal(
        got,
        want.keygrip,
        `${key.algo} key ${i} (${p.pk.kind === 'ecc' ? p.pk.curve : 'rsa'}) keygrip`,
      );
      compared++;

      // The agent's READKEY must be byte-identical to what the facade would serve.
      const fromAgent = await agentData(g, `READKEY ${want.keygrip}`);
      t.same(publicKeySexp(p.pk), fromAgent, `${key.algo} key ${i} public-key S-exp = READKEY`);
      readkeys++;
      const parsed = parseSexp(fromAgent);
      t.ok(parsed.ok && parsed.end === fromAgent.length, 'READKEY reply parses completely');

      if (p.pk.kind === 'ecc' && p.pk.q[0] === 0x04) {
        // A compressed point must hash like its uncompressed form.
        const nodeName = CURVES[p.pk.curve].nodeName!;
        const compressed = ECDH.convertKey(
          Buffer.from(p.pk.q),
          nodeName,
          undefined,
          undefined,
          'compressed',
        ) as Buffer;
        t.equal(keygrip({ ...p.pk, q: compressed }), want.keygrip, `${key.algo} compressed q`);
      }
      if (parsed.ok && p.pk.kind === 'ecc') {
        t.equal(atomText(findList(parsed.value, 'curve')?.[1]), p.pk.curve);
      }
    }
  }
  t.equal(compared, 2 * 7 + 1 + 2, 'every primary and subkey compared');
  t.equal(readkeys, compared);
  t.same(
    [...seenCurves].sort(),
    [
      'brainpoolP256r1/18',
      'brainpoolP256r1/19',
      'brainpoolP384r1/18',
      'brainpoolP384r1/19',
      'brainpoolP512r1/18',
      'brainpoolP512r1/19',
      'cv25519/18',
      'ed25519/22',
      'nistp256/18',
      'nistp256/19',
      'nistp384/18',
      'nistp384/19',
      'nistp521/18',
      'nistp521/19',
    ],
    'ECDSA and ECDH on every curve, EdDSA and cv25519 ECDH',
  );
  t.same(
    [...seenAlgos].sort((a, b) => a - b),
    [1, 18, 19, 22],
  );
  const bits = (await Promise.all([rsa2048, rsa3072].map((g) => listKeygrips(g))))
    .flat()
    .map((r) => r.bits);
  t.same(bits, [2048, 3072], 'both RSA sizes');
});
