// Which audit records a reader asks for (`keytether audit list/summary`, the web page's audit
// view): the filters as a user types them, parsed with limits into one AuditFilter, and the test
// of one record against it. Values only: reading the log is query.ts's.

import { UsageError } from '../../system/user-error.js';
import type { AuditDecision } from './record.js';

export const AUDIT_DECISIONS: readonly AuditDecision[] = [
  'allowed',
  'confirmed',
  'denied',
  'canceled',
  'failed',
];

/** A key as records name it: a keygrip or fingerprint (any case), a 16-hex key id, SSH SHA256:. */
export type KeyMatcher =
  | { kind: 'exact'; hex: string }
  | { kind: 'key-id'; hex: string }
  | { kind: 'ssh'; fingerprint: string };

export interface AuditFilter {
  key?: KeyMatcher;
  /** Compared case-insensitively with the record's host. */
  host?: string;
  tokenId?: string;
  decision?: AuditDecision;
  /** Records at or after this time. */
  since?: Date;
  /** Records before this time. */
  until?: Date;
}

/** What the fields of a record the filter looks at can be. */
export interface FilterableRecord {
  time: string;
  host?: string | undefined;
  tokenId?: string | undefined;
  keygrip?: string | undefined;
  fingerprint?: string | undefined;
  decision: string;
}

/** The filters as given on a command line or in a query string; absent ones do not filter. */
export interface AuditFilterText {
  key?: string | undefined;
  host?: string | undefined;
  token?: string | undefined;
  decision?: string | undefined;
  since?: string | undefined;
  until?: string | undefined;
}

const MAX_TEXT = 256;
const UNIT_MS: Record<string, number> = {
  m: 60_000,
  h: 3_600_000,
  d: 86_400_000,
  w: 604_800_000,
};
const RELATIVE = /^(\d{1,5})([mhdw])$/;
// A date, or a date and time with an optional zone; without a zone it is UTC, as records are.
const ISO =
  /^(\d{4})-(\d{2})-(\d{2})(?:[T ](\d{2}):(\d{2})(?::(\d{2})(\.\d{1,3})?)?(Z|[+-]\d{2}:\d{2})?)?$/;

function tooLong(flag: string, text: string): UsageError | undefined {
  return text.length > MAX_TEXT
    ? new UsageError(`${flag} takes at most ${MAX_TEXT} characters`)
    : undefined;
}

/**
 * A point in time as a user writes it: `2026-12-07`, `2026-12-07T14:00`, `2026-12-07T14:00:00Z`,
 * `…+02:00`, or an age such as `90m`, `24h`, `7d`, `2w` (that long before NOW).
 */
export function parseAuditTime(text: string, flag: string, now: Date = new Date()): Date {
  const s = text.trim();
  const bad = () =>
    new UsageError(
      `${flag} takes a date (2026-12-07, 2026-12-07T14:00Z) or an age (90m, 24h, 7d), not '${s.slice(0, 40)}'`,
    );
  if (s.length > 40) throw bad();
  const rel = RELATIVE.exec(s);
  if (rel) {
    const ms = Number(rel[1]) * UNIT_MS[rel[2]!]!;
    return new Date(now.getTime() - ms);
  }
  const m = ISO.exec(s);
  if (!m) throw bad();
  const [, y, mo, d, h, mi, sec, frac, zone] = m;
  const iso =
    h === undefined
      ? `${y}-${mo}-${d}T00:00:00Z`
      : `${y}-${mo}-${d}T${h}:${mi}:${sec ?? '00'}${frac ?? ''}${zone ?? 'Z'}`;
  const when = new Date(iso);
  // Date accepts 2026-02-30 as 2 March; a user who typed it made a mistake worth hearing about.
  const sameDay = new Date(`${y}-${mo}-${d}T00:00:00Z`);
  if (
    !Number.isFinite(when.getTime()) ||
    !Number.isFinite(sameDay.getTime()) ||
    sameDay.toISOString().slice(0, 10) !== `${y}-${mo}-${d}` ||
    Number(h ?? 0) > 23 ||
    Number(mi ?? 0) > 59 ||
    Number(sec ?? 0) > 59
  ) {
    throw bad();
  }
  return when;
}

/** A user's name for a key, as the records can be matched against it. */
export function parseKeyMatcher(text: string, what = '--key'): KeyMatcher {
  const s = text.trim();
  if (/^SHA256:[A-Za-z0-9+/]{43}$/.test(s)) return { kind: 'ssh', fingerprint: s };
  const hex = s.replace(/\s+/g, '').replace(/^0x/i, '').toUpperCase();
  if (/^[0-9A-F]{40}$|^[0-9A-F]{64}$/.test(hex)) return { kind: 'exact', hex };
  if (/^[0-9A-F]{16}$/.test(hex)) return { kind: 'key-id', hex };
  throw new UsageError(
    `${what} takes a fingerprint, keygrip, 16-digit key id or SSH SHA256: fingerprint, not '${s.slice(0, 80)}'`,
  );
}

/** One AuditFilter from the filters as text; UsageError (exit 2) for any it cannot read. */
export function parseAuditFilter(text: AuditFilterText, now: Date = new Date()): AuditFilter {
  const filter: AuditFilter = {};
  for (const [flag, value] of [
    ['--host', text.host],
    ['--token', text.token],
  ] as const) {
    if (value === undefined) continue;
    const e = tooLong(flag, value);
    if (e) throw e;
    if (value.trim() === '') throw new UsageError(`${flag} needs a value`);
  }
  if (text.key !== undefined) filter.key = parseKeyMatcher(text.key);
  if (text.host !== undefined) filter.host = text.host.trim().toLowerCase();
  if (text.token !== undefined) filter.tokenId = text.token.trim();
  if (text.decision !== undefined) {
    const d = text.decision.trim().toLowerCase();
    if (!(AUDIT_DECISIONS as readonly string[]).includes(d)) {
      throw new UsageError(
        `--decision takes one of ${AUDIT_DECISIONS.join(', ')}, not '${text.decision.slice(0, 40)}'`,
      );
    }
    filter.decision = d as AuditDecision;
  }
  if (text.since !== undefined) filter.since = parseAuditTime(text.since, '--since', now);
  if (text.until !== undefined) filter.until = parseAuditTime(text.until, '--until', now);
  if (filter.since && filter.until && filter.since >= filter.until) {
    throw new UsageError(
      `--since (${filter.since.toISOString()}) must be before --until (${filter.until.toISOString()})`,
    );
  }
  return filter;
}

/** Whether the key a record (or an unlocked key of the status) names is the one M names. */
export function keyMatches(
  m: KeyMatcher,
  rec: { keygrip?: string | undefined; fingerprint?: string | undefined },
): boolean {
  if (m.kind === 'ssh') return rec.fingerprint === m.fingerprint;
  const fpr = rec.fingerprint?.toUpperCase();
  if (m.kind === 'exact') return fpr === m.hex || rec.keygrip?.toUpperCase() === m.hex;
  // A v4 key id is the fingerprint's last 16 hex digits (v5/v6: the first 16).
  if (fpr === undefined) return false;
  return fpr.length === 40 ? fpr.endsWith(m.hex) : fpr.startsWith(m.hex);
}

export function matchesFilter(f: AuditFilter, rec: FilterableRecord): boolean {
  if (f.decision !== undefined && rec.decision !== f.decision) return false;
  if (f.host !== undefined && rec.host?.toLowerCase() !== f.host) return false;
  if (f.tokenId !== undefined && rec.tokenId !== f.tokenId) return false;
  if (f.key !== undefined && !keyMatches(f.key, rec)) return false;
  if (f.since !== undefined || f.until !== undefined) {
    const t = Date.parse(rec.time);
    if (!Number.isFinite(t)) return false;
    if (f.since !== undefined && t < f.since.getTime()) return false;
    if (f.until !== undefined && t >= f.until.getTime()) return false;
  }
  return true;
}

/** The filters in words, for a summary's heading: `host build1, since 2026-12-06T…`. */
export function describeFilter(f: AuditFilter): string {
  const parts: string[] = [];
  if (f.key) parts.push(`key ${f.key.kind === 'ssh' ? f.key.fingerprint : f.key.hex}`);
  if (f.host !== undefined) parts.push(`host ${f.host}`);
  if (f.tokenId !== undefined) parts.push(`token ${f.tokenId}`);
  if (f.decision !== undefined) parts.push(`decision ${f.decision}`);
  if (f.since) parts.push(`since ${f.since.toISOString()}`);
  if (f.until) parts.push(`until ${f.until.toISOString()}`);
  return parts.join(', ');
}
