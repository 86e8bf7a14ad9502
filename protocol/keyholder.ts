// The one interface every front talks to: the workstation's in-process holder implements it,
// and later a tunnel client on a server implements it again (Go's ssh/agent style).

import { displayField } from './display-text.js';

/** What a key may be used for, in OpenPGP terms. */
export type KeyUsage = 'certify' | 'sign' | 'encrypt' | 'auth';

/** One secret (sub)key the holder can use, described by public data only. */
export interface KeyEntry {
  /** 40 uppercase hex digits, exactly as `gpg --with-keygrip` prints it. */
  keygrip: string;
  /** OpenPGP fingerprint of this (sub)key, uppercase hex. */
  fingerprint: string;
  /** Fingerprint of the primary key this entry belongs to (equal to `fingerprint` for primaries). */
  primaryFingerprint: string;
  /** e.g. `ed25519`, `cv25519`, `rsa3072`, `nistp256`, `brainpoolP256r1`. */
  algorithm: string;
  usage: KeyUsage[];
  /** Canonical `(10:public-key…)` S-expression, as READKEY returns it. */
  publicKey: Uint8Array;
  /** Whether an unlocked copy (or passphrase) is currently cached. */
  cached?: boolean;
  /** `P` protected, `C` clear, `-` unknown — KEYINFO's PROTECTION field. */
  protection?: 'P' | 'C' | '-';
  /** Set for keys that live on a smartcard. */
  card?: { serialNo: string; idStr: string };
  /** An SSH key's own comment (an imported OpenSSH key's, an ssh-agent back end's), which
   * `ssh-add -l` shows; OpenPGP keys have none (tunnel protocol 8). */
  comment?: string;
}

/** A primary key's public certificate and the user ids on it. */
export interface Certificate {
  fingerprint: string;
  userIds: string[];
  /** ASCII-armored public key block (never secret material). */
  armored: string;
}

export interface Inventory {
  keys: KeyEntry[];
  certificates: Certificate[];
  /**
   * `GETINFO version` of the real gpg-agent behind the holder, when a back end is one. Facades
   * report it when it is newer than their own floor, so a gpg as new as that agent never warns.
   */
  agentVersion?: string;
}

/** Who is asking, as far as the front can tell. Shown to the user and written to the audit log. */
export interface Requester {
  /** `local` (the holder's own socket), `ssh`, `relay`. */
  front: 'local' | 'ssh' | 'relay';
  /** The server, as the transport established it (the ssh destination); never a peer's claim. */
  host?: string;
  /**
   * Where the relay says the facade connected from. The relay is untrusted (SECURITY.md), so this
   * is shown as its claim and audited as `peer`, and no policy rule or remembered approval ever
   * matches on it: relayed requests are known by their token only.
   */
  relayPeer?: string;
  user?: string;
  /**
   * The process on the server that connected to the agent socket (normally gpg), and below what
   * started it, as that machine reports them: any of it can be faked there, so it is shown as
   * the server's claim and a policy rule can only let it narrow what it allows.
   */
  pid?: number;
  uid?: number;
  command?: string;
  /** The process's own name (its `comm`: `gpg`, `git`). */
  name?: string;
  /** Parent first, up to the login shell and what started it (`git`, `bash`, `sshd`). */
  parents?: ProcessClaim[];
  tokenId?: string;
}

/** One process in a requester's parent chain, as the server reports it. */
export interface ProcessClaim {
  pid: number;
  name: string;
  command?: string;
}

/** The most parents a requester carries. */
export const MAX_PARENTS = 8;

/**
 * gpg's `--pinentry-mode cancel|error` (`OPTION pinentry-mode`): the requester must never be
 * prompted, so where the holder would open a pinentry (a passphrase, a confirmation) it answers
 * as gpg-agent does instead: `cancel` → GPG_ERR_CANCELED, `error` → GPG_ERR_NO_PIN_ENTRY.
 */
export type NoPromptMode = 'cancel' | 'error';

export interface SignRequest {
  keygrip: string;
  /** OpenPGP / libgcrypt hash id as sent in `SETHASH <algo> <hex>` (8 = SHA-256, 10 = SHA-512…). */
  hashAlgo: number;
  digest: Uint8Array;
  /** gpg's `SETKEYDESC` text, already decoded (plus → space, %XX → byte), or undefined. */
  description?: string;
  requester: Requester;
  /** Set when the client asked never to be prompted (see NoPromptMode). */
  pinentryMode?: NoPromptMode;
  /**
   * The bytes the server says it is signing (handed to its facade by `keytether git-sign`). A
   * claim until the holder recomputes the digest from it: only then is it shown as verified.
   */
  content?: SignContent;
}

/** What a payload is, as the server's shim reports it. */
export type ContentKind = 'git-commit' | 'git-tag' | 'git-push' | 'file';

export interface SignContent {
  kind: ContentKind;
  data: Uint8Array;
  /** gpg's canonicalisation, from the shim's reading of gpg's arguments. */
  mode: 'binary' | 'text' | 'clearsign';
  /** Seconds since the epoch when the shim started gpg (the server's clock). */
  time: number;
  /** A file name, for `file` (reported, never bound by a v4 signature). */
  name?: string;
  /**
   * For `git-commit`: the tree and parent objects that prove which files the commit changes
   * (protocol/git/object-bundle.ts). Claims too: the holder hashes every one itself.
   */
  objects?: Uint8Array;
}

/** The largest payload a server may hand over for one signature. */
export const MAX_CONTENT_BYTES = 64 * 1024 * 1024;

export interface DecryptRequest {
  keygrip: string;
  /** The canonical `(7:enc-val…)` S-expression gpg sent in answer to `INQUIRE CIPHERTEXT`. */
  ciphertext: Uint8Array;
  description?: string;
  requester: Requester;
  pinentryMode?: NoPromptMode;
}

export interface DecryptResult {
  /** The bytes inside `(5:value<n>:…)`. */
  value: Uint8Array;
  /** `0` when the PKCS#1 padding was already removed (sent as `S PADDING 0`); absent otherwise. */
  padding?: 0 | 1;
}

/**
 * Errors are thrown as `GpgError` (protocol/gpg-error) so that they reach gpg with the same code
 * a real agent would send; anything else is reported as a general error.
 */
export interface KeyHolder {
  inventory(): Promise<Inventory>;
  /** Returns a canonical `(7:sig-val…)` S-expression. */
  sign(req: SignRequest, signal?: AbortSignal): Promise<Uint8Array>;
  decrypt(req: DecryptRequest, signal?: AbortSignal): Promise<DecryptResult>;
  /**
   * An ssh-agent signature (protocol/ssh-agent). Unlike `sign`, the holder gets the data itself
   * and hashes it (`hash`; EdDSA hashes inside the algorithm), so policy sees what is signed.
   * Optional: a holder without it makes the ssh-agent front refuse every signature.
   */
  sshSign?(req: SshSignRequest, signal?: AbortSignal): Promise<Uint8Array>;
}

/** One ssh-agent SIGN_REQUEST, with what the front read from the data. */
export interface SshSignRequest {
  keygrip: string;
  /** The bytes to sign, unhashed. */
  data: Uint8Array;
  /** The digest for ECDSA/RSA; absent for EdDSA. `sha1` only for plain ssh-rsa. */
  hash?: 'sha1' | 'sha256' | 'sha384' | 'sha512';
  /** `login` (a user-auth request), `sshsig` (`ssh-keygen -Y sign`), or `unknown`. */
  purpose: 'login' | 'sshsig' | 'unknown';
  /** For `login`: the remote user; for `sshsig`: the namespace (`git`). */
  subject?: string;
  /**
   * For `login`: the destination's host key (OpenSSH fingerprint, `SHA256:…`) when the client
   * bound this connection to that session with session-bind@openssh.com and the ids match.
   */
  destination?: string;
  requester: Requester;
}

/**
 * The requester fields a remote peer may claim (which user and process on its side asks), cleaned
 * for display. `front`, `host` and `tokenId` are never taken from a claim: the transport that
 * carried the request knows them and sets them itself, so a server cannot pose as another host
 * or as a token that policy rules trust.
 */
export function claimedRequester(claimed: Partial<Requester>): Omit<Requester, 'front'> {
  const text = (v: unknown): string | undefined =>
    typeof v === 'string' && v.length > 0 ? displayField(v) : undefined;
  const num = (v: unknown): number | undefined =>
    typeof v === 'number' && Number.isSafeInteger(v) && v >= 0 ? v : undefined;
  const out: Omit<Requester, 'front'> = {};
  const user = text(claimed.user);
  const command = text(claimed.command);
  const pid = num(claimed.pid);
  const uid = num(claimed.uid);
  const name = text(claimed.name);
  if (user !== undefined) out.user = user;
  if (command !== undefined) out.command = command;
  if (pid !== undefined) out.pid = pid;
  if (uid !== undefined) out.uid = uid;
  if (name !== undefined) out.name = name;
  const parents = (Array.isArray(claimed.parents) ? claimed.parents : [])
    .slice(0, MAX_PARENTS)
    .flatMap((p): ProcessClaim[] => {
      const ppid = num(p?.pid);
      const pname = text(p?.name);
      if (ppid === undefined || pname === undefined) return [];
      const pcommand = text(p.command);
      return [{ pid: ppid, name: pname, ...(pcommand !== undefined ? { command: pcommand } : {}) }];
    });
  if (parents.length > 0) out.parents = parents;
  return out;
}
