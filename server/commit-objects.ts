// The git objects that let the holder prove which files a commit changes: its root tree, each
// parent commit (for the subjects), and the first parent's tree, and below them only the subtrees
// whose ids differ: the same walk the holder will do, run here against the repository until it
// asks for nothing more. git calls gpg.program before it writes the commit, but its tree and
// parents are already stored, so all of this can be read while git waits.

import { CatFile, ObjectTooLarge, type CatFileObject } from './cat-file.js';
import {
  BUNDLE_HEAD_BYTES,
  bundleCost,
  encodeBundle,
  GIT_OBJECT_LIMITS,
} from '../protocol/git/object-bundle.js';
import {
  GitObjectError,
  hashOfId,
  looseObject,
  parseCommit,
  parseTree,
  type TreeEntry,
} from '../protocol/git/objects.js';
import { diffTrees } from '../protocol/git/tree-diff.js';
import type { ObjectCollector } from '../protocol/agent/index.js';

class OverLimit extends Error {}

/**
 * The object bundle for commit PAYLOAD, read in the repository git is committing in (ENV and the
 * process's cwd), or undefined when there is nothing to send: not a commit, no git, no repository.
 * Over a limit it sends what it has, marked truncated, so the holder says "too large".
 */
export async function commitObjects(
  payload: Uint8Array,
  env: NodeJS.ProcessEnv,
  opts: { timeoutMs?: number; cwd?: string } = {},
): Promise<Buffer | undefined> {
  const head = Buffer.from(payload.subarray(0, 80)).toString('latin1');
  const treeId = /^tree ([0-9a-f]+)\n/.exec(head)?.[1];
  const hash = treeId !== undefined ? hashOfId(treeId) : undefined;
  if (!hash) return undefined;
  let commit;
  try {
    commit = parseCommit(hash, payload);
  } catch {
    return undefined;
  }

  const loose = new Map<string, Buffer>();
  const trees = new Map<string, TreeEntry[]>();
  let bytes = BUNDLE_HEAD_BYTES;
  let truncated = false;
  const cat = new CatFile(env, {
    maxObjectBytes: GIT_OBJECT_LIMITS.bundleBytes,
    ...(opts.cwd !== undefined ? { cwd: opts.cwd } : {}),
  });
  const timer = setTimeout(() => cat.close(), opts.timeoutMs ?? 10_000);
  const keep = (id: string, o: CatFileObject): void => {
    const l = looseObject(o.type, o.body);
    const cost = bundleCost(hash, l);
    if (bytes + cost > GIT_OBJECT_LIMITS.bundleBytes || loose.size >= GIT_OBJECT_LIMITS.objects) {
      throw new OverLimit();
    }
    bytes += cost;
    loose.set(id, l);
    if (o.type === 'tree') trees.set(id, parseTree(hash, o.body));
  };
  /** Reads IDS into the bundle; false when the repository lacks one. */
  const fetch = async (ids: string[]): Promise<boolean> => {
    const got = await cat.read(ids);
    let all = true;
    got.forEach((o, i) => (o ? keep(ids[i]!, o) : (all = false)));
    return all;
  };

  try {
    const parents = commit.parents.slice(0, GIT_OBJECT_LIMITS.parents);
    if (!(await fetch([commit.tree, ...parents]))) return bundle();
    let oldTree: string | undefined;
    if (parents[0] !== undefined) {
      const first = loose.get(parents[0]);
      if (!first) return bundle();
      oldTree = parseCommit(hash, first.subarray(first.indexOf(0) + 1)).tree;
      if (!(await fetch([oldTree]))) return bundle();
    }
    for (let level = 0; level <= GIT_OBJECT_LIMITS.treeDepth + 1; level++) {
      const { missing } = diffTrees(commit.tree, oldTree, (id) => trees.get(id));
      if (missing.length === 0) break;
      if (!(await fetch(missing))) break;
    }
  } catch (e) {
    if (e instanceof OverLimit || e instanceof ObjectTooLarge) truncated = true;
    else if (e instanceof GitObjectError && e.message === 'too large') truncated = true;
    else if (!(e instanceof GitObjectError) && loose.size === 0) return undefined;
  } finally {
    clearTimeout(timer);
    cat.close();
  }
  return bundle();

  function bundle(): Buffer | undefined {
    return loose.size > 0 ? encodeBundle(hash!, loose, truncated) : undefined;
  }
}

/**
 * The facade's object reader for a commit the shim signs in REPO: git runs there with our
 * environment minus any git variables of our own, plus those the shim's git had.
 */
export const collectCommitObjects: ObjectCollector = (payload, repo) => {
  const env: NodeJS.ProcessEnv = {};
  for (const [k, v] of Object.entries(process.env)) if (!k.startsWith('GIT_')) env[k] = v;
  return commitObjects(payload, { ...env, ...repo.env }, { cwd: repo.cwd });
};
