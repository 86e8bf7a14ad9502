// How a requester is named to the person at the workstation: in the pinentry's description (both
// keytether's own pinentry and gpg-agent's) and in confirmation prompts.

import { displayField, displayText } from '../../protocol/display-text.js';
import type { Requester } from '../../protocol/keyholder.js';
import { DIALOG_ROWS, fitDialogText } from '../pinentry/dialog-fit.js';

/** One requester field made safe to show on a single line, at most 64 characters. */
export function cleanField(v: string | number | undefined): string | undefined {
  return v === undefined ? undefined : displayField(v);
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
  // With a process chain the command leads the "requested by" line that follows this one.
  if (command && requestedByLine(r) === undefined) claims.push(`cmd=${command}`);
  if (pid) claims.push(`pid=${pid}`);
  const said = claims.length ? [`claims ${claims.join(', ')}`] : [];
  const relayPeer = cleanField(r.relayPeer);
  if (relayPeer) said.push(`the relay says it came from ${relayPeer}`);
  return said.length ? `${who} (${said.join('; ')})` : who;
}

/** Characters each process of a chain keeps, and the whole chain. */
const CHAIN_PEER_CHARS = 60;
const CHAIN_PARENT_CHARS = 40;
const CHAIN_CHARS = 150;

/**
 * The requesting process and what started it, newest first: `gpg -bsau … ← git commit -S ← bash
 * ← sshd`; undefined when the front named no process.
 */
export function describeProcessChain(
  r: Pick<Requester, 'command' | 'name' | 'parents'>,
): string | undefined {
  const self = r.command ?? r.name;
  const parents = (r.parents ?? []).map((p) =>
    displayField(p.command ?? p.name, CHAIN_PARENT_CHARS),
  );
  if (self === undefined && parents.length === 0) return undefined;
  const chain = [self !== undefined ? displayField(self, CHAIN_PEER_CHARS) : '?', ...parents];
  return displayField(chain.join(' ← '), CHAIN_CHARS);
}

/** The chain by process names only (`gpg ← git ← bash ← sshd`), for one-line listings. */
export function shortProcessChain(r: Pick<Requester, 'name' | 'parents'>): string | undefined {
  const names = [r.name, ...(r.parents ?? []).map((p) => p.name)];
  if (names.every((n) => n === undefined)) return undefined;
  return displayField(names.map((n) => displayField(n ?? '?', 16)).join(' ← '), 120);
}

/**
 * `requested by: … (reported by the server)`, the line prompts and dialogs show the chain in;
 * undefined without one. From a server every word of it is that server's say-so.
 */
export function requestedByLine(r: Requester): string | undefined {
  // A bare command (no process name, no parents) is already the `cmd=` claim.
  if (r.name === undefined && (r.parents?.length ?? 0) === 0) return undefined;
  const chain = describeProcessChain(r);
  if (chain === undefined) return undefined;
  return `requested by: ${chain}${r.front === 'local' ? '' : ' (reported by the server)'}`;
}

/**
 * gpg's own text (or FALLBACK) with the requester named in front of it, made safe for any
 * pinentry: the gpg-agent back end hands this to gpg-agent, which leaves %XX escapes for its
 * pinentry to decode, so whatever is not removed here reaches the dialog as it was sent.
 */
export function requesterPrefixedText(
  r: Requester,
  gpgText: string | undefined,
  fallback: string,
): string {
  const by = requestedByLine(r);
  const head = `keytether: request from ${describeRequester(r)}${by ? `\n${by}` : ''}`;
  return displayText(`${head}\n\n${gpgText ?? fallback}`);
}

// SETKEYDESC arguments are one word: blanks become '+', and gpg-agent leaves %XX for the pinentry
// to decode, so '+' and '%' themselves (and anything not printable ASCII) must be %XX.
const MAX_ESCAPED = 900;

function plusPercent(text: string): string {
  let out = '';
  for (const b of Buffer.from(text, 'utf8')) {
    if (b === 0x20) out += '+';
    else if (b < 0x21 || b > 0x7e || b === 0x25 || b === 0x2b || b === 0x22) {
      out += `%${b.toString(16).toUpperCase().padStart(2, '0')}`;
    } else out += String.fromCharCode(b);
  }
  return out;
}

/**
 * Plus-percent escaping as gpg does it for SETKEYDESC, of TEXT fitted (by whole lines, never in
 * the middle of a character) into one Assuan line and gpg-agent's 80×24 pinentry-curses.
 */
export function plusPercentEscape(text: string): string {
  return plusPercent(
    fitDialogText(text, MAX_ESCAPED, DIALOG_ROWS.passphrase, (s) => plusPercent(s).length),
  );
}
