// The files a commit changes, proven from git objects the server sent rather than taken from its
// word (clear-signing.md §2.3): the commit text is already verified against the digest, its
// `tree` and first `parent` lines name ids, and every object used is hashed here and must be the
// one its id names. What the server can still do is leave objects out, which makes the list
// unproven, never a different list.

import {
  decodeBundle,
  GIT_OBJECT_LIMITS,
  type GitObject,
} from '../../protocol/git/object-bundle.js';
import {
  GitObjectError,
  hashOfId,
  parseCommit,
  parseTree,
  type TreeEntry,
} from '../../protocol/git/objects.js';
import { diffTrees, type Change } from '../../protocol/git/tree-diff.js';

export type ChangedFiles =
  | {
      proven: true;
      changes: Change[];
      /** What the list is relative to: nothing (a root commit) or the first parent. */
      against: 'root' | 'parent' | 'first-parent';
      /** The first parent's subject, from its verified commit object. */
      parentSubject?: string;
    }
  | { proven: false; why: string };

const kindOf = (o: GitObject | undefined, id: string, want: GitObject['type']): GitObject => {
  if (!o) throw new Missing();
  if (o.type !== want) throw new GitObjectError(`object ${id.slice(0, 12)} is not a ${want}`);
  return o;
};

class Missing extends Error {}

/** The changed-file list of the commit PAYLOAD (verified commit text), from OBJECTS. Never throws. */
export function proveChangedFiles(
  payload: Uint8Array,
  objects: Uint8Array | undefined,
): ChangedFiles {
  if (!objects || objects.length === 0) {
    return { proven: false, why: 'the server sent no git objects' };
  }
  try {
    const treeId = /^tree ([0-9a-f]+)\n/.exec(
      Buffer.from(payload.subarray(0, 80)).toString('latin1'),
    )?.[1];
    const hash = treeId !== undefined ? hashOfId(treeId) : undefined;
    if (!hash) return { proven: false, why: 'the commit names no tree' };
    const commit = parseCommit(hash, payload);
    const bundle = decodeBundle(objects);
    if (bundle.hash !== hash) {
      return { proven: false, why: "the objects are not in the commit's object format" };
    }
    const tooLarge = bundle.truncated ? 'too large' : undefined;
    if (commit.parents.length > GIT_OBJECT_LIMITS.parents) {
      return { proven: false, why: 'too many parents' };
    }
    let oldTree: string | undefined;
    let parentSubject: string | undefined;
    const first = commit.parents[0];
    if (first !== undefined) {
      let parent: GitObject;
      try {
        parent = kindOf(bundle.objects.get(first), first, 'commit');
      } catch (e) {
        if (!(e instanceof Missing)) throw e;
        return { proven: false, why: tooLarge ?? 'the parent commit was not sent' };
      }
      const p = parseCommit(hash, parent.body);
      oldTree = p.tree;
      parentSubject = p.subject;
    }
    const parsed = new Map<string, TreeEntry[]>();
    const diff = diffTrees(commit.tree, oldTree, (id) => {
      const known = parsed.get(id);
      if (known) return known;
      const o = bundle.objects.get(id);
      if (!o) return undefined;
      const entries = parseTree(hash, kindOf(o, id, 'tree').body);
      parsed.set(id, entries);
      return entries;
    });
    if (diff.missing.length > 0) {
      return {
        proven: false,
        why: tooLarge ?? `${diff.missing.length} tree object(s) were not sent`,
      };
    }
    return {
      proven: true,
      changes: diff.changes,
      against:
        commit.parents.length === 0
          ? 'root'
          : commit.parents.length > 1
            ? 'first-parent'
            : 'parent',
      ...(parentSubject !== undefined ? { parentSubject } : {}),
    };
  } catch (e) {
    return {
      proven: false,
      why: e instanceof GitObjectError ? e.message : 'the git objects are malformed',
    };
  }
}
