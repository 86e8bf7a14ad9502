// Clear signing at the holder: is the digest a server asks for the signature of bytes it showed
// us, or blind? A request is `verified` only when gpg's v4 digest, recomputed here from the
// payload, this key, and a creation time near both clocks, equals the digest to be signed — then
// the payload is what the signature covers, and it can be shown. Anything else is `blind`: the
// digest could be a key certification, a subkey binding or a revocation (clear-signing.md §1.4).

import { createHash } from 'node:crypto';
import { displayField } from '../../protocol/display-text.js';
import type { Certificate, KeyEntry, SignContent, SignRequest } from '../../protocol/keyholder.js';
import { describeCommit, type FilesSummary } from './commit-description.js';
import { findDataSignature, isWeakHash, type DataMode } from '../../protocol/openpgp/v4-digest.js';

export type ClearSignClass = 'verified' | 'blind';

export interface ClearSignResult {
  verification: ClearSignClass;
  /** Why it is blind, for the audit reason and the refusal sentence. */
  why?: string;
  content?: {
    kind: SignContent['kind'];
    bytes: number;
    sha256: string;
    /** One line for the audit log and status (a commit's subject, a file's name). */
    summary: string;
    /** Labelled lines for the confirmation prompt. */
    lines: string[];
    created?: number;
    /** For a commit: whether its changed-file list is proven, and the list's start. */
    files?: FilesSummary;
  };
}

/** The server's clock may be this far from ours before its payload no longer counts. */
export const MAX_CLOCK_SKEW_S = 300;
/** gpg makes the signature this many seconds after the shim handed the payload over, at most. */
const SIGN_AFTER_HANDOVER_S = 60;

function pubkeyAlgoIds(algorithm: string): number[] {
  if (algorithm.startsWith('rsa')) return [1];
  if (algorithm === 'ed25519') return [22, 27];
  if (/^(nistp|brainpool|secp256k1)/.test(algorithm)) return [19];
  return [];
}

function mailboxes(cert: Certificate | undefined): string[] {
  const out: string[] = [];
  for (const uid of cert?.userIds ?? []) {
    const m = /<([^<>\s]+@[^<>\s]+)>/.exec(uid);
    if (m) out.push(m[1]!);
    else if (/^[^\s<>]+@[^\s<>]+$/.test(uid)) out.push(uid);
  }
  return out;
}

/** Header lines of a git object (up to the blank line) and its message. */
function gitObject(data: Uint8Array): { headers: [string, string][]; message: string } {
  const text = Buffer.from(data).toString('utf8');
  const split = text.indexOf('\n\n');
  const head = split === -1 ? text : text.slice(0, split);
  const headers: [string, string][] = [];
  for (const line of head.split('\n')) {
    if (line.startsWith(' ')) continue; // continuation of a multi-line header (mergetag)
    const sp = line.indexOf(' ');
    headers.push(sp === -1 ? [line, ''] : [line.slice(0, sp), line.slice(sp + 1)]);
  }
  return { headers, message: split === -1 ? '' : text.slice(split + 2) };
}

const ident = (v: string) => v.replace(/ \d+ [+-]\d{4}$/, '');

interface Description {
  summary: string;
  lines: string[];
  files?: FilesSummary;
}

function describe(content: SignContent, sha256: string, uids: readonly string[]): Description {
  const v = (s: string, max = 72) => displayField(s, max);
  if (content.kind === 'git-commit' || content.kind === 'git-tag') {
    const { headers, message } = gitObject(content.data);
    const get = (k: string) => headers.filter(([n]) => n === k).map(([, val]) => val);
    const body = message.split('\n');
    const subject = body[0] ?? '';
    if (content.kind === 'git-commit') return describeCommit(content, headers, message, uids);
    const lines: string[] = [];
    const tag = get('tag')[0] ?? '?';
    lines.push(
      `tag (verified): ${v(tag)} → ${v(get('type')[0] ?? '?', 10)} ${v(get('object')[0] ?? '?', 12)}`,
    );
    if (subject) lines.push(`  ${v(subject)}`);
    lines.push(`tagger: ${v(ident(get('tagger')[0] ?? ''))}`);
    return { summary: `tag ${v(tag, 60)}: ${v(subject, 60)}`, lines };
  }
  if (content.kind === 'git-push') {
    const { headers, message } = gitObject(content.data);
    const refs = message.split('\n').filter(Boolean);
    const pushee = headers.find(([n]) => n === 'pushee')?.[1] ?? '?';
    const lines = [`push certificate (verified) to ${v(pushee)}`];
    for (const r of refs.slice(0, 5)) lines.push(`  ${v(r.split(' ').slice(2).join(' '))}`);
    return { summary: `push to ${v(pushee, 80)}: ${refs.length} ref(s)`, lines };
  }
  const name = content.name !== undefined ? v(content.name) : '(stdin)';
  return {
    summary: `file ${name}, sha256 ${sha256.slice(0, 16)}…`,
    lines: [
      `file: ${name} (name reported by the server)`,
      `sha256 (verified): ${sha256}`,
      `size: ${content.data.length} bytes`,
    ],
  };
}

/** Classifies one sign request for ENTRY; `now` in seconds. Never throws. */
export function classifySign(
  entry: KeyEntry,
  req: SignRequest,
  certificates: readonly Certificate[],
  now: number,
): ClearSignResult {
  const content = req.content;
  if (!content) return { verification: 'blind', why: 'the server sent no payload' };
  if (isWeakHash(req.hashAlgo)) {
    return { verification: 'blind', why: `hash algorithm ${req.hashAlgo} is too weak to bind` };
  }
  if (Math.abs(content.time - now) > MAX_CLOCK_SKEW_S) {
    return { verification: 'blind', why: "the server's clock is more than 5 minutes off" };
  }
  if (!/^[0-9A-F]{40}$/i.test(entry.fingerprint)) {
    return { verification: 'blind', why: 'only v4 signatures are recomputed' };
  }
  const cert = certificates.find(
    (c) => c.fingerprint.toUpperCase() === entry.primaryFingerprint.toUpperCase(),
  );
  const uids = mailboxes(cert);
  const modes: DataMode[] = [content.mode, ...(['binary', 'text', 'clearsign'] as const)];
  let match;
  for (const pubkeyAlgo of pubkeyAlgoIds(entry.algorithm)) {
    match = findDataSignature({
      data: content.data,
      digest: req.digest,
      hashAlgo: req.hashAlgo,
      pubkeyAlgo,
      issuerFingerprint: Buffer.from(entry.fingerprint, 'hex'),
      mailboxes: uids,
      around: content.time,
      before: 2,
      after: SIGN_AFTER_HANDOVER_S,
      modes: [...new Set(modes)],
    });
    if (match) break;
  }
  if (!match) {
    return {
      verification: 'blind',
      why: 'the digest is not a data signature over the payload the server sent',
    };
  }
  const sha256 = createHash('sha256').update(content.data).digest('hex');
  const d = describe(content, sha256, uids);
  return {
    verification: 'verified',
    content: {
      kind: content.kind,
      bytes: content.data.length,
      sha256,
      summary: d.summary,
      lines: d.lines,
      created: match.created,
      ...(d.files ? { files: d.files } : {}),
    },
  };
}
