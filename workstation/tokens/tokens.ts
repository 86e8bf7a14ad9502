// The holder's token registry ($KEYTETHER_HOME/tokens.json, with use counts since its last write
// in tokens.uses): every token this holder issued and has not pruned, its use count and whether it
// was revoked. It is the authority for relayed requests — the relay's checks are only a first
// filter.

import { randomBytes } from 'node:crypto';
import { UserError } from '../../system/user-error.js';
import {
  TOKEN_SECRET_BYTES,
  TokenPayloadSchema,
  checkTokenSignature,
  encodeToken,
  tokenSecretHash,
  type TokenOp,
  type TokenPayload,
} from '../../protocol/token.js';
import { ensureHome } from '../home/home.js';
import { loadOrCreateIdentity, type HolderIdentity } from '../home/identity.js';
import { deny, judgeToken, sameHex, type AuthorizeRequest, type DenyReason } from './judge.js';
import type { TokenUse } from './scoped-holder.js';
import { MAX_TOKENS, PRUNE_AFTER_MS, TokenFile, endedAt, type TokenRecord } from './token-file.js';

export { PRUNE_AFTER_MS, TOKENS_FILE, type TokenRecord } from './token-file.js';
export { USES_FILE } from './use-journal.js';
export type { AuthorizeRequest, DenyReason } from './judge.js';

export interface IssueOptions {
  /** 40-hex uppercase fingerprints (primary or subkey). */
  keys: string[];
  ops: TokenOp[];
  ttlMs: number;
  maxUses?: number | undefined;
  label?: string | undefined;
  relay: string;
}

/** What `token list` shows. */
export interface TokenSummary {
  id: string;
  keys: string[];
  ops: TokenOp[];
  expires: string;
  uses: number;
  maxUses: number | null;
  label: string | null;
  revoked: boolean;
  created: string;
}

/**
 * An allowed request holds USE: commit it once the holder produced a result, release it when the
 * holder threw (a declined confirmation, a cancelled pinentry, a policy refusal), so that only
 * operations that produced something are counted.
 */
export type AuthorizeResult =
  { ok: true; use: TokenUse } | { ok: false; reason: DenyReason; message: string };

/** A token as `token list --json` and the page list it: the summary without its creation time. */
export function listedToken(t: TokenSummary): Omit<TokenSummary, 'created'> {
  return {
    id: t.id,
    keys: t.keys,
    ops: t.ops,
    expires: t.expires,
    uses: t.uses,
    maxUses: t.maxUses,
    label: t.label,
    revoked: t.revoked,
  };
}

export interface RegistryOptions {
  now?: () => number;
  /** The identity tokens must be signed by; loaded from HOME on first authorize when omitted. */
  identity?: HolderIdentity;
}

// Past this the journal is folded into tokens.json: about 2,700 uses, one rewrite each.
const FOLD_JOURNAL_BYTES = 64 * 1024;

/** What a facade hears when its stream is refused for the proof itself. */
export const WRONG_SECRET = "the facade did not prove the token's secret";

/** Signatures already checked; bounded so presented junk cannot grow it without limit. */
const VERIFIED_CACHE_MAX = 4096;

export class TokenRegistry {
  readonly home: string;
  readonly file: string;
  readonly #file: TokenFile;
  readonly #now: () => number;
  #identity: HolderIdentity | undefined;
  #verified = new Set<string>();
  /**
   * Uses of tokens without a use limit that are not on disk yet. Their count is only shown by
   * `token list`, so it is written at most once a second instead of with an fsync per request
   * (which serialised every relayed signature behind a disk sync). A crash loses at most that
   * second of counting; tokens with `--max-uses` have a use reserved on disk before the
   * operation runs.
   */
  #pendingUses = new Map<string, number>();
  #flushTimer: NodeJS.Timeout | undefined;
  #flushing: Promise<void> | undefined;
  #folding: Promise<void> | undefined;

  private constructor(home: string, opts: RegistryOptions) {
    this.home = home;
    this.#file = new TokenFile(home, opts.now);
    this.file = this.#file.file;
    this.#now = opts.now ?? Date.now;
    this.#identity = opts.identity;
  }

  static async open(home: string, opts: RegistryOptions = {}): Promise<TokenRegistry> {
    await ensureHome(home);
    const reg = new TokenRegistry(home, opts);
    await reg.#file.fresh();
    return reg;
  }

  /** Writes pending use counts and lets go of the file. */
  async close(): Promise<void> {
    await this.flushUses();
    await this.#folding;
    await this.#file.close();
  }

  /** Issues a token signed by IDENTITY and records it; returns the full token text. */
  async issue(opts: IssueOptions, identity: HolderIdentity): Promise<string> {
    const now = this.#now();
    const iat = Math.floor(now / 1000);
    const exp = iat + Math.max(1, Math.ceil(opts.ttlMs / 1000));
    const claims: TokenPayload = {
      v: 1,
      relay: opts.relay,
      hid: identity.hid,
      hpk: identity.hpk.toString('base64url'),
      tid: `ktt_${randomBytes(8).toString('hex')}`,
      keys: [...opts.keys],
      ops: [...opts.ops],
      iat,
      exp,
    };
    if (opts.maxUses !== undefined) claims.max = opts.maxUses;
    if (opts.label !== undefined) claims.label = opts.label;
    const checked = TokenPayloadSchema.safeParse(claims);
    if (!checked.success) {
      const issue = checked.error.issues[0]!;
      throw new UserError(
        `cannot issue this token: ${issue.path.map(String).join('.') || 'claims'} ${issue.message}`,
      );
    }
    const secret = randomBytes(TOKEN_SECRET_BYTES);
    try {
      const token = encodeToken(checked.data, (b) => identity.sign(b), secret);
      const record: TokenRecord = {
        id: claims.tid,
        claims: checked.data,
        secretHash: tokenSecretHash(secret),
        uses: 0,
        revoked: false,
        created: new Date(now).toISOString(),
      };
      await this.#file.locked(async (records) => {
        // Records past the grace period would be dropped by this very write; they do not count.
        const cutoff = this.#now() - PRUNE_AFTER_MS;
        const live = records.filter((r) => (endedAt(r, this.#now()) ?? Infinity) > cutoff);
        if (live.length >= MAX_TOKENS) {
          throw new UserError(
            `${this.file} already holds ${MAX_TOKENS} tokens; remove expired and revoked ones with keytether token prune (revoke unused ones first with keytether token revoke)`,
          );
        }
        records.push(record);
        await this.#file.write(records);
      });
      return token;
    } finally {
      secret.fill(0);
    }
  }

  /** Every token kept, with its uses as counted on disk now. */
  async list(): Promise<TokenSummary[]> {
    const { records } = await this.#file.exclusive(() => this.#file.counted());
    return records.map((r) => ({
      id: r.id,
      keys: r.claims.keys,
      ops: r.claims.ops,
      expires: new Date(r.claims.exp * 1000).toISOString(),
      uses: r.uses,
      maxUses: r.claims.max ?? null,
      label: r.claims.label ?? null,
      revoked: r.revoked,
      created: r.created,
    }));
  }

  /**
   * Drops the records of tokens that expired or were revoked more than OLDERTHANMS ago (their
   * ids become unknown, which refuses them just the same); returns how many were dropped.
   */
  async prune(olderThanMs = 0): Promise<number> {
    return this.#file.locked(async (records) => {
      const cutoff = this.#now() - olderThanMs;
      const kept = records.filter((r) => (endedAt(r, this.#now()) ?? Infinity) > cutoff);
      await this.#file.write(kept);
      return records.length - kept.length;
    });
  }

  /**
   * Whether SECRETHASH is the recorded hash of token TID's secret: lets a wrong secret be turned
   * away at stream open, before the facade learns even the token's key list. One lstat when
   * tokens.json has not changed.
   */
  async knowsSecret(tid: string, secretHash: string): Promise<boolean> {
    return (await this.admits(tid, secretHash)).ok;
  }

  /**
   * Whether a relayed stream for token TID, proven with SECRETHASH, may be served at all: the
   * secret is right and the token is neither revoked nor expired. A stream every operation would
   * be refused is not opened, so a revoked token's facade never learns the key list; each
   * operation is still authorized on its own. The state is told only to a facade that proved
   * the secret: it holds the token, so that is no news to it.
   */
  async admits(
    tid: string,
    secretHash: string,
    now: number = this.#now(),
  ): Promise<{ ok: true } | { ok: false; reason: string }> {
    let r: TokenRecord | undefined;
    try {
      r = (await this.#file.fresh()).get(tid);
    } catch {
      r = undefined;
    }
    if (r === undefined || !sameHex(r.secretHash, secretHash)) {
      return { ok: false, reason: WRONG_SECRET };
    }
    if (r.revoked) return { ok: false, reason: `token ${tid} has been revoked` };
    if (now >= r.claims.exp * 1000) return { ok: false, reason: `token ${tid} has expired` };
    return { ok: true };
  }

  /** Marks token ID revoked; false when there is no such token. */
  async revoke(id: string): Promise<boolean> {
    return this.#file.locked(async (records) => {
      const r = records.find((x) => x.id === id);
      if (!r) return false;
      if (!r.revoked) {
        r.revoked = true;
        r.revokedAt = new Date(this.#now()).toISOString();
        await this.#file.write(records);
      }
      return true;
    });
  }

  /**
   * Decides whether a relayed request under TOKEN may use the key for OP, and if so reserves one
   * use for it (see AuthorizeResult). A token with a use limit has the reservation appended to
   * the journal and synced under the lock before the answer, so concurrent requests (in any
   * process) never exceed the limit and a crash can never hand out an uncounted use: a
   * reservation neither committed nor released stays counted. Other tokens are decided from
   * memory after one lstat. Never rejects: a registry that cannot be read is a refusal saying why.
   */
  async authorize(req: AuthorizeRequest): Promise<AuthorizeResult> {
    this.#identity ??= await loadOrCreateIdentity(this.home);
    const me = this.#identity;
    const { token } = req;
    const tid = token.payload.tid;
    if (token.payload.hid !== me.hid || !token.hpk.equals(me.hpk)) {
      return deny('holder', `token ${tid} was issued by another holder`);
    }
    // hid and hpk are ours (checked above), so the outcome depends on these two alone.
    const sigKey = `${token.payloadPart}.${token.sig.toString('base64url')}`;
    if (!this.#verified.has(sigKey)) {
      const sig = checkTokenSignature(token);
      if (!sig.ok) {
        return deny(sig.reason, `token ${tid} does not carry this holder's signature`);
      }
      if (this.#verified.size >= VERIFIED_CACHE_MAX) this.#verified.clear();
      this.#verified.add(sigKey);
    }
    try {
      const r = (await this.#file.fresh()).get(tid);
      if (!r) return deny('unknown', `token ${tid} was not issued by this holder`);
      const refusal = judgeToken(r, req, 0, this.#now());
      if (refusal) return refusal;
      if (r.claims.max === undefined) return { ok: true, use: this.#unlimitedUse(tid) };
      // Limited: decide again on the files as they are under the lock, and reserve before answering.
      const result = await this.#file.exclusive(async () => {
        const snap = await this.#file.fresh();
        const cur = snap.get(tid);
        if (!cur) return deny('unknown', `token ${tid} was not issued by this holder`);
        const used = cur.uses + ((await this.#file.journal.deltas(snap.gen)).get(tid) ?? 0);
        const again = judgeToken(cur, req, used, this.#now());
        if (again) return again;
        await this.#file.journal.append(snap.gen, [[tid, 1]], true);
        return { ok: true, use: this.#limitedUse(tid) } as const;
      });
      if (this.#file.journal.size > FOLD_JOURNAL_BYTES) this.#foldSoon();
      return result;
    } catch (e) {
      return deny('registry', `cannot check token ${tid}: ${(e as Error).message}`);
    }
  }

  #unlimitedUse(tid: string): TokenUse {
    let settled = false;
    return {
      commit: () => {
        if (settled) return;
        settled = true;
        this.#pendingUses.set(tid, (this.#pendingUses.get(tid) ?? 0) + 1);
        this.#flushTimer ??= setTimeout(() => void this.flushUses(), 1000).unref();
      },
      release: () => {
        settled = true;
      },
    };
  }

  /** The reservation is on disk already: committing keeps it, releasing appends its undoing. */
  #limitedUse(tid: string): TokenUse {
    let settled = false;
    return {
      commit: () => {
        settled = true;
      },
      release: async () => {
        if (settled) return;
        settled = true;
        // Not synced: if a crash loses this line the use stays counted, which only errs safe.
        await this.#file
          .exclusive(async () => {
            const snap = await this.#file.fresh();
            await this.#file.journal.append(snap.gen, [[tid, -1]], false);
          })
          .catch(() => undefined);
      },
    };
  }

  /** Folds the journal into tokens.json in the background, off the request that noticed. */
  #foldSoon(): void {
    this.#folding ??= this.#file
      .locked(async (records) => {
        if (this.#file.journal.size > FOLD_JOURNAL_BYTES) await this.#file.write(records);
      })
      .catch(() => undefined)
      .finally(() => (this.#folding = undefined));
  }

  /**
   * Appends the committed uses of unlimited tokens (see #pendingUses) to the journal. When it
   * returns, every use committed before the call is on disk (or kept for the next try when the
   * registry cannot be written): a flush the timer started holds counts already taken out of
   * #pendingUses, so it is waited for rather than treated as nothing left to do.
   */
  async flushUses(): Promise<void> {
    clearTimeout(this.#flushTimer);
    this.#flushTimer = undefined;
    while (this.#flushing) await this.#flushing;
    if (this.#pendingUses.size === 0) return;
    const batch = this.#pendingUses;
    this.#pendingUses = new Map();
    this.#flushing = this.#appendUses(batch).finally(() => {
      this.#flushing = undefined;
    });
    await this.#flushing;
  }

  async #appendUses(batch: Map<string, number>): Promise<void> {
    try {
      await this.#file.exclusive(async () => {
        const snap = await this.#file.fresh();
        // Uses of tokens dropped meanwhile (pruned) have nothing left to add to.
        const known = [...batch].filter(([id]) => snap.get(id) !== undefined);
        if (known.length > 0) await this.#file.journal.append(snap.gen, known, false);
      });
    } catch {
      // Keep the counts for the next flush rather than lose them.
      for (const [id, n] of batch) this.#pendingUses.set(id, (this.#pendingUses.get(id) ?? 0) + n);
      this.#flushTimer ??= setTimeout(() => void this.flushUses(), 1000).unref();
      return;
    }
    if (this.#file.journal.size > FOLD_JOURNAL_BYTES) this.#foldSoon();
  }
}
