// Real git repositories for tests: commands run with a fixed identity and dates, and none of the
// developer's config, so object ids depend only on what a test does.

import { execFileSync } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import path from 'node:path';

export interface GitRepo {
  dir: string;
  /** GIT_DIR etc. for a process that reads this repository from anywhere. */
  env: NodeJS.ProcessEnv;
  git(...args: string[]): string;
  /** `git diff-tree -r --name-status` for COMMIT against its first parent (or --root). */
  nameStatus(commit: string): [string, string][];
  cleanup(): Promise<void>;
}

export async function makeRepo(opts: { objectFormat?: 'sha1' | 'sha256' } = {}): Promise<GitRepo> {
  const dir = await mkdtemp('/tmp/ktgit-');
  const env: NodeJS.ProcessEnv = {
    PATH: process.env.PATH,
    HOME: dir,
    GIT_CONFIG_NOSYSTEM: '1',
    GIT_CONFIG_GLOBAL: '/dev/null',
    GIT_AUTHOR_NAME: 'Tess Tree',
    GIT_AUTHOR_EMAIL: 'tess@example.org',
    GIT_AUTHOR_DATE: '1733500000 +0000',
    GIT_COMMITTER_NAME: 'Tess Tree',
    GIT_COMMITTER_EMAIL: 'tess@example.org',
    GIT_COMMITTER_DATE: '1733500000 +0000',
  };
  const git = (...args: string[]) =>
    execFileSync('git', args, { cwd: dir, env, encoding: 'utf8', maxBuffer: 64 << 20 });
  git('init', '-q', `--object-format=${opts.objectFormat ?? 'sha1'}`, '-b', 'main');
  return {
    dir,
    env: { ...env, GIT_DIR: path.join(dir, '.git') },
    git,
    nameStatus(commit) {
      const parents = git('rev-list', '--parents', '-n', '1', commit).trim().split(' ').slice(1);
      const args = ['diff-tree', '-r', '--name-status', '-z', '--no-commit-id'];
      const out =
        parents.length === 0 ? git(...args, '--root', commit) : git(...args, parents[0]!, commit);
      const words = out.split('\0').filter((w) => w !== '');
      const pairs: [string, string][] = [];
      for (let i = 0; i + 1 < words.length; i += 2) pairs.push([words[i]!, words[i + 1]!]);
      return pairs;
    },
    cleanup: () => rm(dir, { recursive: true, force: true }),
  };
}
