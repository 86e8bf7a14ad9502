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
import type { Backend, KeyOperator } from './backends/backend.js';
import { mergeInventories } from './backends/backend.js';
import { BuiltinBackend } from './backends/builtin.js';
import { describeRequester } from './backends/requester-text.js';

export interface HolderDeps {
  keystore: Keystore;
  policy: PolicyRule[];
  pinentry: PassphraseAsker;
  audit: AuditLog;
  cache: UnlockCache<UnlockedKey>;
  approvals: ApprovalMemory;
  now?: () => number;
  /**
   * Where keys live, first wins a keygrip. Default: the builtin back end over `keystore`. The
   * pinentry above is still the one that asks for policy confirmations.
   */
  backends?: Backend[];
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
  readonly #backends: Backend[];

  constructor(deps: HolderDeps) {
    this.#d = deps;
    this.#now = deps.now ?? Date.now;
    this.#backends = deps.backends ?? [
      new BuiltinBackend({ keystore: deps.keystore, pinentry: deps.pinentry, cache: deps.cache }),
    ];
  }

  async inventory(): Promise<Inventory> {
    return mergeInventories(await Promise.all(this.#backends.map((b) => b.inventory())));
  }

  /** The entry for KEYGRIP and the first back end that has it. */
  async #find(keygrip: string): Promise<{ entry: KeyEntry; backend: Backend } | undefined> {
    const grip = keygrip.toUpperCase();
    const invs = await Promise.all(this.#backends.map((b) => b.inventory()));
    for (let i = 0; i < invs.length; i++) {
      const entry = invs[i]!.keys.find((k) => k.keygrip.toUpperCase() === grip);
      if (entry) return { entry, backend: this.#backends[i]! };
    }
    return undefined;
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
    act: (key: KeyOperator) => T | Promise<T>,
  ): Promise<T> {
    const started = this.#now();
    const found = await this.#find(keygrip);
    const entry = found?.entry;
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

    if (!found || !entry || !entry.usage.some((u) => usable(op, u))) {
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
    let key: KeyOperator | undefined;
    try {
      key = await found.backend.open(entry, { description, requester, signal });
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
      const result = await act(key);
      try {
        await record(decision, `policy: ${verdict.rule}`);
      } catch (e) {
        // The result never leaves, so a decrypted session key must not linger either.
        if (op === 'decrypt') (result as DecryptResult).value.fill(0);
        throw e;
      }
      return result;
    } catch (e) {
      const err = toGpgError(e);
      if (err.code === ErrorCode.NOT_CONFIRMED) throw err;
      const canceled = err.code === ErrorCode.CANCELED || err.code === ErrorCode.FULLY_CANCELED;
      await record(canceled ? 'canceled' : 'failed', err.message);
      throw err;
    } finally {
      key?.release?.();
    }
  }
}

function usable(op: Op, u: string): boolean {
  return op === 'sign' ? u === 'sign' || u === 'certify' : u === 'encrypt';
}

function confirmText(op: Op, entry: KeyEntry, r: Requester, digest: string | undefined): string {
  const what = op === 'sign' ? `sign${digest ? ` digest ${digest.slice(0, 16)}…` : ''}` : 'decrypt';
  return `keytether: allow ${describeRequester(r)} to ${what} with key ${entry.fingerprint}?`;
}

export { GpgError };
