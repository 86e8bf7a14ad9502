// A short run of every fuzz target (bench/fuzz, `npm run fuzz` runs 10^6 cases each) and a replay
// of every input a fuzz run once broke a parser with (test/fuzz-corpus/TARGET.json), so that a
// regression of a fixed crash fails here. Each target's oracle is stated in its module.
// FUZZ_SMOKE_CASES (default 10^4) and FUZZ_SEED (default fixed) change the short run.

import t from 'tap';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { fromCorpusJson, runTarget, toCorpusJson, type Failure } from '../bench/fuzz/harness.js';
import { TARGETS } from '../bench/fuzz/targets/index.js';

const CASES = Number(process.env.FUZZ_SMOKE_CASES ?? 10_000);
const SEED = Number(process.env.FUZZ_SEED ?? 20261207);
const corpusDir = path.join(path.dirname(fileURLToPath(import.meta.url)), 'fuzz-corpus');

interface CorpusEntry {
  found: string;
  input: string;
}

const show = (f: Failure) =>
  `${f.kind} (${f.generator}, seed ${f.seed}, batch ${f.batch}, case ${f.index}): ${f.message}\n  input: ${f.input.slice(0, 1000)}`;

t.test('every corpus file names a target', async (t) => {
  const names = TARGETS.map((x) => x.name);
  for (const f of readdirSync(corpusDir)) {
    t.ok(names.includes(path.basename(f, '.json')), `${f} belongs to a target`);
  }
});

t.test('corpus inputs survive the JSON round trip exactly', async (t) => {
  const sample = { b: Buffer.from([0, 10, 255]), s: 'a\nb', n: [1, { c: Buffer.alloc(0) }] };
  t.same(fromCorpusJson(toCorpusJson(sample)), sample);
});

for (const target of TARGETS) {
  t.test(`${target.name}: replays its corpus`, async (t) => {
    const file = path.join(corpusDir, `${target.name}.json`);
    if (!existsSync(file)) {
      t.pass('no corpus yet');
      return;
    }
    const entries = JSON.parse(readFileSync(file, 'utf8')) as CorpusEntry[];
    t.ok(entries.length > 0, 'the corpus has inputs');
    for (const e of entries) {
      await t.resolves(async () => target.check(fromCorpusJson(e.input) as never), e.found);
    }
  });

  t.test(`${target.name}: ${CASES} cases (seed ${SEED}) — ${target.oracle}`, async (t) => {
    const start = performance.now();
    // Per-case limit with room for a loaded test run; a case that never returns meets tap's timeout.
    const r = await runTarget(target, { cases: CASES, seed: SEED, maxFailures: 3, caseMs: 10_000 });
    t.equal(r.cases, CASES, 'every case ran');
    t.same(r.failures.map(show), [], 'no crashes and no hangs');
    t.comment(
      `${target.name}: ${Math.round(r.cases / (r.ms / 1000))} cases/s, ${((performance.now() - start) / 1000).toFixed(1)} s`,
    );
  });
}
