// KEYINFO's CACHED field on a server follows the workstation's unlock cache: an unlock, a forget
// and an expiry are each pushed to the facade at once (no poll interval to wait for), and stock
// gpg-connect-agent reads the new flag from the facade's socket. Real Holder, real tunnel over a
// unix socket, real facade.

import t, { type Test } from 'tap';
import { randomBytes } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import path from 'node:path';
import type { Inventory } from '../protocol/keyholder.js';
import type { TunnelClient } from '../protocol/tunnel/index.js';
import { startFacade } from '../server/facade.js';
import { DEFAULT_CONFIG, type Config } from '../workstation/home/config.js';
import { openHolderRuntime, type HolderRuntime } from '../workstation/holder/runtime.js';
import { exportSecretKey, generateKey, makeGnupgHome } from './support/gnupg.js';
import { ALLOW_BLIND_RULE } from './support/blind-signing.js';
import { tunnelTo } from './support/socket-pair.js';

const SOFTWARE = 'keytether/test';
// A bound for a failing run, not a pace: the pushes come from the cache's change events.
const PUSH_WITHIN_MS = 10_000;

/** Every inventory the facade receives, and a way to wait for one that matches. */
function recordPushes(client: TunnelClient) {
  const seen: Inventory[] = [];
  const waiters: { pred: (i: Inventory) => boolean; resolve: (i: Inventory) => void }[] = [];
  client.on('inventory', (inv) => {
    seen.push(inv);
    for (const w of [...waiters]) {
      if (w.pred(inv)) {
        waiters.splice(waiters.indexOf(w), 1);
        w.resolve(inv);
      }
    }
  });
  return {
    seen,
    next(what: string, pred: (i: Inventory) => boolean): Promise<Inventory> {
      return new Promise((resolve, reject) => {
        const timer = setTimeout(
          () => reject(new Error(`no push within ${PUSH_WITHIN_MS} ms: ${what}`)),
          PUSH_WITHIN_MS,
        );
        waiters.push({
          pred,
          resolve: (i) => {
            clearTimeout(timer);
            resolve(i);
          },
        });
      });
    },
  };
}

async function setUp(t: Test, cache: Partial<Config>) {
  const ws = await makeGnupgHome();
  t.teardown(() => ws.cleanup());
  const key = await generateKey(ws, { uid: 'K <k@example.org>', algo: 'ed25519', usage: 'sign' });
  const tmp = await mkdtemp('/tmp/ktcache-');
  t.teardown(() => rm(tmp, { recursive: true, force: true }));
  const config: Config = {
    ...DEFAULT_CONFIG,
    relay: [],
    policy: [ALLOW_BLIND_RULE],
    backend: 'builtin',
    ...cache,
  };
  const rt: HolderRuntime = await openHolderRuntime(path.join(tmp, 'home'), config);
  t.teardown(() => rt.close());
  await rt.keystore.importKeys(await exportSecretKey(ws, key.fingerprint));
  const tunnel = await tunnelTo(t, rt.holder, tmp, SOFTWARE);
  const pushes = recordPushes(tunnel);
  await tunnel.ready;
  const facade = await startFacade({ socketPath: path.join(tmp, 'S.facade'), holder: tunnel });
  t.teardown(() => facade.close());
  const keyinfo = async () => {
    const r = await ws.run('gpg-connect-agent', [
      '--no-autostart',
      '-S',
      facade.socketPath,
      `KEYINFO ${key.keygrip}`,
      '/bye',
    ]);
    return r.stdout.toString().split('\n')[0];
  };
  const unlock = () =>
    rt.holder.sign({
      keygrip: key.keygrip,
      hashAlgo: 8,
      digest: randomBytes(32),
      requester: { front: 'local' },
    });
  const cached = (i: Inventory) => i.keys.find((k) => k.keygrip === key.keygrip)?.cached === true;
  return { rt, key, keyinfo, unlock, pushes, cached };
}

t.test('unlocking and forgetting a key change KEYINFO on the server', async (t) => {
  const s = await setUp(t, {});
  const line = (c: string) => `S KEYINFO ${s.key.keygrip} D - - ${c} C - - -`;
  t.equal(await s.keyinfo(), line('-'), 'not unlocked yet');

  const unlocked = s.pushes.next('the unlock', s.cached);
  await s.unlock();
  await unlocked;
  t.equal(await s.keyinfo(), line('1'), 'the unlock is seen on the server');

  const forgotten = s.pushes.next('the forget', (i) => !s.cached(i));
  s.rt.cache.clear();
  await forgotten;
  t.equal(await s.keyinfo(), line('-'), 'so is the forget');
});

t.test('a cache entry that expires is pushed as no longer cached', async (t) => {
  const s = await setUp(t, { defaultCacheTtlMs: 300, maxCacheTtlMs: 300 });
  // Both pushes are awaited from before the unlock: the expiry may follow the unlock quickly.
  const unlocked = s.pushes.next('the unlock', s.cached);
  const expired = unlocked.then(() => s.pushes.next('the expiry', (i) => !s.cached(i)));
  await s.unlock();
  await unlocked;
  await expired;
  t.equal(s.rt.cache.size, 0, 'the holder forgot it');
  t.match(await s.keyinfo(), / D - - - C - - -$/, 'and the server says so');
});
