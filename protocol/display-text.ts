// Text that a server, a relay or gpg wrote, made safe to put in front of the person at the
// workstation: in a pinentry dialog (keytether's own or gpg-agent's), a confirmation prompt, or a
// terminal line on stderr. This is the only sanitiser; every path to a human goes through it.
//
// What it defends against: a curses or tty pinentry passes terminal escape sequences straight to
// the user's terminal (ESC [2J clears it, OSC 52 writes the clipboard), and a GUI dialog renders
// bidi overrides (U+202E) and line separators, so a forged line such as "request from local gpg"
// or a reversed file name could read differently from what it is. Controls (Cc), format
// characters (Cf: bidi marks and isolates, zero-width characters, the BOM, tag characters),
// line/paragraph separators (Zl, Zp) and lone surrogates (Cs) are replaced with U+FFFD, so the
// person can see that something was there.

const REPLACEMENT = '\ufffd';
// Everything unsafe except line feed, which multi-line text keeps (after CR LF / CR → LF).
const UNSAFE_IN_TEXT = /(?![\n])[\p{Cc}\p{Cf}\p{Zl}\p{Zp}\p{Cs}]/gu;
const UNSAFE_IN_FIELD = /[\p{Cc}\p{Cf}\p{Zl}\p{Zp}\p{Cs}]/gu;

/** Multi-line text for a dialog: line breaks kept (as LF), tabs as a space, the rest replaced. */
export function displayText(s: string): string {
  return s.replace(/\r\n?/g, '\n').replace(/\t/g, ' ').replace(UNSAFE_IN_TEXT, REPLACEMENT);
}

/** Whether S would be shown unchanged on a single line (for values that are refused, not fixed). */
export function isDisplaySafeLine(s: string): boolean {
  return !new RegExp(UNSAFE_IN_FIELD.source, 'u').test(s);
}

/**
 * One value (a host, a user name, a command) on a single line: no line break survives, and it is
 * cut to MAX characters (code points, never half a surrogate pair) with an ellipsis.
 */
export function displayField(v: string | number, max = 64): string {
  const chars = [...String(v).replace(UNSAFE_IN_FIELD, REPLACEMENT)];
  return chars.length > max ? `${chars.slice(0, max - 1).join('')}…` : chars.join('');
}
