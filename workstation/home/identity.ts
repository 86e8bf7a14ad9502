// The holder's Ed25519 identity: relays route by its id and tokens carry its signature. Created on
// first use and never replaced behind the user's back, since replacing it voids every token.

import { constants as fsc } from 'node:fs';
import * as fs from 'node:fs/promises';
import * as path from 'node:path';
import {
  createPrivateKey,
  createPublicKey,
  generateKeyPairSync,
  randomBytes,
  sign as cryptoSign,
  type KeyObject,
} from 'node:crypto';
import { UserError } from '../../system/user-error.js';
import { holderIdFromPublicKey } from '../../protocol/relay/identity.js';
import { ensureHome, readSecretFile } from './home.js';

export interface HolderIdentity {
  /** `kth_…`, derived from hpk. */
  hid: string;
  /** The raw 32-byte Ed25519 public key. */
  hpk: Buffer;
  /** Ed25519 signature over BYTES. */
  sign(bytes: Uint8Array): Buffer;
}

export const IDENTITY_FILE = 'identity.key';

function fromPrivateKey(key: KeyObject): HolderIdentity {
  const jwk = createPublicKey(key).export({ format: 'jwk' });
  const hpk = Buffer.from(jwk.x ?? '', 'base64url');
  return {
    hid: holderIdFromPublicKey(hpk),
    hpk,
    sign: (bytes) => cryptoSign(null, bytes, key),
  };
}

/**
 * Writes PEM to FILE only if FILE does not exist yet: two processes starting at once must agree
 * on one identity, so the loser of the race reads the winner's key instead of overwriting it.
 */
async function createExclusive(file: string, pem: Buffer): Promise<boolean> {
  const tmp = path.join(
    path.dirname(file),
    `.${path.basename(file)}.${randomBytes(6).toString('hex')}.tmp`,
  );
  let fh: fs.FileHandle | undefined;
  try {
    fh = await fs.open(tmp, fsc.O_WRONLY | fsc.O_CREAT | fsc.O_EXCL, 0o600);
    await fh.chmod(0o600);
    await fh.writeFile(pem);
    await fh.sync();
    await fh.close();
    fh = undefined;
    // link() refuses an existing target, unlike rename(): that is the no-overwrite guarantee.
    await fs.link(tmp, file);
    return true;
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'EEXIST') return false;
    throw new UserError(`cannot create ${file}: ${(e as Error).message}`);
  } finally {
    await fh?.close().catch(() => undefined);
    await fs.rm(tmp, { force: true }).catch(() => undefined);
  }
}

/** Loads `$KEYTETHER_HOME/identity.key`, creating it (0600) on first use. */
export async function loadOrCreateIdentity(home: string): Promise<HolderIdentity> {
  await ensureHome(home);
  const file = path.join(home, IDENTITY_FILE);
  let exists = true;
  try {
    await fs.lstat(file);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'ENOENT') {
      throw new UserError(`cannot use ${file}: ${(e as Error).message}`);
    }
    exists = false;
  }
  if (!exists) {
    const { privateKey } = generateKeyPairSync('ed25519');
    const pem = Buffer.from(privateKey.export({ type: 'pkcs8', format: 'pem' }) as string, 'utf8');
    const created = await createExclusive(file, pem);
    pem.fill(0);
    if (created) return fromPrivateKey(privateKey);
  }
  const pem = await readSecretFile(file);
  let key: KeyObject;
  try {
    key = createPrivateKey({ key: pem, format: 'pem' });
  } catch {
    throw new UserError(
      `${file} is not a PKCS#8 PEM private key; restore it from a backup, or remove it to create a new identity (tokens issued so far stop working)`,
    );
  } finally {
    pem.fill(0);
  }
  if (key.asymmetricKeyType !== 'ed25519') {
    throw new UserError(
      `${file} holds a ${key.asymmetricKeyType ?? 'unknown'} key, not Ed25519; remove it to create a new identity (tokens issued so far stop working)`,
    );
  }
  return fromPrivateKey(key);
}
