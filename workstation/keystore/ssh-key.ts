// OpenSSH private keys in the builtin store. `keys/<KEYGRIP>.ssh` keeps the file the user imported
// byte for byte — still under its own passphrase — beside what listing and offering it needs (the
// public key and its comment). Only unlock() decrypts it, through ssh2's parser, and only into the
// SecretKeyMaterial the crypto layer already signs with, so these keys sign exactly like OpenPGP
// authentication subkeys do.

import { createPrivateKey } from 'node:crypto';
import ssh2 from 'ssh2';
import type { ParsedKey } from 'ssh2';
import { gpgErr } from '../../protocol/gpg-error.js';
import { keygrip, type PublicKeyParams } from '../../protocol/keygrip.js';
import { sshFingerprint } from '../../protocol/ssh-agent/index.js';
import { publicKeyFromBlob } from '../../protocol/ssh-agent/keys.js';
import {
  MAX_KDF_ROUNDS,
  parseOpenSshEnvelope,
  sshKeyFileKind,
  type SshKeyFileKind,
} from '../../protocol/ssh-agent/private-key-file.js';
import { SshReader, WireError } from '../../protocol/ssh-agent/wire.js';
import { UserError } from '../../system/user-error.js';
import type { SecretKeyMaterial } from '../crypto/unlocked-key.js';
import { readSecretFile } from '../home/home.js';
import type { ListedKey } from './listed-key.js';
import { decryptSshKey, type DecryptedSshKey } from './ssh-key-decrypt.js';

const ssh2Utils = ssh2.utils;

/** Far more than an RSA-16384 OpenSSH key file; a bigger "key" is some other file. */
const MAX_SSH_KEY_TEXT = 64 * 1024;
const MAX_COMMENT = 1024;

export interface SshStoredKey {
  keygrip: string;
  /** `SHA256:…` as `ssh-keygen -l` prints it. */
  fingerprint: string;
  /** e.g. `ed25519`, `nistp256`, `rsa3072`. */
  algorithm: string;
  publicBlob: Buffer;
  publicKey: PublicKeyParams;
  comment: string;
  protection: 'P' | 'C';
  /** The private key file as imported (encrypted when protection is P). */
  privateText: string;
}

/** Whether BYTES look like an SSH key file rather than an OpenPGP export. */
export function isSshKeyInput(bytes: Uint8Array): boolean {
  return sshKeyFileKind(Buffer.from(bytes.subarray(0, 256)).toString('latin1')) !== undefined;
}

function publicLine(k: { publicBlob: Buffer; comment: string }): string {
  const type = new SshReader(k.publicBlob).text();
  return `${type} ${k.publicBlob.toString('base64')}${k.comment ? ` ${k.comment}` : ''}`;
}

/** `type base64 [comment]`, as in id_ed25519.pub and authorized_keys. */
export function sshPublicLine(k: SshStoredKey): string {
  return publicLine(k);
}

function parsePublicLine(text: string): { blob: Buffer; comment: string } | undefined {
  const m = /^(\S+) ([A-Za-z0-9+/]+={0,2})(?: (.*))?$/.exec(text.trim().split('\n')[0] ?? '');
  if (!m) return undefined;
  const blob = Buffer.from(m[2]!, 'base64');
  try {
    if (new SshReader(blob).text() !== m[1]) return undefined;
  } catch {
    return undefined;
  }
  return { blob, comment: (m[3] ?? '').slice(0, MAX_COMMENT) };
}

function describe(
  source: string,
  blob: Buffer,
): { keygrip: string; fingerprint: string; algorithm: string; publicKey: PublicKeyParams } {
  let type = 'unknown';
  try {
    type = new SshReader(blob).text();
  } catch {
    /* reported below */
  }
  const pk = publicKeyFromBlob(blob);
  if (!pk) {
    if (type.startsWith('sk-')) {
      throw new UserError(
        `${source} is a security-key (${type}) SSH key, which signs only on its token; keep it in your ssh-agent and set ssh-agent-backend = "SSH_AUTH_SOCK" in config.toml`,
      );
    }
    throw new UserError(
      `${source} holds an ${type.slice(0, 40)} SSH key; the builtin store takes Ed25519, ECDSA (nistp256/384/521) and RSA keys`,
    );
  }
  return {
    keygrip: keygrip(pk.params),
    fingerprint: sshFingerprint(blob),
    algorithm: pk.algorithm,
    publicKey: pk.params,
  };
}

function damaged(source: string): UserError {
  return new UserError(
    `${source} is not a readable SSH private key (damaged or cut short); copy it again from the machine it came from`,
  );
}

function parsed(key: ParsedKey | ParsedKey[] | Error): ParsedKey | Error {
  return Array.isArray(key) ? (key[0] ?? new Error('no key')) : key;
}

/**
 * Reads an SSH private key file a user gave to `keys import`. SIBLING is the text of FILE.pub when
 * one is beside it: the only place an encrypted PEM key's public half can come from.
 */
export function readSshKeyInput(bytes: Uint8Array, source: string, sibling?: string): SshStoredKey {
  if (bytes.length > MAX_SSH_KEY_TEXT)
    throw new UserError(
      `${source} is larger than ${MAX_SSH_KEY_TEXT} bytes; that is not an SSH key`,
    );
  const text = Buffer.from(bytes).toString('utf8');
  const kind = sshKeyFileKind(text) as SshKeyFileKind;
  const rewrite = `rewrite it in OpenSSH's format with ssh-keygen -p -f ${source}`;
  if (kind === 'public') {
    throw new UserError(
      `${source} is an SSH public key; import the private key file (the same name without .pub)`,
    );
  }
  if (kind === 'pem-dsa') {
    throw new UserError(
      `${source} is a DSA SSH key, which OpenSSH no longer accepts; make a new key with ssh-keygen -t ed25519`,
    );
  }
  if (kind === 'pkcs8') throw new UserError(`${source} is a PKCS#8 key file; ${rewrite}`);
  const side = sibling === undefined ? undefined : parsePublicLine(sibling);
  let blob: Buffer;
  let encrypted: boolean;
  if (kind === 'openssh') {
    try {
      const env = parseOpenSshEnvelope(text);
      if (env.rounds > MAX_KDF_ROUNDS) {
        throw new UserError(
          `${source} asks for ${env.rounds} bcrypt rounds at each unlock (at most ${MAX_KDF_ROUNDS}); lower them with ssh-keygen -p -a 100 -f ${source}`,
        );
      }
      blob = env.publicBlob;
      encrypted = env.cipher !== 'none';
    } catch (e) {
      if (e instanceof UserError) throw e;
      const why = e instanceof WireError ? e.message : 'unreadable';
      throw new UserError(
        `${source} is not a readable OpenSSH private key (${why}); copy it again from the machine it came from`,
      );
    }
  } else {
    encrypted = /^Proc-Type:\s*4,ENCRYPTED/m.test(text);
    if (encrypted) {
      if (!side) {
        throw new UserError(
          `${source} is an encrypted PEM key whose public key is unreadable without the passphrase, and no ${source}.pub is beside it; ${rewrite}`,
        );
      }
      blob = side.blob;
    } else {
      const k = parsed(ssh2Utils.parseKey(text));
      if (k instanceof Error) throw damaged(source);
      blob = k.getPublicSSH();
    }
  }
  const described = describe(source, blob);
  let comment = side && side.blob.equals(blob) ? side.comment : '';
  const key: SshStoredKey = {
    ...described,
    publicBlob: blob,
    comment,
    protection: encrypted ? 'P' : 'C',
    privateText: text,
  };
  if (!encrypted) {
    // A clear key is checked now (its secret half against its public half), and names itself.
    const k = parsed(ssh2Utils.parseKey(text));
    if (k instanceof Error) throw damaged(source);
    if (!k.getPublicSSH().equals(blob))
      throw new UserError(`${source}: the private key does not match the public key in the file`);
    comment ||= (k.comment ?? '').slice(0, MAX_COMMENT);
    key.comment = comment;
    zeroMaterial(sshSecretMaterial(k.getPrivatePEM(), key));
  }
  return key;
}

/** A stored `keys/<KEYGRIP>.ssh` file, checked against the keygrip its name gives. */
export async function readStoredSshKey(file: string, grip: string): Promise<SshStoredKey> {
  const k = sshKeyFromFile((await readSecretFile(file)).toString('utf8'), file);
  if (k.keygrip !== grip) {
    throw new UserError(
      `${file} holds the key with keygrip ${k.keygrip}, not the one its name says; remove it and import the key again`,
    );
  }
  return k;
}

/** The key as `keytether keys list` shows it. */
export function listedSshKey(k: SshStoredKey): ListedKey {
  return {
    fingerprint: k.fingerprint,
    algorithm: k.algorithm,
    keygrip: k.keygrip,
    usage: ['auth'],
    secret: true,
    format: 'openssh',
    uids: k.comment ? [k.comment] : [],
    subkeys: [],
  };
}

/** The `.ssh` file: JSON, so the comment and public key survive without parsing the private part. */
export function sshKeyFileText(k: SshStoredKey): string {
  return (
    JSON.stringify(
      {
        version: 1,
        public: publicLine(k),
        protection: k.protection,
        private: k.privateText,
      },
      null,
      2,
    ) + '\n'
  );
}

/** Reads a stored `.ssh` file; FILE names it in errors. */
export function sshKeyFromFile(text: string, file: string): SshStoredKey {
  const bad = (why: string) =>
    new UserError(
      `${file} is not a readable SSH key file (${why}); remove it and import the key again`,
    );
  let j: unknown;
  try {
    j = JSON.parse(text);
  } catch {
    throw bad('not JSON');
  }
  const o = j as Record<string, unknown>;
  if (typeof o !== 'object' || o === null || o.version !== 1) throw bad('unknown version');
  if (typeof o.public !== 'string' || typeof o.private !== 'string') throw bad('fields missing');
  if (o.protection !== 'P' && o.protection !== 'C') throw bad('protection is not P or C');
  if (o.private.length > MAX_SSH_KEY_TEXT) throw bad('too large');
  const pub = parsePublicLine(o.public);
  if (!pub) throw bad('the public key line is unreadable');
  const d = (() => {
    try {
      return describe(file, pub.blob);
    } catch {
      throw bad('unsupported key type');
    }
  })();
  return {
    ...d,
    publicBlob: pub.blob,
    comment: pub.comment,
    protection: o.protection,
    privateText: o.private,
  };
}

/**
 * Decrypts K with PASSPHRASE (the pinentry's raw bytes; null for a clear key) into the material
 * the crypto layer takes. Wrong or missing passphrase → BAD_PASSPHRASE.
 */
export async function unlockSshKey(
  k: SshStoredKey,
  passphrase: Buffer | null,
): Promise<SecretKeyMaterial> {
  if (k.protection === 'P' && (passphrase === null || passphrase.length === 0))
    throw gpgErr('BAD_PASSPHRASE', 'the key needs a passphrase');
  let key: DecryptedSshKey;
  try {
    key = await decryptSshKey(k.privateText, k.protection === 'P' ? passphrase! : undefined);
  } catch {
    throw gpgErr('INV_DATA', 'the stored SSH key cannot be read');
  }
  if ('error' in key) {
    // ssh2 says "bad passphrase?" for a failed check-int (OpenSSH) or a bad padding (PEM).
    if (/passphrase/i.test(key.error)) throw gpgErr('BAD_PASSPHRASE');
    throw gpgErr('INV_DATA', 'the stored SSH key cannot be read');
  }
  // The public half is what policy and the server saw; a secret half for another key is refused.
  if (!key.publicBlob.equals(k.publicBlob))
    throw gpgErr('INV_DATA', 'the stored SSH key does not match its public key');
  return sshSecretMaterial(key.pem, k);
}

function b64u(s: unknown): Buffer {
  if (typeof s !== 'string') throw gpgErr('INV_DATA', 'the SSH key lacks a parameter');
  return Buffer.from(s, 'base64url');
}

const JWK_CURVES = {
  'P-256': 'NIST P-256',
  'P-384': 'NIST P-384',
  'P-521': 'NIST P-521',
} as const;

function sshSecretMaterial(pem: string, k: SshStoredKey): SecretKeyMaterial {
  const jwk = createPrivateKey(pem).export({ format: 'jwk' });
  if (jwk.kty === 'OKP' && jwk.crv === 'Ed25519') {
    return {
      kind: 'eddsa',
      curve: 'Ed25519',
      q: Buffer.concat([Buffer.from([0x40]), b64u(jwk.x)]),
      seed: b64u(jwk.d),
    };
  }
  if (jwk.kty === 'EC' && typeof jwk.crv === 'string' && jwk.crv in JWK_CURVES) {
    return {
      kind: 'ecdsa',
      curve: JWK_CURVES[jwk.crv as keyof typeof JWK_CURVES],
      q: Buffer.concat([Buffer.from([0x04]), b64u(jwk.x), b64u(jwk.y)]),
      d: b64u(jwk.d),
    };
  }
  if (jwk.kty === 'RSA') {
    // OpenPGP's (p, q, u = p⁻¹ mod q) is JWK's (q, p, qi = q⁻¹ mod p) with the primes swapped.
    return {
      kind: 'rsa',
      n: b64u(jwk.n),
      e: b64u(jwk.e),
      d: b64u(jwk.d),
      p: b64u(jwk.q),
      q: b64u(jwk.p),
      u: b64u(jwk.qi),
    };
  }
  throw gpgErr('UNSUPPORTED_ALGORITHM', `${k.algorithm} SSH keys are not supported`);
}

/** Zeroes the secret parts of M (the crypto layer keeps its own copy). */
export function zeroMaterial(m: SecretKeyMaterial): void {
  if (m.kind === 'rsa') for (const v of [m.d, m.p, m.q, m.u]) v.fill(0);
  else if (m.kind === 'eddsa') m.seed.fill(0);
  else m.d.fill(0);
}
