// `npm run bench [-- NAME… [--OPTION…]]`: runs every bench/<name>.ts (compiled to
// dist/bench/<name>.js), or only the named ones. Each bench module exports `run()` and prints its
// own numbers; everything from the first argument starting with `-` on is handed to the named
// benches as `run(options)` (`npm run bench -- load --seconds 20`), and a bench whose run()
// takes no options refuses them.

import { readdirSync } from 'node:fs';
import { basename, dirname, join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

interface Bench {
  run(options: string[]): Promise<void>;
}

const here = dirname(fileURLToPath(import.meta.url));

function available(): string[] {
  const ext = import.meta.url.endsWith('.ts') ? '.ts' : '.js';
  return readdirSync(here)
    .filter((f) => f.endsWith(ext) && !f.endsWith('.d.ts') && !f.endsWith('.test' + ext))
    .map((f) => basename(f, ext))
    .filter((n) => n !== 'run')
    .sort();
}

async function runBenches(names: string[], options: string[]): Promise<number> {
  const all = available();
  const unknown = names.filter((n) => !all.includes(n));
  if (unknown.length > 0) {
    process.stderr.write(
      `bench: no bench named ${unknown.join(', ')}; available: ${all.join(', ') || 'none'}\n`,
    );
    return 2;
  }
  if (options.length > 0 && names.length === 0) {
    process.stderr.write(`bench: name the bench that ${options.join(' ')} is for\n`);
    return 2;
  }
  const chosen = names.length > 0 ? names : all;
  if (chosen.length === 0) {
    process.stderr.write('bench: there are no benches yet\n');
    return 0;
  }
  const ext = import.meta.url.endsWith('.ts') ? '.ts' : '.js';
  for (const name of chosen) {
    const mod = (await import(pathToFileURL(join(here, name + ext)).href)) as Partial<Bench>;
    if (typeof mod.run !== 'function') {
      process.stderr.write(`bench: bench/${name} does not export run()\n`);
      return 1;
    }
    if (options.length > 0 && mod.run.length === 0) {
      process.stderr.write(`bench: bench/${name} takes no options (got ${options.join(' ')})\n`);
      return 2;
    }
    process.stdout.write(`== ${name}\n`);
    const start = performance.now();
    await mod.run(options);
    process.stdout.write(
      `== ${name} done in ${((performance.now() - start) / 1000).toFixed(1)} s\n`,
    );
  }
  return 0;
}

const args = process.argv.slice(2);
const firstOption = args.findIndex((a) => a.startsWith('-'));
process.exitCode =
  firstOption < 0
    ? await runBenches(args, [])
    : await runBenches(args.slice(0, firstOption), args.slice(firstOption));
