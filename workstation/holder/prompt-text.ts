// What the holder's confirmation asks and the sentence that refuses a blind signature: the words
// a user reads before a key is used for a remote.

import type { KeyEntry, Requester } from '../../protocol/keyholder.js';
import type { ClearSignSetting } from '../policy/policy.js';
import { describeRequester, requestedByLine } from '../backends/requester-text.js';

/** The lines naming who asks: `keytether: allow …?` and the process chain. */
export function askLines(r: Requester, what: string, entry: KeyEntry): string[] {
  const by = requestedByLine(r);
  return [
    `keytether: allow ${describeRequester(r)} to ${what} with key ${entry.fingerprint}?`,
    ...(by !== undefined ? [by] : []),
  ];
}

export function confirmText(
  op: 'sign' | 'decrypt',
  entry: KeyEntry,
  r: Requester,
  digest: string | undefined,
  shown?: string[],
): string {
  if (op === 'sign' && shown) return [...askLines(r, 'sign', entry), '', ...shown].join('\n');
  const what =
    op === 'sign' ? `sign blind${digest ? ` (digest ${digest.slice(0, 16)}…)` : ''}` : 'decrypt';
  return askLines(r, what, entry).join('\n');
}

/**
 * The sentence refusing a blind remote signature, or undefined when policy lets it through. A
 * certify-capable key must not sign what it cannot see by default: the digest could certify an
 * attacker's user id or bind an attacker's subkey to the user's identity.
 */
export function refuseBlind(
  setting: ClearSignSetting,
  why: string | undefined,
  certifyCapable: boolean,
): string | undefined {
  if (setting !== 'required') return undefined;
  // A signing subkey helps only where the default for certify-capable keys is what refused.
  const subkey = certifyCapable ? 'sign with a signing subkey, or ' : '';
  return (
    `clear-sign required: ${why ?? 'the holder cannot see what it signs'}; ` +
    `${subkey}sign through 'keytether git-sign' (git's gpg.program; "$KEYTETHER_GIT_SIGN" for files) so the holder can check the data`
  );
}
