// What `keytether doctor` reports: one finding per line, each saying what it saw and, when
// something is wrong, what to run or change. Shared by the workstation's and the server's checks.

export type Severity = 'ok' | 'info' | 'warn' | 'fail';

export interface Finding {
  severity: Severity;
  /** What was checked and what was found, one sentence. */
  text: string;
  /** What to do about it, when there is something to do. */
  fix?: string;
}

export function formatFindings(title: string, findings: readonly Finding[]): string {
  const lines = [`${title}:`];
  for (const f of findings) {
    lines.push(`  ${f.severity.padEnd(4)}  ${f.text}${f.fix ? `; ${f.fix}` : ''}`);
  }
  return lines.join('\n');
}

/** The closing line, e.g. `2 problems, 1 warning`, and whether any check failed. */
export function summarize(findings: readonly Finding[]): { line: string; failed: boolean } {
  const fails = findings.filter((f) => f.severity === 'fail').length;
  const warns = findings.filter((f) => f.severity === 'warn').length;
  const plural = (n: number, w: string) => `${n} ${w}${n === 1 ? '' : 's'}`;
  return {
    line:
      fails + warns === 0
        ? 'no problems found'
        : `${plural(fails, 'problem')}, ${plural(warns, 'warning')}`,
    failed: fails > 0,
  };
}
