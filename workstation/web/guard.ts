// Who may use the approval page. A page on loopback is still reachable by every web site the
// user visits (DNS rebinding, cross-site forms), so: only the exact Host it listens on; an Origin
// of its own on every state-changing request; a session cookie (HttpOnly, SameSite=Strict) that
// only a one-time secret from the agent's own output buys; and a single-use token per answer, so a
// replayed approve does nothing.

import { createHash, randomBytes } from 'node:crypto';

export const SESSION_COOKIE = 'kt_session';
/** The header a change carries its single-use token in (assets/api.js sends it). */
export const CSRF_HEADER = 'x-keytether-csrf';
const SESSION_TTL_MS = 12 * 3600_000;
const MAX_SESSIONS = 64;
const MAX_SECRETS = 16;
const MAX_TOKENS_PER_SESSION = 512;

const hash = (s: string) => createHash('sha256').update(s).digest('hex');
const fresh = () => randomBytes(32).toString('base64url');

interface CsrfBinding {
  session: string;
  /** The pending request it answers; undefined for the page's other actions. */
  requestId: string | undefined;
}

export class WebGuard {
  /** Until bind(), no Host and no Origin match: nothing is served before the port is known. */
  #host = '';
  #origin = '';
  readonly #now: () => number;
  /** Hashes of unused one-time secrets, oldest first. */
  readonly #secrets = new Set<string>();
  /** Session hash → expiry. */
  readonly #sessions = new Map<string, number>();
  /** Token hash → what it may do, once. */
  readonly #csrf = new Map<string, CsrfBinding>();

  constructor(o: { now?: () => number } = {}) {
    this.#now = o.now ?? Date.now;
  }

  /** The exact `host:port` the page listens on and its origin (`http://host:port`). */
  bind(host: string, origin: string): void {
    this.#host = host;
    this.#origin = origin;
  }

  hostOk(header: string | undefined): boolean {
    return this.#host !== '' && header === this.#host;
  }

  originOk(header: string | undefined): boolean {
    return this.#origin !== '' && header === this.#origin;
  }

  /** A new one-time secret for the page's URL fragment. */
  newSecret(): string {
    const s = fresh();
    this.#secrets.add(hash(s));
    if (this.#secrets.size > MAX_SECRETS) {
      const oldest = this.#secrets.values().next().value;
      if (oldest !== undefined) this.#secrets.delete(oldest);
    }
    return s;
  }

  /** Spends SECRET for a session cookie value; undefined when it is unknown or already used. */
  exchange(secret: string): string | undefined {
    const h = hash(secret);
    if (!this.#secrets.delete(h)) return undefined;
    this.#prune();
    if (this.#sessions.size >= MAX_SESSIONS) {
      const oldest = this.#sessions.keys().next().value;
      if (oldest !== undefined) this.#dropSession(oldest);
    }
    const session = fresh();
    this.#sessions.set(hash(session), this.#now() + SESSION_TTL_MS);
    return session;
  }

  /** The session hash behind a Cookie header, or undefined. */
  session(cookieHeader: string | undefined): string | undefined {
    const value = cookieValue(cookieHeader, SESSION_COOKIE);
    if (value === undefined) return undefined;
    const h = hash(value);
    const until = this.#sessions.get(h);
    if (until === undefined) return undefined;
    if (this.#now() >= until) {
      this.#dropSession(h);
      return undefined;
    }
    return h;
  }

  /** A single-use token for SESSION, for answering REQUESTID or (without one) another action. */
  token(session: string, requestId?: string): string {
    let mine = 0;
    for (const b of this.#csrf.values()) if (b.session === session) mine++;
    if (mine >= MAX_TOKENS_PER_SESSION) {
      for (const [k, b] of this.#csrf) {
        if (b.session === session) {
          this.#csrf.delete(k);
          break;
        }
      }
    }
    const t = fresh();
    this.#csrf.set(hash(t), { session, requestId });
    return t;
  }

  /** Spends TOKEN: true only once, for the session and request it was made for. */
  spend(token: string, session: string, requestId?: string): boolean {
    const h = hash(token);
    const b = this.#csrf.get(h);
    if (!b || b.session !== session || b.requestId !== requestId) return false;
    this.#csrf.delete(h);
    return true;
  }

  /** Drops the tokens of a request that is no longer waiting. */
  forgetRequest(requestId: string): void {
    for (const [k, b] of this.#csrf) if (b.requestId === requestId) this.#csrf.delete(k);
  }

  #dropSession(h: string): void {
    this.#sessions.delete(h);
    for (const [k, b] of this.#csrf) if (b.session === h) this.#csrf.delete(k);
  }

  #prune(): void {
    const now = this.#now();
    for (const [h, until] of this.#sessions) if (now >= until) this.#dropSession(h);
  }
}

function cookieValue(header: string | undefined, name: string): string | undefined {
  if (header === undefined || header.length > 8192) return undefined;
  for (const part of header.split(';')) {
    const eq = part.indexOf('=');
    if (eq === -1) continue;
    if (part.slice(0, eq).trim() === name) {
      const v = part.slice(eq + 1).trim();
      return /^[A-Za-z0-9_-]{43}$/.test(v) ? v : undefined;
    }
  }
  return undefined;
}
