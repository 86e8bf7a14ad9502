// Tokens, the holder identity and the token registry: real files, real Ed25519, and a real
// `keytether token revoke` process for revocation across processes.

import t from 'tap';
import fc from 'fast-check';
import { generateKeyPairSync, sign as cryptoSign } from 'node:crypto';
import { execFile } from 'node:child_process';
import { chmod, mkdtemp, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import {
  MAX_TOKEN_CHARS,
  checkTokenSignature,
  encodeToken,
  parseToken,
  tokenSecretHash,
  verifyTokenSignature,
  TokenPayloadSchema,
  type ParsedToken,
  type TokenPayload,
} from '../protocol/token.js';
import { holderIdFromPublicKey } from '../protocol/relay/identity.js';
import { loadOrCreateIdentity, type HolderIdentity } from '../workstation/home/identity.js';
import { TokenRegistry } from '../workstation/tokens/tokens.js';
import { runCli } from './support/cli.js';

const FPR_A = 'A'.repeat(40);
const FPR_A_SUB = 'B'.repeat(40);
const FPR_C = 'C'.repeat(40);
const T0 = Date.UTC(2030, 0, 1);

let scratch: string;
t.before(async () => {
  scratch = await mkdtemp(path.join(tmpdir(), 'kt-token-'));
});
t.teardown(() => rm(scratch, { recursive: true, force: true }));

let homeCount = 0;
async function freshHome(): Promise<string> {
  return path.join(scratch, `home${++homeCount}`);
}

/** An identity that lives only in memory, for "another holder". */
function memoryIdentity(): HolderIdentity {
  const { privateKey, publicKey } = generateKeyPairSync('ed25519');
  const hpk = Buffer.from(publicKey.export({ format: 'jwk' }).x!, 'base64url');
  return { hid: holderIdFromPublicKey(hpk), hpk, sign: (b) => cryptoSign(null, b, privateKey) };
}

function payloadFor(id: HolderIdentity, over: Partial<TokenPayload> = {}): TokenPayload {
  return {
    v: 1,
    relay: 'https://relay.example:7878',
    hid: id.hid,
    hpk: id.hpk.toString('base64url'),
    tid: 'ktt_0123456789abcdef',
    keys: [FPR_A],
    ops: ['sign'],
    iat: 1_900_000_000,
    exp: 1_900_003_600,
    ...over,
  };
}

const b64 = (s: string | Buffer) => Buffer.from(s).toString('base64url');

t.test('holder identity: created once, 0600, stable id', async (t) => {
  const home = await freshHome();
  const a = await loadOrCreateIdentity(home);
  t.match(a.hid, /^kth_[0-9a-f]{32}$/);
  t.equal(a.hpk.length, 32);
  t.equal(a.hid, holderIdFromPublicKey(a.hpk));
  const file = path.join(home, 'identity.key');
  t.equal((await stat(file)).mode & 0o777, 0o600, 'identity.key is 0600');
  t.equal((await stat(home)).mode & 0o777, 0o700, 'home is 0700');
  t.match(await readFile(file, 'utf8'), /^-----BEGIN PRIVATE KEY-----\n/, 'PKCS#8 PEM');
  const b = await loadOrCreateIdentity(home);
  t.equal(b.hid, a.hid, 'same identity on reload');
  t.ok(b.hpk.equals(a.hpk));

  // Two processes starting at once must end up with one identity.
  const home2 = await freshHome();
  const both = await Promise.all([loadOrCreateIdentity(home2), loadOrCreateIdentity(home2)]);
  t.equal(both[0].hid, both[1].hid, 'concurrent first use agrees on one identity');

  await chmod(file, 0o644);
  await t.rejects(loadOrCreateIdentity(home), /accessible by other users.*chmod 600/);
  await chmod(file, 0o600);

  const home3 = await freshHome();
  await loadOrCreateIdentity(home3);
  const rsa = generateKeyPairSync('rsa', { modulusLength: 1024 }).privateKey;
  await writeFile(path.join(home3, 'identity.key'), rsa.export({ type: 'pkcs8', format: 'pem' }), {
    mode: 0o600,
  });
  await t.rejects(loadOrCreateIdentity(home3), /holds a rsa key, not Ed25519/);
});

t.test('token round trip', async (t) => {
  const id = memoryIdentity();
  const secret = Buffer.alloc(32, 7);
  const payload = payloadFor(id, { max: 3, label: 'ci build', ops: ['sign', 'decrypt'] });
  const text = encodeToken(payload, id.sign, secret);
  t.match(text, /^kt1\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]{86}\.[A-Za-z0-9_-]{43}$/);
  const r = parseToken(text);
  if (!r.ok) throw new Error(r.error);
  t.same(r.token.payload, payload);
  t.ok(r.token.secret?.equals(secret));
  t.equal(r.token.publicPart, text.split('.').slice(0, 3).join('.'));
  t.ok(verifyTokenSignature(r.token));

  const pub = parseToken(r.token.publicPart);
  if (!pub.ok) throw new Error(pub.error);
  t.equal(pub.token.secret, undefined, 'the public part has no secret');
  t.ok(verifyTokenSignature(pub.token));
  t.equal(tokenSecretHash(secret), tokenSecretHash(Buffer.from(text.split('.')[3]!, 'base64url')));
});

t.test('malformed tokens are refused with a specific sentence', async (t) => {
  const id = memoryIdentity();
  const secret = Buffer.alloc(32, 9);
  const good = encodeToken(payloadFor(id), id.sign, secret);
  const [, p, s, x] = good.split('.') as [string, string, string, string];
  const withPayload = (obj: unknown) => `kt1.${b64(JSON.stringify(obj))}.${s}.${x}`;
  const base = payloadFor(id);
  const cases: [string, unknown, RegExp][] = [
    ['not text', 42, /not text/],
    ['empty', '', /empty/],
    ['too long', 'kt1.' + 'A'.repeat(MAX_TOKEN_CHARS), /longer than 4096 characters/],
    ['wrong prefix', good.replace(/^kt1/, 'kt2'), /does not start with 'kt1\.'/],
    ['two parts', `kt1.${p}`, /2 dot-separated parts/],
    ['five parts', `${good}.${x}`, /5 dot-separated parts/],
    ['empty payload part', `kt1..${s}.${x}`, /payload part is empty/],
    ['part too long', `kt1.${'A'.repeat(3073)}.${s}`, /payload part is longer than 3072/],
    ['padding', `kt1.${p}=.${s}.${x}`, /payload part is not canonical base64url/],
    [
      'standard base64',
      `kt1.${p}.${s.replace(/[-_]/g, '+')}+.${x}`,
      /signature part is not canonical/,
    ],
    ['short signature', `kt1.${p}.${s.slice(0, 84)}.${x}`, /signature is not 64 bytes/],
    ['short secret', `kt1.${p}.${s}.${x.slice(0, 40)}`, /secret part is not 32 bytes/],
    ['payload not JSON', `kt1.${b64('{nope')}.${s}.${x}`, /not UTF-8 JSON/],
    [
      'payload not UTF-8',
      `kt1.${b64(Buffer.from([0x7b, 0xff, 0x7d]))}.${s}.${x}`,
      /not UTF-8 JSON/,
    ],
    [
      'payload too big',
      withPayload({ ...base, label: 'x'.repeat(1900) }),
      /larger than 2048 bytes/,
    ],
    ['unknown field', withPayload({ ...base, admin: true }), /unknown fields \(admin\)/],
    ['missing field', withPayload({ ...base, tid: undefined }), /field 'tid'/],
    ['bad version', withPayload({ ...base, v: 2 }), /field 'v'/],
    ['bad hid', withPayload({ ...base, hid: 'kth_XYZ' }), /field 'hid'/],
    ['lowercase key', withPayload({ ...base, keys: [FPR_A.toLowerCase()] }), /field 'keys\.0'/],
    ['no keys', withPayload({ ...base, keys: [] }), /field 'keys'/],
    ['unknown op', withPayload({ ...base, ops: ['export'] }), /field 'ops\.0'/],
    ['long label', withPayload({ ...base, label: 'l'.repeat(201) }), /field 'label'/],
    ['label with newline', withPayload({ ...base, label: 'a\nb' }), /field 'label'.*control/],
    ['exp before iat', withPayload({ ...base, exp: base.iat }), /field 'exp'.*later than iat/],
    ['fractional exp', withPayload({ ...base, exp: 1.5e9 + 0.5 }), /field 'exp'/],
    ['array payload', withPayload([base]), /payload is invalid/],
  ];
  const tooMany = Array.from({ length: 65 }, (_, i) =>
    i.toString(16).toUpperCase().padStart(40, '0'),
  );
  t.notOk(TokenPayloadSchema.safeParse({ ...base, keys: tooMany }).success, '65 keys: refused');
  for (const [name, input, re] of cases) {
    const r = parseToken(input);
    t.notOk(r.ok, `${name}: refused`);
    if (!r.ok) {
      t.match(r.error, re, `${name}: ${r.error}`);
      t.notMatch(r.error, /\n/, `${name}: one line`);
      t.notOk(r.error.includes(x), `${name}: secret not echoed`);
    }
  }
});

t.test('forged tokens fail the signature check', async (t) => {
  const me = memoryIdentity();
  const other = memoryIdentity();
  const secret = Buffer.alloc(32, 1);
  const good = encodeToken(payloadFor(me), me.sign, secret);
  const [, , sig, sec] = good.split('.');

  // Claims changed after signing (more keys, longer expiry), old signature kept.
  for (const change of [
    { keys: [FPR_A, FPR_C] },
    { exp: 1_999_999_999 },
    { ops: ['sign', 'decrypt'] },
  ]) {
    const forged = `kt1.${b64(JSON.stringify(payloadFor(me, change as Partial<TokenPayload>)))}.${sig}.${sec}`;
    const r = parseToken(forged);
    if (!r.ok) throw new Error(r.error);
    t.same(
      checkTokenSignature(r.token),
      { ok: false, reason: 'signature' },
      JSON.stringify(change),
    );
  }
  // Our holder id, but another key in hpk and its signature.
  const claimed = parseToken(
    encodeToken(payloadFor(me, { hpk: other.hpk.toString('base64url') }), other.sign, secret),
  );
  if (!claimed.ok) throw new Error(claimed.error);
  t.same(checkTokenSignature(claimed.token), { ok: false, reason: 'holder' });
  // Our hid and hpk, signed by someone else.
  const wrongSigner = parseToken(encodeToken(payloadFor(me), other.sign, secret));
  if (!wrongSigner.ok) throw new Error(wrongSigner.error);
  t.same(checkTokenSignature(wrongSigner.token), { ok: false, reason: 'signature' });
});

t.test(
  'property: random mutations never throw and never pass with a changed public part',
  async () => {
    const me = memoryIdentity();
    const secret = Buffer.alloc(32, 3);
    const good = encodeToken(payloadFor(me, { max: 5, label: 'prop' }), me.sign, secret);
    const goodPublic = good.split('.').slice(0, 3).join('.');
    const secretPart = good.split('.')[3]!;
    const alphabet = 'AZaz09-_.=+/ \n\u00e9{}"';
    const mutation = fc.oneof(
      fc.record({
        kind: fc.constant('replace' as const),
        pos: fc.nat(),
        ch: fc.constantFrom(...alphabet),
      }),
      fc.record({
        kind: fc.constant('insert' as const),
        pos: fc.nat(),
        ch: fc.constantFrom(...alphabet),
      }),
      fc.record({ kind: fc.constant('delete' as const), pos: fc.nat(), ch: fc.constant('') }),
      fc.record({ kind: fc.constant('truncate' as const), pos: fc.nat(), ch: fc.constant('') }),
      fc.record({ kind: fc.constant('bitflip' as const), pos: fc.nat(), ch: fc.constant('') }),
    );
    const apply = (s: string, m: { kind: string; pos: number; ch: string }): string => {
      const i = m.pos % (s.length + 1);
      switch (m.kind) {
        case 'replace':
          return s.slice(0, i) + m.ch + s.slice(i + 1);
        case 'insert':
          return s.slice(0, i) + m.ch + s.slice(i);
        case 'delete':
          return s.slice(0, i) + s.slice(i + 1);
        case 'truncate':
          return s.slice(0, i);
        default: {
          // Flip one bit inside the decoded payload and re-encode it: a well-formed change.
          const parts = s.split('.');
          if (parts.length < 2) return s;
          const bytes = Buffer.from(parts[1]!, 'base64url');
          if (bytes.length === 0) return s;
          bytes[m.pos % bytes.length]! ^= 1 << (m.pos % 8);
          parts[1] = bytes.toString('base64url');
          return parts.join('.');
        }
      }
    };
    fc.assert(
      fc.property(fc.array(mutation, { minLength: 1, maxLength: 4 }), (ms) => {
        const text = ms.reduce(apply, good);
        const r = parseToken(text);
        if (!r.ok) {
          if (r.error.includes(secretPart)) throw new Error('secret echoed');
          return true;
        }
        if (r.token.publicPart !== goodPublic && verifyTokenSignature(r.token)) {
          throw new Error(`accepted a changed public part: ${text}`);
        }
        return true;
      }),
      { numRuns: 3000 },
    );
    fc.assert(
      fc.property(fc.oneof(fc.string({ maxLength: 5000 }), fc.anything()), (v) => {
        const r = parseToken(v);
        return typeof r.ok === 'boolean';
      }),
      { numRuns: 1000 },
    );
  },
);

t.test('registry: the authority matrix', async (t) => {
  const home = await freshHome();
  let now = T0;
  const identity = await loadOrCreateIdentity(home);
  const reg = await TokenRegistry.open(home, { now: () => now });
  const issue = async (
    over: { keys?: string[]; ops?: ('sign' | 'decrypt')[]; maxUses?: number; ttlMs?: number } = {},
  ) => {
    const text = await reg.issue(
      {
        keys: [FPR_A],
        ops: ['sign'],
        ttlMs: 3_600_000,
        relay: 'http://127.0.0.1:7878',
        label: 'matrix',
        ...over,
      },
      identity,
    );
    const r = parseToken(text);
    if (!r.ok) throw new Error(r.error);
    return { text, token: r.token };
  };
  // As the scoped holder does once the holder produced a result.
  const req = async (token: ParsedToken, over: object = {}) => {
    const d = await reg.authorize({
      token,
      fingerprint: FPR_A,
      primaryFingerprint: FPR_A,
      op: 'sign',
      ...over,
    });
    if (d.ok) await d.use.commit();
    return d;
  };

  const { text, token } = await issue();
  t.equal(token.payload.hid, identity.hid);
  t.equal(token.payload.exp - token.payload.iat, 3600);
  t.match(await req(token), { ok: true }, 'allowed');
  const pub = parseToken(token.publicPart);
  if (!pub.ok) throw new Error(pub.error);
  t.match(await req(pub.token), { ok: true }, 'the public part alone is enough');
  t.match(
    await req(token, { fingerprint: FPR_A_SUB }),
    { ok: true },
    'a subkey of a listed primary',
  );

  const key = await req(token, { fingerprint: FPR_C, primaryFingerprint: FPR_C });
  t.match(key, { ok: false, reason: 'key', message: /does not allow key C{40}/ });
  t.match(await req(token, { op: 'decrypt' }), {
    ok: false,
    reason: 'op',
    message: /does not allow decrypt/,
  });

  const secretHash = tokenSecretHash(Buffer.from(text.split('.')[3]!, 'base64url'));
  t.match(await req(token, { secretHash }), { ok: true }, 'right secret');
  t.match(await req(token, { secretHash: tokenSecretHash(Buffer.alloc(32)) }), {
    ok: false,
    reason: 'signature',
  });

  // Only the subkey listed: the primary itself is not allowed.
  const sub = await issue({ keys: [FPR_A_SUB] });
  t.match(await req(sub.token, { fingerprint: FPR_A }), { ok: false, reason: 'key' });

  now = T0 + 3_600_000;
  t.match(await req(token), {
    ok: false,
    reason: 'expired',
    message: /expired at 2030-01-01T01:00:00\.000Z/,
  });
  now = T0;

  // Uses: counted on disk, so a reopened registry (a restarted agent) still refuses.
  const limited = await issue({ maxUses: 2 });
  t.match(await req(limited.token), { ok: true });
  const reopened = await TokenRegistry.open(home, { now: () => now });
  t.match(
    await reopened.authorize({
      token: limited.token,
      fingerprint: FPR_A,
      primaryFingerprint: FPR_A,
      op: 'sign',
    }),
    { ok: true },
  );
  const third = await TokenRegistry.open(home, { now: () => now });
  t.match(
    await third.authorize({
      token: limited.token,
      fingerprint: FPR_A,
      primaryFingerprint: FPR_A,
      op: 'sign',
    }),
    { ok: false, reason: 'uses', message: /all of its 2 operations/ },
  );
  t.match(await req(limited.token), { ok: false, reason: 'uses' });
  const row = (await reg.list()).find((x) => x.id === limited.token.payload.tid);
  t.equal(row?.uses, 2);

  // Concurrent requests on a token with 5 uses: exactly 5 pass.
  const five = await issue({ maxUses: 5 });
  const results = await Promise.all(Array.from({ length: 12 }, () => req(five.token)));
  t.equal(results.filter((r) => r.ok).length, 5, 'no use is handed out twice');

  // Signed by this holder but never recorded: unknown.
  const stray = parseToken(
    encodeToken(
      payloadFor(identity, { tid: 'ktt_ffffffffffffffff' }),
      identity.sign,
      Buffer.alloc(32),
    ),
  );
  if (!stray.ok) throw new Error(stray.error);
  t.match(await req(stray.token), { ok: false, reason: 'unknown' });

  // Another holder's token, and ours with forged claims.
  const other = memoryIdentity();
  const foreign = parseToken(
    encodeToken(payloadFor(other, { tid: token.payload.tid }), other.sign, Buffer.alloc(32)),
  );
  if (!foreign.ok) throw new Error(foreign.error);
  t.match(await req(foreign.token), { ok: false, reason: 'holder', message: /another holder/ });
  const [, , sig] = token.publicPart.split('.');
  const widened = parseToken(
    `kt1.${b64(JSON.stringify({ ...token.payload, ops: ['sign', 'decrypt'] }))}.${sig}`,
  );
  if (!widened.ok) throw new Error(widened.error);
  t.match(await req(widened.token, { op: 'decrypt' }), { ok: false, reason: 'signature' });

  // Revoked from another process (the CLI), noticed by this one on the next request.
  const victim = await issue();
  t.match(await req(victim.token), { ok: true });
  const rv = await runCli(['token', 'revoke', victim.token.payload.tid], {
    env: { KEYTETHER_HOME: home },
  });
  t.equal(rv.code, 0, rv.stderr);
  t.equal(rv.stdout, `revoked ${victim.token.payload.tid}\n`);
  t.match(await req(victim.token), { ok: false, reason: 'revoked', message: /has been revoked/ });
  now = T0 + 10 * 3_600_000;
  t.match(
    await req(victim.token),
    { ok: false, reason: 'revoked' },
    'revoked is checked before expiry',
  );
  now = T0;
  t.equal(await reg.revoke('ktt_0000000000000000'), false);

  // The file: 0600, and never the secret itself.
  const file = path.join(home, 'tokens.json');
  t.equal((await stat(file)).mode & 0o777, 0o600, 'tokens.json is 0600');
  const stored = await readFile(file, 'utf8');
  t.notOk(stored.includes(text.split('.')[3]!), 'the secret part is not stored');
  t.ok(stored.includes(secretHash), 'its hash is');
  await chmod(file, 0o640);
  await t.rejects(TokenRegistry.open(home), /accessible by other users.*chmod 600/);
  await chmod(file, 0o600);
  await writeFile(file, '{"version":1,"tokens":[{"id":"x"}]}', { mode: 0o600 });
  await t.rejects(TokenRegistry.open(home), /not a valid token registry/);
});

/** Replaces FILE with TEXT from another process, the way every keytether writer does: rename. */
function replaceFromOtherProcess(file: string, text: string): Promise<void> {
  const script = `
    const fs = require('node:fs');
    const tmp = process.argv[1] + '.other.tmp';
    fs.writeFileSync(tmp, process.argv[2], { mode: 0o600 });
    fs.renameSync(tmp, process.argv[1]);`;
  return new Promise((resolve, reject) => {
    execFile(process.execPath, ['-e', script, file, text], (err, _out, stderr) =>
      err ? reject(new Error(`writer failed: ${stderr}`)) : resolve(),
    );
  });
}

t.test('registry: changes by other registries and processes reach a long-lived one', async (t) => {
  const home = await freshHome();
  const identity = await loadOrCreateIdentity(home);
  const agent = await TokenRegistry.open(home, { identity });
  const cli = await TokenRegistry.open(home, { identity });
  t.teardown(async () => {
    await agent.close();
    await cli.close();
  });
  const file = path.join(home, 'tokens.json');
  const issue = async (reg: TokenRegistry, maxUses?: number) => {
    const r = parseToken(
      await reg.issue(
        { keys: [FPR_A], ops: ['sign'], ttlMs: 3_600_000, relay: 'http://127.0.0.1:7878', maxUses },
        identity,
      ),
    );
    if (!r.ok) throw new Error(r.error);
    return r.token;
  };
  const ask = async (reg: TokenRegistry, token: ParsedToken) => {
    const d = await reg.authorize({
      token,
      fingerprint: FPR_A,
      primaryFingerprint: FPR_A,
      op: 'sign',
    });
    if (d.ok) await d.use.commit();
    return d;
  };

  // Revoked through a second registry (what `keytether token revoke` opens): the agent's very
  // next request is refused, though the agent has the file cached.
  const a = await issue(agent);
  for (let i = 0; i < 3; i++) t.match(await ask(agent, a), { ok: true });
  t.equal(await cli.revoke(a.payload.tid), true);
  t.match(await ask(agent, a), { ok: false, reason: 'revoked' }, 'revocation seen at once');

  // Issued elsewhere: known to the agent at its next request.
  const b = await issue(cli);
  t.match(await ask(agent, b), { ok: true }, 'a token issued by another registry is known');

  // The file replaced by another process (a restore from backup): re-read.
  const withoutB = JSON.parse(await readFile(file, 'utf8')) as { tokens: { id: string }[] };
  withoutB.tokens = withoutB.tokens.filter((x) => x.id !== b.payload.tid);
  await replaceFromOtherProcess(file, JSON.stringify({ ...withoutB, version: 1 }));
  t.match(await ask(agent, b), { ok: false, reason: 'unknown' }, 'the replaced file is read');

  // Damaged by someone else: refused with a clear reason, no throw; fine again once restored.
  const good = await readFile(file, 'utf8');
  await replaceFromOtherProcess(file, '{"version":1,"tokens":[{"id":');
  const damaged = await ask(agent, a);
  t.match(damaged, {
    ok: false,
    reason: 'registry',
    message: /tokens\.json is not a valid token registry/,
  });
  t.notOk(damaged.ok);
  await replaceFromOtherProcess(file, good);
  t.match(await ask(agent, a), { ok: false, reason: 'revoked' }, 'readable again');
  await chmod(file, 0o644);
  t.match(await ask(agent, a), {
    ok: false,
    reason: 'registry',
    message: /accessible by other users/,
  });
  await chmod(file, 0o600);

  // An unlimited token does not wait for the lock: a `token` command holding it for a while
  // must not stall signing.
  const c = await issue(agent);
  await writeFile(path.join(home, 'tokens.json.lock'), String(process.pid), { mode: 0o600 });
  try {
    t.match(await ask(agent, c), { ok: true }, 'decided without the lock');
  } finally {
    await rm(path.join(home, 'tokens.json.lock'), { force: true });
  }

  // Unlimited uses counted in memory by two registries, merged with the file and with a
  // revocation made in between, lose nothing.
  for (let i = 0; i < 4; i++) await ask(agent, c);
  for (let i = 0; i < 2; i++) await ask(cli, c);
  t.equal(await cli.revoke(c.payload.tid), true);
  // The agent's timer may have started a flush just before (on a loaded machine it does), and
  // that flush may be waiting for a `token` command's lock: the explicit one must wait for it
  // rather than find nothing left and return early.
  await writeFile(path.join(home, 'tokens.json.lock'), String(process.pid), { mode: 0o600 });
  const timers = agent.flushUses();
  const explicit = agent.flushUses();
  await rm(path.join(home, 'tokens.json.lock'), { force: true });
  await explicit;
  await cli.flushUses();
  const row = (await cli.list()).find((x) => x.id === c.payload.tid);
  t.equal(row?.uses, 7, 'every use is on disk after the flushes');
  t.equal(row?.revoked, true, 'the flush kept the revocation');
  await timers;

  // A 5-use token asked for by two registries at once (as two agents would): exactly 5 pass,
  // and the count on disk is 5.
  const five = await issue(agent, 5);
  const results = await Promise.all(
    Array.from({ length: 16 }, (_, i) => ask(i % 2 ? agent : cli, five)),
  );
  t.equal(results.filter((r) => r.ok).length, 5, 'exactly 5 uses across two registries');
  t.ok(
    results.filter((r) => !r.ok).every((r) => !r.ok && r.reason === 'uses'),
    'the rest are refused for uses',
  );
  t.equal((await agent.list()).find((x) => x.id === five.payload.tid)?.uses, 5);
});
