// The holder: the one place that turns a request into a signature or a decryption. Order matters
// and mirrors ssh-agent's "parse, check constraints, then act": policy first (a denied request
// never touches a key or a pinentry), then unlock, then an optional confirmation, then the raw
// operation, and the audit record is on disk before the result leaves.

import { GpgError, ErrorCode, gpgErr, toGpgError } from '../protocol/gpg-error.js';
import type {
  DecryptRequest,
  DecryptResult,
  Inventory,
  KeyEntry,
  KeyHolder,
  Requester,
  SignRequest,
} from '../protocol/keyholder.js';
import type { AuditLog } from './audit.js';
import type { ApprovalMemory } from './approvals.js';
import type { PolicyRule } from './policy.js';
import { decide } from './policy.js';
import type { UnlockCache } from './unlock-cache.js';
import type { Keystore } from './keystore/index.js';
import type { UnlockedKey } from './crypto/index.js';
import type { PassphraseAsker } from './pinentry.js';
import { askUntilUnlocked } from './pinentry.js';

export interface HolderDeps {
  keystore: Keystore;
  policy: PolicyRule[];
  pinentry: PassphraseAsker;
  audit: AuditLog;
  cache: UnlockCache<UnlockedKey>;
  approvals: ApprovalMemory;
  now?: () => number;
}

type Op = 'sign' | 'decrypt';

const HASH_NAMES: Record<number, string> = {
  1: 'md5',
  2: 'sha1',
  3: 'rmd160',
  8: 'sha256',
  9: 'sha384',
  10: 'sha512',
  11: 'sha224',
};

export class Holder implements KeyHolder {
  readonly #d: HolderDeps;
  readonly #now: () => number;
  /** Unlocks of one key are serialised so that two waiting gpg calls ask the pinentry once. */
  readonly #unlocking = new Map<string, Promise<UnlockedKey>>();

  constructor(deps: HolderDeps) {
    this.#d = deps;
    this.#now = deps.now ?? Date.now;
  }

  async inventory(): Promise<Inventory> {
    const inv = await this.#d.keystore.inventory();
    const cached = new Set(this.#d.cache.entries().map((e) => e.keygrip));
    return {
      certificates: inv.certificates,
      keys: inv.keys.map((k) => ({ ...k, cached: cached.has(k.keygrip) })),
    };
  }

  async sign(req: SignRequest, signal?: AbortSignal): Promise<Uint8Array> {
    return this.#run(
      'sign',
      req.keygrip,
      req.requester,
      req.description,
      signal,
      {
        hashAlgo: HASH_NAMES[req.hashAlgo] ?? String(req.hashAlgo),
        digest: Buffer.from(req.digest).toString('hex'),
      },
      (key) => key.sign(req.hashAlgo, req.digest),
    );
  }

  async decrypt(req: DecryptRequest, signal?: AbortSignal): Promise<DecryptResult> {
    return this.#run('decrypt', req.keygrip, req.requester, req.description, signal, {}, (key) =>
      key.decrypt(req.ciphertext),
    );
  }

  async #run<T>(
    op: Op,
    keygrip: string,
    requester: Requester,
    description: string | undefined,
    signal: AbortSignal | undefined,
    extra: { hashAlgo?: string; digest?: string },
    act: (key: UnlockedKey) => T,
  ): Promise<T> {
    const started = this.#now();
    const inv = await this.#d.keystore.inventory();
    const entry = inv.keys.find((k) => k.keygrip === keygrip.toUpperCase());
    const base = {
      front: requester.front,
      host: requester.host,
      tokenId: requester.tokenId,
      requester: {
        pid: requester.pid,
        uid: requester.uid,
        user: requester.user,
        command: requester.command,
      },
      fingerprint: entry?.fingerprint,
      keygrip: keygrip.toUpperCase(),
      op,
      ...extra,
      verification: op === 'sign' ? (requester.front === 'local' ? 'local' : 'blind') : undefined,
    };
    const record = async (decision: string, reason: string) => {
      await this.#d.audit.append({
        ...base,
        decision,
        reason,
        durationMs: this.#now() - started,
      } as Parameters<AuditLog['append']>[0]);
    };

    if (!entry || !entry.usage.some((u) => usable(op, u))) {
      await record('failed', entry ? `key cannot ${op}` : 'no such key');
      throw gpgErr('NO_SECKEY');
    }
    const verdict = decide(this.#d.policy, {
      front: requester.front,
      host: requester.host,
      tokenId: requester.tokenId,
      fingerprint: entry.fingerprint,
      primaryFingerprint: entry.primaryFingerprint,
      keygrip: entry.keygrip,
      op,
      certifyCapable: entry.usage.includes('certify'),
    });
    if (verdict.action === 'deny') {
      await record('denied', `policy: ${verdict.rule}`);
      throw gpgErr('FORBIDDEN');
    }

    let decision = 'allowed';
    try {
      const key = await this.#unlock(entry, description, requester, signal);
      const scope = {
        front: requester.front,
        host: requester.host,
        tokenId: requester.tokenId,
        keygrip: entry.keygrip,
        op,
      };
      if (verdict.action === 'confirm' && !this.#d.approvals.isGranted(scope, this.#now())) {
        const ok = await this.#d.pinentry.confirm(
          { description: confirmText(op, entry, requester, extra.digest) },
          signal,
        );
        if (!ok) {
          await record('denied', 'not confirmed at the pinentry');
          throw gpgErr('NOT_CONFIRMED');
        }
        decision = 'confirmed';
        if (verdict.rememberMs) this.#d.approvals.grant(scope, verdict.rememberMs, this.#now());
      }
      const result = act(key);
      await record(decision, `policy: ${verdict.rule}`);
      return result;
    } catch (e) {
      const err = toGpgError(e);
      if (err.code === ErrorCode.NOT_CONFIRMED) throw err;
      const canceled = err.code === ErrorCode.CANCELED || err.code === ErrorCode.FULLY_CANCELED;
      await record(canceled ? 'canceled' : 'failed', err.message);
      throw err;
    }
  }

  async #unlock(
    entry: KeyEntry,
    description: string | undefined,
    requester: Requester,
    signal: AbortSignal | undefined,
  ): Promise<UnlockedKey> {
    const hit = this.#d.cache.get(entry.keygrip);
    if (hit) return hit;
    const pending = this.#unlocking.get(entry.keygrip);
    if (pending) return pending;
    const p = (async () => {
      const ks = this.#d.keystore;
      const key = ks.isProtected(entry.keygrip)
        ? await askUntilUnlocked(
            this.#d.pinentry,
            {
              keygrip: entry.keygrip,
              description: unlockText(entry, description, requester),
            },
            (pass) => ks.unlock(entry.keygrip, pass),
            3,
            signal,
          )
        : await ks.unlock(entry.keygrip, null);
      this.#d.cache.put(entry.keygrip, key);
      return key;
    })();
    this.#unlocking.set(entry.keygrip, p);
    try {
      return await p;
    } finally {
      this.#unlocking.delete(entry.keygrip);
    }
  }
}

function usable(op: Op, u: string): boolean {
  return op === 'sign' ? u === 'sign' || u === 'certify' : u === 'encrypt';
}

function who(r: Requester): string {
  const parts: string[] = [];
  if (r.front === 'local') parts.push('local gpg');
  else if (r.front === 'ssh') parts.push(`ssh ${r.user ? `${r.user}@` : ''}${r.host ?? 'server'}`);
  else parts.push(`relay token ${r.tokenId ?? '?'}`);
  if (r.command) parts.push(`(${r.command}${r.pid ? `, pid ${r.pid}` : ''})`);
  else if (r.pid) parts.push(`(pid ${r.pid})`);
  return parts.join(' ');
}

function unlockText(entry: KeyEntry, gpgText: string | undefined, r: Requester): string {
  const head = `keytether: request from ${who(r)}`;
  const body = gpgText ?? `Please enter the passphrase to unlock the key\n${entry.fingerprint}`;
  return `${head}\n\n${body}`;
}

function confirmText(op: Op, entry: KeyEntry, r: Requester, digest: string | undefined): string {
  const what = op === 'sign' ? `sign${digest ? ` digest ${digest.slice(0, 16)}…` : ''}` : 'decrypt';
  return `keytether: allow ${who(r)} to ${what} with key ${entry.fingerprint}?`;
}

export { GpgError };
