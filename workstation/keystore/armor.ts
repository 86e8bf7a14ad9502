import * as openpgp from 'openpgp';

/**
 * BYTES armored as TYPE with the CRC24 line, as key.armor() writes it for v4 keys: gpg 2.2 reads
 * armor without it as corrupt, and gpg 2.4 refuses ("no valid OpenPGP data found") a block
 * without it whose length is a multiple of 3, which then fails one import in three.
 */
export function armorWithChecksum(type: openpgp.enums.armor, bytes: Uint8Array): string {
  return openpgp.armor(type, bytes, undefined, undefined, undefined, true);
}
