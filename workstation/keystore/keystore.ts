// The builtin back end's key store: OpenPGP secret keys exactly as gpg exported them (still
// passphrase-encrypted), one file per primary key under $KEYTETHER_HOME/keys/<FPR>.key.
// Nothing is decrypted until unlock(), and then only the one packet asked for.

import * as fs from 'node:fs/promises';
import * as path from 'node:path';
import * as openpgp from 'openpgp';
import { UserError } from '../../system/user-error.js';
import { ErrorCode, GpgError, gpgErr } from '../../protocol/gpg-error.js';
import type { Certificate, Inventory, KeyEntry } from '../../protocol/keyholder.js';
import { publicKeySexp } from '../../protocol/keygrip.js';
import { createUnlockedKey, type UnlockedKey } from '../crypto/unlocked-key.js';
import { ensureHome, readSecretFile, writeSecretFile } from '../home/home.js';
import { describeKey, secretMaterial, type KeyPart } from './key-part.js';
import { readKeyInput } from './import-input.js';
import { concat, mergeKeys } from './merge-keys.js';
import { keyDirSignature } from './key-dir.js';
import type { ImportOptions, ImportResult, ListedKey, ListedSubkey } from './listed-key.js';
import {
  isSshKeyInput,
  readSshKeyInput,
  sshKeyFileText,
  listedSshKey,
  readStoredSshKey,
  sshPublicLine,
  unlockSshKey,
  zeroMaterial,
  type SshStoredKey,
} from './ssh-key.js';

export type { ImportOptions, ImportResult, ListedKey, ListedSubkey } from './listed-key.js';

interface StoredKey {
  fingerprint: string;
  file: string;
  armored: string;
  key: openpgp.Key;
  parts: KeyPart[];
}

const FPR_RE = /^[0-9A-F]{40}$|^[0-9A-F]{64}$/;
const SSH_FPR_RE = /^SHA256:[A-Za-z0-9+/]{43}$/;

export function normaliseFingerprint(input: string): string | undefined {
  const t = input.trim();
  if (SSH_FPR_RE.test(t)) return t;
  const f = t.replace(/\s+/g, '').replace(/^0x/i, '').toUpperCase();
  return FPR_RE.test(f) ? f : undefined;
}

export class Keystore {
  readonly home: string;
  readonly dir: string;
  private keys = new Map<string, StoredKey>();
  /** OpenSSH keys by keygrip. */
  private sshKeys = new Map<string, SshStoredKey>();
  // The inventory is asked for on every request; rebuilding it (armoring every certificate)
  // cost more than an Ed25519 signature, so it is kept until the key set changes.
  private cachedInventory: Inventory | undefined;
  private dirSignature = '';
  private refreshing: Promise<void> | undefined;
  private lastCheck = 0;

  private constructor(home: string) {
    this.home = home;
    this.dir = path.join(home, 'keys');
  }

  /** Opens (creating if needed) the store in HOME, refusing directories others can read. */
  static async open(home: string): Promise<Keystore> {
    await ensureHome(home);
    const ks = new Keystore(home);
    await ensureHome(ks.dir);
    ks.dirSignature = await keyDirSignature(ks.dir);
    await ks.reload();
    return ks;
  }

  /** Re-reads the key files, e.g. after another process imported or removed keys. */
  async reload(): Promise<void> {
    const next = new Map<string, StoredKey>();
    const nextSsh = new Map<string, SshStoredKey>();
    const names = await fs.readdir(this.dir);
    for (const name of names.sort()) {
      const ssh = /^([0-9A-F]{40})\.ssh$/.exec(name);
      if (ssh) {
        const k = await readStoredSshKey(path.join(this.dir, name), ssh[1]!);
        nextSsh.set(k.keygrip, k);
        continue;
      }
      const m = /^([0-9A-F]{40}|[0-9A-F]{64})\.key$/.exec(name);
      if (!m) continue;
      const file = path.join(this.dir, name);
      const armored = (await readSecretFile(file)).toString('utf8');
      let key: openpgp.Key;
      try {
        key = await openpgp.readKey({ armoredKey: armored });
      } catch {
        throw new UserError(
          `${file} is not a readable key file; remove it and import the key again`,
        );
      }
      next.set(m[1]!, this.entry(key, armored));
    }
    this.keys = next;
    this.sshKeys = nextSsh;
    this.cachedInventory = undefined;
  }

  /**
   * Picks up keys imported or removed by another process (`keytether keys import` while the
   * agent runs). Looks at the key directory at most once a second.
   */
  async refreshIfChanged(now = Date.now()): Promise<void> {
    // A caller arriving while a look is under way waits for it: returning at once would hand it
    // the key set from before the change that look is loading.
    if (this.refreshing) return this.refreshing;
    if (now - this.lastCheck < 1000) return;
    this.lastCheck = now;
    this.refreshing = (async () => {
      const sig = await keyDirSignature(this.dir);
      if (sig === this.dirSignature) return;
      await this.reload();
      this.dirSignature = sig;
    })().finally(() => (this.refreshing = undefined));
    return this.refreshing;
  }

  private entry(key: openpgp.Key, armored: string): StoredKey {
    const fingerprint = key.getFingerprint().toUpperCase();
    return {
      fingerprint,
      file: path.join(this.dir, `${fingerprint}.key`),
      armored,
      key,
      parts: describeKey(key),
    };
  }

  /**
   * Imports every key in BYTES (armored or binary `gpg --export-secret-keys` output). Re-importing
   * a key merges it with the stored copy; secret parts the new export lacks (stubs) are kept.
   */
  async importKeys(
    bytes: Uint8Array,
    source = 'the input',
    opts: ImportOptions = {},
  ): Promise<ImportResult[]> {
    if (isSshKeyInput(bytes)) return [await this.importSshKey(bytes, source, opts)];
    const incoming = await readKeyInput(bytes, source);
    const prepared: { key: openpgp.Key; created: boolean }[] = [];
    for (const k of incoming) {
      const fpr = k.getFingerprint().toUpperCase();
      const old = this.keys.get(fpr);
      const merged = old
        ? await mergeKeys(k as openpgp.PrivateKey, old.key as openpgp.PrivateKey)
        : k;
      if (!describeKey(merged).some((p) => p.secret)) {
        throw new UserError(
          `${source} holds only stubs of key ${fpr} (no secret key material, e.g. keys on a smartcard or exported with --export-secret-subkeys of a stub); export it from the machine that has the secret keys`,
        );
      }
      const unusable = describeKey(merged).find((p) => p.secret && !p.materialKind);
      if (unusable) {
        // Storing it would list a key that then fails every operation with "No secret key".
        throw new UserError(
          `${source}: key ${fpr} has a ${unusable.algorithm} part the builtin store cannot use (DSA, ElGamal, Ed448 and X448 are served only by the workstation's gpg-agent); keep it in your GnuPG home and run keytether with --backend gpg-agent`,
        );
      }
      const twin = describeKey(merged).find((p) => p.keygrip && this.sshKeys.has(p.keygrip));
      if (twin) {
        throw new UserError(
          `${source}: subkey ${twin.fingerprint} of ${fpr} is the OpenSSH key ${this.sshKeys.get(twin.keygrip!)!.fingerprint} already stored; remove that one first (keytether keys remove ${this.sshKeys.get(twin.keygrip!)!.fingerprint})`,
        );
      }
      prepared.push({ key: merged, created: !old });
    }
    const results: ImportResult[] = [];
    for (const { key, created } of prepared) {
      const armored = key.armor();
      const entry = this.entry(key, armored);
      await writeSecretFile(entry.file, armored);
      this.keys.set(entry.fingerprint, entry);
      this.cachedInventory = undefined;
      results.push({ fingerprint: entry.fingerprint, uid: key.getUserIDs()[0] ?? '', created });
    }
    return results;
  }

  /** Stores an OpenSSH private key file as it is: its passphrase stays its own. */
  private async importSshKey(
    bytes: Uint8Array,
    source: string,
    opts: ImportOptions,
  ): Promise<ImportResult> {
    const k = readSshKeyInput(bytes, source, opts.sshPublic);
    const owner = this.openpgpPart(k.keygrip);
    if (owner) {
      throw new UserError(
        `${source} is the same key as ${owner.part.fingerprint} of OpenPGP key ${owner.stored.fingerprint}, already stored; it is offered to ssh as that key`,
      );
    }
    const created = !this.sshKeys.has(k.keygrip);
    await writeSecretFile(this.sshFile(k.keygrip), sshKeyFileText(k));
    this.sshKeys.set(k.keygrip, k);
    this.cachedInventory = undefined;
    return { fingerprint: k.fingerprint, uid: k.comment, created };
  }

  private sshFile(grip: string): string {
    return path.join(this.dir, `${grip}.ssh`);
  }

  private sshByFingerprint(fpr: string): SshStoredKey | undefined {
    return [...this.sshKeys.values()].find((k) => k.fingerprint === fpr);
  }

  list(): ListedKey[] {
    const sub = (p: KeyPart): ListedSubkey => ({
      fingerprint: p.fingerprint,
      algorithm: p.algorithm,
      keygrip: p.keygrip ?? null,
      usage: p.usage,
      secret: p.secret,
    });
    const openpgpKeys = [...this.keys.values()].map((k): ListedKey => {
      const [primary, ...subs] = k.parts;
      const uids = k.key.getUserIDs();
      return { ...sub(primary!), format: 'openpgp', uids, subkeys: subs.map(sub) };
    });
    const sshKeys = [...this.sshKeys.values()].map(listedSshKey);
    return [...openpgpKeys, ...sshKeys];
  }

  private lookup(fprs: string[]): StoredKey[] {
    return fprs.map((input) => {
      const f = normaliseFingerprint(input);
      const k = f ? this.keys.get(f) : undefined;
      if (!k) {
        throw new UserError(
          `no key with fingerprint ${input} in ${this.dir}; see keytether keys list for the stored keys`,
        );
      }
      return k;
    });
  }

  /**
   * One armored block of the public keys named (all OpenPGP keys when none): never any secret
   * packet. OpenSSH keys named by their `SHA256:` fingerprint come out as authorized_keys lines.
   */
  exportPublic(fprs: string[] = []): string {
    const ssh = fprs.map((f) => this.sshByFingerprint(f.trim()));
    if (fprs.length > 0 && ssh.every((k) => k !== undefined)) {
      return ssh.map((k) => sshPublicLine(k!) + '\n').join('');
    }
    if (ssh.some((k) => k !== undefined)) {
      throw new UserError('export OpenSSH keys (SHA256:…) and OpenPGP keys in separate commands');
    }
    const chosen = fprs.length > 0 ? this.lookup(fprs) : [...this.keys.values()];
    const bytes = chosen.map((k) => k.key.toPublic().write());
    // gpg 2.2 reads armor without the CRC24 line as corrupt, so emit it (as key.armor() does
    // for v4 keys).
    return openpgp.armor(
      openpgp.enums.armor.publicKey,
      concat(bytes),
      undefined,
      undefined,
      undefined,
      true,
    );
  }

  async remove(fpr: string): Promise<string> {
    const ssh = this.sshByFingerprint(fpr.trim());
    if (ssh) {
      await fs.rm(this.sshFile(ssh.keygrip), { force: true });
      this.sshKeys.delete(ssh.keygrip);
      this.cachedInventory = undefined;
      return ssh.fingerprint;
    }
    const [k] = this.lookup([fpr]);
    await fs.rm(k!.file, { force: true });
    this.keys.delete(k!.fingerprint);
    this.cachedInventory = undefined;
    return k!.fingerprint;
  }

  private openpgpPart(keygrip: string): { stored: StoredKey; part: KeyPart } | undefined {
    const grip = keygrip.toUpperCase();
    for (const stored of this.keys.values()) {
      for (const part of stored.parts) {
        if (part.keygrip === grip && part.secret && part.materialKind) return { stored, part };
      }
    }
    return undefined;
  }

  private part(
    keygrip: string,
  ): { stored: StoredKey; part: KeyPart } | { ssh: SshStoredKey } | undefined {
    const ssh = this.sshKeys.get(keygrip.toUpperCase());
    return ssh ? { ssh } : this.openpgpPart(keygrip);
  }

  inventory(): Inventory {
    this.cachedInventory ??= this.buildInventory();
    return this.cachedInventory;
  }

  private buildInventory(): Inventory {
    const keys: KeyEntry[] = [];
    const certificates: Certificate[] = [];
    for (const stored of this.keys.values()) {
      certificates.push({
        fingerprint: stored.fingerprint,
        userIds: stored.key.getUserIDs(),
        armored: stored.key.toPublic().armor(),
      });
      for (const p of stored.parts) {
        if (!p.secret || !p.keygrip || !p.publicKey || !p.materialKind) continue;
        keys.push({
          keygrip: p.keygrip,
          fingerprint: p.fingerprint,
          primaryFingerprint: p.primaryFingerprint,
          algorithm: p.algorithm,
          usage: p.usage,
          publicKey: publicKeySexp(p.publicKey),
          protection: p.protection,
        });
      }
    }
    for (const k of this.sshKeys.values()) {
      keys.push({
        keygrip: k.keygrip,
        fingerprint: k.fingerprint,
        primaryFingerprint: k.fingerprint,
        algorithm: k.algorithm,
        usage: ['auth'],
        publicKey: publicKeySexp(k.publicKey),
        protection: k.protection,
        ...(k.comment ? { comment: k.comment } : {}),
      });
    }
    return { keys, certificates };
  }

  hasKey(keygrip: string): boolean {
    return this.part(keygrip) !== undefined;
  }

  isProtected(keygrip: string): boolean {
    const found = this.part(keygrip);
    if (!found) throw gpgErr('NO_SECKEY');
    return 'ssh' in found ? found.ssh.protection === 'P' : found.part.protection === 'P';
  }

  /**
   * Decrypts the secret (sub)key with KEYGRIP. PASSPHRASE is the raw bytes a pinentry returned
   * (null for keys stored in the clear). Wrong passphrase → GpgError BAD_PASSPHRASE.
   */
  async unlock(keygrip: string, passphrase: Buffer | null): Promise<UnlockedKey> {
    const found = this.part(keygrip);
    if (!found) throw gpgErr('NO_SECKEY');
    if ('ssh' in found) {
      const material = await unlockSshKey(found.ssh, passphrase);
      try {
        return createUnlockedKey(found.ssh.keygrip, found.ssh.algorithm, material);
      } finally {
        zeroMaterial(material);
      }
    }
    const { stored, part } = found;
    // A fresh parse, so decrypted parameters never linger in the long-lived key objects.
    const key = await openpgp.readKey({ armoredKey: stored.armored });
    const holder = key.getKeys().find((k) => k.getFingerprint().toUpperCase() === part.fingerprint);
    const packet = holder?.keyPacket as openpgp.SecretKeyPacket | undefined;
    if (!packet || typeof packet.decrypt !== 'function') throw gpgErr('NO_SECKEY');
    try {
      if (!packet.isDecrypted()) {
        if (passphrase === null) throw gpgErr('BAD_PASSPHRASE', 'the key needs a passphrase');
        try {
          // openpgp takes the passphrase as a string; pinentry passphrases are UTF-8.
          await packet.decrypt(passphrase.toString('utf8'));
        } catch {
          throw gpgErr('BAD_PASSPHRASE');
        }
      }
      const material = secretMaterial(part, packet);
      if (!material)
        throw gpgErr('UNSUPPORTED_ALGORITHM', `${part.algorithm} keys are not supported`);
      try {
        // The crypto layer checks that the secret matches the public key (openpgp's validate()
        // rejects valid brainpool keys); that check also catches a wrong passphrase which slipped
        // past a 2-byte-checksum (s2k usage 255) key.
        return createUnlockedKey(part.keygrip!, part.algorithm, material);
      } catch (e) {
        if (e instanceof GpgError && e.code === ErrorCode.INV_DATA && part.protection === 'P') {
          throw gpgErr('BAD_PASSPHRASE');
        }
        throw e;
      }
    } finally {
      // Zeroes openpgp's copy; the UnlockedKey holds its own.
      if (packet.isDecrypted() && packet.privateParams) {
        (packet as unknown as { clearPrivateParams(): void }).clearPrivateParams();
      }
    }
  }
}
