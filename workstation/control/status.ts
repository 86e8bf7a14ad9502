// The agent's status document, as `keytether status` reads it from the control socket: what the
// agent reports and the limits a client holds the answer to.

import { displayField } from '../../protocol/display-text.js';
import { z } from 'zod';
import type { Requester } from '../../protocol/keyholder.js';
import { MAX_LABEL_CHARS } from '../../protocol/token.js';
import { UserError } from '../../system/user-error.js';
import { MAX_HOST_CHARS, readAnswer, REQUEST_TIMEOUT_MS, request } from './connection.js';

const MAX_STATUS_BYTES = 1 << 20;
export const RECENT_KEPT = 20;

export type Front = Requester['front'];

export interface FrontStatus {
  front: Front;
  host?: string;
  /** ISO time the front connected (the agent's start for its own gpg socket). */
  since: string;
  /** Requests that reached the holder through it. */
  requests: number;
}

export interface RelayStatus {
  url: string;
  state: 'connected' | 'connecting';
  /** Facades connected through this relay right now. */
  streams?: number;
  /** While connecting: why the last attempt failed. */
  lastError?: string;
}

export interface UnlockedStatus {
  keygrip: string;
  fingerprint?: string;
  /** Whole seconds until the cache forgets the key (rounded up, so a live key is never 0). */
  expiresInS: number;
}

export interface RecentOperation {
  time: string;
  front: Front;
  host?: string;
  tokenId?: string;
  /** The token's label as this holder issued it (from its token registry, not the relay). */
  tokenLabel?: string;
  /** The relay's claim of where the facade connected from; never verified, shown as such. */
  relayPeer?: string;
  op: 'sign' | 'decrypt' | 'ssh-sign' | 'channel';
  /** For signatures: `verified`, `blind` or `local` (clear signing). */
  verification?: string;
  /** What a verified signature covered (a commit's subject, a file's name and hash). */
  summary?: string;
  /** The requesting process and its parents by name (`gpg ← git ← bash`), as the server says. */
  requestedBy?: string;
  keygrip?: string;
  fingerprint?: string;
  decision: string;
}

export interface StatusDocument {
  pid: number;
  version: string;
  home: string;
  /**
   * Set when the holder is not a `keytether agent` but the in-process one of this command
   * (`keytether ssh HOST`), which lives as long as its session.
   */
  command?: string;
  /** The gpg-agent socket the agent serves; absent for an in-process holder, which has none. */
  agentSocket?: string;
  startedAt: string;
  fronts: FrontStatus[];
  relays: RelayStatus[];
  unlocked: UnlockedStatus[];
  /** Oldest first, at most 20. */
  recent: RecentOperation[];
  /** Burst alerts of the per-token and per-key rate limits, oldest first; absent when none. */
  rateLimits?: RateLimitStatus[];
}

export interface RateLimitStatus {
  kind: 'token' | 'key';
  id: string;
  since: string;
  refused: number;
  /** Still refusing; false once the rate is back under the limit. */
  active: boolean;
}

/** The agent's relay clients as the status needs them (RelayClientsHandle fits), or a getter. */
export type RelaySource =
  | {
      readonly clients: readonly {
        url: string;
        connected: boolean;
        streams: number;
        lastError?: string | undefined;
      }[];
    }
  | (() => RelayStatus[]);

export function relayStatuses(src: RelaySource | undefined): RelayStatus[] {
  if (!src) return [];
  if (typeof src === 'function') return src();
  return src.clients.map((c) => ({
    url: c.url,
    state: c.connected ? 'connected' : 'connecting',
    streams: c.streams,
    ...(!c.connected && c.lastError !== undefined ? { lastError: c.lastError } : {}),
  }));
}

const StatusSchema = z.object({
  pid: z.number().int(),
  version: z.string().max(100),
  home: z.string().max(4096),
  command: z
    .string()
    .max(MAX_HOST_CHARS + 100)
    .optional(),
  agentSocket: z.string().max(4096).optional(),
  startedAt: z.string().max(64),
  fronts: z
    .array(
      z.object({
        front: z.enum(['local', 'ssh', 'relay']),
        host: z.string().max(MAX_HOST_CHARS).optional(),
        since: z.string().max(64),
        requests: z.number().int().nonnegative(),
      }),
    )
    .max(1000),
  relays: z
    .array(
      z.object({
        url: z.string().max(4096),
        state: z.enum(['connected', 'connecting']),
        streams: z.number().int().nonnegative().optional(),
        lastError: z.string().max(1000).optional(),
      }),
    )
    .max(1000),
  unlocked: z
    .array(
      z.object({
        keygrip: z.string().max(128),
        fingerprint: z.string().max(128).optional(),
        expiresInS: z.number().int().nonnegative(),
      }),
    )
    .max(10_000),
  recent: z
    .array(
      z.object({
        time: z.string().max(64),
        front: z.enum(['local', 'ssh', 'relay']),
        host: z
          .string()
          .max(MAX_HOST_CHARS + 2)
          .optional(),
        tokenId: z.string().max(64).optional(),
        tokenLabel: z.string().max(MAX_LABEL_CHARS).optional(),
        relayPeer: z.string().max(300).optional(),
        // `channel`: a relayed stream refused before any key was named (wrong secret, tampering).
        op: z.enum(['sign', 'decrypt', 'ssh-sign', 'channel']),
        verification: z.string().max(32).optional(),
        summary: z.string().max(400).optional(),
        requestedBy: z.string().max(200).optional(),
        keygrip: z.string().max(128).optional(),
        fingerprint: z.string().max(128).optional(),
        decision: z.string().max(32),
      }),
    )
    .max(RECENT_KEPT),
  rateLimits: z
    .array(
      z.object({
        kind: z.enum(['token', 'key']),
        id: z.string().max(128),
        since: z.string().max(64),
        refused: z.number().int().nonnegative(),
        active: z.boolean(),
      }),
    )
    .max(100)
    .optional(),
});

/** The running agent's status, or undefined when no agent runs for HOME. */
export async function requestStatus(
  home: string,
  opts: {
    timeoutMs?: number;
    /** This client's keytether version, to tell a stale agent. */ version?: string;
  } = {},
): Promise<StatusDocument | undefined> {
  const timeoutMs = opts.timeoutMs ?? REQUEST_TIMEOUT_MS;
  const conn = await request(home, 'status', timeoutMs);
  if (!conn) return undefined;
  const body = await readAnswer(conn.sock, {
    maxBytes: MAX_STATUS_BYTES,
    timeoutMs,
    late: 'it sent no complete status in time',
    long: 'it is larger than 1 MiB',
    sentence: (why) => `the keytether agent's status could not be read: ${why}; restart it`,
  });
  let parsed: unknown;
  try {
    parsed = JSON.parse(body);
  } catch {
    throw new UserError("the keytether agent's status is not JSON; restart the agent");
  }
  const valid = StatusSchema.safeParse(parsed);
  if (!valid.success) {
    const issue = valid.error.issues[0];
    const where = issue?.path.join('.') || 'the top';
    const theirs = (parsed as { version?: unknown } | null)?.version;
    // A restart only helps when the agent runs another build; between two processes of the same
    // version a mismatch is a bug, and restarting would only lose the agent's unlocked keys.
    const advice =
      typeof theirs === 'string' && theirs !== opts.version && opts.version !== undefined
        ? `the agent runs keytether ${displayField(theirs)}, this is ${opts.version}: restart the agent`
        : 'this is a bug in keytether; please report it with `keytether status --json` output';
    throw new UserError(`the keytether agent's status is malformed at ${where}; ${advice}`);
  }
  return valid.data as StatusDocument;
}
