// How a requester is named to the person at the workstation: in the pinentry's description (both
// keytether's own pinentry and gpg-agent's) and in confirmation prompts.

import type { Requester } from '../../protocol/keyholder.js';

export function describeRequester(r: Requester): string {
  const parts: string[] = [];
  if (r.front === 'local') parts.push('local gpg');
  else if (r.front === 'ssh') parts.push(`ssh ${r.user ? `${r.user}@` : ''}${r.host ?? 'server'}`);
  else parts.push(`relay token ${r.tokenId ?? '?'}`);
  if (r.command) parts.push(`(${r.command}${r.pid ? `, pid ${r.pid}` : ''})`);
  else if (r.pid) parts.push(`(pid ${r.pid})`);
  return parts.join(' ');
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
