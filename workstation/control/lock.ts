// "Lock now": the control socket's `lock <keygrip>` / `lock all`, which makes the holder forget
// unlocked keys before their cache time runs out (leaving the desk, a key that looks misused), so
// the next operation with them asks the pinentry again. Behind `keytether lock` and the web
// page's "lock now".
//
//   `lock <keygrip>` / `lock all` → `OK <pid>\n`, `{"locked":["<KEYGRIP>",…]}\n`, EOF.
//
// Locking a key that is not unlocked is no error (the answer lists nothing): the user's wish, a
// locked key, holds either way. Only keytether's own cache is reached; keys the workstation's
// gpg-agent serves stay in gpg-agent's cache (`gpgconf --reload gpg-agent` forgets those).

import type net from 'node:net';
import { z } from 'zod';
import { findPeerProcess } from '../../system/peer-process.js';
import { UserError } from '../../system/user-error.js';
import type { AuditInput } from '../audit/audit.js';
import { readAnswer, REQUEST_TIMEOUT_MS, request } from './connection.js';

/** What `lock` needs of the unlock cache (workstation/holder/unlock-cache.ts fits). */
export interface LockableCache {
  entries(): { keygrip: string; expiresInMs: number }[];
  delete(keygrip: string): boolean;
}

const KEYGRIP = /^[0-9A-Fa-f]{40}$/;
const MAX_ANSWER_BYTES = 64 * 1024;

/** Forgets the named key (or all) and says which keys were forgotten. */
export function lockKeys(cache: LockableCache, which: string | 'all'): string[] {
  const grips =
    which === 'all'
      ? cache.entries().map((e) => e.keygrip)
      : cache.entries().some((e) => e.keygrip === which.toUpperCase())
        ? [which.toUpperCase()]
        : [];
  return grips.filter((g) => cache.delete(g));
}

/** Where a lock is recorded: the holder's audit log (audit.ts's AuditLog fits). */
export interface LockAudit {
  append(rec: AuditInput): Promise<void>;
}

/**
 * Answers a `lock …` request line (split into WORDS) on SOCK. Each key it forgets gets an audit
 * record (`op: lock`, with the process that asked), whose operation line the agent prints, so
 * the log accounts for why a key asks again. A record that cannot be written does not undo the
 * lock (forgetting a key only ever errs safe): LOG then says what was locked and why it is not in
 * the log.
 */
export async function answerLock(
  sock: net.Socket,
  words: string[],
  cache: LockableCache,
  log: (line: string) => void,
  audit: LockAudit,
): Promise<void> {
  const which = words[1];
  if (words.length !== 2 || which === undefined || (which !== 'all' && !KEYGRIP.test(which))) {
    sock.end('ERR the lock request names no keygrip; expected "lock <keygrip>" or "lock all"\n');
    return;
  }
  const locked = lockKeys(cache, which);
  if (locked.length > 0) {
    const peer = await findPeerProcess(sock).catch(() => undefined);
    const requester = peer
      ? {
          pid: peer.pid,
          uid: peer.uid,
          name: peer.name,
          command: peer.command,
          parents: peer.parents,
        }
      : undefined;
    try {
      for (const keygrip of locked) {
        await audit.append({
          front: 'local',
          keygrip,
          op: 'lock',
          decision: 'allowed',
          reason: 'forgotten on request (keytether lock or the page)',
          ...(requester ? { requester } : {}),
        });
      }
    } catch (e) {
      const time = new Date().toISOString().slice(11, 19);
      const s = locked.length === 1 ? '' : 's';
      log(
        `${time} locked ${locked.length} key${s} on request (keygrip${s} ${locked.join(', ')}); not in the audit log: ${(e as Error).message}`,
      );
    }
  }
  sock.end(`OK ${process.pid}\n${JSON.stringify({ locked })}\n`);
}

const LockAnswer = z.object({ locked: z.array(z.string().regex(KEYGRIP)).max(10_000) });

/**
 * Asks the agent of HOME to forget the key with KEYGRIP, or all; resolves with the keygrips it
 * forgot, or undefined when no agent runs for HOME.
 */
export async function requestLock(
  home: string,
  which: string | 'all',
  timeoutMs = REQUEST_TIMEOUT_MS,
): Promise<string[] | undefined> {
  if (which !== 'all' && !KEYGRIP.test(which)) throw new Error('lock takes a keygrip or all');
  const conn = await request(
    home,
    `lock ${which === 'all' ? 'all' : which.toUpperCase()}`,
    timeoutMs,
  );
  if (!conn) return undefined;
  const body = await readAnswer(conn.sock, {
    maxBytes: MAX_ANSWER_BYTES,
    timeoutMs,
    late: 'it did not answer in time',
    long: 'it is too long',
    sentence: (why) => `the keytether agent's answer to lock could not be read: ${why}`,
  });
  let parsed: unknown;
  try {
    parsed = JSON.parse(body);
  } catch {
    parsed = undefined;
  }
  const valid = LockAnswer.safeParse(parsed);
  if (!valid.success) {
    throw new UserError(
      "the keytether agent's answer to lock is malformed; restart the agent if it runs another keytether version",
    );
  }
  return valid.data.locked;
}
