// Where a holder keeps its state, and the only way secret files get written or read: the
// permission checks live here so no caller can forget them.

import { constants as fsc } from 'node:fs';
import * as fs from 'node:fs/promises';
import * as os from 'node:os';
import * as path from 'node:path';
import { randomBytes } from 'node:crypto';
import { UserError } from '../../system/user-error.js';

export function resolveHome(env: NodeJS.ProcessEnv = process.env): string {
  const explicit = env.KEYTETHER_HOME;
  if (explicit) return path.resolve(explicit);
  const xdg = env.XDG_DATA_HOME;
  // XDG says relative values are invalid and must be ignored.
  if (xdg && path.isAbsolute(xdg)) return path.join(xdg, 'keytether');
  return path.join(os.homedir(), '.local', 'share', 'keytether');
}

function myUid(): number | undefined {
  return typeof process.getuid === 'function' ? process.getuid() : undefined;
}

/** Creates DIR (0700, with parents) or checks that an existing one is private to us. */
export async function ensureHome(dir: string): Promise<void> {
  let st;
  try {
    st = await fs.lstat(dir);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'ENOENT') {
      throw new UserError(`cannot use ${dir}: ${(e as Error).message}`);
    }
    try {
      await fs.mkdir(dir, { recursive: true, mode: 0o700 });
      // mkdir's mode is filtered by the umask; the leaf must end up exactly 0700.
      await fs.chmod(dir, 0o700);
    } catch (e2) {
      throw new UserError(`cannot create ${dir}: ${(e2 as Error).message}`);
    }
    return;
  }
  if (!st.isDirectory()) {
    throw new UserError(`${dir} exists but is not a directory; move it away or set KEYTETHER_HOME`);
  }
  const uid = myUid();
  if (uid !== undefined && st.uid !== uid) {
    throw new UserError(
      `${dir} is owned by uid ${st.uid}, not by you (uid ${uid}); use a directory you own (KEYTETHER_HOME)`,
    );
  }
  if ((st.mode & 0o077) !== 0) {
    throw new UserError(
      `${dir} is accessible by other users (mode ${(st.mode & 0o777).toString(8)}); run: chmod 700 ${dir}`,
    );
  }
}

async function writeAll(fh: fs.FileHandle, data: Uint8Array): Promise<void> {
  let off = 0;
  while (off < data.length) {
    const { bytesWritten } = await fh.write(data, off, data.length - off);
    if (bytesWritten <= 0) throw new Error(`short write (${off} of ${data.length} bytes)`);
    off += bytesWritten;
  }
}

/**
 * Replaces FILE atomically with DATA, mode 0600: readers see the old or the new content, never a
 * torn file, even if we crash mid-write.
 */
export async function writeSecretFile(file: string, data: Uint8Array | string): Promise<void> {
  const bytes = typeof data === 'string' ? Buffer.from(data, 'utf8') : data;
  const dir = path.dirname(file);
  const tmp = path.join(dir, `.${path.basename(file)}.${randomBytes(6).toString('hex')}.tmp`);
  let fh: fs.FileHandle | undefined;
  try {
    fh = await fs.open(tmp, fsc.O_WRONLY | fsc.O_CREAT | fsc.O_EXCL, 0o600);
    // O_CREAT's mode also passes through the umask; force it.
    await fh.chmod(0o600);
    await writeAll(fh, bytes);
    await fh.sync();
    await fh.close();
    fh = undefined;
    await fs.rename(tmp, file);
  } catch (e) {
    await fh?.close().catch(() => undefined);
    await fs.rm(tmp, { force: true }).catch(() => undefined);
    throw new UserError(`cannot write ${file}: ${(e as Error).message}`);
  }
  // Persist the rename itself; not all filesystems allow fsync on a directory, which is harmless.
  try {
    const dh = await fs.open(dir, fsc.O_RDONLY);
    await dh.sync().catch(() => undefined);
    await dh.close();
  } catch {
    /* best effort */
  }
}

/** Reads a secret file, refusing one that others could have read or replaced. */
export async function readSecretFile(file: string): Promise<Buffer> {
  let fh: fs.FileHandle;
  try {
    fh = await fs.open(file, fsc.O_RDONLY | fsc.O_NOFOLLOW);
  } catch (e) {
    throw new UserError(`cannot read ${file}: ${(e as Error).message}`);
  }
  try {
    const st = await fh.stat();
    if (!st.isFile()) throw new UserError(`${file} is not a regular file; remove it`);
    const uid = myUid();
    if (uid !== undefined && st.uid !== uid) {
      throw new UserError(
        `${file} is owned by uid ${st.uid}, not by you; remove it or fix its owner`,
      );
    }
    if ((st.mode & 0o077) !== 0) {
      throw new UserError(
        `${file} is accessible by other users (mode ${(st.mode & 0o777).toString(8)}); run: chmod 600 ${file}`,
      );
    }
    return await fh.readFile();
  } finally {
    await fh.close();
  }
}
