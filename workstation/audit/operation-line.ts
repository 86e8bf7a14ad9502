// One line per operation on the foreground holder's stderr: what the audit log records, short
// enough to read as it scrolls by. The reason matters most for refusals ("No pinentry" when no
// terminal is set, "clear-sign required") that were otherwise only in audit.jsonl.

import { displayField } from '../../protocol/display-text.js';
import { shortProcessChain } from '../backends/requester-text.js';
import type { AuditInput } from './audit.js';

/** `12:04:05 relay (token ktt_…) sign key 0123…CDEF: denied — clear-sign required: …`. */
export function operationLine(rec: AuditInput, now: Date = new Date()): string {
  const time = (rec.time ?? now).toISOString().slice(11, 19);
  const who = [
    rec.front,
    rec.host !== undefined ? `host ${displayField(rec.host)}` : undefined,
    rec.tokenId !== undefined ? `token ${displayField(rec.tokenId)}` : undefined,
    rec.peer !== undefined ? `relay says from ${displayField(rec.peer)}` : undefined,
  ]
    .filter((s) => s !== undefined)
    .join(', ');
  const key = rec.fingerprint ?? rec.keygrip;
  const what = [
    rec.op,
    key !== undefined ? `key ${displayField(key, 64)}` : undefined,
    rec.op === 'sign' && rec.verification !== undefined ? `(${rec.verification})` : undefined,
  ]
    .filter((s) => s !== undefined)
    .join(' ');
  const reason = rec.reason !== undefined ? ` — ${displayField(rec.reason, 200)}` : '';
  const files = rec.content?.files;
  const proof =
    files === undefined
      ? ''
      : files.proven
        ? ` (${files.count ?? 0} file${files.count === 1 ? '' : 's'} changed, proven)`
        : ' (changed files not proven)';
  const summary = rec.content
    ? `; ${displayField(rec.content.summary, 120)}${proof}`
    : rec.ssh
      ? `; ${sshSummary(rec.ssh)}`
      : '';
  const chain = rec.requester ? shortProcessChain(rec.requester) : undefined;
  const by =
    chain === undefined ? '' : ` by ${chain}${rec.front === 'local' ? '' : ' (server says)'}`;
  return `${time} ${who}${by}: ${what}: ${rec.decision}${reason}${summary}`;
}

/** `login as git to github.com`, `SSH signature, namespace git`. */
export function sshSummary(ssh: NonNullable<AuditInput['ssh']>): string {
  if (ssh.purpose === 'login') {
    const to = ssh.destinationName ?? ssh.destination ?? 'an unproven destination';
    return `login as ${displayField(ssh.subject ?? '?', 64)} to ${displayField(to, 128)}`;
  }
  if (ssh.purpose === 'sshsig') {
    const ns = displayField(ssh.subject ?? '?', 64);
    return ns === 'git' ? 'git SSH signature (commit or tag)' : `SSH signature, namespace ${ns}`;
  }
  return 'SSH signature of data that is neither a login nor an SSHSIG';
}

/** The holder's line when records cannot be written: their requests were refused. */
export function auditFailureLine(e: Error, now: Date = new Date()): string {
  return `${now.toISOString().slice(11, 19)} ${e.message}; the request was refused (nothing is signed or decrypted without its record)`;
}
