// Unlocked keys, kept with gpg-agent's two clocks: `default-cache-ttl` is an idle timeout that
// every use restarts, `max-cache-ttl` an absolute limit counted from the put. Whatever falls out
// is destroyed (its secret bytes zeroed) at once, not left for the garbage collector — unless an
// operation has it pinned, in which case it is destroyed when the last pin is released.

export interface UnlockCacheOptions {
  defaultTtlMs: number;
  maxTtlMs: number;
  /** Injected clock for tests; timers still run on real time but re-check against it. */
  now?: () => number;
}

interface Slot<T> {
  value: T;
  putAt: number;
  usedAt: number;
  timer: NodeJS.Timeout | undefined;
}

// setTimeout overflows above 2^31-1 ms; longer waits are re-armed when the timer fires.
const MAX_TIMER_MS = 2_147_483_647;

export class UnlockCache<T extends { destroy(): void }> {
  readonly #defaultTtlMs: number;
  readonly #maxTtlMs: number;
  readonly #now: () => number;
  readonly #slots = new Map<string, Slot<T>>();
  readonly #pins = new Map<T, number>();
  readonly #doomed = new Set<T>();
  readonly #listeners = new Set<() => void>();

  constructor(opts: UnlockCacheOptions) {
    this.#defaultTtlMs = Math.max(0, opts.defaultTtlMs);
    this.#maxTtlMs = Math.max(0, opts.maxTtlMs);
    this.#now = opts.now ?? Date.now;
  }

  /**
   * Calls LISTENER after a key enters or leaves the cache (unlock, expiry, replacement, clear):
   * servers show the unlock state in KEYINFO. Returns the unsubscribe function.
   */
  onChange(listener: () => void): () => void {
    const sub = () => listener();
    this.#listeners.add(sub);
    return () => void this.#listeners.delete(sub);
  }

  #changed(): void {
    for (const fn of [...this.#listeners]) {
      try {
        fn();
      } catch {
        // A listener's bug must not break caching.
      }
    }
  }

  /** The cached value, or undefined; a hit restarts the idle timeout. */
  get(keygrip: string): T | undefined {
    const key = keygrip.toUpperCase();
    const slot = this.#slots.get(key);
    if (!slot) return undefined;
    const now = this.#now();
    if (now >= this.#expiresAt(slot)) {
      this.#evict(key, slot);
      return undefined;
    }
    slot.usedAt = now;
    this.#arm(key, slot);
    return slot.value;
  }

  /** Caches `value`, replacing (and destroying) any other value for the key. A TTL of 0 caches nothing. */
  put(keygrip: string, value: T): void {
    const key = keygrip.toUpperCase();
    const old = this.#slots.get(key);
    if (old) {
      clearTimeout(old.timer);
      this.#slots.delete(key);
      if (old.value !== value) this.#destroy(old.value);
    }
    if (this.#defaultTtlMs === 0 || this.#maxTtlMs === 0) {
      this.#destroy(value);
      if (old) this.#changed();
      return;
    }
    const now = this.#now();
    const slot: Slot<T> = { value, putAt: now, usedAt: now, timer: undefined };
    this.#slots.set(key, slot);
    this.#arm(key, slot);
    if (!old) this.#changed();
  }

  /**
   * Keeps VALUE alive while an operation uses it: eviction (expiry, replacement, a TTL of 0)
   * destroys it only once every pin is released. The returned release is idempotent.
   */
  pin(value: T): () => void {
    this.#pins.set(value, (this.#pins.get(value) ?? 0) + 1);
    let released = false;
    return () => {
      if (released) return;
      released = true;
      const n = (this.#pins.get(value) ?? 1) - 1;
      if (n > 0) {
        this.#pins.set(value, n);
        return;
      }
      this.#pins.delete(value);
      if (this.#doomed.delete(value)) safeDestroy(value);
    };
  }

  has(keygrip: string): boolean {
    return this.entries().some((e) => e.keygrip === keygrip.toUpperCase());
  }

  delete(keygrip: string): boolean {
    const key = keygrip.toUpperCase();
    const slot = this.#slots.get(key);
    if (!slot) return false;
    this.#evict(key, slot);
    return true;
  }

  clear(): void {
    for (const [key, slot] of [...this.#slots]) this.#evict(key, slot);
  }

  /** Drops whatever has expired by now; `entries()` and `get()` do this too. */
  sweep(): void {
    const now = this.#now();
    for (const [key, slot] of [...this.#slots]) {
      if (now >= this.#expiresAt(slot)) this.#evict(key, slot);
    }
  }

  /** Live entries and the time until each is forgotten (for `keytether status`). */
  entries(): { keygrip: string; expiresInMs: number }[] {
    this.sweep();
    const now = this.#now();
    return [...this.#slots].map(([keygrip, slot]) => ({
      keygrip,
      expiresInMs: this.#expiresAt(slot) - now,
    }));
  }

  get size(): number {
    this.sweep();
    return this.#slots.size;
  }

  #expiresAt(slot: Slot<T>): number {
    return Math.min(slot.usedAt + this.#defaultTtlMs, slot.putAt + this.#maxTtlMs);
  }

  #arm(key: string, slot: Slot<T>): void {
    clearTimeout(slot.timer);
    const wait = Math.min(Math.max(0, this.#expiresAt(slot) - this.#now()), MAX_TIMER_MS);
    slot.timer = setTimeout(() => {
      if (this.#slots.get(key) !== slot) return;
      if (this.#now() >= this.#expiresAt(slot)) this.#evict(key, slot);
      else this.#arm(key, slot);
    }, wait);
    // A cached key must not keep the process alive.
    slot.timer.unref();
  }

  #evict(key: string, slot: Slot<T>): void {
    clearTimeout(slot.timer);
    const held = this.#slots.get(key) === slot;
    if (held) this.#slots.delete(key);
    this.#destroy(slot.value);
    if (held) this.#changed();
  }

  #destroy(value: T): void {
    if (this.#pins.has(value)) this.#doomed.add(value);
    else safeDestroy(value);
  }
}

function safeDestroy(value: { destroy(): void }): void {
  try {
    value.destroy();
  } catch {
    // One value failing to wipe itself must not keep the others alive in the cache.
  }
}
