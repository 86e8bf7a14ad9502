// `keytether approve`, `deny` and `open` as clients of the agent's control socket (the requests
// approvals.ts answers). Each reply is bounded and the listing is checked before it is shown.

import { z } from 'zod';
import { UserError } from '../../system/user-error.js';
import type { PendingApproval } from '../approvals/pending.js';
import { readAnswer, REQUEST_TIMEOUT_MS, request } from './connection.js';

const MAX_REPLY_BYTES = 1 << 20;

const NO_AGENT = 'no keytether agent is running for this home; start one with "keytether agent"';

const Pending = z.array(
  z.object({
    id: z.string().regex(/^[0-9a-f]{12}$/),
    createdAt: z.string().max(40),
    op: z.enum(['sign', 'decrypt', 'ssh-sign']),
    requester: z.object({
      front: z.enum(['local', 'ssh', 'relay']),
      host: z.string().max(400).optional(),
      tokenId: z.string().max(400).optional(),
      relayPeer: z.string().max(400).optional(),
      user: z.string().max(400).optional(),
      process: z.string().max(400).optional(),
    }),
    key: z.object({
      fingerprint: z.string().max(80),
      keygrip: z.string().max(80),
      algorithm: z.string().max(400),
      userIds: z.array(z.string().max(400)).max(8).optional(),
    }),
    verification: z.enum(['verified', 'reported', 'blind', 'local']).optional(),
    content: z
      .object({
        kind: z.string().max(40),
        summary: z.string().max(400),
        lines: z.array(z.string().max(4000)).max(64),
      })
      .optional(),
    blindWhy: z.string().max(400).optional(),
    policyRememberMs: z.number().optional(),
  }),
);

async function ask(home: string, line: string): Promise<string> {
  const conn = await request(home, line, REQUEST_TIMEOUT_MS);
  if (!conn) throw new UserError(NO_AGENT);
  return readAnswer(conn.sock, {
    maxBytes: MAX_REPLY_BYTES,
    timeoutMs: REQUEST_TIMEOUT_MS,
    late: 'it sent no complete answer in time',
    long: 'it is larger than 1 MiB',
    sentence: (why) => `the keytether agent's answer could not be read: ${why}; restart it`,
  });
}

export async function requestApprovals(home: string): Promise<PendingApproval[]> {
  const body = await ask(home, 'approvals');
  let parsed;
  try {
    parsed = Pending.safeParse(JSON.parse(body));
  } catch {
    parsed = undefined;
  }
  if (!parsed?.success) {
    throw new UserError(
      "the keytether agent's list of waiting confirmations is malformed; is it from another version? restart it",
    );
  }
  return parsed.data as PendingApproval[];
}

/** Answers request ID; a refusal (not waiting) comes back as the agent's UserError. */
export async function answerApproval(
  home: string,
  id: string,
  approved: boolean,
  rememberMs?: number,
): Promise<void> {
  const line = approved
    ? `approve ${id}${rememberMs !== undefined ? ` ${rememberMs}` : ''}`
    : `deny ${id}`;
  await ask(home, line);
}

/** The approval page's URL with a fresh one-time secret. */
export async function requestWebUrl(home: string): Promise<string> {
  const url = (await ask(home, 'web url')).trim();
  if (!/^https?:\/\/[^\s]{1,300}$/.test(url)) {
    throw new UserError("the keytether agent's page address is malformed; restart it");
  }
  return url;
}
