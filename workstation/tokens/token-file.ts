// tokens.json on disk, for the token registry (workstation/tokens/tokens.ts). `token revoke` (one
// process) and the agent (another) both write the file, so every change is read-modify-write
// under a lock file. The registry's authorize() must see a revocation at the very next request
// without paying a lock and a parse per request: this keeps the last file read in memory and
// checks with one lstat whether the path still names that file unchanged (writers replace it by
// rename, so a change is a new inode; the file read is kept open, so its inode number cannot be
// handed to a newer file while we compare against it).
//
// Use counts change far more often than tokens do, so they go to an append-only journal
// (use-journal.ts) that every write of tokens.json folds in; records that expired or were revoked
// more than PRUNE_AFTER_MS ago are dropped by the same write.

import { constants as fsc, lstatSync, type BigIntStats } from 'node:fs';
import * as fs from 'node:fs/promises';
import type { FileHandle } from 'node:fs/promises';
import * as path from 'node:path';
import { z } from 'zod';
import { UserError } from '../../system/user-error.js';
import { TOKEN_ID_RE, TokenPayloadSchema } from '../../protocol/token.js';
import { readSecretFile, writeSecretFile } from '../home/home.js';
import { UseJournal } from './use-journal.js';

export const TOKENS_FILE = 'tokens.json';
const MAX_FILE_BYTES = 16 * 1024 * 1024;
export const MAX_TOKENS = 10_000;
/** Expired or revoked tokens are kept this long for `token list`, then dropped on the next write. */
export const PRUNE_AFTER_MS = 7 * 86_400_000;
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
  /** Which journal (use-journal.ts) adds to these counts; absent in files from before it. */
  gen: z.number().int().min(0).optional(),
  tokens: z.array(RecordSchema).max(MAX_TOKENS),
});

export type TokenRecord = z.infer<typeof RecordSchema>;

/** One version of tokens.json as read. */
export interface Snapshot {
  readonly records: readonly TokenRecord[];
  readonly gen: number;
  get(id: string): TokenRecord | undefined;
}

function snapshot(records: readonly TokenRecord[], gen: number): Snapshot {
  let byId: Map<string, TokenRecord> | undefined;
  return {
    records,
    gen,
    get(id) {
      byId ??= new Map(records.map((r) => [r.id, r]));
      return byId.get(id);
    },
  };
}

/** When record R stopped being usable (revoked or expired), or undefined while it still is. */
export function endedAt(r: TokenRecord, now: number): number | undefined {
  const exp = r.claims.exp * 1000;
  const revokedAt = r.revoked ? Date.parse(r.revokedAt ?? '') : NaN;
  const end = Number.isNaN(revokedAt) ? exp : Math.min(revokedAt, exp);
  return end <= now || r.revoked ? end : undefined;
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
  snap: Snapshot;
  /** Logical time the read started; a later read always wins. */
  at: number;
}

function processAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/** One home's tokens.json: read when it changed, changed only under its lock file. */
export class TokenFile {
  readonly file: string;
  readonly #lockFile: string;
  readonly journal: UseJournal;
  readonly #now: () => number;
  #view: View | undefined;
  #loading: { at: number; promise: Promise<Snapshot> } | undefined;
  /** The generation write() gives tokens.json; set only while this process holds the lock. */
  #writeGen: number | undefined;
  /** Orders reads against requests (see fresh). */
  #clock = 0;
  /** Serialises this process's own changes, so they queue here instead of on the lock file. */
  #queue: Promise<unknown> = Promise.resolve();

  constructor(home: string, now: () => number = Date.now) {
    this.file = path.join(home, TOKENS_FILE);
    this.#lockFile = path.join(home, `${TOKENS_FILE}.lock`);
    this.journal = new UseJournal(home);
    this.#now = now;
  }

  /** Lets go of the file. */
  async close(): Promise<void> {
    const pin = this.#view?.pin;
    this.#view = undefined;
    await pin?.close().catch(() => undefined);
    await this.journal.close();
  }

  /**
   * The records as of now: every change to the file that completed before this call is in them.
   * Costs one lstat when the file has not changed.
   */
  async fresh(): Promise<Snapshot> {
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
    if (view && sameStamp(view.stamp, now)) return view.snap;
    // A read that began after this call did saw every change before it; share it.
    const loading = this.#loading;
    if (loading && loading.at > since) return loading.promise;
    return this.#reload();
  }

  #reload(): Promise<Snapshot> {
    const at = ++this.#clock;
    const promise = this.#read().then(async (loaded) => {
      const old = this.#view;
      if (old && old.at > at) {
        await loaded.pin?.close().catch(() => undefined);
      } else {
        this.#view = { ...loaded, at };
        await old?.pin?.close().catch(() => undefined);
      }
      return loaded.snap;
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
        return { stamp: 'absent', pin: undefined, snap: snapshot([], 0) };
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
      return { stamp: stampOf(st), pin, snap: snapshot(parsed.data.tokens, parsed.data.gen ?? 0) };
    } catch (e) {
      await pin.close().catch(() => undefined);
      throw e;
    }
  }

  /**
   * Replaces tokens.json with RECORDS (from locked(), so the journal is folded into them) and
   * starts a new journal. Only inside locked().
   */
  async write(records: readonly TokenRecord[]): Promise<void> {
    const gen = this.#writeGen;
    if (gen === undefined) throw new Error('TokenFile.write outside locked()');
    const cutoff = this.#now() - PRUNE_AFTER_MS;
    const kept = records.filter((r) => (endedAt(r, this.#now()) ?? Infinity) > cutoff);
    await writeSecretFile(
      this.file,
      JSON.stringify({ version: 1, gen, tokens: kept }, null, 1) + '\n',
    );
    // Until this lands, the old journal names an older generation and is ignored: folded already.
    await this.journal.reset(gen);
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

  /** Runs FN with the lock file held: no other process changes tokens.json or the journal. */
  exclusive<T>(fn: () => Promise<T>): Promise<T> {
    const run = async () => {
      await this.#acquireLock();
      try {
        return await fn();
      } finally {
        await fs.rm(this.#lockFile, { force: true }).catch(() => undefined);
      }
    };
    const result = this.#queue.then(run, run);
    this.#queue = result.catch(() => undefined);
    return result;
  }

  /** The records as on disk now with the journal's counts added. Only inside exclusive(). */
  async counted(): Promise<{ snap: Snapshot; records: TokenRecord[]; journalGen: number }> {
    const snap = await this.fresh();
    const deltas = await this.journal.deltas(snap.gen);
    const journalGen = (await this.journal.generation()) ?? -1;
    const records = snap.records.map((r) => {
      const d = deltas.get(r.id);
      return d === undefined ? { ...r } : { ...r, uses: Math.max(0, r.uses + d) };
    });
    return { snap, records, journalGen };
  }

  /**
   * Runs FN with the file locked, on a private copy of the records as on disk now (use counts
   * included); FN changes the copy and writes it. The shared view is never changed in place, so a
   * failed write leaves it matching the file.
   */
  locked<T>(fn: (records: TokenRecord[]) => Promise<T>): Promise<T> {
    return this.exclusive(async () => {
      const { snap, records, journalGen } = await this.counted();
      this.#writeGen = Math.max(snap.gen, journalGen) + 1;
      try {
        return await fn(records);
      } finally {
        this.#writeGen = undefined;
      }
    });
  }
}
