// How a requester is named to the person at the workstation: in the pinentry's description (both
// keytether's own pinentry and gpg-agent's) and in confirmation prompts.

import type { Requester } from '../../protocol/keyholder.js';

// Fields a server sends end up in a dialog the person trusts; a newline or a bidi override there
// could forge a line such as "request from local gpg". C0/C1 controls, line/paragraph separators
// and Unicode direction/zero-width format characters are replaced.
const UNSAFE = /[\u0000-\u001f\u007f-\u009f\u061c\u200b-\u200f\u2028-\u202e\u2060-\u2069\ufeff]/gu;
const MAX_FIELD_CHARS = 64;

/** One requester field made safe to show on a single line, at most 64 characters. */
export function cleanField(v: string | number | undefined): string | undefined {
  if (v === undefined) return undefined;
  const chars = [...String(v).replace(UNSAFE, '?')];
  return chars.length > MAX_FIELD_CHARS
    ? `${chars.slice(0, MAX_FIELD_CHARS - 1).join('')}…`
    : chars.join('');
}

export function describeRequester(r: Requester): string {
  const user = cleanField(r.user);
  const command = cleanField(r.command);
  const pid = cleanField(r.pid);
  if (r.front === 'local') {
    const parts = ['local gpg'];
    if (command) parts.push(`(${command}${pid ? `, pid ${pid}` : ''})`);
    else if (pid) parts.push(`(pid ${pid})`);
    return parts.join(' ');
  }
  // Over ssh and the relay only the host / token is established by keytether itself; user,
  // command and pid are whatever the server says, so they are shown as its claims.
  const who =
    r.front === 'ssh'
      ? `ssh ${cleanField(r.host) ?? 'server'}`
      : `relay token ${cleanField(r.tokenId) ?? '?'}`;
  const claims: string[] = [];
  if (user) claims.push(`user=${user}`);
  if (command) claims.push(`cmd=${command}`);
  if (pid) claims.push(`pid=${pid}`);
  return claims.length ? `${who} (claims ${claims.join(', ')})` : who;
}

/** gpg's own text (or FALLBACK) with the requester named in front of it. */
export function requesterPrefixedText(
  r: Requester,
  gpgText: string | undefined,
  fallback: string,
): string {
  return `keytether: request from ${describeRequester(r)}\n\n${gpgText ?? fallback}`;
}

// SETKEYDESC arguments are one word: blanks become '+', and gpg-agent leaves %XX for the pinentry
// to decode, so '+' and '%' themselves (and anything not printable ASCII) must be %XX.
const MAX_ESCAPED = 900;

/** Plus-percent escaping as gpg does it for SETKEYDESC, cut to fit one Assuan line. */
export function plusPercentEscape(text: string): string {
  let out = '';
  for (const b of Buffer.from(text, 'utf8')) {
    let piece: string;
    if (b === 0x20) piece = '+';
    else if (b < 0x21 || b > 0x7e || b === 0x25 || b === 0x2b || b === 0x22) {
      piece = `%${b.toString(16).toUpperCase().padStart(2, '0')}`;
    } else piece = String.fromCharCode(b);
    if (out.length + piece.length > MAX_ESCAPED) break;
    out += piece;
  }
  return out;
}
