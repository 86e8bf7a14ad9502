// What the keystore reports to the CLI and to token creation: its keys as `keytether keys list`
// shows them, and what an import did.

import type { KeyUsage } from '../../protocol/keyholder.js';

export interface ImportResult {
  fingerprint: string;
  /** First user id, or '' when the key has none. */
  uid: string;
  /** False when the key was already in the store and has been updated. */
  created: boolean;
}

export interface ListedSubkey {
  fingerprint: string;
  algorithm: string;
  /** 40 uppercase hex digits as `gpg --with-keygrip` prints; null for unsupported algorithms. */
  keygrip: string | null;
  usage: KeyUsage[];
  /** False when only a stub is stored (no secret material here). */
  secret: boolean;
}

export interface ListedKey extends ListedSubkey {
  /** `openssh` for a key imported from an OpenSSH private key file (fingerprint `SHA256:…`). */
  format: 'openpgp' | 'openssh';
  /** OpenPGP user ids; for an OpenSSH key its comment, when it has one. */
  uids: string[];
  subkeys: ListedSubkey[];
}

export interface ImportOptions {
  /** The text of FILE.pub beside an SSH key file (the public half of an encrypted PEM key). */
  sshPublic?: string;
}
