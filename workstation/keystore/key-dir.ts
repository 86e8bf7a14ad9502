// How the agent notices that another process (`keytether keys import`, `keys remove`) changed
// the key directory.

import * as fs from 'node:fs/promises';
import * as path from 'node:path';

/**
 * The key files and their inodes. Not the directory's mtime: an import creates a temporary
 * file, then renames it, both within one coarse filesystem tick, and a look in between (an
 * inotify-driven inventory read does exactly that) would never see the renamed file change it.
 * A replaced file has a new inode, so re-imports are seen too.
 */
export async function keyDirSignature(dir: string): Promise<string> {
  const names = (await fs.readdir(dir)).filter((n) => /^[0-9A-F]+\.(key|ssh|v5)$/.test(n));
  const parts = await Promise.all(
    names.sort().map(async (n) => {
      const st = await fs.stat(path.join(dir, n)).catch(() => undefined);
      return `${n}:${st?.ino ?? 0}:${st?.mtimeMs ?? 0}`;
    }),
  );
  return parts.join('\n');
}
