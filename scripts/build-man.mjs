// Writes the man page into a build: `node scripts/build-man.mjs [dist]` runs that build's own
// hidden `keytether man`, so the page is generated from the same command tree that --help shows
// and cannot drift from it. Run by `npm run build`; package.json "man" points npm at the result.

import { execFileSync } from 'node:child_process';
import { mkdirSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';

const dist = resolve(process.argv[2] ?? 'dist');
const page = execFileSync(process.execPath, [join(dist, 'cli', 'main.js'), 'man'], {
  encoding: 'utf8',
});
mkdirSync(join(dist, 'man'), { recursive: true });
writeFileSync(join(dist, 'man', 'keytether.1'), page);
