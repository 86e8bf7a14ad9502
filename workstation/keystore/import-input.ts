// Turning what a user pipes into `keytether keys import` into OpenPGP key objects, with one plain
// sentence for every way that input can be wrong.

import * as openpgp from 'openpgp';
import { UserError } from '../../system/user-error.js';

/** More than any real keyring export; stops a wrong file (a disk image…) from being parsed. */
export const MAX_IMPORT_BYTES = 16 * 1024 * 1024;
const MAX_KEYS = 1000;

const ARMOR_BLOCK =
  /-----BEGIN PGP (PRIVATE|PUBLIC) KEY BLOCK-----[\s\S]*?-----END PGP \1 KEY BLOCK-----/g;

function looksArmored(bytes: Uint8Array): boolean {
  const head = Buffer.from(bytes.subarray(0, 512)).toString('latin1').trimStart();
  return head.startsWith('-----BEGIN PGP');
}

export async function readKeyInput(bytes: Uint8Array, source: string): Promise<openpgp.Key[]> {
  if (bytes.length === 0)
    throw new UserError(`${source} is empty; pipe in the output of gpg --export-secret-keys`);
  if (bytes.length > MAX_IMPORT_BYTES) {
    throw new UserError(
      `${source} is larger than ${MAX_IMPORT_BYTES} bytes; that is not a key export`,
    );
  }
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
  if (keys.length === 0) {
    throw new UserError(`${source} holds no OpenPGP keys; export with gpg --export-secret-keys`);
  }
  if (keys.length > MAX_KEYS) throw new UserError(`${source} holds more than ${MAX_KEYS} keys`);
  const publicOnly = keys.filter((k) => !k.isPrivate());
  if (publicOnly.length === keys.length) {
    throw new UserError(`${source} holds only public keys; export with gpg --export-secret-keys`);
  }
  if (publicOnly.length > 0) {
    const fpr = publicOnly[0]!.getFingerprint().toUpperCase();
    throw new UserError(
      `${source} holds key ${fpr} without its secret part; export it with gpg --export-secret-keys ${fpr}`,
    );
  }
  return keys;
}
