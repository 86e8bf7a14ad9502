// What a tunnel serving a holder needs to know about it: how to watch its inventory and the
// limits that bound one link.

import type { KeyHolder } from '../../protocol/keyholder.js';
import { RequestLimiter } from './request-limits.js';

/** Something whose inventory can be watched, as `Holder` can (duck-typed for wrappers). */
export interface InventoryWatchable {
  onInventoryChange(listener: () => void): () => void;
}

/**
 * The `onInventoryChange` option of serveTunnel for HOLDER: subscribes to its changes when it can
 * report them, undefined when it cannot (a tunnel client, a plain KeyHolder).
 */
export function inventoryWatcher(
  holder: KeyHolder,
): ((changed: () => void) => () => void) | undefined {
  const w = holder as Partial<InventoryWatchable>;
  if (typeof w.onInventoryChange !== 'function') return undefined;
  return (changed) => w.onInventoryChange!(changed);
}

/**
 * The serveTunnel options that bound one link to HOLDER (its requestsPerLink), with a log line
 * on stderr when a link floods; the default cap for a holder without limits of its own.
 */
export function linkLimits(holder: KeyHolder): {
  maxInFlight?: number;
  onLimit: (sentence: string) => void;
} {
  const limiter = (holder as { limiter?: RequestLimiter }).limiter;
  return {
    ...(limiter instanceof RequestLimiter ? { maxInFlight: limiter.limits.requestsPerLink } : {}),
    onLimit: (sentence) => process.stderr.write(`keytether: ${sentence}\n`),
  };
}
