// The files of an ssh_config: reading one with limits and splicing in its Include directives,
// with OpenSSH's tilde and wildcard expansion, so the resolver sees one text as ssh would.

import { readdirSync, readFileSync, statSync } from 'node:fs';
import path from 'node:path';
import { UserError } from '../../system/user-error.js';

const MAX_CONFIG_BYTES = 1024 * 1024;
const MAX_INCLUDE_DEPTH = 16;
const MAX_INCLUDED_FILES = 256;

export function expandTilde(p: string, home: string): string {
  if (p === '~') return home;
  if (p.startsWith('~/')) return path.join(home, p.slice(2));
  return p;
}

/** Reads a config file and splices in its Include directives (OpenSSH resolves relative
 * Include paths against ~/.ssh for the user file and /etc/ssh for the system file). */
export function readConfigText(
  file: string,
  base: string,
  home: string,
  state: { files: number },
  depth: number,
): string {
  if (depth > MAX_INCLUDE_DEPTH) {
    throw new UserError(
      `ssh config ${file}: Include nests deeper than ${MAX_INCLUDE_DEPTH} levels`,
    );
  }
  if (++state.files > MAX_INCLUDED_FILES) {
    throw new UserError(`ssh config ${file}: more than ${MAX_INCLUDED_FILES} files included`);
  }
  let text: string;
  try {
    if (statSync(file).size > MAX_CONFIG_BYTES) {
      throw new UserError(`ssh config ${file} is larger than ${MAX_CONFIG_BYTES} bytes`);
    }
    text = readFileSync(file, 'utf8');
  } catch (e) {
    if (e instanceof UserError) throw e;
    const code = (e as NodeJS.ErrnoException).code;
    if (code === 'ENOENT' || code === 'ENOTDIR') return '';
    throw new UserError(`cannot read ssh config ${file} (${code ?? String(e)})`);
  }
  return text
    .split(/\r?\n/)
    .map((line) => {
      const m = /^\s*include(?:\s*=\s*|\s+)(.+?)\s*$/i.exec(line);
      if (!m) return line;
      const parts = (m[1] ?? '').match(/"[^"]*"|\S+/g) ?? [];
      return parts
        .flatMap((raw) => {
          const p = expandTilde(raw.replace(/^"|"$/g, ''), home);
          return expandGlob(path.isAbsolute(p) ? p : path.join(base, p));
        })
        .map((f) => readConfigText(f, base, home, state, depth + 1))
        .join('\n');
    })
    .join('\n');
}

/** Wildcards only in the last path component; matches sorted like glob(3). */
function expandGlob(p: string): string[] {
  const dir = path.dirname(p);
  const name = path.basename(p);
  if (!/[*?]/.test(name)) return [p];
  let entries: string[];
  try {
    entries = readdirSync(dir);
  } catch {
    return [];
  }
  const re = new RegExp(
    '^' +
      name
        .split('')
        .map((c) =>
          c === '*' ? '[^/]*' : c === '?' ? '[^/]' : c.replace(/[.+^${}()|[\]\\]/g, '\\$&'),
        )
        .join('') +
      '$',
  );
  return entries
    .filter((e) => !e.startsWith('.') && re.test(e))
    .sort()
    .map((e) => path.join(dir, e));
}
