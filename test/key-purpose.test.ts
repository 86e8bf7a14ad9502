// Key purpose at the holder (security review #18.1): a primary whose flags say certify-only signs
// for the workstation's own gpg (that is how gpg certifies) but never for a remote, whatever the
// policy says; its signing subkey does. A real key from gpg, the real keystore and holder.

import t from 'tap';
import { createHash } from 'node:crypto';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { ErrorCode } from '../protocol/gpg-error.js';
import type { Requester } from '../protocol/keyholder.js';
import { AuditLog } from '../workstation/audit/audit.js';
import { Holder } from '../workstation/holder/holder.js';
import { UnlockCache } from '../workstation/holder/unlock-cache.js';
import { Keystore } from '../workstation/keystore/index.js';
import { ApprovalMemory } from '../workstation/policy/approvals.js';
import type { UnlockedKey } from '../workstation/crypto/index.js';
import { exportSecretKey, generateKey, makeGnupgHome } from './support/gnupg.js';

t.test('a certify-only primary never signs for a remote', async (t) => {
  const g = await makeGnupgHome();
  t.teardown(() => g.cleanup());
  const key = await generateKey(g, {
    uid: 'Cert Only <cert@example.org>',
    algo: 'ed25519',
    usage: 'cert',
    subkeys: [{ algo: 'ed25519', usage: 'sign' }],
  });
  t.equal(key.usage, 'c', 'gpg made a [C] primary');
  const dir = await mkdtemp(path.join(tmpdir(), 'kt-purpose-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  const ks = await Keystore.open(dir);
  await ks.importKeys(await exportSecretKey(g, key.fingerprint));
  const auditFile = path.join(dir, 'audit.jsonl');
  const audit = await AuditLog.open(auditFile);
  t.teardown(() => audit.close());
  const holder = new Holder({
    keystore: ks,
    // The most permissive policy there is: blind signing on, everything allowed.
    policy: [{ action: 'allow', clearSign: 'off' }],
    pinentry: {
      getPassphrase: async () => Buffer.from(''),
      confirm: async () => true,
    },
    audit,
    cache: new UnlockCache<UnlockedKey>({ defaultTtlMs: 0, maxTtlMs: 0 }),
    approvals: new ApprovalMemory(),
  });
  const digest = createHash('sha256').update('a key certification, perhaps').digest();
  const sign = (keygrip: string, requester: Requester) =>
    holder.sign({ keygrip, hashAlgo: 8, digest, requester });

  for (const front of ['ssh', 'relay'] as const) {
    await t.rejects(
      sign(key.keygrip, { front, host: 'build.example' }),
      { name: 'GpgError', code: ErrorCode.NO_SECKEY },
      `${front}: gpg hears "No secret key", as for a key the agent does not have`,
    );
  }
  const last = JSON.parse((await readFile(auditFile, 'utf8')).trim().split('\n').at(-1)!) as {
    decision: string;
    reason: string;
  };
  t.match(last, { decision: 'failed', reason: /certify-only: it signs nothing for a remote/ });

  const sub = key.subkeys[0]!;
  const bySub = Buffer.from(await sign(sub.keygrip, { front: 'relay', host: 'build.example' }));
  t.match(bySub.toString('latin1'), /^\(7:sig-val\(5:eddsa/, 'the signing subkey signs');
  const local = Buffer.from(await sign(key.keygrip, { front: 'local' }));
  t.match(local.toString('latin1'), /^\(7:sig-val\(5:eddsa/, 'the workstation itself certifies');
});
