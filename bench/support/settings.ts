// What every bench reads the same way: numeric settings from the environment, the built CLI it
// drives, and the median it reports.

import { existsSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));

/** NAME from the environment as a number ≥ MIN; FALLBACK when unset or empty. */
export function envNumber(name: string, fallback: number, min: number): number {
  const raw = process.env[name];
  if (raw === undefined || raw === '') return fallback;
  const n = Number(raw);
  if (!Number.isFinite(n) || n < min) throw new Error(`${name} must be a number ≥ ${min}`);
  return n;
}

/** The built CLI: KEYTETHER_BENCH_CLI, else dist/cli next to the compiled benches, else the repo's dist/. */
export function cliPath(): string {
  const candidates = [
    process.env.KEYTETHER_BENCH_CLI,
    path.join(here, '..', '..', 'cli', 'main.js'),
    path.join(here, '..', '..', 'dist', 'cli', 'main.js'),
  ];
  const found = candidates.find((p): p is string => p !== undefined && existsSync(p));
  if (!found) throw new Error('no built CLI found; run `npm run build` first');
  return found;
}

/** The middle value (mean of the two middle ones for an even count); NaN for none. */
export function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  if (s.length === 0) return NaN;
  const m = s.length >> 1;
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
}
