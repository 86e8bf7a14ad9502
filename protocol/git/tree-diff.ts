// What `git diff-tree -r --name-status OLD NEW` prints, computed from tree objects: both trees are
// walked together in git's tree order, only into subtrees whose ids differ, so the objects needed
// (and sent) grow with the change, not with the repository. Like plain diff-tree there is no
// rename detection (a rename is D + A), and a submodule is an entry, never descended into.
//
// The walk takes trees from a lookup that may not have them: it then notes the id as missing and
// goes on with the rest, so a sender can fetch a whole level of missing trees at once and a
// receiver can tell "not sent" apart from "broken".

import { GIT_OBJECT_LIMITS } from './object-bundle.js';
import { compareEntries, GitObjectError, type TreeEntry } from './objects.js';

export type ChangeStatus = 'A' | 'D' | 'M' | 'T';

export interface Change {
  status: ChangeStatus;
  /** Full path from the root tree; git paths are bytes, decoded as UTF-8 for display. */
  path: string;
}

/** A tree's entries by id, or undefined when that tree is not at hand. */
export type TreeLookup = (id: string) => readonly TreeEntry[] | undefined;

export interface TreeDiff {
  /** Complete only when nothing is missing. */
  changes: Change[];
  missing: string[];
}

const NO_ENTRIES: readonly TreeEntry[] = [];
// Each entry looked at costs a little; a tree reused under many paths must not multiply that.
const MAX_ENTRIES_VISITED = 10 * GIT_OBJECT_LIMITS.changes;

/**
 * The changes from tree OLD to tree NEW (either may be undefined: an empty tree, as for a root
 * commit). Throws GitObjectError when a limit is passed.
 */
export function diffTrees(
  newTree: string | undefined,
  oldTree: string | undefined,
  lookup: TreeLookup,
): TreeDiff {
  const changes: Change[] = [];
  const missing = new Set<string>();
  let visited = 0;

  const entriesOf = (id: string | undefined): readonly TreeEntry[] | undefined => {
    if (id === undefined) return NO_ENTRIES;
    const entries = lookup(id);
    if (!entries) missing.add(id);
    return entries;
  };
  const emit = (status: ChangeStatus, path: Buffer): void => {
    if (changes.length >= GIT_OBJECT_LIMITS.changes) throw new GitObjectError('too large');
    changes.push({ status, path: path.toString('utf8') });
  };
  const pathOf = (prefix: Buffer, e: TreeEntry): Buffer => {
    const path = prefix.length
      ? Buffer.concat([prefix, Buffer.from('/'), e.name])
      : Buffer.from(e.name);
    if (path.length > GIT_OBJECT_LIMITS.pathBytes) throw new GitObjectError('a path is too long');
    return path;
  };

  const walk = (n: string | undefined, o: string | undefined, prefix: Buffer, depth: number) => {
    if (depth > GIT_OBJECT_LIMITS.treeDepth) throw new GitObjectError('trees nested too deep');
    const ne = entriesOf(n);
    const oe = entriesOf(o);
    if (!ne || !oe) return;
    visited += ne.length + oe.length;
    if (visited > MAX_ENTRIES_VISITED) throw new GitObjectError('too large');
    let i = 0;
    let j = 0;
    while (i < ne.length || j < oe.length) {
      const a = ne[i];
      const b = oe[j];
      const c = !a ? 1 : !b ? -1 : compareEntries(a, b);
      if (c < 0) {
        i++;
        if (a!.kind === 'tree') walk(a!.id, undefined, pathOf(prefix, a!), depth + 1);
        else emit('A', pathOf(prefix, a!));
      } else if (c > 0) {
        j++;
        if (b!.kind === 'tree') walk(undefined, b!.id, pathOf(prefix, b!), depth + 1);
        else emit('D', pathOf(prefix, b!));
      } else {
        i++;
        j++;
        if (a!.id === b!.id && a!.mode === b!.mode) continue;
        // Equal in tree order means both are trees or both are not.
        if (a!.kind === 'tree') walk(a!.id, b!.id, pathOf(prefix, a!), depth + 1);
        else emit(a!.kind === b!.kind ? 'M' : 'T', pathOf(prefix, a!));
      }
    }
  };

  if (newTree !== oldTree) walk(newTree, oldTree, Buffer.alloc(0), 0);
  return { changes, missing: [...missing] };
}
