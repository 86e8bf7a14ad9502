// The repository's own tooling: the import-rule checker that guards the trust boundaries, and the
// closing-line summariser CI's verdict depends on.
import { execFile } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { promisify } from 'node:util';
import t, { type Test } from 'tap';
import { repoRoot } from './support/cli.js';

const execFileP = promisify(execFile);

async function runScript(
  script: string,
  args: string[],
  input?: string,
): Promise<{ code: number; stdout: string; stderr: string }> {
  const p = execFileP(process.execPath, [join(repoRoot, 'scripts', script), ...args]);
  if (input !== undefined) p.child.stdin!.end(input);
  try {
    const { stdout, stderr } = await p;
    return { code: 0, stdout, stderr };
  } catch (e) {
    const err = e as { code: number; stdout: string; stderr: string };
    return { code: err.code, stdout: err.stdout, stderr: err.stderr };
  }
}

function fixture(t: Test, files: Record<string, string>): string {
  const dir = mkdtempSync(join(tmpdir(), 'kt-imports-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  for (const [rel, text] of Object.entries(files)) {
    mkdirSync(dirname(join(dir, rel)), { recursive: true });
    writeFileSync(join(dir, rel), text);
  }
  return dir;
}

t.test('check-imports passes on this repository', async (t) => {
  const r = await runScript('check-imports.mjs', []);
  t.equal(r.code, 0, r.stdout);
});

t.test('check-imports reports each broken rule with file and line', async (t) => {
  const dir = fixture(t, {
    'protocol/a.ts': [
      "// import { readFile } from 'node:fs';",
      "import { b } from './sub/b.js';",
      "import type { K } from '../workstation/keys.js';",
      'import {',
      '  z,',
      "} from 'fs/promises';",
      'const s = "import \'node:net\'";',
      "export * from 'ws';",
      "const m = await import('node:child_process');",
      "import { createHash } from 'node:crypto';",
      "import { Duplex } from 'node:stream';",
    ].join('\n'),
    'protocol/sub/b.ts': "export { x } from '../a.js';\n",
    'server/s.ts':
      "import { h } from '../workstation/h.js';\nimport { p } from '../protocol/a.js';\n",
    'workstation/w.ts': "export { q } from '../server/s.js';\n",
    'workstation/ok.ts':
      "import { p } from '../protocol/a.js';\nimport { Server } from 'node:net';\n",
    'cli/main.ts': "import '../server/s.js';\nimport '../workstation/w.js';\n",
    'cli/errors.ts': 'export class E {}\n',
    'system/s.ts': "import { E } from '../cli/errors.js';\n",
  });
  const r = await runScript('check-imports.mjs', [dir]);
  t.equal(r.code, 1);
  t.same(
    r.stdout
      .trim()
      .split('\n')
      .map((l) => l.replace(/: .*/, '')),
    [
      'protocol/a.ts:3',
      'protocol/a.ts:6',
      'protocol/a.ts:8',
      'protocol/a.ts:9',
      'system/s.ts:1',
      'server/s.ts:1',
      'workstation/w.ts:1',
    ],
    'exactly the violating imports, at the line of their module name',
  );
  t.match(r.stdout, /protocol\/a\.ts:6: protocol\/ must not import 'fs\/promises'/);
  t.match(r.stdout, /system\/s\.ts:1: system\/ must not import cli\//);
  t.match(r.stderr, /7 import rule violation/);
});

t.test('tap-summary turns tap 21 totals into the closing line', async (t) => {
  const cases: [string, string][] = [
    ['# { total: 12, pass: 11, fail: 1 }\n# time=1ms\n', '11 passed, 1 failed'],
    ['# { total: 181, pass: 181 }\n', '181 passed, 0 failed'],
    ['# { total: 5, pass: 2, fail: 1, skip: 1, todo: 1 }\n', '2 passed, 1 failed, 2 skipped'],
    ['# { total: 1, pass: 1 }\nmore\n# { total: 3, fail: 3 }\n', '0 passed, 3 failed'],
  ];
  for (const [log, line] of cases) {
    const r = await runScript('tap-summary.mjs', [], log);
    t.equal(r.code, 0);
    t.equal(r.stdout, `${line}\n`);
  }
  const none = await runScript('tap-summary.mjs', [], 'npm ERR! typecheck failed\n');
  t.equal(none.code, 1, 'no summary is a failure, not a zero count');
  t.equal(none.stdout, '');
});
