// gpg 2.4's version 5 key packets read by protocol/openpgp/v5-key-packet.ts and the keystore's
// v5-key.ts / v5-secret.ts without gpg: a real export as fixture, then every truncation and random
// damage of it, which must end in a PacketFormatError (one line for the user) and nothing else.

import t from 'tap';
import fc from 'fast-check';
import { ErrorCode, GpgError } from '../protocol/gpg-error.js';
import { PacketFormatError, readPackets } from '../protocol/openpgp/packets.js';
import { parseV5KeyPacket, s2kByteCount } from '../protocol/openpgp/v5-key-packet.js';
import { createUnlockedKey } from '../workstation/crypto/unlocked-key.js';
import {
  PACKET_LIMITS,
  splitKeyExport,
  v5PublicBinary,
  v5SecretMaterial,
} from '../workstation/keystore/v5-key.js';
import { openV5Secret } from '../workstation/keystore/v5-secret.js';

// gpg 2.4.7: `--quick-gen-key 'Ed Four <ed448@example.org>' ed448`, `--quick-add-key … cv448`,
// then `--passwd` set "hunter2" on the subkey only; `--export-secret-keys`. Test key, no use
// elsewhere.
const EXPORT = Buffer.from(
  'lIwFaxbGxRYAAAA/AytlcQHHY6NwMuNB86MhnNukQSisO6v1fXqpcGcz0NTJLqOhTLnuUM1VFGKO' +
    'SwLTGZnfL0P00GUNBkCgUTQAAAAAAAA7AcjbSnv1cZUA8cRt9V4ZGUtG8dbJvsVHtZakP3CIeUQb' +
    'ejLju0F58BYnyIno1yk9DUYLuvYTMyqQKcocnLQbRWQgRm91ciA8ZWQ0NDhAZXhhbXBsZS5vcmc+' +
    'iMcFExYKAEciIQWSP5VFbhA8TVlE4lnzWftAz6CK+EdSKfFgHagQ+bkO/gUCaxbGxQIbAwULCQgH' +
    'AgIiAgYVCgkICwIEFgIDAQIeBwIXgAAAFAEByP8dYz7+u1tkxrgIdN84TPHtjuHTYBpeWGapktA7' +
    'wPqIxQSo7qUjjJRfXZAZ7u37PMhoaEgDFsTlAAHIj5Mj/losPr+vwmwHBm7mOQsKoxs1Huo4QfkU' +
    '2Sw8ZYxX3xWwTNuHBD2sNfNXeL/xwUpiwzYpTzQAnLwFaxbGxRIAAABCAytlbwHA1EFZX7qORmcl' +
    'x4ga0WP0HLrdQFpFprQsWh7AKoSA3R+dclp5KZ0tvmCdBGhbZ5F2NvjklZx+hr4DAQoJ/hwHAwIC' +
    'qy6b5Cs+8P9e1A9w7XCXeqhaNvQ1ZpvYAAAATuAtBSYx8YehJVD6e0M5PUX6zsjCRYR15XpSqDqb' +
    'Zv/3MS3y6gPxo8JY8OnF+H2V4HLBS8jlruQhZIYck+dnt71HO4fTy54dBIidEswDE4isBRgWCgAs' +
    'IiEFkj+VRW4QPE1ZROJZ81n7QM+givhHUinxYB2oEPm5Dv4FAmsWxsUCGwwAAEXLAcUX5lk6zcFC' +
    'v9YT9tvkkeAw7tWWS9nMe6y9GQ5f0qaqF1vlpQYXHbPWWXwHo4gF7It9Z8SAwGZrpgAByNzl42V3' +
    'RT3TaV0cpQl3D9z8DgTz6yItdtkCHqJGkY+/Tru7sCdpob5OUSYjihYs9RRKKBsp3REOAA==',
  'base64',
);
const PRIMARY = '923F95456E103C4D5944E259F359FB40CFA08AF8475229F1601DA810F9B90EFE';

t.test('a gpg 2.4 export: parts, grips, protection', async (t) => {
  const { v5, others } = splitKeyExport(EXPORT);
  t.equal(others.length, 0);
  t.equal(v5.length, 1);
  const key = v5[0]!;
  t.equal(key.fingerprint, PRIMARY);
  t.same(key.uids, ['Ed Four <ed448@example.org>']);
  t.same(
    key.parts.map((p) => [p.algorithm, p.keygrip, p.usage, p.protection, p.secret]),
    [
      ['ed448', '77EC5DAF9EE5A88671534353333C7DA38D27EE81', ['certify', 'sign'], 'C', true],
      ['cv448', 'A8548B477D4495077E4D7DB3B73CC796D23B88FC', ['encrypt'], 'P', true],
    ],
  );
  const sub = key.packets[1]!.secret!;
  t.equal(sub.kind, 'protected');
  if (sub.kind !== 'protected') return;
  t.same([sub.usage, sub.cipher, sub.s2k.type, sub.s2k.hash], [254, 7, 3, 2]);
  t.equal(sub.s2k.count, 65011712, 'count octet 255');
  t.equal(s2kByteCount(96), 65536);

  t.throws(() => openV5Secret(sub, Buffer.from('hunter3')), { code: ErrorCode.BAD_PASSPHRASE });
  t.throws(() => openV5Secret(sub, null), { code: ErrorCode.BAD_PASSPHRASE });
  for (const [i, pass] of [
    [0, null],
    [1, Buffer.from('hunter2')],
  ] as const) {
    const part = key.parts[i]!;
    const m = v5SecretMaterial(key, part, pass);
    t.ok(m, `${part.algorithm} opens`);
    // The crypto layer checks the secret against the public point.
    const unlocked = createUnlockedKey(part.keygrip!, part.algorithm, m!);
    unlocked.destroy();
  }
});

t.test('the certificate has public packets only', async (t) => {
  const key = splitKeyExport(EXPORT).v5[0]!;
  const pub = v5PublicBinary(key);
  const packets = readPackets(pub, PACKET_LIMITS);
  t.same(
    packets.map((p) => p.tag),
    [6, 13, 2, 14, 2],
  );
  const keys = packets
    .filter((p) => p.tag === 6 || p.tag === 14)
    .map((p) => parseV5KeyPacket(p.tag, pub.subarray(p.bodyStart, p.end)));
  t.same(
    keys.map((k) => [k.fingerprint, k.secret]),
    key.packets.map((k) => [k.fingerprint, undefined]),
  );
  t.same(
    splitKeyExport(pub).v5[0]!.parts.map((p) => p.secret),
    [false, false],
  );
});

function outcome(bytes: Uint8Array): string {
  try {
    const { v5 } = splitKeyExport(bytes);
    return v5.length > 0 ? 'parsed' : 'no v5 key';
  } catch (e) {
    if (e instanceof PacketFormatError) return 'refused';
    throw e;
  }
}

t.test('every truncation is refused, never a crash', async (t) => {
  const first = readPackets(EXPORT, PACKET_LIMITS)[0]!;
  for (let n = 1; n < EXPORT.length; n++) {
    const got = outcome(EXPORT.subarray(0, n));
    // Cut at a packet boundary, what is left is a shorter but whole key.
    if (got !== 'refused' && n < first.end) t.fail(`a ${n}-byte prefix was ${got}`);
  }
  t.pass('all prefixes handled');
});

t.test('damaged bytes end in a PacketFormatError or a key', async (t) => {
  fc.assert(
    fc.property(
      fc.array(fc.tuple(fc.nat(EXPORT.length - 1), fc.integer({ min: 0, max: 255 })), {
        minLength: 1,
        maxLength: 8,
      }),
      (edits) => {
        const b = Buffer.from(EXPORT);
        for (const [at, v] of edits) b[at] = v;
        outcome(b);
      },
    ),
    { numRuns: 2000 },
  );
  t.pass('no other exception');
});

t.test('limits: oversize and partial lengths', async (t) => {
  const big = Buffer.concat([Buffer.of(0xc5, 0xff, 0x7f, 0xff, 0xff, 0xff), Buffer.of(5)]);
  t.throws(() => readPackets(big, PACKET_LIMITS), /more than 1048576/);
  t.throws(() => readPackets(Buffer.of(0xc5, 0xe0, 5), PACKET_LIMITS), /partial body length/);
  t.throws(() => readPackets(Buffer.of(0x97, 5), PACKET_LIMITS), /indeterminate length/);
  const body = EXPORT.subarray(2, 2 + EXPORT[1]!);
  const lying = Buffer.from(body);
  lying.writeUInt32BE(0xffffffff, 6);
  t.throws(() => parseV5KeyPacket(5, lying), /announces 4294967295 bytes of key material/);
  t.throws(() => parseV5KeyPacket(5, Buffer.of(4, 0, 0, 0, 0, 22)), /has version 4/);
  const err = t.throws(() => parseV5KeyPacket(5, body.subarray(0, 40))) as unknown;
  t.ok(err instanceof PacketFormatError && err.version === 5, 'marked as a v5 packet');
  t.notOk(err instanceof GpgError);
});
