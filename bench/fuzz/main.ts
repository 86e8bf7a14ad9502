// `npm run fuzz [-- TARGET…] [--cases N] [--seed S]`: runs every fuzz target (or the named ones)
// for N cases each (default 10^6), each in its own worker thread, and prints one line per target:
// cases, cases/s, crashes, hangs, heap growth after GC and peak RSS growth. Exits 1 if any target
// crashed, hung or grew beyond the memory bounds; failures print their seed, case and input.
// A case the worker never returns from is caught here: the worker's heartbeat (one per batch of
// 1000 cases) stops, and after --hang-ms the worker is stopped and the stuck batch named.

import { parseArgs } from 'node:util';
import { Worker } from 'node:worker_threads';
import {
  batchInputs,
  HEAP_BOUND_BYTES,
  memoryProblems,
  mib,
  RSS_BOUND_BYTES,
  toCorpusJson,
  type Failure,
  type RunResult,
} from './harness.js';
import { TARGETS } from './targets/index.js';

const { values, positionals } = parseArgs({
  options: {
    cases: { type: 'string', default: '1000000' },
    seed: { type: 'string' },
    'hang-ms': { type: 'string', default: '30000' },
    batch: { type: 'string', default: '1000' },
  },
  allowPositionals: true,
  strict: true,
});

const cases = Number(values.cases);
const seed = values.seed !== undefined ? Number(values.seed) : Date.now() % 0x7fffffff;
const hangMs = Number(values['hang-ms']);
const batch = Number(values.batch);
if (![cases, seed, hangMs, batch].every((n) => Number.isSafeInteger(n) && n > 0)) {
  process.stderr.write('fuzz: --cases, --seed, --hang-ms and --batch take positive integers\n');
  process.exit(2);
}
const names = TARGETS.map((t) => t.name);
const unknown = positionals.filter((p) => !names.includes(p));
if (unknown.length > 0) {
  process.stderr.write(
    `fuzz: no target named ${unknown.join(', ')}; available: ${names.join(', ')}\n`,
  );
  process.exit(2);
}
const chosen = positionals.length > 0 ? positionals : names;

type Outcome = { result: RunResult } | { hung: Failure; done: number; ms: number };

function runInWorker(name: string): Promise<Outcome> {
  const heartbeat = new SharedArrayBuffer(16);
  const beat = new Int32Array(heartbeat);
  const worker = new Worker(new URL('./worker.js', import.meta.url), {
    workerData: { target: name, cases, seed, batch, heartbeat },
  });
  const start = performance.now();
  return new Promise((resolve, reject) => {
    let last = -1;
    let lastChange = performance.now();
    const watch = setInterval(() => {
      const n = Atomics.load(beat, 2);
      if (n !== last) {
        last = n;
        lastChange = performance.now();
        return;
      }
      if (performance.now() - lastChange < hangMs) return;
      clearInterval(watch);
      const stuck = Atomics.load(beat, 1);
      const index = Atomics.load(beat, 3);
      void worker.terminate();
      const target = TARGETS.find((t) => t.name === name)!;
      const { gen, values } = batchInputs(target, seed, stuck, batch);
      resolve({
        hung: {
          kind: 'hang',
          generator: gen.name,
          seed,
          batch: stuck,
          index,
          message: `case ${index} of batch ${stuck} did not return for ${hangMs} ms`,
          input: toCorpusJson(values[index]),
        },
        done: Atomics.load(beat, 0),
        ms: performance.now() - start,
      });
    }, 250);
    worker.once('message', (result: RunResult) => {
      clearInterval(watch);
      resolve({ result });
    });
    worker.once('error', (e) => {
      clearInterval(watch);
      reject(e);
    });
  });
}

const pad = (s: string, n: number) => s.padStart(n);
process.stdout.write(
  `fuzz: seed ${seed}, ${cases} cases per target; memory bounds: heap after GC +${mib(HEAP_BOUND_BYTES)}, ` +
    `RSS peak +${mib(RSS_BOUND_BYTES)}\n`,
);
process.stdout.write(
  `${'target'.padEnd(12)}${pad('cases', 10)}${pad('cases/s', 10)}${pad('crashes', 9)}${pad('hangs', 7)}` +
    `${pad('heap Δ', 12)}${pad('RSS peak Δ', 13)}\n`,
);
let bad = 0;
for (const name of chosen) {
  const out = await runInWorker(name);
  if ('hung' in out) {
    bad++;
    process.stdout.write(
      `${name.padEnd(12)}${pad(String(out.done), 10)}${pad('-', 10)}${pad('-', 9)}${pad('1', 7)}\n`,
    );
    report(name, [out.hung]);
    continue;
  }
  const r = out.result;
  const crashes = r.failures.filter((f) => f.kind === 'crash').length;
  const hangs = r.failures.filter((f) => f.kind === 'hang').length;
  const mem = memoryProblems(r);
  process.stdout.write(
    `${name.padEnd(12)}${pad(String(r.cases), 10)}${pad(String(Math.round(r.cases / (r.ms / 1000))), 10)}` +
      `${pad(String(crashes), 9)}${pad(String(hangs), 7)}${pad(mib(r.heapDelta), 12)}${pad(mib(r.rssPeakDelta), 13)}` +
      `${r.gcExposed ? '' : '  (no GC: heap figure is noisy)'}\n`,
  );
  if (r.failures.length > 0 || mem.length > 0) {
    bad++;
    report(name, r.failures);
    for (const m of mem) process.stdout.write(`  ${name}: memory: ${m}\n`);
  }
}
process.exitCode = bad > 0 ? 1 : 0;

function report(name: string, failures: Failure[]): void {
  for (const f of failures) {
    process.stdout.write(
      `  ${name}: ${f.kind} (generator ${f.generator}, seed ${f.seed}, batch ${f.batch}, case ${f.index}): ${f.message}\n` +
        `    input: ${f.input.length > 2000 ? f.input.slice(0, 2000) + '…' : f.input}\n`,
    );
  }
}
