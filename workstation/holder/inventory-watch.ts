// Watching the holder's inventory for changes a facade must hear about: keys imported or removed,
// a key unlocked or its cache entry expired, another gpg-agent version. Polling makes it work for
// every back end; change events (the key directory, the unlock cache) only make it prompt.

import { createHash } from 'node:crypto';
import { watch, type FSWatcher } from 'node:fs';
import type { Inventory } from '../../protocol/keyholder.js';

/**
 * What a facade sees of an inventory: which keys exist (and for what), whether each is unlocked
 * (KEYINFO's CACHED field, which gpg uses to prefer a key), the real agent's version, and the
 * certificates. Any change here is pushed to every facade.
 */
export function inventoryDigest(inv: Inventory): string {
  const keys = inv.keys
    .map((k) =>
      [
        k.keygrip.toUpperCase(),
        k.fingerprint,
        k.primaryFingerprint,
        k.usage.join(','),
        k.cached ? '1' : '-',
        k.protection ?? '-',
      ].join(':'),
    )
    .sort();
  const certs = inv.certificates
    .map((c) => `${c.fingerprint}:${createHash('sha256').update(c.armored).digest('hex')}`)
    .sort();
  return createHash('sha256')
    .update(JSON.stringify([keys, certs, inv.agentVersion ?? '']))
    .digest('hex');
}

// How soon after a file event in the key directory the inventory is looked at, and when once
// more: the keystore re-reads its directory at most once a second, so a look right after an
// earlier one can miss the change.
const WATCH_DEBOUNCE_MS = 50;
const WATCH_RETRY_MS = 1100;

/**
 * Polls an inventory and reports when its digest changes. Polling is what makes it work
 * everywhere (gpg-agent keys, file systems without change events); a watch on the key directory
 * only makes imports show sooner. Timers are unref'd: watching never keeps the process alive.
 */
export class InventoryWatch {
  readonly #read: () => Promise<Inventory>;
  readonly #changed: () => void;
  readonly #intervalMs: number;
  #digest: string | undefined;
  /**
   * The first read failed, or something changed while it ran: a facade may hold an older or newer
   * inventory than the baseline, so the first digest counts as a change.
   */
  #missedBaseline = false;
  #timer: NodeJS.Timeout | undefined;
  #retry: NodeJS.Timeout | undefined;
  #checking = false;
  #checkAgain = false;
  #stopped = false;
  #fsWatcher: FSWatcher | undefined;

  constructor(o: {
    read: () => Promise<Inventory>;
    changed: () => void;
    intervalMs: number;
    dir?: string;
  }) {
    this.#read = o.read;
    this.#changed = o.changed;
    this.#intervalMs = Math.max(1, o.intervalMs);
    if (o.dir !== undefined) this.#watchDir(o.dir);
    void this.#check();
  }

  stop(): void {
    this.#stopped = true;
    clearTimeout(this.#timer);
    clearTimeout(this.#retry);
    this.#fsWatcher?.close();
    this.#fsWatcher = undefined;
  }

  #watchDir(dir: string): void {
    try {
      const w = watch(dir, { persistent: false }, () => this.soon());
      // A watch that breaks (directory removed, inotify limits) leaves polling in charge.
      w.on('error', () => {
        w.close();
        if (this.#fsWatcher === w) this.#fsWatcher = undefined;
      });
      this.#fsWatcher = w;
    } catch {
      // No change events here; polling alone finds the changes.
    }
  }

  /** Looks again shortly (a file event, an unlock, an expiry) instead of at the next poll. */
  soon(): void {
    if (this.#stopped) return;
    // The baseline read may already include this change while the facade's first push does not.
    if (this.#digest === undefined) this.#missedBaseline = true;
    clearTimeout(this.#timer);
    this.#timer = setTimeout(() => void this.#check(), WATCH_DEBOUNCE_MS);
    this.#timer.unref();
    if (!this.#retry) {
      this.#retry = setTimeout(() => {
        this.#retry = undefined;
        void this.#check();
      }, WATCH_RETRY_MS);
      this.#retry.unref();
    }
  }

  async #check(): Promise<void> {
    if (this.#stopped) return;
    if (this.#checking) {
      this.#checkAgain = true;
      return;
    }
    this.#checking = true;
    clearTimeout(this.#timer);
    try {
      do {
        this.#checkAgain = false;
        let digest: string;
        try {
          digest = inventoryDigest(await this.#read());
        } catch {
          // A key file half-written or unreadable, an agent restarting: skip this look, keep
          // the last known inventory, and try again at the next one.
          if (this.#digest === undefined) this.#missedBaseline = true;
          continue;
        }
        if (this.#stopped) return;
        const before = this.#digest;
        this.#digest = digest;
        if (before === undefined ? this.#missedBaseline : before !== digest) {
          this.#missedBaseline = false;
          this.#changed();
        }
      } while (this.#checkAgain && !this.#stopped);
    } finally {
      this.#checking = false;
      if (!this.#stopped) {
        clearTimeout(this.#timer);
        this.#timer = setTimeout(() => void this.#check(), this.#intervalMs);
        this.#timer.unref();
      }
    }
  }
}
