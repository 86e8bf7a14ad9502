// The Assuan lines keytether sends a pinentry (text fitted to Assuan's 1000-byte line and to what
// a pinentry shows) and the sentence for the error code a failing pinentry answers with.

import { percentEscapeText } from '../../protocol/assuan/index.js';
import { displayText } from '../../protocol/display-text.js';
import { errText } from '../../protocol/gpg-error.js';
import { fitDialogText } from './dialog-fit.js';

const MAX_LINE_BYTES = 1000;

function escapedLength(cp: string): number {
  return cp === '%' || cp === '\n' || cp === '\r' ? 3 : Buffer.byteLength(cp, 'utf8');
}

/**
 * `CMD <escaped text>`, shortened with an ellipsis so the line fits Assuan's 1000 bytes. The text
 * can come from a remote request, so it goes through the one display sanitiser first.
 */
export function textCommand(cmd: string, text: string): string {
  const clean = displayText(text);
  const budget = MAX_LINE_BYTES - cmd.length - 1;
  let total = 0;
  for (const cp of clean) total += escapedLength(cp);
  if (total <= budget) return `${cmd} ${percentEscapeText(clean)}`;
  let kept = '';
  let used = 0;
  const room = budget - Buffer.byteLength('…', 'utf8');
  for (const cp of clean) {
    const n = escapedLength(cp);
    if (used + n > room) break;
    kept += cp;
    used += n;
  }
  return `${cmd} ${percentEscapeText(kept + '…')}`;
}

/** `SETDESC <escaped text>` that fits both the Assuan line and an 80×24 pinentry-curses. */
export function descriptionCommand(text: string, rows: number): string {
  const cmd = 'SETDESC';
  return `${cmd} ${percentEscapeText(fitDialogText(text, MAX_LINE_BYTES - cmd.length - 1, rows))}`;
}

/** An OPTION value from the environment, or undefined if unusable on an Assuan line. */
export function optionValue(v: string | undefined): string | undefined {
  if (!v || /[\u0000-\u001f\u007f]/.test(v) || v.length > 200) return undefined;
  return v;
}

// libgpg-error's code for ENOTTY (0x8000 | its errno index): what a curses pinentry reports when
// it has no terminal, the classic "Inappropriate ioctl for device".
const GPG_ERR_ENOTTY = 0x8000 | 102;

export function failureText(code: number): string {
  if (code === GPG_ERR_ENOTTY) {
    return 'found no terminal to ask on (Inappropriate ioctl for device; set GPG_TTY or DISPLAY)';
  }
  const known = errText(code);
  return code & 0x8000 || known.startsWith('Unknown')
    ? `failed (error code ${code})`
    : `failed: ${known}`;
}
