// The builtin back end's key store: OpenPGP secret keys exactly as gpg exported them (still
// passphrase-encrypted), one file per primary key under $KEYTETHER_HOME/keys/<FPR>.key (gpg 2.4's
// version 5 Ed448/X448 keys, which openpgp.js cannot read: <FPR>.v5).
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
import { readKeyInput, refuseUnservable } from './import-input.js';
import { readV5KeyFile, v5KeyFileText, type V5Key } from './v5-key.js';
import {
  storedCertificate,
  storedPublicBinary,
  unlockPart,
  type AnyStoredKey,
  type StoredKey,
  type StoredV5Key,
} from './stored-key.js';
import { armorWithChecksum } from './armor.js';
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
  private v5Keys = new Map<string, StoredV5Key>();
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
    const nextV5 = new Map<string, StoredV5Key>();
    const names = await fs.readdir(this.dir);
    for (const name of names.sort()) {
      if (/^[0-9A-F]{64}\.v5$/.test(name)) {
        const file = path.join(this.dir, name);
        const v5 = await readV5KeyFile((await readSecretFile(file)).toString('utf8')).catch(() => {
          throw new UserError(
            `${file} is not a readable key file; remove it and import the key again`,
          );
        });
        nextV5.set(v5.fingerprint, this.v5Entry(v5));
        continue;
      }
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
    this.v5Keys = nextV5;
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

  private v5Entry(v5: V5Key): StoredV5Key {
    const file = path.join(this.dir, `${v5.fingerprint}.v5`);
    return { fingerprint: v5.fingerprint, file, v5, parts: v5.parts };
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
    const { keys: incoming, v5 } = await readKeyInput(bytes, source);
    const prepared: { key: openpgp.Key; created: boolean }[] = [];
    const prepared5: V5Key[] = [];
    for (const k of [...incoming, ...v5]) {
      const fpr = 'parts' in k ? k.fingerprint : k.getFingerprint().toUpperCase();
      const old = this.keys.get(fpr);
      // A v5 key is stored as exported; re-importing one replaces the stored copy.
      const merged =
        'parts' in k
          ? k
          : old
            ? await mergeKeys(k as openpgp.PrivateKey, old.key as openpgp.PrivateKey)
            : k;
      const parts = 'parts' in merged ? merged.parts : describeKey(merged);
      refuseUnservable(source, fpr, parts, 'parts' in merged ? merged : undefined);
      const twin = parts.find((p) => p.keygrip && this.sshKeys.has(p.keygrip));
      if (twin) {
        throw new UserError(
          `${source}: subkey ${twin.fingerprint} of ${fpr} is the OpenSSH key ${this.sshKeys.get(twin.keygrip!)!.fingerprint} already stored; remove that one first (keytether keys remove ${this.sshKeys.get(twin.keygrip!)!.fingerprint})`,
        );
      }
      if ('parts' in merged) prepared5.push(merged);
      else prepared.push({ key: merged, created: !old });
    }
    const results: ImportResult[] = [];
    for (const v5 of prepared5) {
      const entry = this.v5Entry(v5);
      const created = !this.v5Keys.has(v5.fingerprint);
      await writeSecretFile(entry.file, v5KeyFileText(v5));
      this.v5Keys.set(entry.fingerprint, entry);
      this.cachedInventory = undefined;
      results.push({ fingerprint: entry.fingerprint, uid: v5.uids[0] ?? '', created });
    }
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
    const v5Keys = [...this.v5Keys.values()].map((k): ListedKey => {
      const [primary, ...subs] = k.parts;
      return { ...sub(primary!), format: 'openpgp', uids: k.v5.uids, subkeys: subs.map(sub) };
    });
    const sshKeys = [...this.sshKeys.values()].map(listedSshKey);
    return [...openpgpKeys, ...v5Keys, ...sshKeys];
  }

  private lookup(fprs: string[]): AnyStoredKey[] {
    return fprs.map((input) => {
      const f = normaliseFingerprint(input);
      const k = f ? (this.keys.get(f) ?? this.v5Keys.get(f)) : undefined;
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
    const chosen =
      fprs.length > 0 ? this.lookup(fprs) : [...this.keys.values(), ...this.v5Keys.values()];
    const bytes = chosen.map(storedPublicBinary);
    return armorWithChecksum(openpgp.enums.armor.publicKey, concat(bytes));
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
    this.v5Keys.delete(k!.fingerprint);
    this.cachedInventory = undefined;
    return k!.fingerprint;
  }

  private openpgpPart(keygrip: string): { stored: AnyStoredKey; part: KeyPart } | undefined {
    const grip = keygrip.toUpperCase();
    for (const stored of [...this.keys.values(), ...this.v5Keys.values()]) {
      for (const part of stored.parts) {
        if (part.keygrip === grip && part.secret && part.materialKind) return { stored, part };
      }
    }
    return undefined;
  }

  private part(
    keygrip: string,
  ): { stored: AnyStoredKey; part: KeyPart } | { ssh: SshStoredKey } | undefined {
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
    for (const stored of [...this.keys.values(), ...this.v5Keys.values()]) {
      certificates.push(storedCertificate(stored));
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
    return unlockPart(found.stored, found.part, passphrase);
  }
}
