// The builtin back end: OpenPGP secret keys kept by keytether. Opening a key unlocks it (cache
// first, else keytether's pinentry), and the raw operation runs in this process.

import type { Inventory, KeyEntry } from '../../protocol/keyholder.js';
import type { UnlockedKey } from '../crypto/index.js';
import type { Keystore } from '../keystore/index.js';
import type { PassphraseAsker } from '../pinentry/pinentry.js';
import { askUntilUnlocked } from '../pinentry/pinentry.js';
import type { UnlockCache } from '../holder/unlock-cache.js';
import { noPromptError, type Backend, type KeyOperator, type OpenContext } from './backend.js';
import { requesterPrefixedText } from './requester-text.js';

export interface BuiltinBackendDeps {
  keystore: Keystore;
  pinentry: PassphraseAsker;
  cache: UnlockCache<UnlockedKey>;
}

export class BuiltinBackend implements Backend {
  readonly name = 'builtin';
  readonly #d: BuiltinBackendDeps;
  /** Unlocks of one key are serialised so that two waiting gpg calls ask the pinentry once. */
  readonly #unlocking = new Map<string, Unlocking>();

  constructor(deps: BuiltinBackendDeps) {
    this.#d = deps;
  }

  async inventory(): Promise<Inventory> {
    // Keys imported by `keytether keys import` while the agent runs become usable without a restart.
    await this.#d.keystore.refreshIfChanged();
    const inv = this.#d.keystore.inventory();
    const cached = new Set(this.#d.cache.entries().map((e) => e.keygrip));
    return {
      certificates: inv.certificates,
      keys: inv.keys.map((k) => ({ ...k, cached: cached.has(k.keygrip) })),
    };
  }

  async open(entry: KeyEntry, ctx: OpenContext): Promise<KeyOperator> {
    const hit = this.#d.cache.get(entry.keygrip);
    if (hit) return this.#lease(hit);
    let u = this.#unlocking.get(entry.keygrip);
    if (!u) {
      const fresh: Unlocking = { promise: undefined!, waiters: 0 };
      fresh.promise = this.#unlock(entry, ctx).then((key) => {
        // Held until every waiter has its own pin: the cache may destroy the key at once (a TTL
        // of 0) or at any later expiry.
        fresh.release = this.#d.cache.pin(key);
        this.#d.cache.put(entry.keygrip, key);
        return key;
      });
      this.#unlocking.set(entry.keygrip, fresh);
      u = fresh;
    }
    u.waiters++;
    try {
      return this.#lease(await u.promise);
    } finally {
      if (--u.waiters === 0) {
        u.release?.();
        if (this.#unlocking.get(entry.keygrip) === u) this.#unlocking.delete(entry.keygrip);
      }
    }
  }

  async #unlock(entry: KeyEntry, ctx: OpenContext): Promise<UnlockedKey> {
    const ks = this.#d.keystore;
    const locked = ks.isProtected(entry.keygrip);
    if (locked && ctx.pinentryMode) throw noPromptError(ctx.pinentryMode, 'unlocking the key');
    return locked
      ? await askUntilUnlocked(
          this.#d.pinentry,
          {
            keygrip: entry.keygrip,
            description: requesterPrefixedText(
              ctx.requester,
              ctx.description,
              entry.fingerprint.startsWith('SHA256:')
                ? `Please enter the passphrase to unlock the SSH key\n${entry.fingerprint}`
                : `Please enter the passphrase to unlock the key\n${entry.fingerprint}`,
            ),
          },
          (pass) => ks.unlock(entry.keygrip, pass),
          3,
          ctx.signal,
        )
      : await ks.unlock(entry.keygrip, null);
  }

  /** The key, pinned in the cache until the holder releases it after its one operation. */
  #lease(key: UnlockedKey): KeyOperator {
    return {
      sign: (hashAlgo, digest) => key.sign(hashAlgo, digest),
      ...(key.signMessage ? { signMessage: (data: Uint8Array) => key.signMessage!(data) } : {}),
      decrypt: (encVal) => key.decrypt(encVal),
      release: this.#d.cache.pin(key),
    };
  }
}

interface Unlocking {
  promise: Promise<UnlockedKey>;
  waiters: number;
  release?: () => void;
}
