// A token the registry no longer admits (revoked, expired) sees no keys, even when its facade
// proves the right secret: the sealed-channel check refuses the stream with the reason, and a
// stream opened before the revocation is pushed an empty inventory. Real registry file in a
// throwaway home, real token-scoped holder.

import t from 'tap';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { parseToken, tokenSecretHash } from '../protocol/token.js';
import { loadOrCreateIdentity } from '../workstation/home/identity.js';
import { tokenScopedHolder } from '../workstation/tokens/scoped-holder.js';
import { TokenRegistry, WRONG_SECRET } from '../workstation/tokens/tokens.js';
import { SimpleHolder } from './support/simple-holder.js';

t.test('revoked or expired tokens are refused before any key is listed', async (t) => {
  const home = await mkdtemp(path.join(tmpdir(), 'kt-standing-'));
  t.teardown(() => rm(home, { recursive: true, force: true }));
  const identity = await loadOrCreateIdentity(home);
  const registry = await TokenRegistry.open(home, { identity });
  t.teardown(() => registry.close());
  const holder = new SimpleHolder();
  const fpr = holder.signKey.entry.fingerprint;
  const text = await registry.issue(
    { keys: [fpr], ops: ['sign'], ttlMs: 3_600_000, relay: 'http://127.0.0.1:7878' },
    identity,
  );
  const parsed = parseToken(text);
  if (!parsed.ok || !parsed.token.secret) throw new Error('issued token does not parse');
  const token = parsed.token;
  const tid = token.payload.tid;
  const hash = tokenSecretHash(token.secret!);

  t.same(await registry.admits(tid, hash), { ok: true }, 'a good token is admitted');
  t.same(
    await registry.admits(tid, tokenSecretHash(Buffer.alloc(32, 1))),
    { ok: false, reason: WRONG_SECRET },
    'a wrong secret is refused as before',
  );
  t.same(
    await registry.admits(tid, hash, token.payload.exp * 1000),
    { ok: false, reason: `token ${tid} has expired` },
    'so is an expired token',
  );

  const audit = { append: async () => {} };
  const scoped = tokenScopedHolder(holder, token, registry, audit, undefined, hash, () =>
    registry.admits(tid, hash),
  );
  t.same(
    (await scoped.inventory()).keys.map((k) => k.primaryFingerprint),
    [fpr, fpr],
    'its key (and subkey) is listed while the token is good',
  );

  t.ok(await registry.revoke(tid));
  t.same(
    await registry.admits(tid, hash),
    { ok: false, reason: `token ${tid} has been revoked` },
    'the right secret no longer opens a stream once revoked',
  );
  t.same(await scoped.inventory(), { keys: [], certificates: [] }, 'and lists nothing');
});
