// Durations as command-line flags and the approval page's fields spell them (`90s`, `15m`,
// `1h30m`, `500ms`): one parser, so the page refuses a lifetime with the CLI's sentence.
// (config.toml's durations, which also take plain seconds, are workstation/home/duration.ts.)

import { UsageError } from './user-error.js';

const UNIT_MS: Record<string, number> = {
  ms: 1,
  s: 1000,
  m: 60_000,
  h: 3_600_000,
  d: 86_400_000,
  w: 604_800_000,
};

/**
 * Parses a duration such as `90s`, `15m`, `1h`, `2d`, `1h30m` or `500ms` into milliseconds.
 * Throws UsageError for anything else, including zero and absurdly long values.
 */
export function parseDuration(text: string): number {
  const s = text.trim();
  if (s.length === 0 || s.length > 32) {
    throw new UsageError(`'${text.slice(0, 32)}' is not a duration; use e.g. 90s, 15m, 1h or 2d`);
  }
  const part = /(\d+)(ms|s|m|h|d|w)/y;
  let total = 0;
  let pos = 0;
  while (pos < s.length) {
    part.lastIndex = pos;
    const m = part.exec(s);
    if (!m) throw new UsageError(`'${s}' is not a duration; use e.g. 90s, 15m, 1h or 2d`);
    total += Number(m[1]) * (UNIT_MS[m[2] as string] as number);
    pos = part.lastIndex;
  }
  if (total <= 0) throw new UsageError(`the duration '${s}' must be longer than zero`);
  if (!Number.isSafeInteger(total) || total > 10 * 365 * UNIT_MS.d!) {
    throw new UsageError(`the duration '${s}' is longer than ten years`);
  }
  return total;
}
