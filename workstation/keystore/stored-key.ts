// One primary key as the keystore holds it — read by openpgp.js (<FPR>.key) or, for gpg 2.4's
// version 5 Ed448/X448 keys, by v5-key.ts (<FPR>.v5) — and the three things asked of either:
// its certificate, its user ids, and one of its parts unlocked.

import * as openpgp from 'openpgp';
import { armorWithChecksum } from './armor.js';
import { ErrorCode, GpgError, gpgErr } from '../../protocol/gpg-error.js';
import type { Certificate } from '../../protocol/keyholder.js';
import {
  createUnlockedKey,
  type SecretKeyMaterial,
  type UnlockedKey,
} from '../crypto/unlocked-key.js';
import { secretMaterial, type KeyPart } from './key-part.js';
import { zeroMaterial } from './ssh-key.js';
import { v5PublicBinary, v5SecretMaterial, type V5Key } from './v5-key.js';

export interface StoredKey {
  fingerprint: string;
  file: string;
  armored: string;
  key: openpgp.Key;
  parts: KeyPart[];
}

export interface StoredV5Key {
  fingerprint: string;
  file: string;
  v5: V5Key;
  parts: KeyPart[];
}

export type AnyStoredKey = StoredKey | StoredV5Key;

export function storedUids(k: AnyStoredKey): string[] {
  return 'v5' in k ? k.v5.uids : k.key.getUserIDs();
}

/** The public packets (certificate) in binary: never any secret packet. */
export function storedPublicBinary(k: AnyStoredKey): Uint8Array {
  return 'v5' in k ? v5PublicBinary(k.v5) : k.key.toPublic().write();
}

export function storedCertificate(k: AnyStoredKey): Certificate {
  return {
    fingerprint: k.fingerprint,
    userIds: storedUids(k),
    armored:
      'v5' in k
        ? armorWithChecksum(openpgp.enums.armor.publicKey, v5PublicBinary(k.v5))
        : k.key.toPublic().armor(),
  };
}

/** The decrypted secret material of PART, or undefined when its MPIs are not what is expected. */
async function openPart(
  stored: AnyStoredKey,
  part: KeyPart,
  passphrase: Buffer | null,
): Promise<SecretKeyMaterial | undefined> {
  if ('v5' in stored) return v5SecretMaterial(stored.v5, part, passphrase);
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
    const m = secretMaterial(part, packet);
    // A copy: openpgp's own is zeroed below, before the caller uses it.
    const copy = Object.fromEntries(
      Object.entries(m ?? {}).map(([k, v]) => [k, v instanceof Uint8Array ? Buffer.from(v) : v]),
    );
    return m && (copy as unknown as SecretKeyMaterial);
  } finally {
    if (packet.isDecrypted() && packet.privateParams) {
      (packet as unknown as { clearPrivateParams(): void }).clearPrivateParams();
    }
  }
}

/**
 * Decrypts PART of STORED. PASSPHRASE is the raw bytes a pinentry returned (null for keys stored
 * in the clear). Wrong passphrase → GpgError BAD_PASSPHRASE.
 */
export async function unlockPart(
  stored: AnyStoredKey,
  part: KeyPart,
  passphrase: Buffer | null,
): Promise<UnlockedKey> {
  const material = await openPart(stored, part, passphrase);
  if (!material) throw gpgErr('UNSUPPORTED_ALGORITHM', `${part.algorithm} keys are not supported`);
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
  } finally {
    zeroMaterial(material);
  }
}
