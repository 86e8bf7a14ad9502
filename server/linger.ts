// `serve --stdio --linger` (what `keytether ssh --reconnect` runs): which endings of a link are
// final, and how the serving facade waits with no holder for the workstation to come back.

import type { HolderSet } from './holder-set.js';

/** The reason a session gives its link when a signal stops it here. */
export const STOPPED = 'stopped on the server';

/** What an attached session tells the serving one when it was stopped on purpose. */
export const SESSION_ENDED = 'the session ended';

// Only a close the workstation sent (or a signal here) is final; a bare end of stdin is what a
// dropped link looks like from here.
export function isFinalClose(reason: string): boolean {
  return reason.startsWith('the workstation closed the tunnel:') || reason === STOPPED;
}

/**
 * `keytether ssh --reconnect`: the link is gone but the workstation will be back. Staying the
 * serving process keeps the socket path and gpg.conf's `no-autostart` exactly as they were, so
 * gpg in between fails at once with "No agent running" (the empty holder set's answer) instead of
 * hanging or starting a local gpg-agent over the socket, and the next session's `serve --stdio`
 * finds this one by the control socket and attaches its holder here. Every time the set empties
 * again after a dropped link the wait starts over; a workstation that never comes back leaves
 * after lingerMs, one that stops on purpose ends this too.
 */
export async function linger(
  s: { lingerMs: number; stopped: Promise<void> },
  set: HolderSet,
  lastLeft: () => string | undefined,
): Promise<void> {
  for (;;) {
    let timer: NodeJS.Timeout | undefined;
    const joined = await Promise.race([
      new Promise<boolean>((r) => set.onAdded(() => r(true))),
      new Promise<boolean>((r) => (timer = setTimeout(() => r(false), s.lingerMs))),
      s.stopped.then(() => false),
    ]);
    clearTimeout(timer);
    if (!joined) return;
    await Promise.race([new Promise<void>((r) => set.onEmpty(r)), s.stopped]);
    // The reconnected session was stopped on purpose (Ctrl-C on the workstation): so is this.
    if (set.size > 0 || lastLeft()?.endsWith(`: ${SESSION_ENDED}`)) return;
  }
}
