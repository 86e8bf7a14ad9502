// The holder's token registry ($KEYTETHER_HOME/tokens.json): every token this holder issued, its
// use count and whether it was revoked. It is the authority for relayed requests — the relay's
// checks are only a first filter. `token revoke` (one process) and the agent (another) both write
// the file, so every change is read-modify-write under a lock file. authorize() must see a
// revocation at the very next request without paying a lock and a parse per request: it keeps the
// last file read in memory and checks with one lstat whether the path still names that file
// unchanged (writers replace it by rename, so a change is a new inode; the file read is kept open,
// so its inode number cannot be handed to a newer file while we compare against it).

import { constants as fsc, lstatSync, type BigIntStats } from 'node:fs';
import * as fs from 'node:fs/promises';
import type { FileHandle } from 'node:fs/promises';
import * as path from 'node:path';
import { randomBytes, timingSafeEqual } from 'node:crypto';
import { z } from 'zod';
import { UserError } from '../cli/errors.js';
import {
  TOKEN_ID_RE,
  TOKEN_SECRET_BYTES,
  TokenPayloadSchema,
  checkTokenSignature,
  encodeToken,
  tokenSecretHash,
  type ParsedToken,
  type TokenOp,
  type TokenPayload,
} from '../protocol/token.js';
import { ensureHome, readSecretFile, writeSecretFile } from './home.js';
import { loadOrCreateIdentity, type HolderIdentity } from './identity.js';

export const TOKENS_FILE = 'tokens.json';
const MAX_FILE_BYTES = 16 * 1024 * 1024;
const MAX_TOKENS = 10_000;
const LOCK_TIMEOUT_MS = 10_000;
// A lock file whose owner we cannot identify (crashed between create and write) is stale after this.
const LOCK_STALE_MS = 30_000;

const RecordSchema = z.strictObject({
  id: z.string().regex(TOKEN_ID_RE),
  claims: TokenPayloadSchema,
  secretHash: z.string().regex(/^[0-9a-f]{64}$/),
  uses: z.number().int().min(0),
  revoked: z.boolean(),
  created: z.string().max(64),
  revokedAt: z.string().max(64).optional(),
});
const FileSchema = z.strictObject({
  version: z.literal(1),
  tokens: z.array(RecordSchema).max(MAX_TOKENS),
});

export type TokenRecord = z.infer<typeof RecordSchema>;

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

/** What identifies one version of tokens.json without reading it. */
interface FileStamp {
  dev: bigint;
  ino: bigint;
  size: bigint;
  mtimeNs: bigint;
  ctimeNs: bigint;
}

const stampOf = (st: BigIntStats): FileStamp => ({
  dev: st.dev,
  ino: st.ino,
  size: st.size,
  mtimeNs: st.mtimeNs,
  ctimeNs: st.ctimeNs,
});

function sameStamp(a: FileStamp | 'absent', b: FileStamp | 'absent'): boolean {
  if (a === 'absent' || b === 'absent') return a === b;
  return (
    a.dev === b.dev &&
    a.ino === b.ino &&
    a.size === b.size &&
    a.mtimeNs === b.mtimeNs &&
    a.ctimeNs === b.ctimeNs
  );
}

/** The registry as read from one version of the file. */
interface View {
  stamp: FileStamp | 'absent';
  /** That version, held open: see the file comment. */
  pin: FileHandle | undefined;
  records: readonly TokenRecord[];
  /** Logical time the read started; a later read always wins. */
  at: number;
}

/** Signatures already checked; bounded so presented junk cannot grow it without limit. */
const VERIFIED_CACHE_MAX = 4096;

function processAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'EPERM';
  }
}

export class TokenRegistry {
  readonly home: string;
  readonly file: string;
  readonly #lockFile: string;
  readonly #now: () => number;
  #identity: HolderIdentity | undefined;
  #view: View | undefined;
  #loading: { at: number; promise: Promise<readonly TokenRecord[]> } | undefined;
  /** Orders reads against requests (see #fresh). */
  #clock = 0;
  #verified = new Set<string>();
  /** Serialises this process's own changes, so they queue here instead of on the lock file. */
  #queue: Promise<unknown> = Promise.resolve();
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
    this.file = path.join(home, TOKENS_FILE);
    this.#lockFile = path.join(home, `${TOKENS_FILE}.lock`);
    this.#now = opts.now ?? Date.now;
    this.#identity = opts.identity;
  }

  static async open(home: string, opts: RegistryOptions = {}): Promise<TokenRegistry> {
    await ensureHome(home);
    const reg = new TokenRegistry(home, opts);
    await reg.#fresh();
    return reg;
  }

  /** Writes pending use counts and lets go of the file. */
  async close(): Promise<void> {
    await this.flushUses();
    const pin = this.#view?.pin;
    this.#view = undefined;
    await pin?.close().catch(() => undefined);
  }

  /**
   * The records as of now: every change to the file that completed before this call is in them.
   * Costs one lstat when the file has not changed.
   */
  async #fresh(): Promise<readonly TokenRecord[]> {
    const since = ++this.#clock;
    let now: FileStamp | 'absent';
    try {
      // Synchronous on purpose: a stat of a cached inode costs microseconds, while the
      // thread-pool round trip of the promise form cost more CPU per request than the signature.
      const st = lstatSync(this.file, { bigint: true, throwIfNoEntry: false });
      now = st ? stampOf(st) : 'absent';
    } catch (e) {
      throw new UserError(`cannot read ${this.file}: ${(e as Error).message}`);
    }
    const view = this.#view;
    if (view && sameStamp(view.stamp, now)) return view.records;
    // A read that began after this call did saw every change before it; share it.
    const loading = this.#loading;
    if (loading && loading.at > since) return loading.promise;
    return this.#reload();
  }

  #reload(): Promise<readonly TokenRecord[]> {
    const at = ++this.#clock;
    const promise = this.#read().then(async (loaded) => {
      const old = this.#view;
      if (old && old.at > at) {
        await loaded.pin?.close().catch(() => undefined);
      } else {
        this.#view = { ...loaded, at };
        await old?.pin?.close().catch(() => undefined);
      }
      return loaded.records;
    });
    this.#loading = { at, promise };
    const done = () => {
      if (this.#loading?.promise === promise) this.#loading = undefined;
    };
    promise.then(done, done);
    return promise;
  }

  async #read(): Promise<Omit<View, 'at'>> {
    let pin: FileHandle;
    try {
      pin = await fs.open(this.file, fsc.O_RDONLY | fsc.O_NOFOLLOW);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') {
        return { stamp: 'absent', pin: undefined, records: [] };
      }
      throw new UserError(`cannot read ${this.file}: ${(e as Error).message}`);
    }
    try {
      // Stamp first, content after: if the file is replaced in between we hold newer content
      // under an older stamp, and the next lstat simply reads again.
      const st = await pin.stat({ bigint: true });
      if (st.size > BigInt(MAX_FILE_BYTES)) {
        throw new UserError(`${this.file} is larger than 16 MiB; it is not a token registry`);
      }
      const bytes = await readSecretFile(this.file);
      if (bytes.length > MAX_FILE_BYTES) {
        throw new UserError(`${this.file} is larger than 16 MiB; it is not a token registry`);
      }
      let parsed;
      try {
        parsed = FileSchema.safeParse(JSON.parse(bytes.toString('utf8')));
      } catch {
        parsed = undefined;
      }
      if (!parsed?.success) {
        throw new UserError(
          `${this.file} is not a valid token registry; restore it from a backup or remove it (all tokens become unknown)`,
        );
      }
      return { stamp: stampOf(st), pin, records: parsed.data.tokens };
    } catch (e) {
      await pin.close().catch(() => undefined);
      throw e;
    }
  }

  async #write(records: readonly TokenRecord[]): Promise<void> {
    await writeSecretFile(
      this.file,
      JSON.stringify({ version: 1, tokens: records }, null, 1) + '\n',
    );
  }

  async #acquireLock(): Promise<void> {
    const deadline = Date.now() + LOCK_TIMEOUT_MS;
    let delay = 2;
    for (;;) {
      try {
        const fh = await fs.open(this.#lockFile, fsc.O_WRONLY | fsc.O_CREAT | fsc.O_EXCL, 0o600);
        await fh.writeFile(String(process.pid));
        await fh.close();
        return;
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code !== 'EEXIST') {
          throw new UserError(`cannot lock ${this.file}: ${(e as Error).message}`);
        }
      }
      const owner = await this.#lockOwner();
      if (owner === 'stale') {
        await fs.rm(this.#lockFile, { force: true });
        continue;
      }
      if (Date.now() > deadline) {
        throw new UserError(
          `${this.file} is locked by process ${owner}; wait for it or remove ${this.#lockFile} if no keytether is running`,
        );
      }
      // Another process holds the lock for a few milliseconds; back off and try again.
      await new Promise((r) => setTimeout(r, delay));
      delay = Math.min(delay * 2, 50);
    }
  }

  async #lockOwner(): Promise<number | 'stale' | 'unknown'> {
    try {
      const text = await fs.readFile(this.#lockFile, 'utf8');
      const pid = /^\d{1,10}$/.test(text) ? Number(text) : undefined;
      if (pid !== undefined) return processAlive(pid) ? pid : 'stale';
      const st = await fs.stat(this.#lockFile);
      return Date.now() - st.mtimeMs > LOCK_STALE_MS ? 'stale' : 'unknown';
    } catch {
      // Released between our attempt and this look: simply try again.
      return 'unknown';
    }
  }

  /**
   * Runs FN with the file locked, on a private copy of the records as on disk now; FN changes
   * the copy and writes it. The shared view is never changed in place, so a failed write leaves
   * it matching the file.
   */
  #locked<T>(fn: (records: TokenRecord[]) => Promise<T>): Promise<T> {
    const run = async () => {
      await this.#acquireLock();
      try {
        const records = (await this.#fresh()).map((r) => ({ ...r }));
        return await fn(records);
      } finally {
        await fs.rm(this.#lockFile, { force: true }).catch(() => undefined);
      }
    };
    const result = this.#queue.then(run, run);
    this.#queue = result.catch(() => undefined);
    return result;
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
      await this.#locked(async (records) => {
        if (records.length >= MAX_TOKENS) {
          throw new UserError(
            `${this.file} already holds ${MAX_TOKENS} tokens; revoke and remove old ones first`,
          );
        }
        records.push(record);
        await this.#write(records);
      });
      return token;
    } finally {
      secret.fill(0);
    }
  }

  /** Every token issued, as on disk now. */
  async list(): Promise<TokenSummary[]> {
    const records = await this.#fresh();
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
    return this.#locked(async (records) => {
      const r = records.find((x) => x.id === id);
      if (!r) return false;
      if (!r.revoked) {
        r.revoked = true;
        r.revokedAt = new Date(this.#now()).toISOString();
        await this.#write(records);
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
      const records = await this.#fresh();
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
      return await this.#locked(async (fresh) => {
        const cur = fresh.find((x) => x.id === token.payload.tid);
        if (!cur)
          return deny('unknown', `token ${token.payload.tid} was not issued by this holder`);
        const again = this.#judge(cur, req);
        if (again) return again;
        cur.uses += 1;
        await this.#write(fresh);
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
      await this.#locked(async (records) => {
        for (const [id, n] of batch) {
          const r = records.find((x) => x.id === id);
          if (r) r.uses += n;
        }
        await this.#write(records);
      });
    } catch {
      // Keep the counts for the next flush rather than lose them.
      for (const [id, n] of batch) this.#pendingUses.set(id, (this.#pendingUses.get(id) ?? 0) + n);
      this.#flushTimer ??= setTimeout(() => void this.flushUses(), 1000).unref();
    }
  }
}
