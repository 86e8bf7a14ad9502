// The changed-file list of a commit, proven from git objects: the shim's walk (real
// `git cat-file --batch`) gathers the objects, the holder hashes and diffs them, and the result
// must equal `git diff-tree -r --name-status` on real repositories, SHA-1 and SHA-256. Anything
// forged, missing or oversized gives "not proven", never another list.

import t, { type Test } from 'tap';
import { randomBytes } from 'node:crypto';
import { chmod, mkdir, rm, symlink, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { commitObjects } from '../server/commit-objects.js';
import { proveChangedFiles } from '../workstation/holder/changed-files.js';
import {
  COMMIT_LINES_BUDGET,
  describeCommit,
  escapedCost,
} from '../workstation/holder/commit-description.js';
import { decodeBundle, encodeBundle, GIT_OBJECT_LIMITS } from '../protocol/git/object-bundle.js';
import { looseObject, objectId } from '../protocol/git/objects.js';
import { makeRepo, type GitRepo } from './support/git-repo.js';

async function put(repo: GitRepo, file: string, text: string): Promise<void> {
  await mkdir(path.dirname(path.join(repo.dir, file)), { recursive: true });
  await writeFile(path.join(repo.dir, file), text);
}

function commit(repo: GitRepo, message: string): string {
  repo.git('add', '-A');
  repo.git('commit', '-q', '--allow-empty', '-m', message);
  return repo.git('rev-parse', 'HEAD').trim();
}

/** What the shim sends and the holder concludes for COMMIT (an unsigned one: its payload). */
async function prove(repo: GitRepo, id: string) {
  const payload = Buffer.from(repo.git('cat-file', 'commit', id), 'utf8');
  const objects = await commitObjects(payload, repo.env);
  return { payload, objects, files: proveChangedFiles(payload, objects) };
}

async function checkAgainstGit(t: Test, repo: GitRepo, id: string, what: string) {
  const { files } = await prove(repo, id);
  t.equal(files.proven, true, `${what}: proven`);
  if (!files.proven) return t.comment(files.why);
  t.same(
    files.changes.map((c) => [c.status, c.path]),
    repo.nameStatus(id),
    `${what}: same as git diff-tree -r --name-status`,
  );
}

for (const objectFormat of ['sha1', 'sha256'] as const) {
  t.test(`proven lists equal git diff-tree (${objectFormat})`, async (t) => {
    const repo = await makeRepo({ objectFormat });
    t.teardown(() => repo.cleanup());
    await put(repo, 'README', 'hello\n');
    await put(repo, 'src/lib/deep.ts', 'deep\n');
    await put(repo, 'src/top.ts', 'top\n');
    await put(repo, 'docs/a/b/c/d.md', 'd\n');
    await symlink('README', path.join(repo.dir, 'link'));
    const root = commit(repo, 'root');
    await checkAgainstGit(t, repo, root, 'root commit: everything added');
    const rootProof = await prove(repo, root);
    t.match(rootProof.files, { proven: true, against: 'root' });

    await put(repo, 'src/new.ts', 'new\n');
    await put(repo, 'src/lib/deep.ts', 'deeper\n');
    await rm(path.join(repo.dir, 'src/top.ts'));
    await checkAgainstGit(t, repo, commit(repo, 'add, modify, delete'), 'add/modify/delete');

    repo.git('mv', 'src/new.ts', 'src/renamed.ts');
    await checkAgainstGit(t, repo, commit(repo, 'rename'), 'rename is D + A');

    await put(repo, 'docs/a/b/c/e.md', 'e\n');
    await put(repo, 'docs/a/x/y.md', 'y\n');
    await rm(path.join(repo.dir, 'src/lib'), { recursive: true });
    await checkAgainstGit(t, repo, commit(repo, 'nested'), 'nested dirs, a whole dir deleted');

    await chmod(path.join(repo.dir, 'README'), 0o755);
    await checkAgainstGit(t, repo, commit(repo, 'mode'), 'mode change');

    await rm(path.join(repo.dir, 'link'));
    await put(repo, 'link', 'now a file\n');
    await rm(path.join(repo.dir, 'README'));
    await put(repo, 'README/inside', 'file became a dir\n');
    await put(repo, 'README.md', 'sorts between README and README/\n');
    await checkAgainstGit(t, repo, commit(repo, 'types'), 'symlink → file (T), file → dir');

    const head = repo.git('rev-parse', 'HEAD').trim();
    repo.git('update-index', '--add', '--cacheinfo', `160000,${head},vendor/sub`);
    repo.git('commit', '-q', '-m', 'submodule');
    await checkAgainstGit(t, repo, repo.git('rev-parse', 'HEAD').trim(), 'a submodule entry');

    const same = commit(repo, 'nothing changed');
    await checkAgainstGit(t, repo, same, 'an empty commit');
    t.match((await prove(repo, same)).files, { proven: true, changes: [] });

    repo.git('checkout', '-q', '-b', 'side');
    await put(repo, 'side/only.txt', 'side\n');
    await put(repo, 'docs/a/x/y.md', 'changed on side\n');
    commit(repo, 'on side');
    repo.git('checkout', '-q', 'main');
    await put(repo, 'main-only.txt', 'main\n');
    commit(repo, 'on main');
    repo.git('merge', '-q', '--no-ff', '-m', 'merge side', 'side');
    const merge = repo.git('rev-parse', 'HEAD').trim();
    await checkAgainstGit(t, repo, merge, 'merge, against its first parent');
    const m = await prove(repo, merge);
    t.match(m.files, { proven: true, against: 'first-parent', parentSubject: 'on main' });
  });
}

t.test('the objects sent grow with the change, not the repository', async (t) => {
  const repo = await makeRepo();
  t.teardown(() => repo.cleanup());
  for (let d = 0; d < 30; d++) {
    for (let f = 0; f < 20; f++) await put(repo, `dir${d}/sub/f${f}.txt`, `${d}/${f}\n`);
  }
  commit(repo, 'big');
  await put(repo, 'dir7/sub/f3.txt', 'changed\n');
  const id = commit(repo, 'one file');
  const { objects, files } = await prove(repo, id);
  t.match(files, { proven: true, changes: [{ status: 'M', path: 'dir7/sub/f3.txt' }] });
  // root tree, parent commit, parent root tree, dir7 and dir7/sub on both sides.
  t.equal(decodeBundle(objects!).objects.size, 7);
});

t.test('forged, missing or oversized objects are never a proven list', async (t) => {
  const repo = await makeRepo();
  t.teardown(() => repo.cleanup());
  await put(repo, 'a/keep.txt', 'keep\n');
  await put(repo, 'a/old.txt', 'old\n');
  commit(repo, 'one');
  await put(repo, 'a/new.txt', 'new\n');
  const id = commit(repo, 'two');
  const { payload, objects } = await prove(repo, id);
  const bundle = decodeBundle(objects!);
  const entries = () =>
    [...bundle.objects].map(([oid, o]) => [oid, looseObject(o.type, o.body)] as [string, Buffer]);

  await t.test('a tree with changed bytes under its old id', async (t) => {
    const forged = entries().map(([oid, loose]): [string, Buffer] => {
      if (!loose.toString('latin1').startsWith('tree ')) return [oid, loose];
      return [oid, Buffer.from(loose.toString('latin1').replace('new.txt', 'evil.sh'), 'latin1')];
    });
    const r = proveChangedFiles(payload, encodeBundle('sha1', forged, false));
    t.match(r, { proven: false, why: /does not hash to its id/ });
  });

  await t.test('a valid tree of other content, under its own id', async (t) => {
    // Well-formed and correctly hashed, just not the tree the commit names: it is never used.
    const other = looseObject('tree', Buffer.alloc(0));
    const kept = entries().filter(([, l]) => !l.toString('latin1').startsWith('tree '));
    const r = proveChangedFiles(
      payload,
      encodeBundle('sha1', [...kept, [objectId('sha1', other), other]], false),
    );
    t.match(r, { proven: false, why: /not sent/ });
  });

  await t.test('a missing subtree or parent', async (t) => {
    const sub = repo.git('rev-parse', `${id}:a`).trim();
    const r = proveChangedFiles(
      payload,
      encodeBundle(
        'sha1',
        entries().filter(([oid]) => oid !== sub),
        false,
      ),
    );
    t.match(r, { proven: false, why: /1 tree object\(s\) were not sent/ });
    const parent = repo.git('rev-parse', `${id}^`).trim();
    t.match(
      proveChangedFiles(
        payload,
        encodeBundle(
          'sha1',
          entries().filter(([oid]) => oid !== parent),
          false,
        ),
      ),
      { proven: false, why: /parent commit was not sent/ },
    );
    t.match(proveChangedFiles(payload, undefined), { proven: false, why: /sent no git objects/ });
  });

  await t.test('a commit object passed off as a tree', async (t) => {
    const tree = repo.git('rev-parse', `${id}^{tree}`).trim();
    const parent = repo.git('rev-parse', `${id}^`).trim();
    // The payload now names the parent commit as its tree.
    const lying = Buffer.from(payload.toString('latin1').replace(tree, parent), 'latin1');
    t.match(proveChangedFiles(lying, objects), { proven: false, why: /is not a tree/ });
  });

  await t.test('oversize: a bundle over the cap, or a sender that stopped at it', async (t) => {
    const huge = Buffer.concat([objects!, Buffer.alloc(GIT_OBJECT_LIMITS.bundleBytes)]);
    t.match(proveChangedFiles(payload, huge), { proven: false, why: 'too large' });
    const sub = repo.git('rev-parse', `${id}:a`).trim();
    const partial = encodeBundle(
      'sha1',
      entries().filter(([oid]) => oid !== sub),
      true,
    );
    t.match(proveChangedFiles(payload, partial), { proven: false, why: 'too large' });
  });

  await t.test('random damage never throws and never yields another list', async (t) => {
    const truth = (proveChangedFiles(payload, objects) as { changes: unknown }).changes;
    for (let i = 0; i < 2000; i++) {
      const bad = Buffer.from(objects!);
      const n = 1 + (i % 4);
      for (let k = 0; k < n; k++) bad[Math.floor(Math.random() * bad.length)] = randomBytes(1)[0]!;
      const cut = i % 7 === 0 ? bad.subarray(0, Math.floor(Math.random() * bad.length)) : bad;
      const r = proveChangedFiles(payload, cut);
      if (r.proven && JSON.stringify(r.changes) !== JSON.stringify(truth)) {
        t.fail(`a damaged bundle gave another list (round ${i})`);
        return;
      }
    }
    t.match(proveChangedFiles(payload, randomBytes(5000)), { proven: false });
    t.match(proveChangedFiles(Buffer.from('tree zz\n'), objects), { proven: false });
  });
});

t.test('the description fits the SETDESC budget and says what it left out', async (t) => {
  const repo = await makeRepo();
  t.teardown(() => repo.cleanup());
  commit(repo, 'empty root');
  for (let i = 0; i < 40; i++)
    await put(repo, `${'very-long-directory-name/'.repeat(4)}f${i}`, 'x');
  const long = 'Ünïcødé subject that goes on and on % with percent signs '.repeat(3);
  repo.git('add', '-A');
  repo.git('commit', '-q', '-m', long, '-m', `${long}\n${long}\n${long}\n${long}`);
  const id = repo.git('rev-parse', 'HEAD').trim();
  const { payload, objects } = await prove(repo, id);
  const text = payload.toString('utf8');
  const split = text.indexOf('\n\n');
  const headers = text
    .slice(0, split)
    .split('\n')
    .map((l) => [l.slice(0, l.indexOf(' ')), l.slice(l.indexOf(' ') + 1)] as [string, string]);
  const d = describeCommit(
    { kind: 'git-commit', mode: 'binary', time: 0, data: payload, ...(objects ? { objects } : {}) },
    headers,
    text.slice(split + 2),
    ['someone-else@example.org'],
  );
  const cost = d.lines.reduce((n, l) => n + escapedCost(l), 0);
  t.ok(cost <= COMMIT_LINES_BUDGET.bytes, `${cost} bytes ≤ ${COMMIT_LINES_BUDGET.bytes}`);
  t.ok(d.lines.length <= COMMIT_LINES_BUDGET.rows, `${d.lines.length} rows`);
  t.ok(d.lines.includes('files (verified): 40 changed'), 'the count is always there');
  t.ok(
    d.lines.some((l) => /^ {2}A ….*-name\/f0$/.test(l)),
    'the first files are listed',
  );
  t.ok(
    d.lines.some((l) => /^ {2}…and \d+ more$/.test(l)),
    'and the rest counted',
  );
  t.match(d.files, { proven: true, count: 40 });
  t.equal(d.files.first?.length, 8);
});
