// One pinentry on screen at a time, as gpg-agent does: two dialogs at once would fight over the
// terminal (pinentry-curses) or leave the user unsure which request each one is for.

import { ErrorCode, GpgError } from '../../protocol/gpg-error.js';

/** FIFO lock: gpg-agent shows one pinentry at a time, and so do we (across all instances). */
class PinentryLock {
  private busy = false;
  private readonly waiters: (() => void)[] = [];

  acquire(signal?: AbortSignal): Promise<() => void> {
    const release = (): void => {
      const next = this.waiters.shift();
      if (next) next();
      else this.busy = false;
    };
    if (signal?.aborted) return Promise.reject(new GpgError(ErrorCode.CANCELED));
    if (!this.busy) {
      this.busy = true;
      return Promise.resolve(release);
    }
    return new Promise((resolve, reject) => {
      const waiter = (): void => {
        signal?.removeEventListener('abort', onAbort);
        resolve(release);
      };
      const onAbort = (): void => {
        const i = this.waiters.indexOf(waiter);
        if (i >= 0) this.waiters.splice(i, 1);
        reject(new GpgError(ErrorCode.CANCELED));
      };
      signal?.addEventListener('abort', onAbort, { once: true });
      this.waiters.push(waiter);
    });
  }
}

/** Shared by every Pinentry in the process. */
export const pinentryLock = new PinentryLock();
