// Which keys a token names: a user's name for a key (fingerprint, key id, SSH `SHA256:`) resolved
// against the keys the holder serves, and a primary replaced by the subkeys the token's
// operations need.

import path from 'node:path';
import { UsageError, UserError } from '../../system/user-error.js';
import type { TokenOp } from '../../protocol/token.js';
import type { Config } from '../home/config.js';
import { GpgAgentBackend } from '../backends/index.js';
import { SshAgentBackend } from '../backends/ssh-agent.js';
import type { ListedKey } from '../keystore/index.js';

/** What a token may name: a primary fingerprint and its subkeys' fingerprints, with their flags. */
export interface NameableKey {
  fingerprint: string;
  /** OpenPGP key flags as keytether lists them: sign, certify, encrypt, authenticate. */
  usage: readonly string[];
  subkeys: { fingerprint: string; usage: readonly string[] }[];
}

/**
 * The keys the holder serves, as `keytether agent` with the same back-end settings would: the
 * keystore's, and unless the back end is builtin, those the workstation's gpg-agent holds.
 */
export async function nameableKeys(
  keystore: ListedKey[],
  config: Config,
  gnupgHome: string | undefined,
): Promise<NameableKey[]> {
  if (config.backend === 'builtin') return keystore;
  const dir = gnupgHome !== undefined ? path.resolve(gnupgHome) : config.gnupgHome;
  const opts = dir !== undefined ? { gnupgHome: dir } : {};
  const agent =
    config.backend === 'auto'
      ? // As the agent does: a GnuPG home without secret keys is not worth starting an agent for.
        await GpgAgentBackend.open({ ...opts, onlyWithKeys: true }).catch(() => undefined)
      : await GpgAgentBackend.open({ ...opts, requireAgent: true }).catch((e: unknown) => {
          throw new UserError(
            `cannot reach the workstation's gpg-agent (${(e as Error).message}); start it with "gpgconf --launch gpg-agent" or use --backend builtin`,
          );
        });
  if (!agent) return keystore;
  try {
    const byPrimary = new Map<string, NameableKey>();
    for (const k of (await agent.inventory()).keys) {
      const primary = k.primaryFingerprint.toUpperCase();
      let entry = byPrimary.get(primary);
      if (!entry) {
        byPrimary.set(primary, (entry = { fingerprint: primary, usage: [], subkeys: [] }));
      }
      if (k.fingerprint.toUpperCase() !== primary) {
        entry.subkeys.push({ fingerprint: k.fingerprint.toUpperCase(), usage: k.usage });
      } else {
        entry.usage = k.usage;
      }
    }
    return [...keystore, ...byPrimary.values()];
  } finally {
    await agent.close();
  }
}

/** The keys of the workstation ssh-agent the holder serves (ssh-agent-backend), if one is set. */
export async function sshAgentKeys(config: Config): Promise<NameableKey[]> {
  if (config.sshAgentBackend === undefined) return [];
  const inv = await new SshAgentBackend({ socket: config.sshAgentBackend }).inventory();
  return inv.keys.map((k) => ({ fingerprint: k.fingerprint, usage: k.usage, subkeys: [] }));
}

/**
 * The fingerprint a user's name for a key stands for: a primary or subkey fingerprint (any case,
 * spaces, 0x) or a 16-hex key id. Naming a subkey limits the token to that subkey.
 */
export function resolveKeyName(name: string, keys: NameableKey[]): string {
  const ssh = name.trim();
  if (/^SHA256:[A-Za-z0-9+/]{43}$/.test(ssh)) {
    if (!keys.some((k) => k.fingerprint === ssh)) {
      throw new UserError(
        `no SSH key ${ssh} in the keystore or the ssh-agent back end; see keytether keys list or ssh-add -l`,
      );
    }
    return ssh;
  }
  const norm = name.replace(/\s+/g, '').replace(/^0x/i, '').toUpperCase();
  const parts = keys.flatMap((k) => [k.fingerprint, ...k.subkeys.map((s) => s.fingerprint)]);
  let matches: string[] = [];
  if (/^[0-9A-F]{40}$|^[0-9A-F]{64}$/.test(norm)) matches = parts.filter((f) => f === norm);
  else if (/^[0-9A-F]{16}$/.test(norm)) {
    // A v4 key id is the fingerprint's last 16 hex digits (v5/v6: the first 16).
    matches = parts.filter((f) => (f.length === 40 ? f.endsWith(norm) : f.startsWith(norm)));
  } else {
    throw new UsageError(
      `'${name.slice(0, 80)}' is not a fingerprint or 16-digit key id; see keytether keys list`,
    );
  }
  matches = [...new Set(matches)];
  if (matches.length === 0) {
    throw new UserError(
      `no key ${norm} in the keystore; see keytether keys list for the stored keys`,
    );
  }
  if (matches.length > 1) {
    throw new UserError(
      `key id ${norm} matches several keys; name the key by its full fingerprint`,
    );
  }
  return matches[0]!;
}

const OP_FLAG: Record<TokenOp, string> = { sign: 'sign', decrypt: 'encrypt', 'ssh-sign': 'auth' };
/** What `gpg --quick-add-key FPR …` adds a subkey for OP with. */
const OP_SUBKEY: Record<TokenOp, string> = {
  sign: 'ed25519 sign',
  decrypt: 'cv25519 encr',
  'ssh-sign': 'ed25519 auth',
};
const OP_CAN: Record<TokenOp, string> = {
  sign: 'sign',
  decrypt: 'decrypt (encrypt flag)',
  'ssh-sign': 'authenticate (ssh-sign)',
};

/**
 * The fingerprints a token names for the user's name FPR. A subkey stands for itself. A primary
 * stands for its subkeys that can do the token's operations, never for itself while it has
 * one: a primary certifies, and a token must not let CI make certifications (a new user id, a
 * subkey binding). Only a primary that signs and has no signing subkey is named itself; the
 * holder then signs with it for a remote only what it can check (clear signing). NOTES gets one
 * line per primary replaced or kept, for the user.
 */
export function tokenKeys(
  fpr: string,
  keys: readonly NameableKey[],
  ops: readonly TokenOp[],
  notes: string[],
): string[] {
  if (fpr.startsWith('SHA256:')) {
    if (ops.some((op) => op !== 'ssh-sign')) {
      throw new UserError(
        `${fpr} is an SSH key, which only makes SSH signatures; give --ops ssh-sign`,
      );
    }
    return [fpr];
  }
  const primary = keys.find((k) => k.fingerprint === fpr);
  if (!primary) return [fpr];
  const chosen = new Set<string>();
  for (const op of ops) {
    const flag = OP_FLAG[op];
    const subs = primary.subkeys.filter((s) => s.usage.includes(flag));
    for (const s of subs) chosen.add(s.fingerprint);
    if (subs.length > 0) continue;
    if (op === 'sign' && primary.usage.includes('sign')) {
      chosen.add(fpr);
      notes.push(
        `key ${fpr} has no signing subkey, so the token names the primary itself; ` +
          `it also certifies, so the holder signs with it for CI only what it can check ` +
          `(keytether git-sign); add a subkey with "gpg --quick-add-key ${fpr} ed25519 sign"`,
      );
      continue;
    }
    if (op === 'ssh-sign' && primary.usage.includes('auth')) {
      chosen.add(fpr);
      continue;
    }
    throw new UserError(
      `key ${fpr} has no subkey that can ${OP_CAN[op]}; ` +
        `add one with "gpg --quick-add-key ${fpr} ${OP_SUBKEY[op]}" ` +
        `and import it again, or leave ${op} out of --ops`,
    );
  }
  const subs = [...chosen].filter((f) => f !== fpr);
  if (subs.length > 0) {
    notes.push(
      `the token names subkey${subs.length > 1 ? 's' : ''} ${subs.join(', ')} of key ${fpr}, ` +
        `not the primary: a token never lets CI certify`,
    );
  }
  return [...chosen];
}
