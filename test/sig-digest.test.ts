// The holder can recompute what gpg hashes for a data signature: for every way gpg signs data
// (detached, --textmode, --clearsign, inline --sign, git's -bsau) and both gpg versions, the
// digest gpg sent through keytether's agent (taken from the holder's audit log) is found from the
// data, the key and the request time alone — and a digest over anything else is not.

import t from 'tap';
import type { ChildProcess } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import {
  canonicalData,
  findDataSignature,
  v4Digest,
  v4HashedSuffix,
} from '../protocol/openpgp/v4-digest.js';
import { exportSecretKey, generateKey, makeGnupgHome, clientHome } from './support/gnupg.js';
import { gpgClients } from './support/gpg-versions.js';
import { runCli, spawnCli, waitForLine } from './support/cli.js';

// The audit log names the hash; SETHASH numbers it.
const HASH_IDS: Record<string, number> = { sha256: 8, sha384: 9, sha512: 10, sha224: 11 };

t.test('canonical text as gpg hashes it', async (t) => {
  const b = (s: string) => canonicalData(Buffer.from(s, 'latin1'), 'text').toString('latin1');
  const c = (s: string) => canonicalData(Buffer.from(s, 'latin1'), 'clearsign').toString('latin1');
  t.equal(b('a\nb\r\nc'), 'a\r\nb\r\nc');
  t.equal(b('a \t\n'), 'a \t\r\n', 'textmode keeps trailing blanks');
  t.equal(c('a \t\nb\r\n'), 'a\r\nb', 'clearsign strips blanks, no final line end');
  t.equal(c('a\n\n'), 'a\r\n');
  t.equal(c(''), '');
  t.equal(canonicalData(Buffer.from('x\r\n'), 'binary').toString(), 'x\r\n');
});

t.test('a v4 header as gpg lays it out', async (t) => {
  const fpr = Buffer.alloc(20, 0xab);
  const s = v4HashedSuffix({
    sigType: 0,
    pubkeyAlgo: 22,
    hashAlgo: 8,
    issuerFingerprint: fpr,
    created: 0x01020304,
    signerUid: 'a@b',
  });
  const hashed = Buffer.concat([
    Buffer.from([22, 33, 4]),
    fpr,
    Buffer.from([5, 2, 1, 2, 3, 4]),
    Buffer.from([4, 28]),
    Buffer.from('a@b'),
  ]);
  t.same(
    s,
    Buffer.concat([
      Buffer.from([4, 0, 22, 8, 0, hashed.length]),
      hashed,
      Buffer.from([4, 0xff, 0, 0, 0, 6 + hashed.length]),
    ]),
  );
});

t.test('what gpg sent is found from data, key and time', async (t) => {
  const ws = await makeGnupgHome();
  t.teardown(() => ws.cleanup());
  const rsa = await generateKey(ws, {
    uid: 'Rita <rita@example.org>',
    algo: 'rsa2048',
    usage: 'sign',
  });
  const ed = await generateKey(ws, { uid: 'Ed <ed@example.org>', algo: 'ed25519', usage: 'sign' });
  const tmp = await mkdtemp('/tmp/ktdigest-');
  t.teardown(() => rm(tmp, { recursive: true, force: true }));
  const home = path.join(tmp, 'home');
  for (const k of [rsa, ed]) {
    const f = path.join(tmp, 'k.gpg');
    await writeFile(f, await exportSecretKey(ws, k.fingerprint), { mode: 0o600 });
    t.equal((await runCli(['keys', 'import', f], { env: { KEYTETHER_HOME: home } })).code, 0);
  }
  const socket = path.join(tmp, 'S.agent');
  const agent: ChildProcess = await spawnCli(['agent', '--socket', socket], {
    env: { KEYTETHER_HOME: home },
  });
  t.teardown(() => agent.kill('SIGKILL'));
  await waitForLine(agent.stdout!, /^ready: /, 30_000);
  const pub = (await ws.gpg(['--batch', '--export'])).stdout;

  const small = Buffer.from('release 1.0\n\ttabbed line  \r\nno final newline \t');
  // Over the size up to which each header is hashed with the data whole (v4-digest.ts): this
  // one is hashed once per mode and each header on a copy of that state.
  const large = Buffer.from('a long line of release notes \t \r\n'.repeat(100) + 'end');
  const files = { small: path.join(tmp, 'small.txt'), large: path.join(tmp, 'large.txt') };
  await writeFile(files.small, small);
  await writeFile(files.large, large);
  const lastSign = async () => {
    const recs = (await readFile(path.join(home, 'audit.jsonl'), 'utf8'))
      .split('\n')
      .filter(Boolean)
      .map((l) => JSON.parse(l) as { op: string; digest: string; hashAlgo: string; time: string });
    return recs.filter((r) => r.op === 'sign').at(-1)!;
  };
  const cases: [string, string[], 'binary' | 'text' | 'clearsign', boolean, 'small' | 'large'][] = [
    ['detached', ['-b'], 'binary', false, 'small'],
    ['--textmode', ['-b', '--textmode'], 'text', false, 'small'],
    ['--clearsign', ['--clearsign'], 'clearsign', false, 'small'],
    ['inline --sign', ['--sign'], 'binary', false, 'small'],
    ["git's -bsau", ['--status-fd=2', '-bsa'], 'binary', true, 'small'],
    ['detached, 3 KiB', ['-b'], 'binary', false, 'large'],
    ['--clearsign, 3 KiB', ['--clearsign'], 'clearsign', false, 'large'],
  ];
  for (const client of gpgClients()) {
    const g = await clientHome(socket, pub, client.gpg);
    t.teardown(() => g.cleanup());
    for (const key of [rsa, ed]) {
      for (const [name, args, mode, byMail, size] of cases) {
        const data = size === 'small' ? small : large;
        const file = files[size];
        for (const by of byMail ? ['mail'] : ['fpr', 'mail']) {
          await t.test(`${client.label} ${key.algo} ${name} -u ${by}`, async (t) => {
            const who = by === 'fpr' ? key.fingerprint : /<(.*)>/.exec(key.uid)![1]!;
            const out = path.join(g.home, `out-${randomBytes(4).toString('hex')}`);
            const r = await g.gpg(['--batch', '--yes', '-u', who, '-o', out, ...args, file]);
            t.equal(r.code, 0, r.stderr);
            const rec = await lastSign();
            const match = findDataSignature({
              data,
              digest: Buffer.from(rec.digest, 'hex'),
              hashAlgo: HASH_IDS[rec.hashAlgo]!,
              pubkeyAlgo: key.algo === 'ed25519' ? 22 : 1,
              issuerFingerprint: Buffer.from(key.fingerprint, 'hex'),
              mailboxes: [/<(.*)>/.exec(key.uid)![1]!],
              around: Math.floor(Date.parse(rec.time) / 1000),
            });
            t.ok(match, `the digest was found (hash ${rec.hashAlgo})`);
            t.equal(match?.mode, mode);
            t.equal(match?.signerUid !== undefined, by === 'mail', 'signer uid only for -u MAIL');
            // 3 modes × 61 seconds × (no uid, one mailbox) × 2 layouts bounds the work per request.
            t.ok((match?.tried ?? 1e9) <= 732, `found after ${match?.tried} headers`);
            const other = findDataSignature({
              data: Buffer.concat([data, Buffer.from('x')]),
              digest: Buffer.from(rec.digest, 'hex'),
              hashAlgo: HASH_IDS[rec.hashAlgo]!,
              pubkeyAlgo: key.algo === 'ed25519' ? 22 : 1,
              issuerFingerprint: Buffer.from(key.fingerprint, 'hex'),
              mailboxes: [/<(.*)>/.exec(key.uid)![1]!],
              around: Math.floor(Date.parse(rec.time) / 1000),
            });
            t.equal(other, undefined, 'other data does not match');
          });
        }
      }
    }
  }
});

t.test('a key certification digest is never a data signature', async (t) => {
  // Type 0x13 over key ‖ uid: the attack the search must not cover, whatever the time.
  const fpr = randomBytes(20);
  const now = Math.floor(Date.now() / 1000);
  const certSuffix = Buffer.from(
    v4HashedSuffix({
      sigType: 0,
      pubkeyAlgo: 22,
      hashAlgo: 8,
      issuerFingerprint: fpr,
      created: now,
    }),
  );
  certSuffix[1] = 0x13;
  const keyAndUid = randomBytes(80);
  const digest = createHash('sha256').update(keyAndUid).update(certSuffix).digest();
  const r = findDataSignature({
    data: keyAndUid,
    digest,
    hashAlgo: 8,
    pubkeyAlgo: 22,
    issuerFingerprint: fpr,
    mailboxes: [],
    around: now,
  });
  t.equal(r, undefined);
  t.equal(
    findDataSignature({
      data: keyAndUid,
      digest: createHash('sha1').update(keyAndUid).digest(),
      hashAlgo: 2,
      pubkeyAlgo: 22,
      issuerFingerprint: fpr,
      mailboxes: [],
      around: now,
    }),
    undefined,
    'SHA-1 is never searched',
  );
  t.ok(
    v4Digest(keyAndUid, 'binary', {
      sigType: 0,
      pubkeyAlgo: 22,
      hashAlgo: 8,
      issuerFingerprint: fpr,
      created: now,
    }).length === 32,
  );
});

t.test('what a server could pass off as a data signature over a shown payload', async (t) => {
  // The same payload and key each time; only what the digest really covers changes.
  const fpr = randomBytes(20);
  const foreign = randomBytes(20);
  const now = Math.floor(Date.now() / 1000);
  const data = randomBytes(200);
  const search = (digest: Buffer) =>
    findDataSignature({
      data,
      digest,
      hashAlgo: 8,
      pubkeyAlgo: 22,
      issuerFingerprint: fpr,
      mailboxes: ['a@example.org'],
      around: now,
      before: 2,
      after: 60,
    });
  const header = (over: Partial<Parameters<typeof v4HashedSuffix>[0]>, sigType?: number) => {
    const suffix = Buffer.from(
      v4HashedSuffix({
        sigType: 0,
        pubkeyAlgo: 22,
        hashAlgo: 8,
        issuerFingerprint: fpr,
        created: now + 5,
        ...over,
      }),
    );
    if (sigType !== undefined) suffix[1] = sigType;
    return createHash('sha256').update(data).update(suffix).digest();
  };
  t.ok(search(header({})), 'the honest data signature is found');
  // Certifications (0x10–0x13), subkey and primary bindings (0x18, 0x19), direct-key (0x1F),
  // revocations (0x20, 0x28, 0x30), timestamp and third-party (0x40, 0x50).
  for (const type of [0x10, 0x11, 0x12, 0x13, 0x18, 0x19, 0x1f, 0x20, 0x28, 0x30, 0x40, 0x50]) {
    t.equal(search(header({}, type)), undefined, `type 0x${type.toString(16)} is not found`);
  }
  t.equal(search(header({ issuerFingerprint: foreign })), undefined, 'a foreign issuer');
  t.equal(search(header({ created: now - 600 })), undefined, 'a time 10 min before');
  t.equal(search(header({ created: now + 600 })), undefined, 'a time 10 min after');
  t.equal(search(header({ signerUid: 'mallory@example.org' })), undefined, 'a uid not on the key');
  t.ok(search(header({ signerUid: 'a@example.org' })), "the key's own uid is");
});
