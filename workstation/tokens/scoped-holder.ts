// A relayed facade's view of the holder: what its token allows and nothing more. The holder
// decides this itself, whatever the relay or facade claims.

import { ErrorCode, GpgError } from '../../protocol/gpg-error.js';
import type {
  DecryptRequest,
  DecryptResult,
  Inventory,
  KeyEntry,
  KeyHolder,
  SignRequest,
  SshSignRequest,
} from '../../protocol/keyholder.js';
import type { ParsedToken, TokenOp } from '../../protocol/token.js';
import type { AuditInput } from '../audit/audit.js';

/**
 * One use a token was allowed, reserved before the holder runs: a use limit counts only the
 * operations that produced a result, so a declined confirmation, a cancelled pinentry or a
 * policy refusal gives its use back. Both methods are safe to call more than once, never reject.
 */
export interface TokenUse {
  commit(): void | Promise<void>;
  release(): void | Promise<void>;
}

export type TokenDecision =
  { ok: true; use?: TokenUse } | { ok: false; reason: string; message: string };

/** The holder's token registry: revocation, expiry, use counts (workstation/tokens/tokens.ts). */
export interface TokenAuthority {
  authorize(req: {
    token: ParsedToken;
    fingerprint: string;
    primaryFingerprint: string;
    op: TokenOp;
    /** SHA-256 (hex) of the secret the facade proved in the sealed channel. */
    secretHash?: string | undefined;
  }): TokenDecision | Promise<TokenDecision>;
}

function allowedBy(token: ParsedToken, k: { fingerprint: string; primaryFingerprint: string }) {
  const keys = token.payload.keys;
  // Hex fingerprints compare in upper case; an SSH key's base64 `SHA256:` one exactly.
  const norm = (f: string) => (f.startsWith('SHA256:') ? f : f.toUpperCase());
  return keys.includes(norm(k.fingerprint)) || keys.includes(norm(k.primaryFingerprint));
}

/** Whether the token may still see anything (not revoked, not expired), asked before a push. */
export type TokenStanding = () => Promise<boolean | { ok: boolean }>;

const NOTHING: Inventory = Object.freeze({ keys: [], certificates: [] }) as Inventory;

/**
 * The holder as one token sees it: only the token's keys are listed, and every operation is
 * first authorized by the registry (revocation, expiry, operations, uses). A refusal is recorded
 * in the audit log before gpg hears about it. With STANDING, a token the registry no longer
 * admits is shown no keys at all: the key list is the token's to see, not the secret's.
 */
export function tokenScopedHolder(
  holder: KeyHolder,
  token: ParsedToken,
  tokens: TokenAuthority,
  audit: { append(rec: AuditInput): Promise<void> },
  peer: string | undefined,
  secretHash?: string,
  standing?: TokenStanding,
): KeyHolder {
  const tid = token.payload.tid;
  const check = async (
    op: TokenOp,
    keygrip: string,
    extra: { hashAlgo?: number; digest?: Uint8Array },
  ): Promise<TokenUse | undefined> => {
    const inv = await holder.inventory();
    const entry: KeyEntry | undefined = inv.keys.find(
      (k) => k.keygrip === keygrip.toUpperCase() && allowedBy(token, k),
    );
    let refusal: string | undefined;
    let use: TokenUse | undefined;
    if (!entry) {
      refusal = `token ${tid} does not allow this key`;
    } else {
      const d = await tokens.authorize({
        token,
        fingerprint: entry.fingerprint,
        primaryFingerprint: entry.primaryFingerprint,
        op,
        ...(secretHash !== undefined ? { secretHash } : {}),
      });
      if (d.ok) use = d.use;
      else refusal = d.message;
    }
    if (refusal === undefined) return use;
    await audit.append({
      front: 'relay',
      ...(peer !== undefined ? { peer } : {}),
      tokenId: tid,
      ...(entry ? { fingerprint: entry.fingerprint } : {}),
      keygrip: keygrip.toUpperCase(),
      op,
      ...extra,
      decision: 'denied',
      reason: refusal,
    });
    throw new GpgError(ErrorCode.FORBIDDEN, refusal);
  };

  const counted = async <T>(use: TokenUse | undefined, run: () => Promise<T>): Promise<T> => {
    let result: T;
    try {
      result = await run();
    } catch (e) {
      await use?.release();
      throw e;
    }
    await use?.commit();
    return result;
  };

  return {
    async inventory(): Promise<Inventory> {
      if (standing) {
        const s = await standing();
        if (s === false || (typeof s === 'object' && !s.ok)) return NOTHING;
      }
      const inv = await holder.inventory();
      const keys = inv.keys.filter((k) => allowedBy(token, k));
      const primaries = new Set(keys.map((k) => k.primaryFingerprint.toUpperCase()));
      return {
        keys,
        certificates: inv.certificates.filter((c) => primaries.has(c.fingerprint.toUpperCase())),
        ...(inv.agentVersion !== undefined ? { agentVersion: inv.agentVersion } : {}),
      };
    },
    async sign(req: SignRequest, signal?: AbortSignal): Promise<Uint8Array> {
      const use = await check('sign', req.keygrip, { hashAlgo: req.hashAlgo, digest: req.digest });
      return counted(use, () => holder.sign(req, signal));
    },
    async decrypt(req: DecryptRequest, signal?: AbortSignal): Promise<DecryptResult> {
      const use = await check('decrypt', req.keygrip, {});
      return counted(use, () => holder.decrypt(req, signal));
    },
    async sshSign(req: SshSignRequest, signal?: AbortSignal): Promise<Uint8Array> {
      const sshSign = holder.sshSign?.bind(holder);
      if (!sshSign) {
        throw new GpgError(ErrorCode.NOT_SUPPORTED, 'this key holder makes no ssh signatures');
      }
      const use = await check('ssh-sign', req.keygrip, {});
      return counted(use, () => sshSign(req, signal));
    },
  };
}
