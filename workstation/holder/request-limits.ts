// How much a remote side may ask of the holder: requests per minute per token and per key (a
// token bucket each, so a burst is not refused), and confirmation prompts waiting per origin (so
// one server cannot queue the user hundreds of dialogs). The workstation's own gpg is the user
// and is not rate limited.

import type { Requester } from '../../protocol/keyholder.js';

export interface Rate {
  /** Sustained requests per minute. */
  perMinute: number;
  /** Requests allowed at once before the rate applies. */
  burst: number;
}

export interface RequestLimits {
  /** Requests served at once on one tunnel link (an ssh session, a relayed stream). */
  requestsPerLink: number;
  /** Confirmation prompts waiting or shown at once for one origin (front, host, token). */
  promptsPerOrigin: number;
  /** Per relay token. */
  token: Rate;
  /** Per key, over every remote front. */
  key: Rate;
}

/**
 * A CI job signing a release, or a rebase of a few hundred commits, stays inside these; a server
 * that signs at full speed (a stolen session, a loop) is held to two signatures a second per
 * token and four per key once its burst is spent, and the burst is an audit alert. 32 requests
 * at once is more than gpg, git or make -j ever have open on one link (each gpg has one), far
 * below the 256 one remote could queue before. More than four dialogs waiting from one server is
 * more than a person can judge.
 */
export const DEFAULT_REQUEST_LIMITS: Readonly<RequestLimits> = Object.freeze({
  requestsPerLink: 32,
  promptsPerOrigin: 4,
  token: Object.freeze({ perMinute: 120, burst: 300 }),
  key: Object.freeze({ perMinute: 240, burst: 600 }),
});

/** A rate limit that is refusing (or recently refused), for `keytether status`. */
export interface RateAlert {
  kind: 'token' | 'key';
  id: string;
  /** When it started refusing (ISO). */
  since: string;
  refused: number;
  /** Still refusing now; false once the bucket has refilled. */
  active: boolean;
}

export type RateVerdict =
  | { ok: true }
  | {
      ok: false;
      kind: 'token' | 'key';
      id: string;
      /** The first refusal of this burst: worth its own audit record (the burst alert). */
      first: boolean;
      sentence: string;
    };

interface Bucket {
  tokens: number;
  at: number;
  alert: RateAlert | undefined;
}

const PRUNE_ABOVE = 10_000;
const ALERTS_KEPT = 10;

export function originKey(r: Requester): string {
  return JSON.stringify([r.front, r.host ?? '', r.tokenId ?? '']);
}

export class RequestLimiter {
  readonly limits: Readonly<RequestLimits>;
  readonly #now: () => number;
  readonly #buckets = new Map<string, Bucket>();
  readonly #prompts = new Map<string, number>();
  readonly #alerts: RateAlert[] = [];

  constructor(limits: Partial<RequestLimits> = {}, now: () => number = Date.now) {
    this.limits = { ...DEFAULT_REQUEST_LIMITS, ...limits };
    this.#now = now;
  }

  /** Takes one request from the requester's token bucket and the key's; local is not limited. */
  take(r: Requester, keygrip: string): RateVerdict {
    if (r.front === 'local') return { ok: true };
    const now = this.#now();
    const checks: ['token' | 'key', string, Rate][] = [
      ['key', keygrip.toUpperCase(), this.limits.key],
    ];
    if (r.tokenId !== undefined) checks.unshift(['token', r.tokenId, this.limits.token]);
    // Both buckets must have room before either is charged, so a refusal costs nothing.
    for (const [kind, id, rate] of checks) {
      const b = this.#bucket(`${kind}:${id}`, rate, now);
      if (b.tokens < 1) return this.#refuse(b, kind, id, rate, now);
    }
    for (const [kind, id, rate] of checks) {
      const b = this.#bucket(`${kind}:${id}`, rate, now);
      b.tokens -= 1;
      if (b.alert) {
        b.alert.active = false;
        b.alert = undefined;
      }
    }
    return { ok: true };
  }

  /** A slot for one confirmation prompt of R's origin; undefined when all are taken. */
  enterPrompt(r: Requester): (() => void) | undefined {
    const key = originKey(r);
    const n = this.#prompts.get(key) ?? 0;
    if (n >= this.limits.promptsPerOrigin) return undefined;
    this.#prompts.set(key, n + 1);
    let left = false;
    return () => {
      if (left) return;
      left = true;
      const m = (this.#prompts.get(key) ?? 1) - 1;
      if (m > 0) this.#prompts.set(key, m);
      else this.#prompts.delete(key);
    };
  }

  /** Recent burst alerts, newest last; `active` is recomputed against the refill. */
  alerts(): RateAlert[] {
    const now = this.#now();
    for (const a of this.#alerts) {
      if (!a.active) continue;
      const rate = a.kind === 'token' ? this.limits.token : this.limits.key;
      const b = this.#bucket(`${a.kind}:${a.id}`, rate, now);
      if (b.tokens >= 1) a.active = false;
    }
    return this.#alerts.map((a) => ({ ...a }));
  }

  #bucket(key: string, rate: Rate, now: number): Bucket {
    let b = this.#buckets.get(key);
    if (!b) {
      if (this.#buckets.size >= PRUNE_ABOVE) this.#prune(now);
      b = { tokens: rate.burst, at: now, alert: undefined };
      this.#buckets.set(key, b);
      return b;
    }
    b.tokens = Math.min(rate.burst, b.tokens + ((now - b.at) / 60_000) * rate.perMinute);
    b.at = now;
    return b;
  }

  #refuse(b: Bucket, kind: 'token' | 'key', id: string, rate: Rate, now: number): RateVerdict {
    const first = b.alert === undefined;
    if (!b.alert) {
      b.alert = { kind, id, since: new Date(now).toISOString(), refused: 0, active: true };
      this.#alerts.push(b.alert);
      if (this.#alerts.length > ALERTS_KEPT) this.#alerts.shift();
    }
    b.alert.refused++;
    b.alert.active = true;
    return {
      ok: false,
      kind,
      id,
      first,
      sentence: `rate limit: ${kind} ${id} asked for more than ${rate.burst} at once and ${rate.perMinute} a minute`,
    };
  }

  #prune(now: number): void {
    for (const [k, b] of this.#buckets) {
      if (b.alert) continue;
      const rate = k.startsWith('token:') ? this.limits.token : this.limits.key;
      if (b.tokens + ((now - b.at) / 60_000) * rate.perMinute >= rate.burst)
        this.#buckets.delete(k);
    }
  }
}
