// The holder's token registry ($KEYTETHER_HOME/tokens.json): every token this holder issued, its
// use count and whether it was revoked. It is the authority for relayed requests — the relay's
// checks are only a first filter.

import { randomBytes, timingSafeEqual } from 'node:crypto';
import { UserError } from '../../cli/errors.js';
import {
  TOKEN_SECRET_BYTES,
  TokenPayloadSchema,
  checkTokenSignature,
  encodeToken,
  tokenSecretHash,
  type ParsedToken,
  type TokenOp,
  type TokenPayload,
} from '../../protocol/token.js';
import { ensureHome } from '../home/home.js';
import { loadOrCreateIdentity, type HolderIdentity } from '../home/identity.js';
import { MAX_TOKENS, TokenFile, type TokenRecord } from './token-file.js';

export { TOKENS_FILE, type TokenRecord } from './token-file.js';

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

/** `registry`: tokens.json cannot be read or is damaged, so nothing can be allowed. */
export type DenyReason =
  'unknown' | 'revoked' | 'expired' | 'key' | 'op' | 'uses' | 'signature' | 'holder' | 'registry';

export type AuthorizeResult = { ok: true } | { ok: false; reason: DenyReason; message: string };

export interface AuthorizeRequest {
  token: ParsedToken;
  /** SHA-256 (hex) of the secret part the facade proved, once the sealed channel provides it. */
  secretHash?: string | undefined;
  fingerprint: string;
  primaryFingerprint: string;
  op: TokenOp;
}

export interface RegistryOptions {
  now?: () => number;
  /** The identity tokens must be signed by; loaded from HOME on first authorize when omitted. */
  identity?: HolderIdentity;
}

const deny = (reason: DenyReason, message: string): AuthorizeResult => ({
  ok: false,
  reason,
  message,
});

function sameHex(a: string, b: string): boolean {
  const x = Buffer.from(a, 'utf8');
  const y = Buffer.from(b, 'utf8');
  return x.length === y.length && timingSafeEqual(x, y);
}

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
   * second of counting; tokens with `--max-uses` are still written before the operation runs.
   */
  #pendingUses = new Map<string, number>();
  #flushTimer: NodeJS.Timeout | undefined;

  private constructor(home: string, opts: RegistryOptions) {
    this.home = home;
    this.#file = new TokenFile(home);
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
        if (records.length >= MAX_TOKENS) {
          throw new UserError(
            `${this.file} already holds ${MAX_TOKENS} tokens; revoke and remove old ones first`,
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

  /** Every token issued, as on disk now. */
  async list(): Promise<TokenSummary[]> {
    const records = await this.#file.fresh();
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
   * Decides whether a relayed request under TOKEN may use the key for OP. A token with a use
   * limit has the use counted on disk (under the lock, synced) before the answer, so a crash can
   * never hand out an uncounted use; other tokens are decided from memory after one lstat.
   * Never rejects: a registry that cannot be read is a refusal saying why.
   */
  async authorize(req: AuthorizeRequest): Promise<AuthorizeResult> {
    this.#identity ??= await loadOrCreateIdentity(this.home);
    const me = this.#identity;
    const { token } = req;
    if (token.payload.hid !== me.hid || !token.hpk.equals(me.hpk)) {
      return deny('holder', `token ${token.payload.tid} was issued by another holder`);
    }
    // hid and hpk are ours (checked above), so the outcome depends on these two alone.
    const sigKey = `${token.payloadPart}.${token.sig.toString('base64url')}`;
    if (!this.#verified.has(sigKey)) {
      const sig = checkTokenSignature(token);
      if (!sig.ok) {
        return deny(
          sig.reason,
          `token ${token.payload.tid} does not carry this holder's signature`,
        );
      }
      if (this.#verified.size >= VERIFIED_CACHE_MAX) this.#verified.clear();
      this.#verified.add(sigKey);
    }
    try {
      const records = await this.#file.fresh();
      const r = records.find((x) => x.id === token.payload.tid);
      const refusal = r ? this.#judge(r, req) : undefined;
      if (!r) return deny('unknown', `token ${token.payload.tid} was not issued by this holder`);
      if (refusal) return refusal;
      if (r.claims.max === undefined) {
        this.#pendingUses.set(r.id, (this.#pendingUses.get(r.id) ?? 0) + 1);
        this.#flushTimer ??= setTimeout(() => void this.flushUses(), 1000).unref();
        return { ok: true };
      }
      // Limited: decide again on the file as it is under the lock, and count before answering.
      return await this.#file.locked(async (fresh) => {
        const cur = fresh.find((x) => x.id === token.payload.tid);
        if (!cur)
          return deny('unknown', `token ${token.payload.tid} was not issued by this holder`);
        const again = this.#judge(cur, req);
        if (again) return again;
        cur.uses += 1;
        await this.#file.write(fresh);
        return { ok: true } as const;
      });
    } catch (e) {
      return deny('registry', `cannot check token ${token.payload.tid}: ${(e as Error).message}`);
    }
  }

  /** Why record R does not allow REQ, or undefined when it does (use count included). */
  #judge(r: TokenRecord, req: AuthorizeRequest): AuthorizeResult | undefined {
    if (req.secretHash !== undefined && !sameHex(req.secretHash, r.secretHash)) {
      return deny('signature', `the request does not prove the secret of token ${r.id}`);
    }
    // Judge by the claims we recorded, not the ones presented (they match when the signature
    // does, but the registry is the authority).
    const c = r.claims;
    if (r.revoked) return deny('revoked', `token ${r.id} has been revoked`);
    if (this.#now() >= c.exp * 1000) {
      return deny('expired', `token ${r.id} expired at ${new Date(c.exp * 1000).toISOString()}`);
    }
    const fpr = req.fingerprint.toUpperCase();
    const primary = req.primaryFingerprint.toUpperCase();
    if (!c.keys.includes(fpr) && !c.keys.includes(primary)) {
      return deny('key', `token ${r.id} does not allow key ${fpr}`);
    }
    if (!c.ops.includes(req.op)) {
      return deny('op', `token ${r.id} does not allow ${req.op} operations`);
    }
    if (c.max !== undefined && r.uses >= c.max) {
      return deny('uses', `token ${r.id} has used all of its ${c.max} operations`);
    }
    return undefined;
  }

  /** Writes the counted uses of unlimited tokens (see #pendingUses), added to the file's. */
  async flushUses(): Promise<void> {
    clearTimeout(this.#flushTimer);
    this.#flushTimer = undefined;
    if (this.#pendingUses.size === 0) return;
    const batch = this.#pendingUses;
    this.#pendingUses = new Map();
    try {
      await this.#file.locked(async (records) => {
        for (const [id, n] of batch) {
          const r = records.find((x) => x.id === id);
          if (r) r.uses += n;
        }
        await this.#file.write(records);
      });
    } catch {
      // Keep the counts for the next flush rather than lose them.
      for (const [id, n] of batch) this.#pendingUses.set(id, (this.#pendingUses.get(id) ?? 0) + n);
      this.#flushTimer ??= setTimeout(() => void this.flushUses(), 1000).unref();
    }
  }
}
