// tokens.uses, next to tokens.json: the use counts since tokens.json was last written, one line
// per change. Rewriting and syncing all of tokens.json for every counted use made a request cost
// grow with the number of tokens (112 ms at 10,000); an append costs the same at any size.
//
// The first line names the generation of tokens.json the lines add to. Writing tokens.json folds
// the journal into its records and bumps the generation, then starts a new journal: a crash
// between the two leaves an older journal, which is then ignored (already folded) instead of
// being counted twice. Every change is made under tokens.json's lock file by the caller.

import { constants as fsc } from 'node:fs';
import * as fs from 'node:fs/promises';
import * as path from 'node:path';
import { UserError } from '../../system/user-error.js';
import { writeSecretFile } from '../home/home.js';

export const USES_FILE = 'tokens.uses';
const HEADER_RE = /^ktuses 1 (\d{1,15})$/;
const LINE_RE = /^(ktt_[0-9a-f]{16}) ([+-][1-9]\d{0,8})$/;
// Folded long before this; a bigger file is not ours.
const MAX_BYTES = 16 * 1024 * 1024;

interface Cache {
  /** The file read, held open so that its inode number cannot name a newer journal meanwhile. */
  pin: fs.FileHandle;
  ino: bigint;
  gen: number;
  /** Bytes parsed: the end of the last complete line. */
  offset: number;
  deltas: Map<string, number>;
}

function myUid(): number | undefined {
  return typeof process.getuid === 'function' ? process.getuid() : undefined;
}

export class UseJournal {
  readonly file: string;
  #cache: Cache | undefined;

  constructor(home: string) {
    this.file = path.join(home, USES_FILE);
  }

  /** Lets go of the file. */
  async close(): Promise<void> {
    await this.#forget();
  }

  async #forget(): Promise<void> {
    const pin = this.#cache?.pin;
    this.#cache = undefined;
    await pin?.close().catch(() => undefined);
  }

  /** Bytes in the journal as last read or written, to decide when to fold it. */
  get size(): number {
    return this.#cache?.offset ?? 0;
  }

  /**
   * Use changes to add to the records of tokens.json generation GEN. Reads only what was appended
   * since the last call. An older journal was folded into GEN already and adds nothing.
   */
  async deltas(gen: number): Promise<ReadonlyMap<string, number>> {
    const c = await this.#refresh();
    return c && c.gen >= gen ? c.deltas : new Map();
  }

  /** The generation the journal adds to, undefined when there is none. */
  async generation(): Promise<number | undefined> {
    return (await this.#refresh())?.gen;
  }

  /**
   * Appends CHANGES for generation GEN, starting a new journal if the current one belongs to an
   * older generation. With SYNC the lines are on disk when this resolves.
   */
  async append(gen: number, changes: [string, number][], sync: boolean): Promise<void> {
    let c = await this.#refresh();
    if (!c || c.gen < gen) {
      await this.reset(gen);
      c = (await this.#refresh())!;
    }
    const text = changes.map(([id, n]) => `${id} ${n > 0 ? '+' : ''}${n}\n`).join('');
    const bytes = Buffer.from(text, 'utf8');
    const fh = await this.#openChecked(fsc.O_RDWR);
    try {
      // A crashed writer may have left half a line; its use was never granted (the sync had not
      // returned), so it is cut off rather than glued to ours.
      await fh.truncate(c.offset);
      let off = 0;
      while (off < bytes.length) {
        const { bytesWritten } = await fh.write(bytes, off, bytes.length - off, c.offset + off);
        if (bytesWritten <= 0) {
          throw new UserError(`cannot write ${this.file}: short write; free some disk space`);
        }
        off += bytesWritten;
      }
      if (sync) await fh.datasync();
    } catch (e) {
      if (e instanceof UserError) throw e;
      throw new UserError(`cannot write ${this.file}: ${(e as Error).message}`);
    } finally {
      await fh.close();
    }
    c.offset += bytes.length;
    for (const [id, n] of changes) c.deltas.set(id, (c.deltas.get(id) ?? 0) + n);
  }

  /** Starts an empty journal for generation GEN (durably: rename and directory sync). */
  async reset(gen: number): Promise<void> {
    await this.#forget();
    await writeSecretFile(this.file, `ktuses 1 ${gen}\n`);
  }

  async #openChecked(flags: number): Promise<fs.FileHandle> {
    let fh: fs.FileHandle;
    try {
      fh = await fs.open(this.file, flags | fsc.O_NOFOLLOW);
    } catch (e) {
      throw new UserError(`cannot read ${this.file}: ${(e as Error).message}`);
    }
    try {
      const st = await fh.stat();
      const uid = myUid();
      if (!st.isFile()) throw new UserError(`${this.file} is not a regular file; remove it`);
      if (uid !== undefined && st.uid !== uid) {
        throw new UserError(`${this.file} is owned by uid ${st.uid}, not by you; remove it`);
      }
      if ((st.mode & 0o077) !== 0) {
        throw new UserError(
          `${this.file} is accessible by other users (mode ${(st.mode & 0o777).toString(8)}); run: chmod 600 ${this.file}`,
        );
      }
      return fh;
    } catch (e) {
      await fh.close();
      throw e;
    }
  }

  async #refresh(): Promise<Cache | undefined> {
    let fh: fs.FileHandle;
    try {
      fh = await this.#openChecked(fsc.O_RDONLY);
    } catch (e) {
      if (/ENOENT/.test((e as Error).message)) {
        await this.#forget();
        return undefined;
      }
      throw e;
    }
    let keep = false;
    try {
      const st = await fh.stat({ bigint: true });
      if (st.size > BigInt(MAX_BYTES)) throw this.#damaged();
      const size = Number(st.size);
      let c = this.#cache;
      if (!c || c.ino !== st.ino || size < c.offset) {
        await this.#forget();
        c = { pin: fh, ino: st.ino, gen: -1, offset: 0, deltas: new Map() };
        keep = true;
      }
      if (size > c.offset) {
        const buf = Buffer.alloc(size - c.offset);
        const { bytesRead } = await fh.read(buf, 0, buf.length, c.offset);
        const text = buf.subarray(0, bytesRead).toString('utf8');
        const end = text.lastIndexOf('\n') + 1;
        const lines = text.slice(0, end).split('\n').slice(0, -1);
        for (const line of lines) {
          if (c.gen < 0) {
            const h = HEADER_RE.exec(line);
            if (!h) throw this.#damaged();
            c.gen = Number(h[1]);
            continue;
          }
          const m = LINE_RE.exec(line);
          if (!m) throw this.#damaged();
          c.deltas.set(m[1]!, (c.deltas.get(m[1]!) ?? 0) + Number(m[2]));
        }
        c.offset += Buffer.byteLength(text.slice(0, end), 'utf8');
      }
      // No header: not written by writeSecretFile, so by no keytether; nothing was granted.
      if (c.gen < 0) throw this.#damaged();
      this.#cache = c;
      return c;
    } catch (e) {
      keep = false;
      await this.#forget();
      throw e;
    } finally {
      if (!keep) await fh.close().catch(() => undefined);
    }
  }

  #damaged(): UserError {
    return new UserError(
      `${this.file} is damaged; stop keytether agent, then remove it (uses since the last token change are forgotten)`,
    );
  }
}
