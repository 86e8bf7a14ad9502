// What a waiting confirmation shows outside the pinentry (the approval page, `keytether
// approve`): who asks, which key, which operation and the content, each fact labelled with how
// the holder knows it. Every string is made inert here (displayField) so no client has to.

import { displayField } from '../../protocol/display-text.js';
import type { KeyEntry, Requester } from '../../protocol/keyholder.js';
import { describeProcessChain } from '../backends/requester-text.js';
import type { ClearSignResult } from '../holder/clear-sign.js';

/** How a fact is known: proven by the holder, claimed by the server, or not seen at all. */
export type Provenance = 'verified' | 'reported' | 'blind' | 'local';

export interface PendingApproval {
  id: string;
  createdAt: string;
  op: 'sign' | 'decrypt' | 'ssh-sign';
  /** Front and host are the transport's; the rest is what the server reports. */
  requester: {
    front: Requester['front'];
    host?: string;
    tokenId?: string;
    relayPeer?: string;
    user?: string;
    process?: string;
  };
  key: { fingerprint: string; keygrip: string; algorithm: string; userIds?: string[] };
  /** For a signature: whether the holder saw what it covers. */
  verification?: Provenance;
  /** The content's lines as the pinentry shows them, each labelled within the line. */
  content?: { kind: string; summary: string; lines: string[] };
  /** Why the content is not shown, for a blind signature. */
  blindWhy?: string;
  /** The policy's own "remember for", when the rule has one (ms). */
  policyRememberMs?: number;
}

const f = (v: string, max = 200) => displayField(v, max);

export function pendingView(
  op: PendingApproval['op'],
  entry: KeyEntry,
  r: Requester,
  clear: ClearSignResult | undefined,
  policyRememberMs: number | undefined,
  userIds: readonly string[] = [],
): Omit<PendingApproval, 'id' | 'createdAt'> {
  const chain = describeProcessChain(r);
  const process = chain !== undefined && r.pid !== undefined ? `${chain} (pid ${r.pid})` : chain;
  const verification: Provenance | undefined =
    op !== 'sign' ? undefined : r.front === 'local' ? 'local' : (clear?.verification ?? 'blind');
  return {
    op,
    requester: {
      front: r.front,
      ...(r.host !== undefined ? { host: f(r.host) } : {}),
      ...(r.tokenId !== undefined ? { tokenId: f(r.tokenId) } : {}),
      ...(r.relayPeer !== undefined ? { relayPeer: f(r.relayPeer) } : {}),
      ...(r.user !== undefined ? { user: f(r.user) } : {}),
      ...(process !== undefined ? { process: f(process) } : {}),
    },
    key: {
      fingerprint: entry.fingerprint,
      keygrip: entry.keygrip.toUpperCase(),
      algorithm: f(entry.algorithm),
      ...(userIds.length > 0 ? { userIds: userIds.slice(0, 4).map((u) => f(u)) } : {}),
    },
    ...(verification !== undefined ? { verification } : {}),
    ...(clear?.content
      ? {
          content: {
            kind: clear.content.kind,
            summary: f(clear.content.summary),
            lines: clear.content.lines.map((l) => f(l, 1000)),
          },
        }
      : {}),
    ...(clear?.why !== undefined ? { blindWhy: f(clear.why) } : {}),
    ...(policyRememberMs !== undefined ? { policyRememberMs } : {}),
  };
}
