// SECURITY.md backs each claim with a test file and, often, the names of its tests. This keeps
// those pointers true: a renamed or deleted test must take its claim in SECURITY.md with it.

import t from 'tap';
import { readFile } from 'node:fs/promises';
import { existsSync } from 'node:fs';
import path from 'node:path';

const root = path.resolve(import.meta.dirname, '..');
const squash = (s: string) => s.replace(/\s+/g, ' ');

t.test('every test SECURITY.md cites exists, with the names it quotes', async (t) => {
  const doc = squash(await readFile(path.join(root, 'SECURITY.md'), 'utf8'));
  const files = new Set([...doc.matchAll(/`([\w-]+\.test\.ts)`/g)].map((m) => m[1]!));
  t.ok(files.size >= 10, `SECURITY.md cites ${files.size} test files`);
  for (const f of files) t.ok(existsSync(path.join(root, 'test', f)), `test/${f} exists`);

  // `file.test.ts` › "name", "name" …: each quoted name is a test (or check) in that file.
  let quoted = 0;
  for (const m of doc.matchAll(/`([\w-]+\.test\.ts)` › ((?:"[^"]+"(?:, ?)?)+)/g)) {
    const source = squash(await readFile(path.join(root, 'test', m[1]!), 'utf8'));
    for (const [, name] of m[2]!.matchAll(/"([^"]+)"/g)) {
      quoted++;
      t.ok(source.includes(name!), `test/${m[1]} has "${name}"`);
    }
  }
  t.ok(quoted >= 10, `${quoted} quoted test names checked`);
});
