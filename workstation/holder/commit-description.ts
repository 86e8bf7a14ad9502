// What the user is shown about a verified commit: subject and body start, author, committer,
// parents, tree, and the changed files when the server sent the objects that prove them. It all
// has to fit one pinentry SETDESC line (1000 bytes after %-escaping, with keytether's own first
// line in front) and a 24-row curses pinentry, so lines are chosen against a budget: the facts
// always, then file names, then body lines, each only if it still fits.

import { displayField } from '../../protocol/display-text.js';
import type { SignContent } from '../../protocol/keyholder.js';
import { proveChangedFiles, type ChangedFiles } from './changed-files.js';

/** Room for the content lines; the rest of SETDESC's 1000 bytes is the question above them. */
export const COMMIT_LINES_BUDGET = { bytes: 600, rows: 14 } as const;
const MAX_FILE_LINES = 8;
const MAX_BODY_LINES = 3;
const AUDIT_PATHS = 8;

/** The file-list facts the audit record keeps. */
export interface FilesSummary {
  proven: boolean;
  count?: number;
  /** `M path` for the first few changes. */
  first?: string[];
  why?: string;
}

/** Bytes a line costs on the SETDESC line: %, CR and LF become %XX, and the line break too. */
export function escapedCost(line: string): number {
  let n = 3;
  for (const cp of line) n += cp === '%' || cp === '\n' || cp === '\r' ? 3 : Buffer.byteLength(cp);
  return n;
}

const v = (s: string, max = 72) => displayField(s, max);
/** A path cut from the front when long: the file's name is the part that must stay readable. */
function pathField(path: string, max: number): string {
  const chars = [...displayField(path, Number.MAX_SAFE_INTEGER)];
  return chars.length > max ? `…${chars.slice(chars.length - max + 1).join('')}` : chars.join('');
}
const ident = (s: string) => s.replace(/ \d+ [+-]\d{4}$/, '');

function filesHeadline(files: ChangedFiles): string {
  if (!files.proven) return `changed files: not proven (${v(files.why, 56)})`;
  const n = files.changes.length;
  if (files.against === 'root') return `files (verified): ${n} added (root commit)`;
  const against = files.against === 'first-parent' ? ' against first parent' : '';
  return `files (verified): ${n} changed${against}`;
}

export function describeCommit(
  content: SignContent,
  headers: readonly [string, string][],
  message: string,
  uids: readonly string[],
): { summary: string; lines: string[]; files: FilesSummary } {
  const get = (k: string) => headers.filter(([n]) => n === k).map(([, val]) => val);
  const body = message.split('\n');
  const subject = body[0] ?? '';
  const files = proveChangedFiles(content.data, content.objects);

  const head = [`commit (verified): ${v(subject)}`];
  const author = get('author')[0] ?? '';
  const facts = [`author: ${v(ident(author))}`];
  const committer = get('committer')[0];
  if (committer !== undefined && ident(committer) !== ident(author)) {
    facts.push(`committer: ${v(ident(committer))}`);
  }
  const mail = /<([^>]*)>/.exec(author)?.[1];
  if (mail && !uids.some((u) => u.toLowerCase() === mail.toLowerCase())) {
    facts.push(`note: the author's address is not on this key`);
  }
  const parents = get('parent');
  const parentSubject = files.proven && files.parentSubject ? files.parentSubject : undefined;
  facts.push(
    parents.length === 0
      ? 'parents: none (a root commit)'
      : v(
          `parents: ${parents.map((p) => p.slice(0, 12)).join(', ')}` +
            (parentSubject === undefined
              ? ''
              : parents.length > 1
                ? ` (first: "${parentSubject}")`
                : ` "${parentSubject}"`),
        ),
  );
  facts.push(`tree: ${v(get('tree')[0] ?? '?', 16)}`);
  facts.push(filesHeadline(files));

  const changes = files.proven ? files.changes : [];
  const fileLine = (i: number) => `  ${changes[i]!.status} ${pathField(changes[i]!.path, 68)}`;
  const moreLine = (k: number) => `  …and ${k} more`;
  const bodyLines = body
    .slice(1)
    .filter((x) => x.trim())
    .slice(0, MAX_BODY_LINES)
    .map((l) => `  ${v(l)}`);

  let bytes = 0;
  let rows = 0;
  const take = (line: string): boolean => {
    const cost = escapedCost(line);
    if (bytes + cost > COMMIT_LINES_BUDGET.bytes || rows + 1 > COMMIT_LINES_BUDGET.rows) {
      return false;
    }
    bytes += cost;
    rows += 1;
    return true;
  };
  for (const l of [...head, ...facts]) take(l);
  // Files before body lines: the message is the server's to write, the list is what changed.
  const shownFiles: string[] = [];
  for (let i = 0; i < Math.min(changes.length, MAX_FILE_LINES); i++) {
    const rest = changes.length - i - 1;
    const line = fileLine(i);
    const reserve = rest > 0 ? escapedCost(moreLine(changes.length)) : 0;
    if (bytes + escapedCost(line) + reserve > COMMIT_LINES_BUDGET.bytes) break;
    if (rows + 1 + (rest > 0 ? 1 : 0) > COMMIT_LINES_BUDGET.rows) break;
    take(line);
    shownFiles.push(line);
  }
  if (shownFiles.length < changes.length) {
    const more = moreLine(changes.length - shownFiles.length);
    if (take(more)) shownFiles.push(more);
  }
  const shownBody: string[] = [];
  for (const l of bodyLines) {
    if (!take(l)) break;
    shownBody.push(l);
  }

  return {
    summary: `commit: ${v(subject, 100)}`,
    lines: [...head, ...shownBody, ...facts, ...shownFiles],
    files: files.proven
      ? {
          proven: true,
          count: changes.length,
          first: changes.slice(0, AUDIT_PATHS).map((c) => `${c.status} ${pathField(c.path, 120)}`),
        }
      : { proven: false, why: files.why },
  };
}
