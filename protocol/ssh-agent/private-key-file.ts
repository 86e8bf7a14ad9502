// The outer, unencrypted part of an OpenSSH private key file (PROTOCOL.key in OpenSSH's source):
// cipher, KDF and the public key are readable without the passphrase, which is what lets
// `keytether keys import` store an encrypted key — still encrypted — and list and offer it before
// anyone types the passphrase. Decrypting the inner part is left to ssh2 (bcrypt-pbkdf, ciphers).

import { SshReader, WireError } from './wire.js';

export type SshKeyFileKind = 'openssh' | 'pem-rsa' | 'pem-ec' | 'pem-dsa' | 'pkcs8' | 'public';

// Armor lines are built, not written out, so the source holds no key-shaped text.
const PRIVATE_KEY = ['PRIVATE', 'KEY'].join(' ');
const begin = (what: string) => `-----BEGIN ${what}${PRIVATE_KEY}-----`;
const OPENSSH_BEGIN = begin('OPENSSH ');
const OPENSSH_END = `-----END OPENSSH ${PRIVATE_KEY}-----`;
const PKCS8_BEGIN = new RegExp(`^-----BEGIN (ENCRYPTED )?${PRIVATE_KEY}-----`);
const MAGIC = Buffer.from('openssh-key-v1\0', 'latin1');

/**
 * bcrypt-pbkdf rounds above this are not stored: each round costs milliseconds, and a crafted
 * file with 2³² rounds would hang every unlock. ssh-keygen's default is 16 (`-a` raises it; 100
 * is the most any guide suggests).
 */
export const MAX_KDF_ROUNDS = 1024;

/** What a file that looks like an SSH key is, judged from its first line only. */
export function sshKeyFileKind(text: string): SshKeyFileKind | undefined {
  const head = text.trimStart();
  if (head.startsWith(OPENSSH_BEGIN)) return 'openssh';
  if (head.startsWith(begin('RSA '))) return 'pem-rsa';
  if (head.startsWith(begin('EC '))) return 'pem-ec';
  if (head.startsWith(begin('DSA '))) return 'pem-dsa';
  if (PKCS8_BEGIN.test(head)) return 'pkcs8';
  if (/^(ssh-(ed25519|rsa|dss)|ecdsa-sha2-nistp\d+|sk-[a-z0-9-]+@openssh\.com) AAAA/.test(head))
    return 'public';
  return undefined;
}

export interface OpenSshKeyEnvelope {
  /** `none` for a key stored in the clear. */
  cipher: string;
  kdf: string;
  rounds: number;
  /** The public key blob (RFC 4253 §6.6 encoding) of the file's one key. */
  publicBlob: Buffer;
}

/** Parses the envelope; throws WireError naming what is wrong (never any key bytes). */
export function parseOpenSshEnvelope(text: string): OpenSshKeyEnvelope {
  const start = text.indexOf(OPENSSH_BEGIN);
  const end = text.indexOf(OPENSSH_END);
  if (start < 0 || end < start) throw new WireError('the OpenSSH key armor is incomplete');
  const b64 = text.slice(start + OPENSSH_BEGIN.length, end).replace(/\s+/g, '');
  if (!/^[A-Za-z0-9+/]*={0,2}$/.test(b64)) throw new WireError('the key is not base64');
  const raw = Buffer.from(b64, 'base64');
  if (!raw.subarray(0, MAGIC.length).equals(MAGIC))
    throw new WireError('the key does not start with openssh-key-v1');
  const r = new SshReader(raw.subarray(MAGIC.length));
  const cipher = r.text();
  const kdf = r.text();
  const kdfOptions = r.string();
  const count = r.uint32();
  if (count !== 1) throw new WireError(`the file holds ${count} keys, not one`);
  const publicBlob = Buffer.from(r.string());
  // The (possibly encrypted) private section: only its framing is checked here, which is what
  // catches a file cut short by a bad copy before it is stored.
  const privateSection = r.string();
  r.end();
  if (privateSection.length === 0 || privateSection.length % 8 !== 0)
    throw new WireError('the private section is not whole blocks');
  let rounds = 0;
  if (kdf === 'bcrypt') {
    const o = new SshReader(kdfOptions);
    o.string(); // salt
    rounds = o.uint32();
    o.end();
  } else if (kdf !== 'none') {
    throw new WireError(`the key uses the unknown KDF ${kdf}`);
  }
  if ((cipher === 'none') !== (kdf === 'none'))
    throw new WireError('the key names a cipher without a KDF, or a KDF without a cipher');
  return { cipher, kdf, rounds, publicBlob };
}
