// Refusals that a remote side can cause at will (unknown keys, policy denials, limits) would let
// it flood the audit log. Per kind and origin, the first few in each window are recorded one by
// one; the rest are counted and written as one summary record when the window ends, so the log
// still accounts for every request and its hash chain stays the ordinary one.

import type { AuditInput, AuditLog } from './audit.js';

export interface RefusalSummaryOptions {
  /** Length of a window; default 60 s. */
  windowMs?: number;
  /** Refusals recorded one by one per kind and origin in a window; default 10. */
  perWindow?: number;
  now?: () => number;
}

interface Window {
  start: number;
  recorded: number;
  /** Beyond `recorded`: counted only, written as one summary. */
  suppressed: number;
  last: AuditInput | undefined;
  what: string;
  timer: NodeJS.Timeout | undefined;
}

// Distinct origins are bounded by what a remote can name (hosts, tokens); this keeps a flood of
// made-up ones from growing the map: the oldest window is summarised early instead.
const MAX_WINDOWS = 1024;

export class RefusalSummary {
  readonly #audit: AuditLog;
  readonly #windowMs: number;
  readonly #perWindow: number;
  readonly #now: () => number;
  readonly #windows = new Map<string, Window>();

  constructor(audit: AuditLog, opts: RefusalSummaryOptions = {}) {
    this.#audit = audit;
    this.#windowMs = opts.windowMs ?? 60_000;
    this.#perWindow = opts.perWindow ?? 10;
    this.#now = opts.now ?? Date.now;
  }

  /**
   * Records REC, a refusal of kind WHAT ("for unknown keys", "denied by policy"), unless its
   * origin already had `perWindow` of that kind in this window; then it is counted for the
   * window's summary.
   */
  async refused(rec: AuditInput, what: string): Promise<void> {
    const key = JSON.stringify([what, rec.front, rec.host ?? '', rec.tokenId ?? '']);
    const now = this.#now();
    let w = this.#windows.get(key);
    if (w && now - w.start >= this.#windowMs) {
      await this.#close(key, w);
      w = undefined;
    }
    if (!w) {
      if (this.#windows.size >= MAX_WINDOWS) {
        const [oldKey, old] = this.#windows.entries().next().value as [string, Window];
        await this.#close(oldKey, old);
      }
      w = { start: now, recorded: 0, suppressed: 0, last: undefined, what, timer: undefined };
      this.#windows.set(key, w);
    }
    if (w.recorded < this.#perWindow) {
      w.recorded++;
      await this.#audit.append(rec);
      return;
    }
    w.suppressed++;
    w.last = rec;
    if (!w.timer) {
      // Kept referenced: a process must not exit with a summary unwritten (close() flushes).
      const win = w;
      win.timer = setTimeout(
        () => void this.#close(key, win).catch(() => undefined),
        Math.max(0, win.start + this.#windowMs - now),
      );
    }
  }

  /** Writes every pending summary now (at shutdown). */
  async flush(): Promise<void> {
    for (const [key, w] of [...this.#windows]) await this.#close(key, w);
  }

  async #close(key: string, w: Window): Promise<void> {
    if (this.#windows.get(key) !== w) return;
    this.#windows.delete(key);
    clearTimeout(w.timer);
    const last = w.last;
    if (w.suppressed === 0 || !last) return;
    const seconds = Math.round(Math.min(this.#now() - w.start, this.#windowMs) / 1000);
    const who =
      last.front === 'local' ? 'this workstation' : (last.host ?? last.tokenId ?? last.front);
    await this.#audit.append({
      front: last.front,
      ...(last.host !== undefined ? { host: last.host } : {}),
      ...(last.tokenId !== undefined ? { tokenId: last.tokenId } : {}),
      ...(last.peer !== undefined ? { peer: last.peer } : {}),
      op: last.op,
      decision: last.decision,
      reason:
        `${w.suppressed} more request${w.suppressed === 1 ? '' : 's'} ${w.what} from ${who} ` +
        `refused in the last ${seconds} s, not recorded one by one (last: ${last.reason ?? last.decision})`,
    });
  }
}
