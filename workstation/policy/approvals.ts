// "Confirm once, then allow for N minutes": remembered approvals, keyed by exactly what the user
// saw when confirming (front, host, token, key, operation), so one approval never widens to
// another host or another key.

export interface ApprovalScope {
  front: 'local' | 'ssh' | 'relay';
  host?: string;
  tokenId?: string;
  keygrip: string;
  op: 'sign' | 'decrypt' | 'ssh-sign';
  /** For `ssh-sign`: the proven destination's host key fingerprint, `''` when none was proven. */
  destination?: string;
}

// A bound on remembered approvals, so a flood of distinct hosts cannot grow memory without limit.
const MAX_GRANTS = 4096;

function scopeKey(s: ApprovalScope): string {
  const key = [s.front, s.host ?? '', s.tokenId ?? '', s.keygrip.toUpperCase(), s.op];
  return JSON.stringify(s.destination === undefined ? key : [...key, s.destination]);
}

export class ApprovalMemory {
  readonly #until = new Map<string, number>();

  grant(scope: ApprovalScope, ms: number, now: number = Date.now()): void {
    if (!(ms > 0)) return;
    this.#prune(now);
    const key = scopeKey(scope);
    this.#until.delete(key);
    if (this.#until.size >= MAX_GRANTS) {
      // Map iteration is insertion order: the oldest grant goes first.
      const oldest = this.#until.keys().next().value;
      if (oldest !== undefined) this.#until.delete(oldest);
    }
    this.#until.set(key, now + ms);
  }

  isGranted(scope: ApprovalScope, now: number = Date.now()): boolean {
    const key = scopeKey(scope);
    const until = this.#until.get(key);
    if (until === undefined) return false;
    if (now >= until) {
      this.#until.delete(key);
      return false;
    }
    return true;
  }

  /** Forget one scope, e.g. when the user withdraws an approval. */
  revoke(scope: ApprovalScope): void {
    this.#until.delete(scopeKey(scope));
  }

  clear(): void {
    this.#until.clear();
  }

  get size(): number {
    return this.#until.size;
  }

  #prune(now: number): void {
    for (const [k, until] of this.#until) if (now >= until) this.#until.delete(k);
  }
}
