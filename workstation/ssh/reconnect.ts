// keytether ssh --reconnect: once a session has been up, every ending that is not the user's
// Ctrl-C is a dropped link to be re-made. Attempts back off (250 ms doubling to 30 s, ±20 %
// jitter so many workstations cut by one outage do not return in lockstep) and start from the
// bottom again after a session was up, so a short blip is bridged in well under a second.
//
// The server's socket path stays the same across links without any state here: each link runs
// `serve --stdio --linger`, and the facade of a dropped link keeps the socket (answering "No
// agent running") until the next link's facade attaches its holder to it (server/serve-stdio.ts).

import { setTimeout as sleep } from 'node:timers/promises';
import { UserError } from '../../system/user-error.js';

export interface Backoff {
  /** The wait before the next attempt, in ms. */
  next(): number;
  reset(): void;
}

export function backoff(
  opts: { initialMs?: number; capMs?: number; jitter?: number; random?: () => number } = {},
): Backoff {
  const initial = opts.initialMs ?? 250;
  const cap = opts.capMs ?? 30_000;
  const jitter = opts.jitter ?? 0.2;
  const random = opts.random ?? Math.random;
  let base = initial;
  return {
    next() {
      const ms = Math.round(base * (1 + jitter * (2 * random() - 1)));
      base = Math.min(cap, base * 2);
      return Math.min(cap, Math.max(0, ms));
    },
    reset() {
      base = initial;
    },
  };
}

export interface LinkedOptions {
  /** One connection and session; resolves when stopped on purpose, rejects with why otherwise. */
  once: () => Promise<unknown>;
  /** How many times a session came up so far (the server said `ready:`). */
  readyCount: () => number;
  signal: AbortSignal;
  onNotice: (line: string) => void;
  delays?: Backoff;
}

function seconds(ms: number): string {
  return `${(ms / 1000).toFixed(ms < 10_000 ? 1 : 0)}s`;
}

/**
 * Runs sessions until one is stopped on purpose. A failure before any session was up is the
 * caller's (a wrong host or key should be said at once, not retried forever).
 */
export async function keepLinked(opts: LinkedOptions): Promise<void> {
  const delays = opts.delays ?? backoff();
  let lastSaid: string | undefined;
  let readyBefore = 0;
  for (;;) {
    try {
      await opts.once();
      return;
    } catch (e) {
      if (!(e instanceof UserError) || opts.readyCount() === 0) throw e;
      if (opts.signal.aborted) return;
      const ready = opts.readyCount();
      if (ready > readyBefore) {
        readyBefore = ready;
        delays.reset();
        lastSaid = undefined;
      }
      const ms = delays.next();
      // The same failure every attempt would flood the terminal during a long outage.
      if (e.message !== lastSaid) {
        opts.onNotice(`${e.message}; reconnecting (next attempt in ${seconds(ms)})`);
        lastSaid = e.message;
      }
      try {
        await sleep(ms, undefined, { signal: opts.signal });
      } catch {
        return;
      }
    }
  }
}
