// One confirmation, every approval channel at once: the pinentry on the workstation's screen, each
// open approval page, and `keytether approve`. The first answer decides; the others are withdrawn
// (the pinentry's process is ended through its abort signal, pages drop the request from their
// list). With no page configured the pinentry is the only channel and nothing changes.

import { randomBytes } from 'node:crypto';
import { ErrorCode, GpgError } from '../../protocol/gpg-error.js';
import type { PassphraseAsker } from '../pinentry/pinentry.js';
import type { PendingApproval } from './pending.js';

export type { PendingApproval } from './pending.js';

/** Who answered: named in the audit record's reason. */
export type ApprovalChannel = 'pinentry' | 'web page' | 'command line';

export interface ApprovalAnswer {
  approved: boolean;
  channel: ApprovalChannel;
  /** "Approve for N minutes": remember this key+host+operation for this long. */
  rememberMs?: number;
}

/** The longest "approve for …" a page or the command line may grant. */
export const MAX_REMEMBER_MS = 24 * 3600_000;
/** At most this many confirmations wait at once (the limiter's prompt slots bound it earlier). */
const MAX_PENDING = 256;

export interface BrokerOptions {
  pinentry: PassphraseAsker;
  /**
   * Whether a page may answer: with one, a pinentry that cannot be shown (none installed, a
   * headless box) leaves the request waiting for the page instead of failing it.
   */
  pages?: boolean;
  /** How long a request waits for a page when the pinentry cannot answer; 0 = no limit. */
  timeoutMs?: number;
  now?: () => number;
}

interface Waiting {
  view: PendingApproval;
  settle: (a: ApprovalAnswer) => void;
}

export type BrokerEvent =
  { kind: 'offered'; request: PendingApproval } | { kind: 'withdrawn'; id: string };

export class ApprovalBroker {
  readonly #o: BrokerOptions;
  readonly #waiting = new Map<string, Waiting>();
  readonly #listeners = new Set<(e: BrokerEvent) => void>();
  #pages: boolean;

  constructor(o: BrokerOptions) {
    this.#o = o;
    this.#pages = o.pages ?? false;
  }

  /** Called once a web page is served, so a missing pinentry no longer fails a request. */
  enablePages(): void {
    this.#pages = true;
  }

  pending(): PendingApproval[] {
    return [...this.#waiting.values()].map((w) => w.view);
  }

  get(id: string): PendingApproval | undefined {
    return this.#waiting.get(id)?.view;
  }

  /** LISTENER hears each offer and each withdrawal; returns the unsubscribe function. */
  subscribe(listener: (e: BrokerEvent) => void): () => void {
    const sub = (e: BrokerEvent) => listener(e);
    this.#listeners.add(sub);
    return () => this.#listeners.delete(sub);
  }

  /**
   * An answer from a page or the command line. False when ID is not (or no longer) waiting, so
   * a late or repeated answer changes nothing.
   */
  answer(id: string, a: ApprovalAnswer): boolean {
    const w = this.#waiting.get(id);
    if (!w) return false;
    const rememberMs =
      a.rememberMs !== undefined && a.rememberMs > 0
        ? Math.min(a.rememberMs, MAX_REMEMBER_MS)
        : undefined;
    w.settle({ approved: a.approved, channel: a.channel, ...(rememberMs ? { rememberMs } : {}) });
    return true;
  }

  /**
   * Offers one confirmation to every channel and resolves with the first answer. The pinentry
   * shows TEXT; pages and the command line get VIEW. Rejects as the pinentry would (TIMEOUT,
   * CANCELED on SIGNAL) when no channel answered.
   */
  async confirm(
    text: string,
    view: Omit<PendingApproval, 'id' | 'createdAt'>,
    signal?: AbortSignal,
  ): Promise<ApprovalAnswer> {
    if (this.#waiting.size >= MAX_PENDING) {
      throw new GpgError(ErrorCode.LIMIT_REACHED, 'too many confirmations are waiting');
    }
    const id = randomBytes(6).toString('hex');
    const now = this.#o.now ?? Date.now;
    const full: PendingApproval = { ...view, id, createdAt: new Date(now()).toISOString() };
    const withdraw = new AbortController();
    const onAbort = () => withdraw.abort();
    signal?.addEventListener('abort', onAbort, { once: true });

    let settle!: (a: ApprovalAnswer) => void;
    let fail!: (e: unknown) => void;
    const decided = new Promise<ApprovalAnswer>((resolve, reject) => {
      settle = resolve;
      fail = reject;
    });
    let done = false;
    const finish = (f: () => void) => {
      if (done) return;
      done = true;
      this.#waiting.delete(id);
      withdraw.abort();
      this.#emit({ kind: 'withdrawn', id });
      f();
    };
    this.#waiting.set(id, { view: full, settle: (a) => finish(() => settle(a)) });
    this.#emit({ kind: 'offered', request: full });

    let timer: NodeJS.Timeout | undefined;
    // Without pages nothing else can answer, so the pinentry's failure is the request's.
    const pinentryFailed = (e: unknown) => {
      if (!this.#pages || isCaller(e, signal)) {
        finish(() => fail(e));
        return;
      }
      const ms = this.#o.timeoutMs ?? 0;
      if (ms > 0) {
        timer = setTimeout(
          () =>
            finish(() =>
              fail(
                new GpgError(ErrorCode.TIMEOUT, `no answer to the confirmation within ${ms} ms`),
              ),
            ),
          ms,
        );
      }
    };
    if (signal?.aborted) finish(() => fail(new GpgError(ErrorCode.CANCELED)));
    signal?.addEventListener('abort', () => finish(() => fail(new GpgError(ErrorCode.CANCELED))), {
      once: true,
    });
    this.#o.pinentry.confirm({ description: text }, withdraw.signal).then(
      (ok) => finish(() => settle({ approved: ok, channel: 'pinentry' })),
      (e: unknown) => {
        // Withdrawn because another channel answered: that answer already stands.
        if (!done) pinentryFailed(e);
      },
    );
    try {
      return await decided;
    } finally {
      clearTimeout(timer);
      signal?.removeEventListener('abort', onAbort);
    }
  }

  #emit(e: BrokerEvent): void {
    for (const l of [...this.#listeners]) {
      try {
        l(e);
      } catch {
        // A page's broken connection must not keep the others from hearing.
      }
    }
  }
}

/** A failure that is the caller's own abort, or the pinentry's deadline: both end the request. */
function isCaller(e: unknown, signal: AbortSignal | undefined): boolean {
  if (signal?.aborted) return true;
  return e instanceof GpgError && e.code === ErrorCode.TIMEOUT;
}
