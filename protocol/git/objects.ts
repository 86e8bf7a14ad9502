// git's object format, read from bytes alone: the holder uses it to check what a server claims a
// commit contains, so nothing here trusts an id it did not compute. An object's id is the hash of
// `<type> <size>\0<body>` (SHA-1 or SHA-256, by the repository's object format); a tree's entries
// are `<octal mode> <name>\0<raw id>`. Malformed input throws GitObjectError, never anything else.
//
// SHA-1 caveat: git hashes with collision detection (sha1dc); node's SHA-1 does not, so a proof
// in a SHA-1 repository is only as strong as plain SHA-1. SHA-256 repositories do not have that gap.

import { createHash } from 'node:crypto';

export type GitHash = 'sha1' | 'sha256';
export type GitObjectType = 'commit' | 'tree' | 'blob' | 'tag';

export class GitObjectError extends Error {}

const ID_BYTES: Readonly<Record<GitHash, number>> = { sha1: 20, sha256: 32 };
const TYPES: ReadonlySet<string> = new Set(['commit', 'tree', 'blob', 'tag']);

export function idBytes(hash: GitHash): number {
  return ID_BYTES[hash];
}

/** The object format an id's spelling implies (40 or 64 lowercase hex digits), if any. */
export function hashOfId(id: string): GitHash | undefined {
  if (/^[0-9a-f]{40}$/.test(id)) return 'sha1';
  if (/^[0-9a-f]{64}$/.test(id)) return 'sha256';
  return undefined;
}

/** The id of a loose object (`<type> <size>\0<body>`, header included). */
export function objectId(hash: GitHash, loose: Uint8Array): string {
  return createHash(hash).update(loose).digest('hex');
}

/** `<type> <size>\0` in front of BODY: the bytes an object's id is the hash of. */
export function looseObject(type: GitObjectType, body: Uint8Array): Buffer {
  return Buffer.concat([Buffer.from(`${type} ${body.length}\0`, 'latin1'), body]);
}

/** Splits a loose object into its type and body, checking the header's size. */
export function parseLoose(loose: Uint8Array): { type: GitObjectType; body: Buffer } {
  const buf = Buffer.from(loose.buffer, loose.byteOffset, loose.byteLength);
  const nul = buf.indexOf(0, 0);
  if (nul < 0 || nul > 32) throw new GitObjectError('object without a header');
  const m = /^([a-z]+) (0|[1-9][0-9]{0,9})$/.exec(buf.toString('latin1', 0, nul));
  if (!m || !TYPES.has(m[1]!)) throw new GitObjectError('object with a malformed header');
  const body = buf.subarray(nul + 1);
  if (Number(m[2]) !== body.length) throw new GitObjectError('object size does not match');
  return { type: m[1] as GitObjectType, body };
}

/** git's file type bits; what decides M versus T and whether a path is descended into. */
export type EntryKind = 'tree' | 'file' | 'symlink' | 'submodule';

export interface TreeEntry {
  /** git's canonical mode (40000, 100644, 100755, 120000, 160000), as git itself reads it. */
  mode: number;
  kind: EntryKind;
  name: Buffer;
  id: string;
}

const S_IFMT = 0o170000;

/** git's canon_mode(): what old trees' odd modes (100664…) mean to a diff today. */
function canonical(mode: number): { mode: number; kind: EntryKind } {
  switch (mode & S_IFMT) {
    case 0o040000:
      return { mode: 0o040000, kind: 'tree' };
    case 0o100000:
      return { mode: mode & 0o100 ? 0o100755 : 0o100644, kind: 'file' };
    case 0o120000:
      return { mode: 0o120000, kind: 'symlink' };
    case 0o160000:
      return { mode: 0o160000, kind: 'submodule' };
    default:
      throw new GitObjectError(`tree entry with an unknown mode ${mode.toString(8)}`);
  }
}

/**
 * git's tree order: bytes, with a subtree's name compared as if it ended in '/'. It is also the
 * order `git diff-tree` walks two trees in, so a merge in this order lists paths as git does.
 */
export function compareEntries(a: TreeEntry, b: TreeEntry): number {
  const n = Math.min(a.name.length, b.name.length);
  const c = a.name.subarray(0, n).compare(b.name.subarray(0, n));
  if (c !== 0) return c;
  const ca = a.name.length > n ? a.name[n]! : a.kind === 'tree' ? 0x2f : 0;
  const cb = b.name.length > n ? b.name[n]! : b.kind === 'tree' ? 0x2f : 0;
  return ca - cb;
}

/**
 * A tree's entries. Stricter than git's reader where a forged tree could otherwise mislead a
 * diff: entries must be sorted and names unique (git fsck's duplicateEntries), and a name can be
 * neither empty, nor '.', '..', nor contain '/'.
 */
export function parseTree(hash: GitHash, body: Uint8Array): TreeEntry[] {
  const buf = Buffer.from(body.buffer, body.byteOffset, body.byteLength);
  const width = ID_BYTES[hash];
  const entries: TreeEntry[] = [];
  const names = new Set<string>();
  let at = 0;
  while (at < buf.length) {
    const sp = buf.indexOf(0x20, at);
    if (sp < 0 || sp - at > 6 || sp === at) throw new GitObjectError('tree entry without a mode');
    const modeText = buf.toString('latin1', at, sp);
    if (!/^[0-7]+$/.test(modeText)) throw new GitObjectError('tree entry with a malformed mode');
    const nul = buf.indexOf(0, sp + 1);
    if (nul < 0 || nul + 1 + width > buf.length) throw new GitObjectError('truncated tree entry');
    const name = buf.subarray(sp + 1, nul);
    if (name.length === 0 || name.includes(0x2f)) {
      throw new GitObjectError('tree entry with a malformed name');
    }
    const nameKey = name.toString('latin1');
    if (nameKey === '.' || nameKey === '..') {
      throw new GitObjectError('tree entry with a malformed name');
    }
    if (names.has(nameKey)) throw new GitObjectError('tree with a duplicate entry');
    names.add(nameKey);
    const entry: TreeEntry = {
      ...canonical(parseInt(modeText, 8)),
      name,
      id: buf.toString('hex', nul + 1, nul + 1 + width),
    };
    const prev = entries.at(-1);
    if (prev && compareEntries(prev, entry) >= 0) {
      throw new GitObjectError('tree entries out of order');
    }
    entries.push(entry);
    at = nul + 1 + width;
  }
  return entries;
}

export interface CommitHeaders {
  tree: string;
  parents: string[];
  /** The message's first line, as bytes decoded from UTF-8 (display only). */
  subject: string;
}

/**
 * The ids a commit names. git requires `tree` first and the `parent` lines right after it
 * (commit.c parse_commit_buffer); ids must be of the repository's format.
 */
export function parseCommit(hash: GitHash, body: Uint8Array): CommitHeaders {
  const text = Buffer.from(body.buffer, body.byteOffset, body.byteLength).toString('utf8');
  const end = text.indexOf('\n\n');
  const head = (end < 0 ? text : text.slice(0, end)).split('\n');
  const idRe = hash === 'sha1' ? /^[0-9a-f]{40}$/ : /^[0-9a-f]{64}$/;
  const tree = /^tree (\S+)$/.exec(head[0] ?? '')?.[1];
  if (tree === undefined || !idRe.test(tree)) throw new GitObjectError('commit without a tree');
  const parents: string[] = [];
  for (const line of head.slice(1)) {
    if (!line.startsWith('parent ')) break;
    const id = line.slice('parent '.length);
    if (!idRe.test(id)) throw new GitObjectError('commit with a malformed parent');
    parents.push(id);
  }
  const message = end < 0 ? '' : text.slice(end + 2);
  return { tree, parents, subject: message.split('\n', 1)[0] ?? '' };
}
