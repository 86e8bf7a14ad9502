// A back end is where a key actually lives: keytether's own keystore, or the workstation's
// gpg-agent (and through it, smartcards). The holder asks each for its inventory, picks the first
// back end that has a keygrip, and does policy and audit itself, so every back end is governed
// the same way.

import { newestVersion } from '../../protocol/agent/version.js';
import { ErrorCode, GpgError } from '../../protocol/gpg-error.js';
import type {
  DecryptResult,
  Inventory,
  KeyEntry,
  NoPromptMode,
  Requester,
} from '../../protocol/keyholder.js';
import type { SshHash } from '../../protocol/ssh-agent/keys.js';

/** What a back end hands the holder once a key may be used (after its own unlock step, if any). */
export interface KeyOperator {
  /** Canonical `(7:sig-val…)`. */
  sign(hashAlgo: number, digest: Uint8Array): Uint8Array | Promise<Uint8Array>;
  /**
   * Canonical `(7:sig-val…)` of PureEdDSA over DATA (an SSH ssh-ed25519 signature); absent where
   * the key or its back end cannot sign a whole message.
   */
  signMessage?(data: Uint8Array): Uint8Array | Promise<Uint8Array>;
  /**
   * Canonical `(7:sig-val…)` of an SSH signature over DATA with HASH (absent for EdDSA), for a
   * back end that is itself an ssh-agent and signs data, not digests. Preferred when present.
   */
  signSsh?(data: Uint8Array, hash: SshHash | undefined): Uint8Array | Promise<Uint8Array>;
  decrypt(encVal: Uint8Array): DecryptResult | Promise<DecryptResult>;
  /** Called once when the operation is done with the key (it may be destroyed from then on). */
  release?(): void;
}

export interface OpenContext {
  /** gpg's SETKEYDESC text, decoded, if it sent one. */
  description: string | undefined;
  requester: Requester;
  signal: AbortSignal | undefined;
  /** The client must not be prompted: a key that needs its passphrase fails (noPromptError). */
  pinentryMode?: NoPromptMode;
}

export interface Backend {
  /** `builtin`, `gpg-agent`. */
  readonly name: string;
  inventory(): Promise<Inventory>;
  /**
   * Readies ENTRY (one of this back end's own inventory) for one operation. The builtin back end
   * unlocks here (pinentry, cache); one that delegates unlocking does nothing until the operation.
   */
  open(entry: KeyEntry, ctx: OpenContext): Promise<KeyOperator>;
  close?(): Promise<void>;
}

/** First back end wins a keygrip, and a certificate by fingerprint. */
export function mergeInventories(parts: Inventory[]): Inventory {
  const grips = new Set<string>();
  const fprs = new Set<string>();
  const out: Inventory = { keys: [], certificates: [] };
  for (const inv of parts) {
    for (const k of inv.keys) {
      const g = k.keygrip.toUpperCase();
      if (grips.has(g)) continue;
      grips.add(g);
      out.keys.push(k);
    }
    for (const c of inv.certificates) {
      const f = c.fingerprint.toUpperCase();
      if (fprs.has(f)) continue;
      fprs.add(f);
      out.certificates.push(c);
    }
    const newest = newestVersion(out.agentVersion, inv.agentVersion);
    if (newest !== undefined) out.agentVersion = newest;
  }
  return out;
}

/**
 * What gpg-agent answers where it would have opened a pinentry under `--pinentry-mode cancel` or
 * `error` (agent/call-pinentry.c, agent_askpin and agent_get_confirmation): GPG_ERR_CANCELED and
 * GPG_ERR_NO_PIN_ENTRY. WHAT says, for the audit log, which prompt was not opened.
 */
export function noPromptError(mode: NoPromptMode, what: string): GpgError {
  return new GpgError(
    mode === 'cancel' ? ErrorCode.CANCELED : ErrorCode.NO_PIN_ENTRY,
    `pinentry-mode=${mode}: ${what} would need the pinentry`,
  );
}
