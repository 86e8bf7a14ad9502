// Turning what a user pipes into `keytether keys import` into OpenPGP key objects, with one plain
// sentence for every way that input can be wrong (including keys the builtin store cannot serve).

import * as openpgp from 'openpgp';
import { UserError } from '../../system/user-error.js';
import { PacketFormatError } from '../../protocol/openpgp/packets.js';
import { KEY_TAGS } from '../../protocol/openpgp/v5-key-packet.js';
import { splitKeyExport, type V5Key } from './v5-key.js';
import { unsupportedProtection } from './v5-secret.js';
import type { KeyPart } from './key-part.js';

/** More than any real keyring export; stops a wrong file (a disk image…) from being parsed. */
export const MAX_IMPORT_BYTES = 16 * 1024 * 1024;
const MAX_KEYS = 1000;

const ARMOR_BLOCK =
  /-----BEGIN PGP (PRIVATE|PUBLIC) KEY BLOCK-----[\s\S]*?-----END PGP \1 KEY BLOCK-----/g;

// gpg 2.4 writes Ed448 and X448 keys as version 5 packets, which openpgp.js drops (alone they
// gave "No key packet found", beside older keys they were skipped): those keys are read by
// v5-key.ts, every other key by openpgp.js.

async function binaries(bytes: Uint8Array): Promise<Uint8Array[]> {
  if (!looksArmored(bytes)) return [bytes];
  const out: Uint8Array[] = [];
  for (const block of Buffer.from(bytes).toString('utf8').match(ARMOR_BLOCK) ?? []) {
    out.push((await openpgp.unarmor(block)).data as Uint8Array);
  }
  return out;
}

/** The v5 keys in BYTES and the other keys' bytes; undefined when it holds no v5 key. */
async function splitVersionFive(
  bytes: Uint8Array,
  source: string,
): Promise<{ v5: V5Key[]; others: Uint8Array[] } | undefined> {
  const v5: V5Key[] = [];
  const others: Uint8Array[] = [];
  let blocks: Uint8Array[];
  try {
    blocks = await binaries(bytes);
  } catch {
    return undefined;
  }
  for (const binary of blocks) {
    try {
      const split = splitKeyExport(binary);
      v5.push(...split.v5);
      others.push(...split.others);
    } catch (e) {
      if (!(e instanceof PacketFormatError)) throw e;
      // Framing trouble outside a v5 key packet is left to openpgp.js, whose message users know.
      if (e.version !== 5 || (e.tag !== undefined && !KEY_TAGS.includes(e.tag))) return undefined;
      throw new UserError(
        `${source} holds a malformed gpg 2.4 (version 5) key: ${e.message}; export it again with gpg --export-secret-keys`,
      );
    }
  }
  return v5.length > 0 ? { v5, others } : undefined;
}

function looksArmored(bytes: Uint8Array): boolean {
  const head = Buffer.from(bytes.subarray(0, 512)).toString('latin1').trimStart();
  return head.startsWith('-----BEGIN PGP');
}

export interface KeyInput {
  keys: openpgp.Key[];
  /** gpg 2.4's version 5 keys (Ed448, X448), which openpgp.js cannot read. */
  v5: V5Key[];
}

async function readOpenpgpKeys(bytes: Uint8Array, source: string): Promise<openpgp.Key[]> {
  const keys: openpgp.Key[] = [];
  try {
    if (looksArmored(bytes)) {
      const text = Buffer.from(bytes).toString('utf8');
      const blocks = text.match(ARMOR_BLOCK) ?? [];
      if (blocks.length === 0) {
        throw new UserError(
          `${source} is ASCII-armored but holds no PGP key block; export with gpg --export-secret-keys --armor`,
        );
      }
      for (const armoredKeys of blocks) keys.push(...(await openpgp.readKeys({ armoredKeys })));
    } else {
      keys.push(...(await openpgp.readKeys({ binaryKeys: bytes })));
    }
  } catch (e) {
    if (e instanceof UserError) throw e;
    // openpgp's messages describe the format problem only; they never echo key material.
    const why = e instanceof Error ? e.message.replace(/\s+/g, ' ').slice(0, 160) : 'unreadable';
    throw new UserError(
      `${source} is not a readable OpenPGP key export (${why}); export with gpg --export-secret-keys`,
    );
  }
  return keys;
}

export async function readKeyInput(bytes: Uint8Array, source: string): Promise<KeyInput> {
  if (bytes.length === 0)
    throw new UserError(`${source} is empty; pipe in the output of gpg --export-secret-keys`);
  if (bytes.length > MAX_IMPORT_BYTES) {
    throw new UserError(
      `${source} is larger than ${MAX_IMPORT_BYTES} bytes; that is not a key export`,
    );
  }
  const split = await splitVersionFive(bytes, source);
  const v5 = split?.v5 ?? [];
  const keys = !split
    ? await readOpenpgpKeys(bytes, source)
    : split.others.length > 0
      ? await readOpenpgpKeys(Buffer.concat(split.others), source)
      : [];
  const count = keys.length + v5.length;
  if (count === 0) {
    throw new UserError(`${source} holds no OpenPGP keys; export with gpg --export-secret-keys`);
  }
  if (count > MAX_KEYS) throw new UserError(`${source} holds more than ${MAX_KEYS} keys`);
  const publicOnly = [
    ...keys.filter((k) => !k.isPrivate()).map((k) => k.getFingerprint().toUpperCase()),
    ...v5.filter((k) => k.packets[0]!.secret === undefined).map((k) => k.fingerprint),
  ];
  if (publicOnly.length === count) {
    throw new UserError(`${source} holds only public keys; export with gpg --export-secret-keys`);
  }
  if (publicOnly.length > 0) {
    const fpr = publicOnly[0]!;
    throw new UserError(
      `${source} holds key ${fpr} without its secret part; export it with gpg --export-secret-keys ${fpr}`,
    );
  }
  return { keys, v5 };
}

/**
 * Refuses key FPR (its PARTS; V5 when it is a version 5 key) when the builtin store could list it
 * but not serve it: storing it would list a key that then fails every operation.
 */
export function refuseUnservable(source: string, fpr: string, parts: KeyPart[], v5?: V5Key): void {
  if (!parts.some((p) => p.secret)) {
    throw new UserError(
      `${source} holds only stubs of key ${fpr} (no secret key material, e.g. keys on a smartcard or exported with --export-secret-subkeys of a stub); export it from the machine that has the secret keys`,
    );
  }
  const unusable = parts.find((p) => p.secret && !p.materialKind);
  if (unusable) {
    throw new UserError(
      `${source}: key ${fpr} has a ${unusable.algorithm} part the builtin store cannot use (DSA and ElGamal are served only by the workstation's gpg-agent); keep it in your GnuPG home and run keytether with --backend gpg-agent`,
    );
  }
  const why = v5?.packets.map((p) => p.secret && unsupportedProtection(p.secret)).find((w) => w);
  if (why) {
    throw new UserError(
      `${source}: key ${fpr} protects its secret with ${why}, which the builtin store cannot open; keep it in your GnuPG home and run keytether with --backend gpg-agent`,
    );
  }
}
