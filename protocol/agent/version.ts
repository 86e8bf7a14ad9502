// What `GETINFO version` reports. gpg uses the answer for one thing only: it compares it with its
// own version (common/asshelp.c warn_server_version_mismatch, compare_version_strings) and, when
// the agent's is lower or unparsable, prints "WARNING: server 'gpg-agent' is older than us" and
// two notes, and emits `[GNUPG:] WARNING server_version_mismatch` on its status fd. keytether does
// not know which gpg will connect, so it reports a version no known gpg is newer than — or the
// workstation's real gpg-agent version when that is newer still.

/**
 * Newer than every GnuPG release known when this was written (2.2.50, 2.4.8, 2.5.x; 2.6 was
 * branched), so no gpg up to and including any 2.6.x warns. Raise it when a 2.7 or 3.0 appears.
 */
export const AGENT_VERSION = '2.6.99';

/** `MAJOR.MINOR.MICRO` with an optional suffix, the shape gpg-agent prints (e.g. `2.4.8-unknown`). */
export const VERSION_RE = /^([0-9]{1,9})\.([0-9]{1,9})\.([0-9]{1,9})([\x21-\x7e]{0,40})$/;

/**
 * gpg's compare_version_strings: major, minor and micro numerically, then the suffix by strcmp.
 * An unparsable string is older than any parsable one (gpg warns about it too).
 */
export function compareVersions(a: string, b: string): number {
  const pa = VERSION_RE.exec(a);
  const pb = VERSION_RE.exec(b);
  if (!pa || !pb) return (pa ? 1 : 0) - (pb ? 1 : 0);
  for (let i = 1; i <= 3; i++) {
    const d = Number(pa[i]) - Number(pb[i]);
    if (d !== 0) return Math.sign(d);
  }
  const sa = pa[4] ?? '';
  const sb = pb[4] ?? '';
  return sa < sb ? -1 : sa > sb ? 1 : 0;
}

/** The newest well-formed version among CANDIDATES, if any is well-formed. */
export function newestVersion(...candidates: (string | undefined)[]): string | undefined {
  let best: string | undefined;
  for (const c of candidates) {
    if (c === undefined || !VERSION_RE.test(c)) continue;
    if (best === undefined || compareVersions(c, best) > 0) best = c;
  }
  return best;
}
