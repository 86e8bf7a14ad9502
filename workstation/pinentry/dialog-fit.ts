// The description of a pinentry dialog, cut to what every pinentry can show. Two limits: an
// Assuan line is at most 1000 bytes after %-escaping (pinentry answers "Line passed to IPC too
// long" and shows nothing), and pinentry-curses in an 80×24 terminal — the smallest a user is
// likely to have, and tmux/ssh default — refuses a dialog taller than the screen ("Screen or
// window too small", measured: 20 description rows fit a CONFIRM, 21 do not). Either failure
// would turn a confirmation into a refusal the user never saw, so the text is fitted here: whole
// lines first, in order (the question and the verified fields come first), then the rest counted
// in one last line, so that nothing is dropped silently.

import { percentEscapeText } from '../../protocol/assuan/index.js';
import { displayText } from '../../protocol/display-text.js';

/** Columns pinentry-curses wraps at in an 80-column terminal (frame and padding take 4). */
export const DIALOG_COLUMNS = 76;
/**
 * Description rows that leave room for the rest of the dialog at 24 rows: a CONFIRM needs 4
 * (frame, blank, buttons), a GETPIN 8 (prompt, entry, error line); each keeps 2 rows spare for
 * wrapping that breaks a little earlier than ours.
 */
export const DIALOG_ROWS = { confirm: 18, passphrase: 14 } as const;

// East Asian wide and fullwidth ranges (and the emoji blocks): two columns in a terminal.
const WIDE =
  /[\u1100-\u115f\u2e80-\u303e\u3041-\u33ff\u3400-\u4dbf\u4e00-\u9fff\ua000-\ua4cf\uac00-\ud7a3\uf900-\ufaff\ufe30-\ufe4f\uff00-\uff60\uffe0-\uffe6\u{1f300}-\u{1f64f}\u{1f900}-\u{1f9ff}\u{20000}-\u{3fffd}]/u;

function columns(cp: string): number {
  return WIDE.test(cp) ? 2 : 1;
}

/** Rows LINE takes when wrapped at word boundaries to WIDTH columns (long words are broken). */
export function wrappedRows(line: string, width = DIALOG_COLUMNS): number {
  let rows = 1;
  let col = 0;
  for (const word of line.split(' ')) {
    const w = [...word].reduce((n, cp) => n + columns(cp), 0);
    const need = col === 0 ? w : col + 1 + w;
    if (need <= width) {
      col = need;
      continue;
    }
    if (col > 0) rows++;
    // A word wider than the dialog is broken wherever it reaches the edge.
    rows += Math.max(0, Math.ceil(w / width) - 1);
    col = w % width === 0 && w > 0 ? width : w % width;
  }
  return rows;
}

/** Bytes of S on an Assuan line, %-escaped (the measure for keytether's own pinentry). */
export function escapedBytes(s: string): number {
  return Buffer.byteLength(percentEscapeText(s), 'utf8');
}

/** The longest start of LINE (with an ellipsis) that wraps into ROWS rows and BYTES bytes. */
function cutLine(
  line: string,
  rows: number,
  bytes: number,
  measure: (s: string) => number,
): string | undefined {
  const cps = [...line];
  let lo = 0;
  let hi = cps.length;
  // Binary search on the number of code points kept; both measures grow with it.
  while (lo < hi) {
    const mid = Math.ceil((lo + hi) / 2);
    const s = `${cps.slice(0, mid).join('')}…`;
    if (wrappedRows(s) <= rows && measure(s) <= bytes) lo = mid;
    else hi = mid - 1;
  }
  return lo === 0 ? undefined : `${cps.slice(0, lo).join('')}…`;
}

/**
 * TEXT made safe (the one display sanitiser) and fitted into ROWS rows of an 80-column dialog and
 * MAX_BYTES once escaped (MEASURE: %-escaping by default; a line break costs 3 bytes either way).
 * Lines that do not fit are replaced by one line that says how many were left out.
 */
export function fitDialogText(
  text: string,
  maxBytes: number,
  rows: number,
  measure: (s: string) => number = escapedBytes,
): string {
  const lines = displayText(text).split('\n');
  // A line break costs 3 bytes (%0A) before every line but the first.
  const cost = lines.map((l, i) => ({ rows: wrappedRows(l), bytes: measure(l) + (i > 0 ? 3 : 0) }));
  const rest = cost.reduceRight<{ rows: number; bytes: number }[]>(
    (acc, c) => [
      { rows: c.rows + (acc[0]?.rows ?? 0), bytes: c.bytes + (acc[0]?.bytes ?? 0) },
      ...acc,
    ],
    [],
  );
  const NOTE = { rows: 1, bytes: 3 + 40 };
  const kept: string[] = [];
  let usedRows = 0;
  let usedBytes = 0;
  for (let i = 0; i < lines.length; i++) {
    if (usedRows + rest[i]!.rows <= rows && usedBytes + rest[i]!.bytes <= maxBytes) {
      kept.push(...lines.slice(i));
      break;
    }
    // Not all of it fits: keep this line only if the note about the others still fits after it.
    const c = cost[i]!;
    if (usedRows + c.rows + NOTE.rows <= rows && usedBytes + c.bytes + NOTE.bytes <= maxBytes) {
      kept.push(lines[i]!);
      usedRows += c.rows;
      usedBytes += c.bytes;
      continue;
    }
    // The first line is the question itself: cut it rather than lose it.
    if (kept.length === 0) {
      const cut = cutLine(lines[0]!, rows - NOTE.rows, maxBytes - NOTE.bytes, measure);
      if (cut !== undefined) {
        kept.push(cut);
        i++;
      }
    }
    const left = lines.length - i;
    if (left > 0) kept.push(`(… ${left} more line${left === 1 ? '' : 's'} not shown)`);
    break;
  }
  return kept.join('\n');
}
