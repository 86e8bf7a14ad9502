// Durations as config.toml and flags spell them (`15m`, `1h30m`, plain seconds).

import { z } from 'zod';
import { ConfigError } from './config-error.js';

const MAX_DURATION_MS = 10 * 366 * 86_400_000;
const UNIT_MS: Record<string, number> = { s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000 };

/**
 * `15m`, `1h`, `90s`, `2d`, `1h30m`, or plain seconds (`600`, or the number 600) → milliseconds.
 * Throws ConfigError on anything else.
 */
export function parseDuration(text: string | number): number {
  const bad = () =>
    new ConfigError(
      // Quoted as JSON so that a newline or control character in the value stays on one line.
      `${JSON.stringify(String(text).slice(0, 40))} is not a duration: use seconds or a number with s, m, h or d, like 15m`,
    );
  let ms: number;
  if (typeof text === 'number') {
    if (!Number.isInteger(text) || text < 0) throw bad();
    ms = text * 1000;
  } else {
    const s = text.trim();
    if (s.length === 0 || s.length > 32) throw bad();
    if (/^\d+$/.test(s)) {
      ms = Number(s) * 1000;
    } else {
      if (!/^(\d+[smhd])+$/i.test(s)) throw bad();
      ms = 0;
      for (const m of s.matchAll(/(\d+)([smhd])/gi)) {
        ms += Number(m[1]) * (UNIT_MS[m[2]!.toLowerCase()] ?? NaN);
      }
    }
  }
  if (!Number.isSafeInteger(ms) || ms > MAX_DURATION_MS) throw bad();
  return ms;
}

/** Milliseconds → the shortest duration parseDuration reads back, like `30d` or `1h30m`. */
export function formatDuration(ms: number): string {
  let rest = Math.max(0, Math.round(ms / 1000)) * 1000;
  if (rest === 0) return '0s';
  let out = '';
  for (const unit of ['d', 'h', 'm', 's']) {
    const size = UNIT_MS[unit]!;
    const n = Math.floor(rest / size);
    if (n > 0) out += `${n}${unit}`;
    rest -= n * size;
  }
  return out;
}

/** A zod schema for a duration setting, yielding milliseconds. */
export const duration = z.union([z.number(), z.string()]).transform((v, ctx) => {
  try {
    return parseDuration(v);
  } catch (e) {
    ctx.addIssue({ code: 'custom', message: (e as Error).message });
    return z.NEVER;
  }
});
