#!/usr/bin/env node
// Prints the plain closing line `N passed, N failed[, N skipped]` from a tap 21 run's output.
// tap ends with a line like `# { total: 12, pass: 11, fail: 1, skip: 2, todo: 1 }` (keys with
// zero counts are left out). Reads the log named on the command line, or stdin.
// Exits 1 (printing nothing on stdout) when the log has no summary, e.g. when the run stopped
// before tap started.

import { readFileSync, realpathSync } from 'node:fs';
import { pathToFileURL } from 'node:url';

/** @returns {{passed: number, failed: number, skipped: number} | null} */
export function summarize(log) {
  let found = null;
  for (const line of log.split(/\r?\n/)) {
    const m = /^# \{ (.*) \}\s*$/.exec(line);
    if (!m) continue;
    const counts = {};
    for (const part of m[1].split(',')) {
      const kv = /^\s*(\w+): (\d+)\s*$/.exec(part);
      if (kv) counts[kv[1]] = Number(kv[2]);
    }
    if (!('total' in counts)) continue;
    // The last summary wins: tap prints one per run and a log may hold several.
    found = {
      passed: counts.pass ?? 0,
      failed: counts.fail ?? 0,
      skipped: (counts.skip ?? 0) + (counts.todo ?? 0),
    };
  }
  return found;
}

export function closingLine(s) {
  return `${s.passed} passed, ${s.failed} failed` + (s.skipped ? `, ${s.skipped} skipped` : '');
}

if (process.argv[1] && import.meta.url === pathToFileURL(realpathSync(process.argv[1])).href) {
  const file = process.argv[2];
  const log = readFileSync(file ?? 0, 'utf8');
  const s = summarize(log);
  if (!s) {
    console.error(`tap-summary: no tap summary line in ${file ?? 'stdin'}; the tests did not run`);
    process.exit(1);
  }
  console.log(closingLine(s));
}
