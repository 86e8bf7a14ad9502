// The holder: the one place that turns a request into a signature or a decryption. Order matters
// and mirrors ssh-agent's "parse, check constraints, then act": policy first (a denied request
// never touches a key or a pinentry), then unlock, then an optional confirmation, then the raw
// operation, and the audit record is on disk before the result leaves.

import { GpgError, ErrorCode, gpgErr, toGpgError } from '../../protocol/gpg-error.js';
import type {
  Certificate,
  DecryptRequest,
  DecryptResult,
  Inventory,
  KeyEntry,
  KeyHolder,
  NoPromptMode,
  Requester,
  SignRequest,
  SshSignRequest,
} from '../../protocol/keyholder.js';
import type { AuditInput, AuditLog } from '../audit/audit.js';
import type { ApprovalMemory } from '../policy/approvals.js';
import { ApprovalBroker } from '../approvals/broker.js';
import { pendingView } from '../approvals/pending.js';
import {
  approvalScope,
  decide,
  processNames,
  type PolicyRequest,
  type PolicyRule,
} from '../policy/policy.js';
import { classifySign } from './clear-sign.js';
import { auditBase, auditRefusal } from './audit-record.js';
import type { UnlockCache } from './unlock-cache.js';
import type { Keystore } from '../keystore/index.js';
import type { UnlockedKey } from '../crypto/index.js';
import type { PassphraseAsker } from '../pinentry/pinentry.js';
import type { Backend, KeyOperator } from '../backends/backend.js';
import { mergeInventories, noPromptError } from '../backends/backend.js';
import { BuiltinBackend } from '../backends/builtin.js';
import { describeRequester } from '../backends/requester-text.js';
import { defaultKnownHostsFiles, type Destination } from '../policy/destination.js';
import { confirmText, refuseBlind } from './prompt-text.js';
import { prepareSshSign, SHA1_REFUSAL } from './ssh-sign.js';
import { InventoryWatch } from './inventory-watch.js';
import { RefusalSummary } from '../audit/rate-summary.js';
import { RequestLimiter } from './request-limits.js';

export interface HolderDeps {
  keystore: Keystore;
  policy: PolicyRule[];
  pinentry: PassphraseAsker;
  audit: AuditLog;
  cache: UnlockCache<UnlockedKey>;
  approvals: ApprovalMemory;
  /** Where a confirmation is offered (pinentry, pages, `keytether approve`); default the pinentry. */
  broker?: ApprovalBroker;
  now?: () => number;
  /**
   * Where keys live, first wins a keygrip. Default: the builtin back end over `keystore`. The
   * pinentry above is still the one that asks for policy confirmations.
   */
  backends?: Backend[];
  /**
   * While someone listens for inventory changes, the inventory is re-read this often (ms).
   * Default 2000.
   */
  inventoryPollMs?: number;
  /** Rate limits and prompt slots; default DEFAULT_REQUEST_LIMITS. */
  limiter?: RequestLimiter;
  /** How refusals a remote can repeat at will are audited; default one per minute per kind. */
  refusals?: RefusalSummary;
  /** Where SSH login destinations are named; default ~/.ssh/known_hosts and the system file. */
  knownHostsFiles?: string[];
}

export const DEFAULT_INVENTORY_POLL_MS = 2000;

type Op = 'sign' | 'decrypt' | 'ssh-sign';

/** One request as #run carries it through policy, unlock, confirmation and audit. */
interface RunSpec<T> {
  op: Op;
  keygrip: string;
  requester: Requester;
  description: string | undefined;
  signal: AbortSignal | undefined;
  noPrompt?: NoPromptMode | undefined;
  /** What the audit record says about the request beyond who and which key. */
  audit: Pick<AuditInput, 'hashAlgo' | 'digest' | 'ssh'>;
  act: (key: KeyOperator) => T | Promise<T>;
  /** For `sign`: the request, so the holder can check the content the server showed. */
  signRequest?: SignRequest;
  destination?: Destination;
  /** For `ssh-sign`: a plain ssh-rsa (SHA-1) signature, made only where policy allows it. */
  sha1?: boolean;
  /** The confirmation's text; SHOWN is the verified content, when there is some. */
  prompt: (entry: KeyEntry, shown?: string[]) => string;
}

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
  readonly #inventoryListeners = new Set<{ fn: () => void }>();
  readonly #limiter: RequestLimiter;
  readonly #refusals: RefusalSummary;
  readonly #broker: ApprovalBroker;
  #watch: InventoryWatch | undefined;
  #stopCacheWatch: (() => void) | undefined;

  constructor(deps: HolderDeps) {
    this.#d = deps;
    this.#now = deps.now ?? Date.now;
    this.#limiter = deps.limiter ?? new RequestLimiter({}, this.#now);
    this.#refusals = deps.refusals ?? new RefusalSummary(deps.audit, { now: this.#now });
    this.#broker = deps.broker ?? new ApprovalBroker({ pinentry: deps.pinentry, now: this.#now });
    this.#backends = deps.backends ?? [
      new BuiltinBackend({ keystore: deps.keystore, pinentry: deps.pinentry, cache: deps.cache }),
    ];
  }

  /** Its limits, for the tunnels serving it and for `keytether status`. */
  get limiter(): RequestLimiter {
    return this.#limiter;
  }

  /** Writes pending refusal summaries (before the audit log closes). */
  flushRefusals(): Promise<void> {
    return this.#refusals.flush();
  }

  async inventory(): Promise<Inventory> {
    return mergeInventories(await Promise.all(this.#backends.map((b) => b.inventory())));
  }

  /**
   * Calls LISTENER whenever the set of usable keys or their certificates changes (a key imported
   * or removed by another process, generated in the workstation's gpg-agent), so connected
   * facades can be told without reconnecting. The inventory is only watched while someone
   * listens. Returns the unsubscribe function.
   */
  onInventoryChange(listener: () => void): () => void {
    // A wrapper per subscription: the same function subscribed twice is two subscriptions.
    const sub = { fn: listener };
    this.#inventoryListeners.add(sub);
    if (!this.#watch) {
      // An unlock or an expiry changes KEYINFO's CACHED field on every server: look at once.
      this.#stopCacheWatch = this.#d.cache.onChange(() => this.#watch?.soon());
    }
    this.#watch ??= new InventoryWatch({
      read: () => this.inventory(),
      changed: () => {
        for (const s of [...this.#inventoryListeners]) {
          try {
            s.fn();
          } catch {
            // One listener's bug must not keep the others from hearing about the change.
          }
        }
      },
      intervalMs: this.#d.inventoryPollMs ?? DEFAULT_INVENTORY_POLL_MS,
      dir: this.#d.keystore.dir,
    });
    return () => {
      if (!this.#inventoryListeners.delete(sub)) return;
      if (this.#inventoryListeners.size === 0) {
        this.#watch?.stop();
        this.#watch = undefined;
        this.#stopCacheWatch?.();
        this.#stopCacheWatch = undefined;
      }
    };
  }

  /** The entry for KEYGRIP and the first back end that has it. */
  async #find(
    keygrip: string,
  ): Promise<{ entry: KeyEntry; backend: Backend; certificates: Certificate[] } | undefined> {
    const grip = keygrip.toUpperCase();
    const invs = await Promise.all(this.#backends.map((b) => b.inventory()));
    for (let i = 0; i < invs.length; i++) {
      const entry = invs[i]!.keys.find((k) => k.keygrip.toUpperCase() === grip);
      if (entry) return { entry, backend: this.#backends[i]!, certificates: invs[i]!.certificates };
    }
    return undefined;
  }

  async sign(req: SignRequest, signal?: AbortSignal): Promise<Uint8Array> {
    const hashAlgo = HASH_NAMES[req.hashAlgo] ?? String(req.hashAlgo);
    const digest = Buffer.from(req.digest).toString('hex');
    return this.#run({
      op: 'sign',
      keygrip: req.keygrip,
      requester: req.requester,
      description: req.description,
      signal,
      noPrompt: req.pinentryMode,
      audit: { hashAlgo, digest },
      act: (key) => key.sign(req.hashAlgo, req.digest),
      signRequest: req,
      prompt: (entry, shown) => confirmText('sign', entry, req.requester, digest, shown),
    });
  }

  async decrypt(req: DecryptRequest, signal?: AbortSignal): Promise<DecryptResult> {
    return this.#run({
      op: 'decrypt',
      keygrip: req.keygrip,
      requester: req.requester,
      description: req.description,
      signal,
      noPrompt: req.pinentryMode,
      audit: {},
      act: (key) => key.decrypt(req.ciphertext),
      prompt: (entry) => confirmText('decrypt', entry, req.requester, undefined),
    });
  }

  /** An ssh-agent signature: what the data is for is named in policy, prompt and audit. */
  async sshSign(req: SshSignRequest, signal?: AbortSignal): Promise<Uint8Array> {
    const ssh = await prepareSshSign(req, this.#d.knownHostsFiles ?? defaultKnownHostsFiles());
    return this.#run({
      op: 'ssh-sign',
      keygrip: req.keygrip,
      requester: req.requester,
      description: undefined,
      signal,
      audit: ssh.audit,
      act: ssh.act,
      ...(ssh.destination ? { destination: ssh.destination } : {}),
      ...(req.hash === 'sha1' ? { sha1: true } : {}),
      prompt: (entry) => ssh.prompt(entry),
    });
  }

  async #run<T>(spec: RunSpec<T>): Promise<T> {
    const { op, keygrip, requester, description, signal, noPrompt, act, signRequest } = spec;
    const started = this.#now();
    const found = await this.#find(keygrip);
    const entry = found?.entry;
    // What the signature covers, when the server showed it and the digest proves it (design b+).
    const clear =
      entry && signRequest && requester.front !== 'local'
        ? classifySign(entry, signRequest, found.certificates, Math.floor(this.#now() / 1000))
        : undefined;
    const base = auditBase(op, keygrip, requester, entry, spec.audit, clear);
    // No record, no result: a request whose record cannot be written is refused, and the
    // refusal is not recorded again (the log cannot take it either).
    let unrecorded: GpgError | undefined;
    const record = async (decision: string, reason: string) => {
      try {
        await this.#d.audit.append({
          ...base,
          decision,
          reason,
          durationMs: this.#now() - started,
        } as Parameters<AuditLog['append']>[0]);
      } catch (e) {
        unrecorded = auditRefusal(e);
        throw unrecorded;
      }
    };
    // A refusal the remote side can repeat at will: summarised beyond a few a minute.
    const refused = async (decision: 'denied' | 'failed', reason: string, what: string) => {
      await this.#refusals.refused(
        { ...base, decision, reason, durationMs: this.#now() - started } as Parameters<
          AuditLog['append']
        >[0],
        what,
      );
    };

    if (!found || !entry || !entry.usage.some((u) => usable(op, u, requester.front))) {
      const why = !entry
        ? 'no such key'
        : op === 'sign' && entry.usage.includes('certify')
          ? 'key is certify-only: it signs nothing for a remote'
          : `key cannot ${op}`;
      await refused('failed', why, entry ? `for keys that cannot ${op}` : 'for unknown keys');
      throw gpgErr('NO_SECKEY');
    }
    const rate = this.#limiter.take(requester, entry.keygrip);
    if (!rate.ok) {
      // The first refusal of a burst is the alert, always on record; the rest are summarised.
      if (rate.first) await record('denied', `${rate.sentence} (burst alert)`);
      else await refused('denied', rate.sentence, `over the ${rate.kind} rate limit`);
      throw new GpgError(ErrorCode.LIMIT_REACHED, rate.sentence);
    }
    const asked: PolicyRequest = {
      front: requester.front,
      host: requester.host,
      tokenId: requester.tokenId,
      fingerprint: entry.fingerprint,
      primaryFingerprint: entry.primaryFingerprint,
      keygrip: entry.keygrip,
      op,
      certifyCapable: entry.usage.includes('certify'),
      ...(spec.destination ? { destination: spec.destination } : {}),
    };
    const processes = processNames(requester);
    if (processes.length > 0) asked.processes = processes;
    const verdict = decide(this.#d.policy, asked, this.#d.approvals, this.#now());
    if (verdict.action === 'deny') {
      await refused('denied', `policy: ${verdict.rule}`, 'denied by policy');
      throw gpgErr('FORBIDDEN');
    }
    const blindRefusal =
      op === 'sign' && requester.front !== 'local' && clear?.verification !== 'verified'
        ? refuseBlind(verdict.clearSign, clear?.why, asked.certifyCapable)
        : undefined;
    if (spec.sha1 && !verdict.sshRsaSha1) {
      await refused('denied', SHA1_REFUSAL, 'refused as SHA-1 signatures');
      throw new GpgError(ErrorCode.FORBIDDEN, SHA1_REFUSAL);
    }
    if (blindRefusal !== undefined) {
      await refused('denied', blindRefusal, 'refused as blind signatures');
      throw new GpgError(ErrorCode.FORBIDDEN, blindRefusal);
    }
    let promptSlot: (() => void) | undefined;
    if (verdict.action === 'confirm' && !noPrompt) {
      promptSlot = this.#limiter.enterPrompt(requester);
      if (!promptSlot) {
        const n = this.#limiter.limits.promptsPerOrigin;
        const why = `more than ${n} confirmations already waiting for ${describeRequester(requester)}`;
        await refused('denied', why, 'beyond the confirmations waiting');
        throw new GpgError(ErrorCode.LIMIT_REACHED, why);
      }
    }

    let decision = 'allowed';
    let via = '';
    let denial: GpgError | undefined;
    let key: KeyOperator | undefined;
    try {
      // A client that must never be prompted hears so before any key is touched.
      if (verdict.action === 'confirm' && noPrompt) {
        throw noPromptError(noPrompt, 'the confirmation this policy asks for');
      }
      key = await found.backend.open(entry, {
        description,
        requester,
        signal,
        ...(noPrompt ? { pinentryMode: noPrompt } : {}),
      });
      if (verdict.action === 'confirm') {
        const answer = await this.#broker.confirm(
          spec.prompt(entry, clear?.content?.lines),
          pendingView(op, entry, requester, clear, verdict.rememberMs),
          signal,
        );
        if (!answer.approved) {
          // Deny on a page or the command line is the user cancelling, as gpg-agent reports it.
          if (answer.channel === 'pinentry') {
            await record('denied', 'not confirmed at the pinentry');
            throw gpgErr('NOT_CONFIRMED');
          }
          await record('denied', `denied at the ${answer.channel}`);
          throw (denial = gpgErr('CANCELED', `denied at the ${answer.channel}`));
        }
        decision = 'confirmed';
        if (answer.channel !== 'pinentry') via = ` (confirmed at the ${answer.channel})`;
        const remember = answer.rememberMs ?? verdict.rememberMs;
        if (remember) this.#d.approvals.grant(approvalScope(asked), remember, this.#now());
      }
      const result = await act(key);
      try {
        await record(decision, `policy: ${verdict.rule}${via}`);
      } catch (e) {
        // The result never leaves, so a decrypted session key must not linger either.
        if (op === 'decrypt') (result as DecryptResult).value.fill(0);
        throw e;
      }
      return result;
    } catch (e) {
      const err = toGpgError(e);
      if (err.code === ErrorCode.NOT_CONFIRMED || err === unrecorded || err === denial) throw err;
      const canceled = err.code === ErrorCode.CANCELED || err.code === ErrorCode.FULLY_CANCELED;
      await record(canceled ? 'canceled' : 'failed', err.message);
      throw err;
    } finally {
      promptSlot?.();
      key?.release?.();
    }
  }
}

/**
 * Whether a key flag lets the key do OP for FRONT. gpg certifies (new user ids, subkey bindings,
 * key signatures) with PKSIGN too, so a certify-only key is still a signing key for the
 * workstation's own gpg; a remote, which could only ask it to certify, never gets it.
 */
function usable(op: Op, u: string, front: Requester['front']): boolean {
  if (op === 'decrypt') return u === 'encrypt';
  if (op === 'ssh-sign') return u === 'auth';
  return u === 'sign' || (u === 'certify' && front === 'local');
}

export { GpgError };
export { inventoryWatcher, linkLimits, type InventoryWatchable } from './tunnel-options.js';
