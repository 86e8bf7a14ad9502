// What the holder's audit record says about one request before its decision: who asked, through
// which front, for which key and operation, and what the holder saw of the content.

import { ErrorCode, GpgError } from '../../protocol/gpg-error.js';
import type { KeyEntry, Requester } from '../../protocol/keyholder.js';
import { AuditError, type AuditInput } from '../audit/audit.js';
import type { ClearSignResult } from './clear-sign.js';

/** The record's fields common to every outcome; the decision, reason and duration come last. */
export function auditBase(
  op: 'sign' | 'decrypt' | 'ssh-sign',
  keygrip: string,
  requester: Requester,
  entry: KeyEntry | undefined,
  extra: Pick<AuditInput, 'hashAlgo' | 'digest' | 'ssh'>,
  clear: ClearSignResult | undefined,
) {
  return {
    front: requester.front,
    host: requester.host,
    peer: requester.relayPeer,
    tokenId: requester.tokenId,
    requester: {
      pid: requester.pid,
      uid: requester.uid,
      user: requester.user,
      command: requester.command,
      name: requester.name,
      parents: requester.parents,
    },
    fingerprint: entry?.fingerprint,
    keygrip: keygrip.toUpperCase(),
    op,
    ...extra,
    verification:
      op === 'sign'
        ? requester.front === 'local'
          ? 'local'
          : (clear?.verification ?? 'blind')
        : undefined,
    ...(clear?.content
      ? {
          content: {
            kind: clear.content.kind,
            bytes: clear.content.bytes,
            sha256: clear.content.sha256,
            summary: clear.content.summary,
            ...(clear.content.files ? { files: clear.content.files } : {}),
          },
        }
      : {}),
  };
}

/** What the requester hears when the holder cannot write a request's audit record. */
export function auditRefusal(e: unknown): GpgError {
  const cause = e instanceof AuditError ? e.message.replace(/^.*?: /, '') : String(e);
  return new GpgError(
    ErrorCode.GENERAL,
    `request refused: the holder cannot write its audit log (${cause})`,
  );
}
