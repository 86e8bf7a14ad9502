import t from 'tap';
import { UnlockCache } from '../workstation/holder/unlock-cache.js';

const A = 'A'.repeat(40);
const B = 'B'.repeat(40);

/** Stands in for an unlocked key: a secret buffer that destroy() zeroes. */
class FakeKey {
  readonly secret = Buffer.from('very secret key material');
  destroyed = 0;
  destroy(): void {
    this.secret.fill(0);
    this.destroyed++;
  }
  get wiped(): boolean {
    return this.secret.every((b) => b === 0);
  }
}

function clock(start = 1_000_000) {
  const c = { now: start, fn: () => c.now };
  return c;
}

t.test('idle TTL is refreshed by each use', async (t) => {
  const c = clock();
  const cache = new UnlockCache<FakeKey>({ defaultTtlMs: 600_000, maxTtlMs: 7_200_000, now: c.fn });
  t.teardown(() => cache.clear());
  const k = new FakeKey();
  cache.put(A, k);
  t.same(cache.entries(), [{ keygrip: A, expiresInMs: 600_000 }]);
  for (let i = 0; i < 5; i++) {
    c.now += 599_000;
    t.equal(cache.get(A), k, `still cached after ${i + 1} idle periods just under the TTL`);
  }
  t.same(cache.entries(), [{ keygrip: A, expiresInMs: 600_000 }], 'a get restarts the idle clock');
  c.now += 600_000;
  t.equal(cache.get(A), undefined, 'gone after a full idle TTL');
  t.equal(k.destroyed, 1);
  t.ok(k.wiped, 'the secret was zeroed');
});

t.test('max TTL caps the lifetime however often the key is used', async (t) => {
  const c = clock();
  const cache = new UnlockCache<FakeKey>({ defaultTtlMs: 600_000, maxTtlMs: 1_800_000, now: c.fn });
  t.teardown(() => cache.clear());
  const k = new FakeKey();
  cache.put(A, k);
  // Walk in steps shorter than the idle TTL so only the max TTL can end it.
  c.now = 1_000_000 + 500_000;
  t.equal(cache.get(A), k);
  c.now = 1_000_000 + 1_000_000;
  t.equal(cache.get(A), k);
  c.now = 1_000_000 + 1_500_000;
  t.equal(cache.get(A), k);
  t.same(cache.entries(), [{ keygrip: A, expiresInMs: 300_000 }], 'remaining time is the max cap');
  c.now = 1_000_000 + 1_800_000;
  t.equal(cache.get(A), undefined, 'gone at max-cache-ttl');
  t.equal(k.destroyed, 1);
});

t.test('entries() and sweep() destroy expired values without a get', async (t) => {
  const c = clock();
  const cache = new UnlockCache<FakeKey>({ defaultTtlMs: 1000, maxTtlMs: 10_000, now: c.fn });
  t.teardown(() => cache.clear());
  const a = new FakeKey();
  const b = new FakeKey();
  cache.put(A, a);
  c.now += 500;
  cache.put(B, b);
  c.now += 600;
  t.same(cache.entries(), [{ keygrip: B, expiresInMs: 400 }]);
  t.equal(a.destroyed, 1);
  t.equal(b.destroyed, 0);
  c.now += 400;
  cache.sweep();
  t.equal(b.destroyed, 1);
  t.equal(cache.size, 0);
});

t.test('clear, delete and replacing destroy values exactly once', async (t) => {
  const c = clock();
  const cache = new UnlockCache<FakeKey>({ defaultTtlMs: 1000, maxTtlMs: 10_000, now: c.fn });
  const a = new FakeKey();
  const a2 = new FakeKey();
  const b = new FakeKey();
  cache.put(A, a);
  cache.put(A, a2);
  t.equal(a.destroyed, 1, 'replaced value destroyed');
  cache.put(A, a2);
  t.equal(a2.destroyed, 0, 'putting the same value again keeps it');
  cache.put(B, b);
  t.ok(cache.delete(B));
  t.notOk(cache.delete(B));
  t.equal(b.destroyed, 1);
  t.equal(cache.get(A.toLowerCase()), a2, 'keygrips are case-insensitive');
  cache.clear();
  t.equal(a2.destroyed, 1);
  t.ok(a2.wiped);
  t.same(cache.entries(), []);
  cache.clear();
  t.equal(a2.destroyed, 1, 'no double destroy');
});

t.test('a TTL of 0 caches nothing (gpg-agent semantics)', async (t) => {
  const cache = new UnlockCache<FakeKey>({ defaultTtlMs: 0, maxTtlMs: 7_200_000 });
  const k = new FakeKey();
  cache.put(A, k);
  t.equal(cache.get(A), undefined);
  t.equal(k.destroyed, 1);
});

t.test('a destroy() that throws does not keep others cached', async (t) => {
  const c = clock();
  const cache = new UnlockCache<{ destroy(): void }>({
    defaultTtlMs: 10,
    maxTtlMs: 100,
    now: c.fn,
  });
  const good = new FakeKey();
  cache.put(A, {
    destroy() {
      throw new Error('boom');
    },
  });
  cache.put(B, good);
  t.doesNotThrow(() => cache.clear());
  t.equal(good.destroyed, 1);
});

t.test(
  'the expiry timer destroys values on real time, and does not hold the process',
  async (t) => {
    const cache = new UnlockCache<FakeKey>({ defaultTtlMs: 20, maxTtlMs: 1000 });
    const k = new FakeKey();
    // Wait on the event itself (destroy), not on a sleep.
    const destroyed = new Promise<void>((resolve) => {
      const orig = k.destroy.bind(k);
      k.destroy = () => {
        orig();
        resolve();
      };
    });
    // The timer is unref'd; keep the event loop alive while this test waits for it.
    const keepAlive = setInterval(() => {}, 1000);
    cache.put(A, k);
    await destroyed;
    clearInterval(keepAlive);
    t.equal(k.destroyed, 1);
    t.ok(k.wiped);
    t.same(cache.entries(), []);
  },
);
